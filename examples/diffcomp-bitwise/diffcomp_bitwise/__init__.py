"""An example diffcomp plug-in: bitwise ops as data, a gate ALU that computes them, and a program in Python.

Registered through the entry point ``bitwise`` in the ``diffcomp`` group (see
pyproject.toml); diffcomp discovers it on install, nothing is imported by name.
"""

from __future__ import annotations

import torch

import diffcomp

# Ops are data: a name, an arity and an integer function (on ints or int64 tensors).
OPS = (
    diffcomp.Op("xor", lambda a, b: a ^ b, doc="bitwise exclusive or"),
    diffcomp.Op("band", lambda a, b: a & b, doc="bitwise and"),
    diffcomp.Op("bor", lambda a, b: a | b, doc="bitwise or"),
)

# Probabilistic gates (paper eqs. 8-9), applied bit by bit.
GATES = {
    "xor": lambda a, b: a + b - 2 * a * b,
    "band": lambda a, b: a * b,
    "bor": lambda a, b: a + b - a * b,
}


class BitwiseALU(diffcomp.ALU):
    """Bitwise ops on independent bit probabilities: ``out = sum_i f_i * gate_i(a, b)``."""

    name = "bitwise"

    def __init__(self, bits: int = 8, ops=None) -> None:
        super().__init__(diffcomp.encoding("binary", bits=bits), ops)

    @classmethod
    def supported_ops(cls) -> tuple[str, ...]:
        return tuple(GATES)

    def compute(self, op: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        outs = torch.stack([GATES[name](a, b) for name in self.ops], dim=-2)  # (batch, ops, bits)
        return torch.einsum("bo,bon->bn", op, outs)


@diffcomp.hookimpl
def register_ops(register):
    for op in OPS:
        register(op)


@diffcomp.hookimpl
def register_alus(register):
    register("bitwise", BitwiseALU)


# A library program written in Python: diffcomp compiles it (diffcomp.compile) the first time it is used.
def digit_sum(n):
    """r0 = n  ->  r0 = the sum of n's decimal digits."""
    total = 0
    while n != 0:
        total += n % 10
        n //= 10
    return total


@diffcomp.hookimpl
def register_programs(register):
    register("digit_sum", digit_sum)
