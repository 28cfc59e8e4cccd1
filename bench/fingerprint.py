"""What recording a checkpoint's content costs: `files.fingerprint` (each file's name, size
and three 64 KiB samples) against reading every byte through SHA-256, on an Orbax checkpoint
of a paper-size student with random weights, written to local disk.

    python bench/fingerprint.py [--size base] [--runs 3]
"""

import argparse
import hashlib
import tempfile
import time
from pathlib import Path

from common import SIZES, init_params, log

from dsbs_jax import checkpoints, files


def whole_sha256(folder: Path) -> str:
    """The full-read reference: every file's name and every byte."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode())
        with path.open("rb") as stream:
            while chunk := stream.read(1 << 24):
                digest.update(chunk)
    return digest.hexdigest()


def best_seconds(work, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="base", choices=sorted(SIZES))
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    config = SIZES[args.size]
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "checkpoint"
        log(f"writing a random {args.size} checkpoint to {folder}")
        checkpoints.save_orbax(folder, config, init_params(config))
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        count = sum(p.is_file() for p in folder.rglob("*"))
        sampled = best_seconds(lambda: files.fingerprint(folder), args.runs)
        whole = best_seconds(lambda: whole_sha256(folder), args.runs)  # from the page cache
    print(
        f"{args.size}: {size / 2**30:.2f} GiB in {count} files; fingerprint "
        f"{1e3 * sampled:.1f} ms, full SHA-256 {1e3 * whole:.0f} ms "
        f"({whole / sampled:.0f}x; best of {args.runs}, files in the page cache)"
    )


if __name__ == "__main__":
    main()
