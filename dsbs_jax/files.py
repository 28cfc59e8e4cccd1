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
