"""``diffcomp exec``: run an assembly file or a library program sharp, on given registers and memory."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("exec", help="run an assembly file, a Python file or a library program on given registers "
                                    "and memory",
                       description="Run PROGRAM (an assembly file, a Python file compiled by diffcomp compile, or "
                                   "the name of a registered library program) "
                                   "sharp, on the given memory and registers, and print where it ended. "
                                   "Exits 1 if the program does not halt within --max-steps.")
    p.add_argument("program", metavar="PROGRAM.asm|PROGRAM.py|NAME",
                   help="an assembly file, a Python file, or a registered program's name")
    p.add_argument("--function", metavar="NAME", default=None,
                   help="for a .py file: the function to run (default: its only one, or the one no other calls)")
    p.add_argument("--memory", type=_ints, default=[], metavar="3,1,2,0", help="initial memory cells, from cell 0")
    p.add_argument("--registers", type=_ints, default=[], metavar="0,1,5", help="initial registers r0, r1, ...")
    p.add_argument("--cells", type=_count, default=None, metavar="N",
                   help="memory cells (default: as many as --memory gives)")
    p.add_argument("--base", type=_count, default=128, metavar="N", help="numbers are 0..N-1 (default 128)")
    p.add_argument("--alu", default="lookup", metavar="NAME", help="a registered ALU (default lookup)")
    p.add_argument("--max-steps", type=_count, default=10_000, metavar="N", help="step limit (default 10000)")
    p.add_argument("--trace", action="store_true", help="print the counter, instruction and registers each step")
    p.add_argument("--plot", type=Path, default=None, metavar="FILE.png",
                   help="draw the run: the counter over the program's lines, memory, halting mass")
    p.add_argument("--json", action="store_true",
                   help='print {"memory": [...], "registers": [...], "halted": true, "steps": N}')
    p.set_defaults(handler=run)


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.replace(" ", "").split(",") if x != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 3,1,2,0, got {text!r}") from None


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    from ..errors import AssemblyError
    from ..machine import HaltingWarning, execute
    from ..machine.assembler import assemble
    from ..recipe import read_text

    if args.cells is not None and args.cells < len(args.memory):
        raise ValueError(f"--cells {args.cells} is fewer than the {len(args.memory)} values --memory gives; "
                         f"leave --cells out, or give at least {len(args.memory)}")
    program = args.program
    if not program.strip():
        raise ValueError("no program given: PROGRAM is an assembly file or a registered program's name")
    path = Path(program)
    if path.is_dir():
        raise ValueError(f"{program} is a folder; PROGRAM is an assembly file or a registered program's name")
    if program.endswith(".py"):
        from .compile_cmd import load

        program = load(program, args.function)  # a CompileError says FILE:LINE:COLUMN (exit 2)
    elif program.endswith(".asm") or path.is_file():
        if not path.is_file():
            raise ValueError(f"no such assembly file: {program}")
        try:
            program = assemble(read_text(path, "assembly"), name=path.stem, registers=max(16, len(args.registers)))
        except AssemblyError as exc:
            raise AssemblyError(f"{path}: {exc}") from None  # the file, then 'line N: what was expected'

    out = sys.stderr if args.json else sys.stdout  # --json keeps stdout to the one JSON object
    if args.trace:
        print(f"{'step':>6}  {'counter':<20} {'instruction':<28} registers", file=out)

    def show(step) -> None:
        where = f"{step.program}:{step.address}" if step.program else str(step.address)
        registers = " ".join(f"r{i}={v}" for i, v in enumerate(step.registers))
        print(f"{step.step:>6}  {where:<20} {step.instruction:<28} {registers} lr={step.link}", file=out)

    recorder = None
    if args.plot is not None:
        from ..machine.plot import Recorder

        if args.plot.suffix.lower() != ".png":
            raise ValueError(f"--plot {args.plot}: the plot is written as PNG; name a .png file")
        recorder = Recorder()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", HaltingWarning)
        result = execute(program, memory=args.memory, registers=args.registers, cells=args.cells, base=args.base,
                         alu=args.alu, max_steps=args.max_steps, trace=show if args.trace else None,
                         recorder=recorder)
    for w in caught:  # the others (a plug-in that failed to load, first looked up in the run) as they came
        if not issubclass(w.category, HaltingWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
    if recorder is not None:
        from ..machine.plot import plot_run

        name = program.name if hasattr(program, "name") else str(program)
        plot_run(recorder.record(), args.plot, title=f"{name} on memory {args.memory}")
        print(f"diffcomp exec: the run is drawn in {args.plot}", file=sys.stderr)
    if args.json:
        print(json.dumps(result.as_dict()))
    else:
        state = "halted" if result.halted else "did NOT halt"
        print(f"{state} after {result.steps} steps")
        print("registers: " + " ".join(f"r{i}={v}" for i, v in enumerate(result.registers)))
        print(f"memory:    {result.memory}")
    if not result.halted:
        message = next((str(w.message) for w in caught if issubclass(w.category, HaltingWarning)),
                       f"did not halt within {args.max_steps} steps")
        print(f"diffcomp exec: {message}", file=sys.stderr)
        return 1
    return 0
