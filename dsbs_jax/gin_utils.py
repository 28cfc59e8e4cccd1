"""Parsing gin files the T5X way: `--gin_file` paths and `--gin.NAME=VALUE` bindings.

Gin lives at the edges: library functions take plain arguments and the binaries resolve
them here. Include paths are resolved against the working directory and the project's
`gin/` folder, so `include 'models/t5_1_1_base.gin'` works from anywhere.
"""

import pathlib
from collections.abc import Sequence

import gin

GIN_DIR = pathlib.Path(__file__).resolve().parent.parent / "gin"


def parse(gin_files: Sequence[str], bindings: Sequence[str] = ()) -> None:
    """Parse gin files (paths relative to the cwd or to `gin/`) then override bindings."""
    gin.add_config_file_search_path(str(GIN_DIR))
    gin.parse_config_files_and_bindings(
        [_resolve(f) for f in gin_files], list(bindings), finalize_config=False
    )


def _resolve(gin_file: str) -> str:
    path = pathlib.Path(gin_file)
    if path.exists() or path.is_absolute():
        return str(path)
    for candidate in (GIN_DIR / path, GIN_DIR.parent / path):
        if candidate.exists():
            return str(candidate)
    raise FileNotFoundError(f"gin file {gin_file} not found (looked in . and {GIN_DIR})")
