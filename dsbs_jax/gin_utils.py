"""Parsing gin files the T5X way: `--gin_file` paths and `--gin.NAME=VALUE` bindings.

Gin lives at the edges: library functions take plain arguments and the binaries resolve
them here. Include paths are resolved against the working directory and the project's
`gin/` folder, so `include 'models/t5_1_1_base.gin'` works from anywhere.
"""

import logging
import pathlib
from collections.abc import Sequence

import gin

GIN_DIR = pathlib.Path(__file__).resolve().parent.parent / "gin"


def parse(gin_files: Sequence[str], bindings: Sequence[str] = ()) -> None:
    """Parse gin files (paths relative to the cwd or to `gin/`) then override bindings."""
    gin.add_config_file_search_path(str(GIN_DIR))
    quiet = _QuietIncludeLookups()
    logging.getLogger().addFilter(quiet)
    try:
        gin.parse_config_files_and_bindings(
            [_resolve(f) for f in gin_files], list(bindings), finalize_config=False
        )
    finally:
        logging.getLogger().removeFilter(quiet)


class _QuietIncludeLookups(logging.Filter):
    """gin logs an error for each include it first looks for as a Python package path
    ('Path not found: runs/train.gin'), then finds it on the search path: not an error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Path not found:")


def _resolve(gin_file: str) -> str:
    path = pathlib.Path(gin_file)
    if path.exists() or path.is_absolute():
        return str(path)
    for candidate in (GIN_DIR / path, GIN_DIR.parent / path):
        if candidate.exists():
            return str(candidate)
    raise FileNotFoundError(f"gin file {gin_file} not found (looked in . and {GIN_DIR})")
