"""The ``diffcomp`` command line.

Each sub-command lives in its own module of this package, with
``add_parser(subparsers)`` registering it and setting ``handler``. Exit codes:
0 on success, 2 on a usage, recipe or input error (one message, no
traceback), 1 on a failure during a run.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import DiffcompError

#: sub-command modules, in the order ``--help`` lists them
COMMANDS = ("recipe_cmds", "exec_cmd", "compile_cmd", "plugins_cmd")


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
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except DiffcompError as exc:
        print(f"diffcomp {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, LookupError) as exc:  # bad input found below the CLI layer
        print(f"diffcomp {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("diffcomp: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # python -m diffcomp.cli
    sys.exit(main())
