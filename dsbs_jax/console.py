"""What a binary prints: its own lines, not the libraries' logs.

TensorFlow and XLA log from C++ (CUDA probes on machines with no GPU, oneDNN notices,
dataset-cache hints). The package's `__init__` sets their log levels through the
environment before anything loads them; what they print as they load, before those levels
apply (absl's "before absl::InitializeLog()" lines), the installed commands drop by
importing their binary's module with stderr closed (`program`). Each binary then calls
`setup`, which prints our own warnings as `dsbs-train: ...` and keeps the libraries'
Python warnings and progress bars out of the way. `--verbose` (or DSBS_VERBOSE=1) shows
all of it.
"""

import argparse
import contextlib
import functools
import importlib
import logging
import os
import sys
import types
import warnings
from collections.abc import Iterator, Sequence

VERBOSE_FLAG = "--verbose"
VERBOSE_ENV = "DSBS_VERBOSE"

# Read by the C++ libraries as they load; a value the user set is kept.
_QUIET_ENVIRONMENT = {
    "TF_CPP_MIN_LOG_LEVEL": "3",  # TensorFlow's and XLA's C++ logs
    "GRPC_VERBOSITY": "ERROR",  # jax.distributed's gRPC
    "AUTOGRAPH_VERBOSITY": "0",  # tf.data's "AutoGraph could not transform" notes
}
# Python loggers of libraries that report their own internals as warnings (SeqIO's
# "sequence lengths are longer than necessary", Orbax's and TFDS's notes, jax's backends).
_LIBRARY_LOGGERS = ("absl", "tensorflow", "jax", "orbax", "seqio", "tensorflow_datasets")


_shown = True  # whether the libraries' own output is shown; `setup` decides


def verbose(argv: Sequence[str] | None = None) -> bool:
    """Whether the user asked for the libraries' logs: `--verbose` or DSBS_VERBOSE=1."""
    argv = sys.argv[1:] if argv is None else argv
    return os.environ.get(VERBOSE_ENV, "0") not in ("", "0") or VERBOSE_FLAG in argv


def libraries_shown() -> bool:
    """Whether to let a library print what it prints (True outside the binaries)."""
    return _shown


def quiet_native_logs(override: bool = False) -> None:
    """Set the C++ libraries' log levels before they load, unless verbose: keeping a value
    already set, or, with `override` (the installed commands), replacing it (a parent
    process that imported jax passes on jax's own default, which shows warnings)."""
    if not verbose():
        for name, value in _QUIET_ENVIRONMENT.items():
            os.environ[name] = value if override else os.environ.get(name, value)


def setup(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> None:
    """Give a binary's parser `--verbose`; print our warnings as `prog: message` on stderr;
    unless verbose, keep the libraries' Python logs below errors, their warnings and
    TFDS's progress bars out of the output."""
    parser.add_argument(
        VERBOSE_FLAG,
        action="store_true",
        help="also show TensorFlow's, XLA's and the libraries' own logs (or DSBS_VERBOSE=1)",
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{parser.prog}: %(message)s"))
    ours = logging.getLogger("dsbs_jax")
    ours.handlers = [handler]
    ours.setLevel(logging.WARNING)
    global _shown
    _shown = verbose(argv)
    if _shown:
        return
    for name in _LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"(?!dsbs_jax|tasks)")
    if "tensorflow_datasets" in sys.modules:  # imported by the binaries that build datasets
        sys.modules["tensorflow_datasets"].disable_progress_bar()


@contextlib.contextmanager
def _stderr_closed() -> Iterator[None]:
    """File descriptor 2 on /dev/null: C++ libraries write there directly."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def quietly() -> contextlib.AbstractContextManager:
    """A block whose native load-time lines are dropped (unless verbose): one that may load
    TensorFlow or XLA, as parsing a gin file that imports another program's module does."""
    return contextlib.nullcontext() if verbose() else _stderr_closed()


def quiet_import(name: str) -> types.ModuleType:
    """Import a module that loads TensorFlow or XLA without their load-time lines (unless
    verbose). An import that fails raises after stderr is back, so its traceback shows."""
    with quietly():
        module = importlib.import_module(name)
        if "tensorflow_datasets" in sys.modules:  # it loads TensorFlow at its first dataset
            importlib.import_module("tensorflow")
    return module


def program(module: str) -> int:
    """An installed command: import `dsbs_jax.programs.<module>` quietly, run its `main`."""
    quiet_native_logs(override=True)
    return quiet_import(f"dsbs_jax.programs.{module}").main()


# The installed commands (pyproject's [project.scripts]); `python -m dsbs_jax.train` runs
# the same `main` with the libraries' load-time lines shown.
annotate, convert, evaluate, fit, infer, prepare, report, train = (
    functools.partial(program, module)
    for module in ("annotate", "convert", "eval", "fit", "infer", "prepare", "report", "train")
)
