"""Compiled Python against hand-written assembly: instructions and machine steps per built-in program.

Every built-in program is written both ways: ``plugins/programs/<name>.asm``
by hand, ``plugins/programs/python.py`` in Python and compiled
(``<name>_py``). Both run sharp (``diffcomp.execute``, the exact machine on
one-hot inputs) on the same random inputs (``python.sample``); the table gives
each one's instruction count, its mean and worst steps, and the ratio compiled /
hand-written (mean, and the worst over the inputs). Target: at most 1.25.

Steps are counted by the machine, not timed, so the figures do not depend on
the load of the computer that made them.

    python benchmarks/compiler.py                  # the table in benchmarks/results/compiler.md
    python benchmarks/compiler.py --inputs 5       # fewer inputs, a smoke test
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: `benchmarks` importable

import diffcomp  # noqa: E402
from diffcomp.plugins.programs.python import FUNCTIONS, SUFFIX, sample  # noqa: E402

TARGET = 1.25


def measure(name: str, inputs: int, seed: int) -> dict:
    rng = random.Random(seed)
    asm_steps, py_steps, ratios = [], [], []
    for _ in range(inputs):
        memory, registers = sample(name, rng)
        cells = max(len(memory), 1)
        asm = diffcomp.execute(name, memory=memory, registers=registers, cells=cells, on_limit="raise")
        py = diffcomp.execute(name + SUFFIX, memory=memory, registers=registers, cells=cells, on_limit="raise")
        asm_steps.append(asm.steps)
        py_steps.append(py.steps)
        ratios.append(py.steps / asm.steps)
    return {"name": name, "asm_instructions": len(diffcomp.program(name)),
            "py_instructions": len(diffcomp.program(name + SUFFIX)),
            "asm_steps": sum(asm_steps) / inputs, "py_steps": sum(py_steps) / inputs,
            "asm_max": max(asm_steps), "py_max": max(py_steps),
            "ratio": sum(py_steps) / sum(asm_steps), "worst": max(ratios)}


def table(rows: list[dict]) -> str:
    out = ["| program | instructions asm | instructions compiled | steps asm (mean / max) "
           "| steps compiled (mean / max) | compiled / asm (mean) | worst input | within 1.25x |",
           "|---|--:|--:|--:|--:|--:|--:|:-:|"]
    for r in rows:
        ok = "yes" if r["worst"] <= TARGET else "**no**"
        out.append(f"| {r['name']} | {r['asm_instructions']} | {r['py_instructions']} | "
                   f"{r['asm_steps']:.1f} / {r['asm_max']} | {r['py_steps']:.1f} / {r['py_max']} | "
                   f"{r['ratio']:.2f} | {r['worst']:.2f} | {ok} |")
    return "\n".join(out)


def calculator_by_code() -> str:
    """The calculator per op code: a jump table by hand, a chain of tests compiled."""
    out = ["| op code | " + " | ".join(str(k) for k in range(10)) + " |", "|---|" + "--:|" * 10]
    asm = [diffcomp.execute("calculator", registers=[k, 17, 5]).steps for k in range(10)]
    py = [diffcomp.execute("calculator" + SUFFIX, registers=[k, 17, 5]).steps for k in range(10)]
    out.append("| steps asm | " + " | ".join(map(str, asm)) + " |")
    out.append("| steps compiled | " + " | ".join(map(str, py)) + " |")
    return "\n".join(out)


RECURSIVE_FIBONACCI = """
def fibonacci(a, b, d):
    if d == 0:
        return a
    x = fibonacci(b, a + b, d - 1)   # not a tail call as written: a real CALL per level
    return x
"""


def recursion_cost() -> str:
    """The calling convention's cost: fibonacci with its recursion kept, against the hand-written recursion."""
    program = diffcomp.compile(RECURSIVE_FIBONACCI)
    out = ["| depth d | " + " | ".join(str(d) for d in range(0, 11, 2)) + " |", "|---|" + "--:|" * 6]
    asm, py = [], []
    for d in range(0, 11, 2):
        asm.append(diffcomp.execute("fibonacci", registers=[0, 1, d], cells=max(d, 1)).steps)
        result = diffcomp.execute(program, registers=[0, 1, d], cells=128)
        py.append(result.steps)
    out.append("| steps asm (8d + 3) | " + " | ".join(map(str, asm)) + " |")
    out.append("| steps compiled, recursion kept | " + " | ".join(map(str, py)) + " |")
    return f"{len(program)} instructions:\n\n" + "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=50, help="random inputs per program (default 50)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rows = [measure(f.__name__, args.inputs, args.seed + k) for k, f in enumerate(FUNCTIONS)]
    print(f"{args.inputs} random inputs per program (seed {args.seed}), the same inputs both ways\n")
    print(table(rows))
    print("\ncalculator per op code (r1 = 17, r2 = 5):\n")
    print(calculator_by_code())
    print("\nfibonacci with its recursion kept (a CALL per level; not a library program):", end=" ")
    print(recursion_cost())
    return 0


if __name__ == "__main__":
    sys.exit(main())
