"""The ``diffcomp`` command line.

Each sub-command lives in its own module of this package, with
``add_parser(subparsers)`` registering it and setting ``handler``. Exit codes:
0 on success, 2 on a usage, recipe or input error (one message, no
traceback), 1 on a failure during a run (or memory that cannot be had), 130
when interrupted, 141 when the reader of the output went away (``| head``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

from ..errors import DiffcompError

#: sub-command modules, in the order ``--help`` lists them
COMMANDS = ("recipe_cmds", "ask_cmd", "exec_cmd", "compile_cmd", "plugins_cmd")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffcomp",
        description="Language models that carry a differentiable computer.")
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"diffcomp {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f".{name}", __name__).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # positionals after an option (argparse stops collecting them): the command may take them
        target = getattr(args, "more_positionals", None)
        if target is None or any(e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        getattr(args, target).extend(extra)
    try:
        with clean_warnings(args.command):
            return int(args.handler(args) or 0)
    except BrokenPipeError:  # the reader went away (`diffcomp exec ... --trace | head`): stop quietly
        _silence_stdout()
        return 141  # as a process killed by SIGPIPE
    except DiffcompError as exc:
        print(f"diffcomp {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, LookupError) as exc:  # bad input found below the CLI layer
        print(f"diffcomp {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as exc:  # an allocation the machine cannot make: say so, without a traceback
        if not isinstance(exc, MemoryError) and "allocate" not in str(exc):
            raise
        detail = str(exc).splitlines()[0] if str(exc) else "MemoryError"
        print(f"diffcomp {args.command}: error: out of memory: {detail}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("diffcomp: interrupted", file=sys.stderr)
        return 130


@contextlib.contextmanager
def clean_warnings(command: str) -> Iterator[None]:
    """diffcomp's own warnings (a plug-in that failed to load, a swap that changes answers) as one clean line.

    ``diffcomp <command>: warning: <message>`` on stderr, the same for every
    command, rather than Python's ``file:line: Category: message`` and the
    source line. Warnings from other libraries keep Python's format.
    """
    package = str(Path(__file__).resolve().parents[1])
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if str(Path(filename).resolve()).startswith(package):
            print(f"diffcomp {command}: warning: {message}", file=file or sys.stderr)
        else:
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so flushing it at exit raises no second BrokenPipeError."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


if __name__ == "__main__":  # python -m diffcomp.cli
    sys.exit(main())
