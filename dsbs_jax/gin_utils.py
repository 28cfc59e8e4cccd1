"""Parsing gin files the T5X way: `--gin_file` paths and `--gin.NAME=VALUE` bindings.

Gin lives at the edges: library functions take plain arguments and the binaries resolve
them here. Include paths are resolved against the working directory and the project's
`gin/` folder, so `include 'models/t5_1_1_base.gin'` works from anywhere. An installed
wheel holds no `gin/`: `$DSBS_GIN_DIR` names a copy (launch/tpu_vm.sh sets it).
"""

import argparse
import logging
import os
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import gin
from dsbs_jax import partitioning

GIN_DIR = pathlib.Path(
    os.environ.get("DSBS_GIN_DIR") or pathlib.Path(__file__).resolve().parent.parent / "gin"
)


class ConfigError(ValueError):
    """A run's configuration cannot work; raised before any work starts."""


def flag_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """The flags every gin-configured binary takes: gin files and the `jax.distributed`
    coordinates of a multi-host job."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.split("\n")[0])
    parser.add_argument("--gin_file", action="append", default=[], help="a gin file (repeatable)")
    partitioning.add_distributed_flags(parser)
    return parser


def parse_flags(
    parser: argparse.ArgumentParser, argv: Sequence[str]
) -> tuple[argparse.Namespace, list[str]]:
    """argparse for the plain flags; `--gin.NAME=VALUE` become gin bindings `NAME=VALUE`."""
    gin_args = [a for a in argv if a.startswith("--gin.")]
    args = parser.parse_args([a for a in argv if not a.startswith("--gin.")])
    if not args.gin_file:
        parser.error("give at least one --gin_file (for example gin/runs/quickstart.gin)")
    return args, [a.removeprefix("--gin.") for a in gin_args]


def run_configured(
    parser: argparse.ArgumentParser,
    function: Callable[[], Any],
    argv: Sequence[str],
    flag_bindings: Callable[[argparse.Namespace], list[str]] = lambda args: [],
) -> Any:
    """A gin binary's command line: parse the flags, join the other hosts, parse the gin
    files and bindings (plus those `flag_bindings` makes of plain flags), and call
    `function` with its gin bindings. Bad configuration raises `ConfigError`."""
    args, bindings = parse_flags(parser, argv)
    partitioning.initialize_distributed(
        args.coordinator_address, args.num_processes, args.process_id
    )
    try:
        parse(args.gin_file, bindings + flag_bindings(args))
    except (ValueError, FileNotFoundError) as error:  # gin reports unknown names this way
        raise ConfigError(str(error)) from None
    return gin.get_configurable(function)()


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
