"""Parsing gin files the T5X way: `--gin_file` paths and `--gin.NAME=VALUE` bindings.

Gin lives at the edges: library functions take plain arguments and the binaries resolve
them here. Include paths are resolved against the working directory and the project's
`gin/` folder, so `include 'models/t5_1_1_base.gin'` works from anywhere. An installed
wheel holds no `gin/`: `$DSBS_GIN_DIR` names a copy (launch/tpu_vm.sh sets it).
"""

import argparse
import contextlib
import copy
import dataclasses
import difflib
import inspect
import logging
import os
import pathlib
import re
import textwrap
import tokenize
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import gin
from dsbs_jax import cli, gin_paths, partitioning

GIN_DIR = gin_paths.GIN_DIR


class ConfigError(cli.UsageError, ValueError):
    """A run's configuration cannot work; raised before any work starts."""


def flag_parser(
    prog: str, doc: str, gin_file: str | None = None, examples: Sequence[str] = ()
) -> argparse.ArgumentParser:
    """The flags every gin-configured binary takes: gin files and the `jax.distributed`
    coordinates of a multi-host job. With `gin_file` (the binary's own, under `GIN_DIR`),
    `--help` also explains `--gin.NAME=VALUE` (`examples`: bindings to show) and lists the
    file's macros, read from it when the help is printed so that it cannot go stale."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=textwrap.fill(doc.split("\n")[0], width=78),  # the epilog is kept raw
        epilog=_bindings_help(gin_file, examples) if gin_file else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--gin_file", action="append", default=[], help="a gin file (repeatable)")
    partitioning.add_distributed_flags(parser)
    return parser


@dataclasses.dataclass(frozen=True)
class Macro:
    name: str
    default: str  # as the file writes it; "required" for %gin.REQUIRED
    comment: str  # the `#` lines right above it, joined ("" if none)


_TOP_LEVEL_MACRO = re.compile(r"([A-Za-z_]\w*)\s*=\s*(.*\S)")


def macros(gin_file: str | os.PathLike[str]) -> list[Macro]:
    """The macros a gin file defines at top level (`NAME = value` from column 0), in order,
    each with the comment block directly above it: what `--help` lists."""
    found: list[Macro] = []
    comment: list[str] = []
    lines = iter(pathlib.Path(gin_file).read_text().splitlines())
    for line in lines:
        if line.startswith("#"):
            comment.append(line.lstrip("#").strip())
            continue
        match = _TOP_LEVEL_MACRO.fullmatch(line.rstrip())
        if match:
            value = match[2]
            while _unclosed(value) and (more := next(lines, None)) is not None:
                value += " " + more.strip()  # a value over several lines
            default = "required" if value == "%gin.REQUIRED" else value
            found.append(Macro(match[1], default, " ".join(filter(None, comment))))
        comment = []
    return found


def _unclosed(value: str) -> bool:
    return sum(value.count(c) for c in "([{") > sum(value.count(c) for c in ")]}")


DOCS_PAGE = 'docs/training.md, "Training: `dsbs-train`" (gin files, bindings, macros)'


def _bindings_help(gin_file: str, examples: Sequence[str]) -> str:
    """`--help`'s epilog: the `--gin.NAME=VALUE` form, then `gin_file`'s macros."""
    indent = " " * 6
    lines = [
        "gin bindings:",
        *textwrap.wrap(
            "--gin.NAME=VALUE binds a macro (below) or any configurable's parameter, after "
            "the --gin_file files; the last binding of a name wins. VALUE is in gin syntax: "
            "a string keeps gin's quotes inside the shell's. A macro that no gin file "
            "defines or uses is an error.",
            width=78,
            initial_indent="  ",
            subsequent_indent="  ",
        ),
        *(f"    --gin.{example}" for example in examples),
        "",
    ]
    path = GIN_DIR / gin_file
    try:
        found = macros(path)
    except OSError as error:
        found = []
        lines.append(f"(no macros listed: {error}; $DSBS_GIN_DIR names the gin/ folder)")
    if found:
        lines.append(f"macros of {gin_file}, each = its default (required: no default):")
    for macro in found:
        lines.append(f"  {macro.name} = {macro.default}")
        lines += textwrap.wrap(
            macro.comment,
            width=78,
            initial_indent=indent,
            subsequent_indent=indent,
            break_long_words=False,
            break_on_hyphens=False,
        )
    return "\n".join([*lines, "", f"More: {DOCS_PAGE}."])


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
        parse(args.gin_file, bindings + flag_bindings(args), prog=parser.prog)
    except (ValueError, OSError) as error:  # gin: unknown names, files it cannot open
        raise ConfigError(str(error)) from None
    try:
        return gin.get_configurable(function)()
    except cli.UsageError as error:
        raise _without_gin_note(error) from None


_GIN_CALL_NOTE = "\n  In call to configurable"


def _without_gin_note(error: Exception) -> ConfigError:
    """A configurable's own error, without the line gin adds ("In call to configurable")."""
    return ConfigError(str(error).split(_GIN_CALL_NOTE)[0])


