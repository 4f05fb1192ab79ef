"""Error reporting of the stages' command lines: a failed command prints one line naming what went wrong, and the
traceback only when asked for (`--verbose` anywhere on the command line, or SPATIALSCORE_TRACEBACK=1).

Usage errors (argparse's and LightningCLI's) keep their own usage message and exit status 2; any other exception
becomes `<prog>: error: <message>` on stderr and exit status 1; Ctrl-C exits 130 with one line.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

VERBOSE_FLAG = "--verbose"
TRACEBACK_ENV = "SPATIALSCORE_TRACEBACK"


def wants_traceback(argv: Sequence[str]) -> tuple[list[str], bool]:
    """argv without `--verbose`, and whether a traceback was asked for (the flag or SPATIALSCORE_TRACEBACK set to
    anything but "", "0" or "false")."""
    rest = [word for word in argv if word != VERBOSE_FLAG]
    from_env = os.environ.get(TRACEBACK_ENV, "").strip().lower() not in ("", "0", "false")
    return rest, len(rest) != len(argv) or from_env


def error_message(error: BaseException) -> str:
    """The message of `error` on one line. A wrapper that only repeats its cause (jsonargparse reports a class that
    failed to build as "Invalid subclass spec ...: <cause>") gives way to the cause; an empty message to the type."""
    cause = error.__cause__
    while cause is not None and str(cause) and str(cause) in str(error):
        error, cause = cause, cause.__cause__
    text = " ".join(str(error).split())
    if not text or isinstance(error, KeyError):
        text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return text


def run_command(prog: str, command: Callable[[list[str]], int | None], argv: Sequence[str]) -> int:
    """Run `command(argv)` (argv without `--verbose`) and turn an exception into one line on stderr; the exit status.

    With a traceback asked for, exceptions propagate unchanged."""
    argv, verbose = wants_traceback(argv)
    try:
        return command(argv) or 0
    except KeyboardInterrupt:
        if verbose:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if verbose:
            raise
        print(f"{prog}: error: {error_message(error)} ({VERBOSE_FLAG} shows the traceback)", file=sys.stderr)
        return 1
