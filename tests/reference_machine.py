"""A plain Python interpreter of the machine's semantics, for differential tests.

It runs a linked :class:`diffcomp.machine.Image` on Python integers, one
instruction at a time, with its own arithmetic (not the ops the ALUs are built
from), so a disagreement with the tensor machine points at the machine.

Semantics (docs/architecture.md, "The instruction set"): numbers are ``0 .. modulus-1`` and
arithmetic wraps; address 0 is the halting address (control that reaches it
halts, and so does running off the last line); ``lr`` starts at 0; ``CALL t``
sets ``lr`` to the next address and jumps; ``RET`` jumps to ``lr``. A memory
address beyond the cells, or a jump beyond the program, is an error.
"""

from __future__ import annotations

import attrs
import pytest
import torch

import diffcomp
from diffcomp.alu import ALU


def _div(a: int, b: int) -> int:
    return a // b if b else 0


def _mod(a: int, b: int) -> int:
    return a % b if b else 0


ARITHMETIC = {
    "ZERO": lambda a, b: 0, "INC": lambda a, b: a + 1, "DEC": lambda a, b: a - 1,
    "ADD": lambda a, b: a + b, "SUB": lambda a, b: a - b, "MUL": lambda a, b: a * b,
    "DIV": _div, "MOD": _mod, "MIN": min, "MAX": max,
    "EQ": lambda a, b: int(a == b), "LT": lambda a, b: int(a < b),
}


class ReferenceError(Exception):
    """The program addressed memory or jumped outside the machine."""


@attrs.frozen
class Outcome:
    memory: list[int]
    registers: list[int]
    link: int
    halted: bool
    steps: int
    trace: list[int]  # the address of each instruction run


def run(image, memory: list[int], registers: list[int], *, modulus: int, cells: int | None = None,
        max_steps: int = 10_000) -> Outcome:
    """Run ``image`` from address ``image.entries[first program]`` until it halts or ``max_steps``."""
    cells = max(len(memory), cells or 0)
    mem = list(memory) + [0] * (cells - len(memory))
    n = image.registers
    regs = list(registers) + [0] * (n + 1 - len(registers)) + list(image.constants)  # r0.., lr = 0, constants
    pc = next(iter(image.entries.values()))
    steps, trace = 0, []
    while pc != 0 and steps < max_steps:
        line = image.lines[pc]
        a, b = regs[line.a], regs[line.b]
        trace.append(pc)
        steps += 1
        nxt = (pc + 1) % len(image.lines)
        op = line.mnemonic
        if op == "STOP":
            nxt = 0
        elif op == "MOV":
            regs[line.out] = a
        elif op == "READ":
            regs[line.out] = mem[_address(a, cells)]
        elif op == "WRITE":
            mem[_address(a, cells)] = b
        elif op == "JEZ":
            if a == 0:
                nxt = _target(b, image)
        elif op in ("JMP", "RET"):
            nxt = _target(a, image)
        elif op == "CALL":
            regs[line.out] = nxt
            nxt = _target(a, image)
        else:
            regs[line.out] = ARITHMETIC[op](a, b) % modulus
        pc = nxt
    return Outcome(mem, regs[:n], regs[n], pc == 0, steps, trace)


def _address(a: int, cells: int) -> int:
    if a >= cells:
        raise ReferenceError(f"memory address {a} is out of range ({cells} cells)")
    return a


def _target(t: int, image) -> int:
    if t >= len(image.lines):
        raise ReferenceError(f"jump to address {t} beyond the program ({len(image.lines)} addresses)")
    return t


# -- the dense-table ALU (paper eq. 7): the reference the machine is checked against with soft inputs --

class DenseTableALU(ALU):
    """``o_l = T_ijkl f_i u_j v_k`` (eq. 7) over the dense one-hot table built from ``Op.table``."""

    name = "dense"

    def __init__(self, base: int, ops=None) -> None:
        super().__init__(diffcomp.encoding("unit", base=base), ops)
        table = torch.stack([torch.nn.functional.one_hot(op.table(base), base) for op in self.op_defs])
        self.register_buffer("table", table.to(torch.float64))  # (ops, n, n, n)

    def compute(self, op, a, b):
        return torch.einsum("bi,ijkl,bj,bk->bl", op, self.table.to(a.dtype), a, b)


@pytest.fixture(autouse=True)
def one_thread():
    """The machine's tensors are small: one thread, so that two do not spin against other jobs on shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