def bound_arguments(selector: str, names: Sequence[str]) -> dict[str, Any]:
    """What gin would call the configurable `selector` with, for `names` only: the bound
    values resolved (the others' references are not called), the rest their defaults. A
    tool reads another program's configuration so, without importing the program.
    KeyError if nothing configures `selector`."""
    configurable = gin.config._REGISTRY.get_match(selector)
    if configurable is None:
        raise KeyError(selector)
    bound = gin.get_bindings(selector, resolve_references=False)
    defaults = inspect.signature(configurable.wrapped).parameters
    values = {}
    for name in names:
        try:
            values[name] = copy.deepcopy(bound[name]) if name in bound else defaults[name].default
        except cli.UsageError as error:  # a configurable's own check
            raise _without_gin_note(error) from None
        except (ValueError, TypeError) as error:  # deepcopy is how gin resolves a reference
            raise ConfigError(f"{selector}.{name}: {error}") from None
        if values[name] is gin.REQUIRED:
            raise ConfigError(f"no value for {name}: bind it (gin/runs/train.gin's macros)")
    return values


def parse(gin_files: Sequence[str], bindings: Sequence[str] = (), prog: str = "") -> None:
    """Parse gin files (paths relative to the cwd or to `gin/`) then override bindings.

    gin takes a binding of a macro that nothing uses and ignores it, so a mistyped macro
    (`TRAIN_STEP=5`) would silently run the default: a binding of a bare macro name that no
    gin file defines and nothing refers to raises `ConfigError`, naming the closest known
    ones; an unknown configurable or parameter gets the closest names too."""
    gin.add_config_file_search_path(str(GIN_DIR))
    quiet = _QuietIncludeLookups()
    logging.getLogger().addFilter(quiet)
    try:
        for path in (str(gin_paths.resolve(f)) for f in gin_files):
            with _unreadable(path):
                gin.parse_config_file(path)
        defined = _bound_macros()
        for binding in bindings:
            with _unreadable(f"--gin.{binding}"):
                gin.parse_config(binding)
    except ValueError as error:
        hint = _closest_configurables(str(error))
        if not hint:
            raise
        raise ConfigError(f"{error}\n  {hint}") from None
    finally:
        logging.getLogger().removeFilter(quiet)
    _check_macro_bindings(bindings, defined | _referenced_macros(), prog)


@contextlib.contextmanager
def _unreadable(source: str) -> Iterator[None]:
    """gin's parser errors (Python's SyntaxError and TokenError) as a `ConfigError` naming
    the file and line, or the `--gin.` flag, it could not read."""
    try:
        yield
    except (SyntaxError, tokenize.TokenError) as error:
        if isinstance(error, SyntaxError) and error.filename not in (None, "<string>"):
            source = f"{error.filename}, line {error.lineno}"
        message = error.msg if isinstance(error, SyntaxError) else error.args[0]
        hint = ""
        if source.startswith("--gin."):
            hint = (
                ". A value is gin's (Python-like): quote a string inside the shell's quotes, "
                "as in --gin.MODEL_DIR=\"'/tmp/run'\""
            )
        raise ConfigError(f"{source}: {message.rstrip('.')}{hint}") from None


