"""What the binaries share about ending: a flag, file or name that cannot be used ends the
run with one line and exit status 2 (the plain-flag binaries, `dsbs-infer` and
`dsbs-annotate`, through `exit_status`); a run that a SIGTERM stopped before it finished
exits `PREEMPTED_EXIT`."""

import argparse
import pathlib
import signal
import sys
from collections.abc import Callable

# A run that SIGTERM stopped after saving its work, before it finished: sysexits'
# EX_TEMPFAIL ("try again"), so that a launcher or a sweep tells it from a finished run (0)
# and from a failed one, and runs the same command again to resume it.
PREEMPTED_EXIT = 75


class UsageError(Exception):
    """A flag, file or name that cannot be used: exit status 2."""


def local_path(text: str) -> pathlib.Path:
    """An argparse type for a flag whose files must be on this machine: a URL (`gs://...`)
    is refused by name, where pathlib would turn it into a local folder named `gs:`."""
    if "://" in text:
        raise argparse.ArgumentTypeError(f"{text}: a local path is needed here, not a URL")
    return pathlib.Path(text)


def say(prog: str, message: str) -> None:
    """A note for the user on stderr, as `prog: message`."""
    print(f"{prog}: {message}", file=sys.stderr, flush=True)


def exit_status(prog: str, run: Callable[[], int]) -> int:
    """`run()`'s exit status, or 2 with the message when it raises `UsageError`."""
    try:
        return run()
    except UsageError as error:
        print(f"{prog}: {error}", file=sys.stderr, flush=True)
        return 2


class OnSigterm:
    """Inside its `with` block, a SIGTERM calls `on_sigterm()` instead of ending the process:
    a run that is stopped gets to save its work first."""

    def __enter__(self):
        self.previous = signal.signal(signal.SIGTERM, lambda signum, frame: self.on_sigterm())
        return self

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGTERM, self.previous)

    def on_sigterm(self) -> None:
        raise NotImplementedError
