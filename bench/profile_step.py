"""Where the training step's time goes: XLA's CPU ops, from a `jax.profiler` trace.

Times our T5 forward+backward step alone (no PyTorch in the process), then traces one
step and prints the time per op kind (XNNPACK fusions, dots, copies, transposes, ...) and
the largest ops by the model code that emitted them. Same shapes as `bench/forward.py`.

    python bench/profile_step.py [--size small] [--batch 8] [--inputs 128] [--targets 64]
"""

import argparse
import collections
import glob
import gzip
import json
import re
import statistics
import tempfile
import time

import jax
from common import SIZES, init_params, log
from forward import jax_step, make_batch


def op_times(trace_dir: str) -> dict[str, float]:
    """Microseconds per XLA op name in the perfetto trace."""
    path = glob.glob(f"{trace_dir}/**/perfetto_trace.json.gz", recursive=True)[0]
    with gzip.open(path) as trace:
        events = json.load(trace)
    events = events["traceEvents"] if isinstance(events, dict) else events
    times: dict[str, float] = collections.Counter()
    for event in events:
        name = event.get("name", "")
        if event.get("ph") == "X" and not name.startswith("$") and "Thunk" not in name:
            times[name] += event.get("dur", 0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--inputs", type=int, default=128)
    parser.add_argument("--targets", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    config = SIZES[args.size]
    step, _ = jax_step(
        config, init_params(config), make_batch(config, args.batch, args.inputs, args.targets)
    )
    step()
    seconds = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    log(f"step alone: median {statistics.median(seconds):.3f} s of {args.steps}")
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
        step()
        jax.profiler.stop_trace()
        times = op_times(trace_dir)
    kinds: dict[str, float] = collections.Counter()
    for name, microseconds in times.items():
        kinds[re.sub(r"\.\d+$", "", name)] += microseconds
    table = ", ".join(f"{kind} {us / 1e3:.0f} ms" for kind, us in kinds.most_common(8))
    print(
        f"profile size={args.size} batch={args.batch} inputs={args.inputs} "
        f"targets={args.targets} | step alone {statistics.median(seconds):.3f} s | "
        f"traced ops {sum(kinds.values()) / 1e6:.2f} s: {table}"
    )


if __name__ == "__main__":
    main()