# gin keeps a macro NAME as the binding `NAME/gin.macro.value`: config key (NAME, 'gin.macro')
# in its `_CONFIG`, which has no public listing; a use `%NAME` is a reference to it.
_MACRO_SELECTOR = "gin.macro"
_BARE_MACRO_BINDING = re.compile(r"\s*([A-Za-z_]\w*)\s*=")


def _bound_macros() -> set[str]:
    return {scope for scope, selector in gin.config._CONFIG if selector == _MACRO_SELECTOR}


def _referenced_macros() -> set[str]:
    macro = gin.get_configurable(gin.config.macro)
    references = gin.config.iterate_references(gin.config._CONFIG, to=macro)
    return {reference.config_key[0] for reference in references}


def _check_macro_bindings(bindings: Sequence[str], known: set[str], prog: str) -> None:
    """A binding `NAME=VALUE` of a macro in no parsed file, used by nothing, is a typo."""
    errors = []
    for binding in bindings:
        match = _BARE_MACRO_BINDING.match(binding)
        if not match or match[1] in known:
            continue
        close = difflib.get_close_matches(match[1], sorted(known), n=3)
        guess = f"did you mean {', '.join(close)}?" if close else "no gin file defines or uses it"
        errors.append(f"unknown macro {match[1]} in --gin.{binding.strip()}; {guess}")
    if errors:
        listed = f" ({prog} --help lists the macros)" if prog else ""
        raise ConfigError("\n".join(errors) + listed)


_UNKNOWN_CONFIGURABLE = re.compile(r"No configurable matching (?:reference )?'@?([\w.]+)")
_UNKNOWN_PARAMETER = re.compile(r"Configurable '([\w.]+)' doesn't have a parameter named '(\w+)'")


def _closest_configurables(message: str) -> str:
    """'did you mean ...?' for gin's unknown-configurable and unknown-parameter errors,
    which name no alternative; "" for other errors or when nothing is close."""
    if match := _UNKNOWN_CONFIGURABLE.search(message):
        name, names = match[1], _configurable_names()
    elif match := _UNKNOWN_PARAMETER.search(message):
        name, names = match[2], {p: p for p in _parameter_names(match[1])}
        elsewhere = _configurables_with(name)  # a setting of another configurable
        if elsewhere:
            return f"did you mean {', '.join(elsewhere)}?"
    else:
        return ""
    close: list[str] = []  # the closest name of each configurable
    for candidate in difflib.get_close_matches(name, sorted(names), n=6):
        if names[candidate] not in {names[c] for c in close}:
            close.append(candidate)
    return f"did you mean {', '.join(close[:3])}?" if close else ""


def _configurable_names() -> dict[str, str]:
    """Every way to select a registered configurable, to its selector: each suffix of it
    (`dsbs_jax.train_script.train`: also `train_script.train`, `train`)."""
    names = {}
    for selector, _ in gin.config._REGISTRY.items():
        if not selector.startswith("gin."):  # gin's own: macro, constant, singleton
            parts = selector.split(".")
            names.update({".".join(parts[i:]): selector for i in range(len(parts))})
    return names


def _configurables_with(parameter: str) -> list[str]:
    """`Class.parameter` for each registered configurable that has `parameter` (a run's
    settings moved from `train` into `Data`, `Schedule`, ...: `train.pack` is `Data.pack`)."""
    return sorted(
        f"{selector.split('.')[-1]}.{parameter}"
        for selector, _ in gin.config._REGISTRY.items()
        if not selector.startswith("gin.") and parameter in _parameter_names(selector)
    )


def _parameter_names(selector: str) -> set[str]:
    configurable = gin.config._REGISTRY.get_match(selector)
    try:
        return set(inspect.signature(configurable.wrapped).parameters) if configurable else set()
    except (TypeError, ValueError):  # a callable without a signature to read
        return set()


class _QuietIncludeLookups(logging.Filter):
    """gin logs an error for each include it first looks for as a Python package path
    ('Path not found: runs/train.gin'), then finds it on the search path: not an error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Path not found:")
