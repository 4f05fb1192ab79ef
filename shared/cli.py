"""Error reporting of the stages' command lines: a failed command prints one line naming what went wrong, and the
traceback only when asked for (`--verbose` anywhere on the command line, or SPATIALSCORE_TRACEBACK=1).

Usage errors (argparse's and LightningCLI's) keep their own usage message and exit status 2; any other exception
becomes `<prog>: error: <message>` on stderr (`error_message`: a likely bug keeps its type name) and exit status 1;
Ctrl-C exits 130 with one line. Every parser of the two command lines carries `TRACEBACK_HELP` as its `--help`
epilog (`build_lightning_cli` gives it to LightningCLI's).
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

VERBOSE_FLAG = "--verbose"
TRACEBACK_ENV = "SPATIALSCORE_TRACEBACK"
OWN_PACKAGES = ("benchmarks", "data_synthesis", "experiments", "reward_model", "rl_policy", "shared")
TRACEBACK_HELP = (
    f"A failure prints one line (exit status 1); {VERBOSE_FLAG} anywhere on the command line, or {TRACEBACK_ENV}=1 "
    "in the environment, prints the full traceback instead."
)


def wants_traceback(argv: Sequence[str]) -> tuple[list[str], bool]:
    """argv without `--verbose`, and whether a traceback was asked for (the flag or SPATIALSCORE_TRACEBACK set to
    anything but "", "0" or "false")."""
    rest = [word for word in argv if word != VERBOSE_FLAG]
    from_env = os.environ.get(TRACEBACK_ENV, "").strip().lower() not in ("", "0", "false")
    return rest, len(rest) != len(argv) or from_env


def lightning_help_kwargs(subcommands: Iterable[str]) -> dict[str, Any]:
    """LightningCLI's `parser_kwargs` that put `TRACEBACK_HELP` under the `--help` of the main parser and of each of
    `subcommands` (LightningCLI gives the main parser's keys to the main parser only)."""
    return {"epilog": TRACEBACK_HELP} | {name: {"epilog": TRACEBACK_HELP} for name in subcommands}


def build_lightning_cli(cli_class: type, model_class: type, datamodule_class: type, args: Any, *, run: bool) -> Any:
    """`cli_class` (a LightningCLI subclass) over a module and a data module as every stage builds it: `args` are the
    command's words or a config dict, seed 0 by default, the saved config overwritten on a rerun, `TRACEBACK_HELP`
    under every `--help`, and without LightningCLI's warning that sys.argv (the command's own words) is not what it
    parses, which would otherwise precede every command's output and its one-line error. Also silenced: Lightning's
    advice to save a manually optimised module's state before its optimizer step (GRPO's checkpoints are written after
    a whole step, weights and step count together, which is what resuming needs)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
        return cli_class(
            model_class,
            datamodule_class,
            args=args,
            run=run,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            parser_kwargs=lightning_help_kwargs(cli_class.subcommands()),
        )


def error_message(error: BaseException) -> str:
    """The message of `error` on one line. A wrapper that only repeats its cause (jsonargparse reports a class that
    failed to build as "Invalid subclass spec ...: <cause>") gives way to the cause. The errors a user causes are
    raised as ValueError, OSError (FileNotFoundError, ...) or one of this repository's exceptions and read as their
    message alone; any other (an AssertionError, AttributeError, ... : most likely a bug) keeps its type name in
    front, so it cannot pass for a user's mistake."""
    cause = error.__cause__
    while cause is not None and str(cause) and str(cause) in str(error):
        error, cause = cause, cause.__cause__
    text = " ".join(str(error).split())
    own = type(error).__module__.split(".")[0] in OWN_PACKAGES
    if text and (isinstance(error, (ValueError, OSError)) or own):
        return text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


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
