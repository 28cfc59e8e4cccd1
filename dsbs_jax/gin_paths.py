"""Where gin files are: `gin/` beside the package, or `$DSBS_GIN_DIR` (an installed wheel
holds no `gin/`; launch/tpu_vm.sh copies it). Only the standard library, so that the
launchers can read gin files with any Python, without gin or JAX (`dsbs_jax.meshes`).
"""

import os
import pathlib
import re
from collections.abc import Iterator

GIN_DIR = pathlib.Path(
    os.environ.get("DSBS_GIN_DIR") or pathlib.Path(__file__).resolve().parent.parent / "gin"
)
_INCLUDE = re.compile(r"""include\s+['"]([^'"]+)['"]""")


def resolve(gin_file: str) -> pathlib.Path:
    """A `--gin_file` or `include` path: as given when it exists, else under `gin/` (or the
    folder above it, for `gin/...` paths), as gin's search path finds it."""
    path = pathlib.Path(gin_file)
    if path.exists() or path.is_absolute():
        return path
    for candidate in (GIN_DIR / path, GIN_DIR.parent / path):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"gin file {gin_file} not found (looked in . and {GIN_DIR})")


def walk(gin_file: str) -> Iterator[tuple[pathlib.Path, str]]:
    """Each line of a gin file with the file it is in, the lines of the files it includes
    in their place: what gin reads, in order, unparsed."""
    path = resolve(gin_file)
    for line in path.read_text().splitlines():
        yield path, line
        if match := _INCLUDE.match(line):
            yield from walk(match[1])
