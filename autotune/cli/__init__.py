"""`python -m autotune`: registers subcommands and turns known errors into one line + exit code."""

from __future__ import annotations

import argparse
import os
import sys

from .. import __version__
from ..cluster.launch import report_exit_code  # under a relaunch by autotune, the exit code reaches the caller
from ..errors import EXIT_BROKEN_PIPE, EXIT_FAILURE, EXIT_INTERRUPTED, AutotuneError
from .noise import silence_known_noise
from .output import machine_readable_stdout
from . import check as check_cmd
from . import emit as emit_cmd
from . import plan as plan_cmd
from . import probe as probe_cmd
from . import report as report_cmd

COMMANDS = [probe_cmd, plan_cmd, check_cmd, emit_cmd, report_cmd]

EPILOG = """\
exit codes: 0 ok, 2 bad input, 3 does not fit, 4 recipe made on other hardware (check), 130 interrupted,
141 stdout closed by its reader.
Set AUTOTUNE_DEBUG=1 to see full tracebacks.

Start with:  python -m autotune probe --help"""


class OneLineErrors(argparse.ArgumentParser):
    """A flag argparse rejects is one line, as every other bad input is: argparse's default
    printed the whole usage (some 40 lines for probe) above it. Subparsers inherit the class."""

    def error(self, message: str):
        self.exit(2, f"autotune: error: {message}; see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrors(
        prog="python -m autotune",
        description="Find the batch sizes and memory settings that fit your GPUs by running real training steps.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"autotune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = argv  # the command as given: `probe --nproc-per-node` reruns it under torchrun
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    debug = os.environ.get("AUTOTUNE_DEBUG", "") not in ("", "0")
    silence_known_noise()
    _remember_sigint()
    try:
        if getattr(args, "format", None) == "json" or (args.command == "emit" and getattr(args, "out", None) == "-"):
            with machine_readable_stdout():
                return args.run(args) or 0
        return args.run(args) or 0
    except AutotuneError as exc:
        if debug:
            raise
        print(f"autotune: error: {exc}", file=sys.stderr)
        return report_exit_code(exc.exit_code)
    except KeyboardInterrupt:
        print(_interrupted_line(args), file=sys.stderr)
        return report_exit_code(EXIT_INTERRUPTED)
    except Exception as exc:  # noqa: BLE001
        if isinstance(exc, BrokenPipeError) and _stdout_reader_gone():  # `| head` stopped reading; files were written before
            _detach_stdout()
            return report_exit_code(EXIT_BROKEN_PIPE)
        if _interrupted(exc) or _SIGINTS:  # a lazy import (transformers) turned the Ctrl-C into an ImportError
            print(_interrupted_line(args), file=sys.stderr)
            return report_exit_code(EXIT_INTERRUPTED)
        if debug:
            raise
        print(f"autotune: unexpected error: {type(exc).__name__}: {exc} (set AUTOTUNE_DEBUG=1 for the traceback)", file=sys.stderr)
        return report_exit_code(EXIT_FAILURE)


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reader has closed it (poll says POLLERR), not some other
    pipe (a trial worker's) that broke: that one is an error to report."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):
        return False


def _detach_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's flush at exit does not fail on the pipe again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    finally:
        os.close(devnull)


def _interrupted_line(args) -> str:
    """Nothing is written on Ctrl-C, except what a command keeps on purpose (`kept`: the probe's
    journal of the trials that finished, which a rerun resumes from)."""
    kept = getattr(args, "kept_on_interrupt", None)
    note = kept(args) if kept else None
    return f"autotune: interrupted; no recipe was written; {note}" if note else "autotune: interrupted; nothing was written"


def _interrupted(exc: BaseException) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


_SIGINTS: list = []


def _remember_sigint() -> None:
    """Ctrl-C raises KeyboardInterrupt as usual, and is remembered: transformers' lazy imports
    catch the interrupt and raise an import error of their own (no cause attached)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def on_sigint(signum, frame):
        _SIGINTS.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)
