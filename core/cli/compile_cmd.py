"""``diffcomp compile``: a Python file -> the machine's assembly, with its instruction count."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compile", help="compile a Python function to the machine's assembly",
                       description="Compile a function of FILE.py (the subset diffcomp.compile accepts) and print "
                                   "its assembly and counts. Errors name FILE:LINE:COLUMN and exit 2.")
    p.add_argument("file", metavar="FILE.py", help="a Python source file")
    p.add_argument("--function", metavar="NAME", default=None,
                   help="the function to compile (default: the file's only function, or the one no other calls)")
    p.add_argument("--asm", action="store_true", help="print only the assembly (a file diffcomp exec can run)")
    p.add_argument("--base", type=int, default=None, metavar="N",
                   help="fold constants exactly for numbers 0..N-1 (default: code for any base)")
    p.set_defaults(handler=run)


def load(path: str, function: str | None = None, base: int | None = None):
    """Compile ``function`` of the Python file at ``path`` (shared with ``diffcomp exec``)."""
    from ..compiler import compile as compile_python

    file = Path(path)
    if not file.is_file():
        raise ValueError(f"no such Python file: {path}")
    return compile_python(file.read_text(encoding="utf-8"), function, filename=str(file), base=base)


def run(args: argparse.Namespace) -> int:
    program = load(args.file, args.function, args.base)
    text = str(program)
    if args.asm:
        print(text, end="")
        return 0
    print(text, end="")
    calls = ", ".join(program.calls) or "none"
    print(f"; {program.name}: {len(program)} instructions, {program.registers} registers, "
          f"ops {', '.join(program.ops) or 'none'}; calls {calls}")
    return 0
