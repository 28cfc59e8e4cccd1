"""Files and folders on local disk or `gs://`: written so that a reader never sees half of
one (a file renamed into place, a folder swapped in whole), and checked before any work."""

import contextlib
import hashlib
import os
from collections.abc import Iterator

from etils import epath

from dsbs_jax.cli import UsageError


def is_remote(path: epath.PathLike) -> bool:
    """A path on an object store (`gs://...`), not on this machine's file system."""
    return "://" in os.fspath(path)


def write_atomically(path: epath.PathLike, data: str | bytes) -> None:
    """Write under a temporary name in the same folder, then rename over `path`."""
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / f".{path.name}.{os.getpid()}.tmp"
    try:
        if isinstance(data, bytes):
            temporary.write_bytes(data)
        else:
            temporary.write_text(data)
        temporary.replace(path)
    finally:
        if temporary.exists():
            temporary.unlink()


def complete_lines(path: epath.PathLike) -> tuple[list[bytes], bool]:
    """The complete lines of a file that is appended to line by line (none if it is absent).

    A partial last line, left by a run killed while writing, is cut off the file first, so
    that a resumed run appends after the last whole line; the flag says whether one was.
    """
    path = epath.Path(path)
    if not path.exists():
        return [], False
    data = path.read_bytes()
    partial = bool(data) and not data.endswith(b"\n")
    if partial:
        data = data[: data.rfind(b"\n") + 1]
        write_atomically(path, data)
    return data.splitlines(), partial


def check_folder(path: epath.PathLike, what: str) -> None:
    """Refuse, before any work, a folder to write that cannot be made: `path` or a folder
    above it is a file. (An object store has no such files.)"""
    path = epath.Path(path)
    if is_remote(path):
        return
    for folder in [path, *path.parents]:
        if folder.exists():
            if not folder.is_dir():
                where = "" if folder == path else f": {folder}"
                raise UsageError(f"{what} {path}{where} is a file, not a folder")
            return


def absolute(path: epath.PathLike) -> str:
    """A local path made absolute, so a record names the same files from any folder; a URL
    (`gs://...`) as it is (epath's `absolute()` would put the working folder before it)."""
    return os.fspath(path) if is_remote(path) else os.path.abspath(path)


SAMPLE_BYTES = 1 << 16


def fingerprint(*paths: epath.PathLike) -> str:
    """A cheap fingerprint of what files and folders hold, for results to record what made
    them; the same content, moved or rewritten, gives the same print. On local disk it hashes
    each file's name (within its folder), size and three 64 KiB samples (start, middle, end):
    a large checkpoint is not read through, yet weights trained otherwise differ in every
    sample. On `gs://` it hashes names, sizes and the CRC32C that Cloud Storage keeps of each
    object, from one listing: no byte is read (TensorFlow's reader would fetch 64 MB blocks).
    Hidden files (a writer's temporaries) are left out. 16 hex digits of a SHA-256."""
    digest = hashlib.sha256()
    for root in paths:
        entries = _objects(root) if is_remote(root) else _local_entries(epath.Path(root))
        for entry in entries:
            digest.update("\0".join(map(str, entry)).encode() + b"\n")
    return digest.hexdigest()[:16]


def _local_entries(root: epath.Path) -> Iterator[tuple]:
    """(name, size, samples' SHA-256) of each file of `root` (or of `root` itself), by name."""
    if root.is_file():
        found = [root]
    else:
        found = [
            directory / name
            for directory, _, names in root.walk()
            if not any(part.startswith(".") for part in directory.relative_to(root).parts)
            for name in names
            if not name.startswith(".")
        ]
    for path in sorted(found):
        size = path.stat().length
        middle = max(size // 2 - SAMPLE_BYTES // 2, 0)
        samples = hashlib.sha256()
        with path.open("rb") as stream:
            for start in sorted({0, middle, max(size - SAMPLE_BYTES, 0)}):
                stream.seek(start)
                samples.update(stream.read(SAMPLE_BYTES))
        yield path.relative_to(root), size, samples.hexdigest()


def _objects(root: epath.PathLike) -> Iterator[tuple]:
    """(name, size, CRC32C) of each object under a `gs://` path (or of the object itself)."""
    from google.cloud import storage  # only for gs://: its import is slow

    bucket, _, key = os.fspath(root).removeprefix("gs://").partition("/")
    key = key.rstrip("/")
    blobs = storage.Client(project=None).list_blobs(bucket, prefix=key)
    for blob in sorted(blobs, key=lambda b: b.name):
        name = blob.name[len(key) :].lstrip("/")
        inside = blob.name == key or blob.name.startswith(key + "/") or not key
        folder_marker = blob.name.endswith("/")  # what TensorFlow writes for a folder
        if inside and not folder_marker and not any(p.startswith(".") for p in name.split("/")):
            yield name, blob.size, blob.crc32c


def swap_in(staging: epath.PathLike, target: epath.PathLike) -> None:
    """Move the finished folder `staging` to `target`. A folder already at `target` is
    deleted only once the new one is in its place, and put back if the move fails."""
    staging, target = epath.Path(staging), epath.Path(target)
    backup = target.parent / f".{target.name}.{os.getpid()}.old"
    if backup.exists():
        backup.rmtree()
    had_one = target.exists()
    if had_one:
        target.rename(backup)
    try:
        staging.rename(target)
    except BaseException:
        if had_one:
            backup.rename(target)
        raise
    if had_one:
        backup.rmtree()


@contextlib.contextmanager
def staged_directory(target: epath.PathLike) -> Iterator[epath.Path]:
    """A path beside `target` to write a folder at (not made: some writers insist on making
    it themselves). When the block ends without an error the folder replaces `target`
    (`swap_in`); otherwise it is removed, leaving `target` as it was."""
    target = epath.Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.{os.getpid()}.new"
    if staging.exists():
        staging.rmtree()
    try:
        yield staging
        swap_in(staging, target)
    finally:
        if staging.exists():
            staging.rmtree()
