"""The ``circuit`` ALU: binary numbers through probabilistic circuits (paper §3.3, eqs. 8-9).

Each op has a circuit built only from the gates of :mod:`diffcomp.plugins.gates`;
the ALU's output is the op-probability mixture of the circuits' output bits,
``out = Σ_i f_i · circuit_i(a, b)``. Circuits need no table, so any width works
and the answer generalises to numbers no table could hold. To add an op, a
plug-in registers it (:class:`diffcomp.Op`) and subclasses :class:`CircuitALU`
with one more entry in :attr:`CircuitALU.circuits`::

    class XorCircuitALU(CircuitALU):
        circuits = {**CircuitALU.circuits, "xor": gates.xor}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import ClassVar

import torch
from torch import Tensor

import diffcomp
from diffcomp.alu import ALU

from . import gates

#: a circuit: two ``(..., bits)`` numbers in, one ``(..., bits)`` number out
Circuit = Callable[[Tensor, Tensor], Tensor]

_adder = gates.RippleCarryAdder()
_subtractor = gates.TwosComplementSubtractor()
_multiplier = gates.ShiftAddMultiplier()
_divider = gates.RestoringDivider()
_comparator = gates.Comparator()


def _lt(a: Tensor, b: Tensor) -> Tensor:
    return _comparator(a, b)[0]


BUILTIN_CIRCUITS: Mapping[str, Circuit] = MappingProxyType({
    "zero": lambda a, b: torch.zeros_like(a),
    "inc": lambda a, b: _adder(a, torch.zeros_like(a), 1.0)[0],
    "dec": lambda a, b: _adder(a, torch.ones_like(a))[0],  # a + (2**bits − 1)
    "add": lambda a, b: _adder(a, b)[0],
    "sub": lambda a, b: _subtractor(a, b)[0],
    "mul": lambda a, b: _multiplier(a, b),
    "div": lambda a, b: _divider(a, b)[0],
    "mod": lambda a, b: _divider(a, b)[1],
    "min": lambda a, b: gates.mux(_lt(a, b), a, b),
    "max": lambda a, b: gates.mux(_lt(a, b), b, a),
    "eq": lambda a, b: gates.as_number(_comparator(a, b)[1], a.shape[-1]),
    "lt": lambda a, b: gates.as_number(_lt(a, b), a.shape[-1]),
})


class CircuitALU(ALU):
    """An ALU over ``binary`` numbers of ``bits`` bits, one probabilistic circuit per op.

    ``forward(op, a, b)`` with ``op`` ``(batch, len(ops))`` and ``a``, ``b``
    ``(batch, bits)`` returns ``Σ_i op[:, i] · circuit_i(a, b)``, ``(batch, bits)``:
    exact on sharp (0/1) inputs, bit probabilities in [0, 1] on soft ones.
    Circuits whose op has zero weight in every row are skipped, unless ``op``
    requires grad (its gradient is each circuit's output).
    """

    name = "circuit"
    #: op name -> circuit; the ops this ALU implements, in this order. Subclass to add one.
    circuits: ClassVar[Mapping[str, Circuit]] = BUILTIN_CIRCUITS

    def __init__(self, bits: int, ops: Sequence[str] | None = None) -> None:
        if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 64:
            raise ValueError(f"{self.name} ALU: bits must be a positive integer from 1 to 64 "
                             f"(the width of the binary encoding), got {bits!r}")
        super().__init__(diffcomp.encoding("binary", bits=bits), ops)
        self.bits = bits

    @classmethod
    def supported_ops(cls) -> tuple[str, ...]:
        return tuple(cls.circuits)

    def compute(self, op: Tensor, a: Tensor, b: Tensor) -> Tensor:
        weights = op.to(a.dtype)  # (batch, ops)
        if op.requires_grad:
            active = list(range(len(self.ops)))
        else:
            active = weights.reshape(-1, len(self.ops)).ne(0).any(0).nonzero().flatten().tolist()
        if not active:
            return torch.zeros_like(a)
        outs = torch.stack([self.circuits[self.ops[i]](a, b) for i in active], dim=-2)  # (batch, active, bits)
        return torch.einsum("...o,...ob->...b", weights[..., active], outs)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, ops={self.ops}"


@diffcomp.hookimpl
def register_alus(register):
    register("circuit", CircuitALU)
