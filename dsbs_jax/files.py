"""Writing files so that a reader never sees half of one (local disk or `gs://`)."""

import os

from etils import epath


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
