"""What the plain-flag binaries (`dsbs-infer`, `dsbs-annotate`) share about failing well:
a flag, file or name that cannot be used ends the run with one line and exit status 2."""

import sys
from collections.abc import Callable


class UsageError(Exception):
    """A flag, file or name that cannot be used: exit status 2."""


def exit_status(prog: str, run: Callable[[], int]) -> int:
    """`run()`'s exit status, or 2 with the message when it raises `UsageError`."""
    try:
        return run()
    except UsageError as error:
        print(f"{prog}: {error}", file=sys.stderr, flush=True)
        return 2
