"""The arithmetic-unit interface (paper §3.3, eqs. 7-10).

An :class:`ALU` maps an op distribution and two encoded operands to the
encoded result, as a probability mixture over ops and operand values: with
one-hot inputs it is exactly the encoded answer. Concrete ALUs (the ``lookup``
table, the ``circuit``) are plug-ins; op meanings are data
(:class:`diffcomp.ops.Op`).

The contract (docs/architecture.md, "Arithmetic units") is a
``torch.nn.Module`` with ``ops``, ``encoding`` and ``forward(op, a, b)``. A
subclass of :class:`ALU` provides the result in one of two ways:

- ``compute(op, a, b)``: the base class's ``forward`` checks the inputs'
  shapes and dtypes, then calls it (the built-in ALUs do this);
- ``forward(op, a, b)`` itself, as any ``torch.nn.Module`` does (it may call
  :meth:`ALU.check_inputs` first).

A subclass that provides neither is a ``TypeError`` when it is made.
"""

from __future__ import annotations

import sys
import types

from collections.abc import Callable, Iterable, Sequence
from typing import ClassVar

import torch
from torch import nn

from .encodings import NumberEncoding
from .errors import did_you_mean
from .ops import Op
from .registry import get_registry

#: an ALU's pullback: the gradient of its result -> the gradients of ``(op, a, b)`` (see :meth:`ALU.vjp`)
Pullback = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


class ALU(nn.Module):
    """``forward(op, a, b) -> out``: the expected encoded result.

    ``op`` is ``(batch, len(self.ops))`` probabilities over :attr:`ops`; ``a``
    and ``b`` are ``(batch, *encoding.shape)``; ``out`` has the shape of ``a``.
    Subclasses implement :meth:`compute` (inputs already checked) or override
    :meth:`forward`, and may restrict which ops they implement with
    :meth:`supported_ops`.
    """

    #: the name this ALU is registered under, for messages
    name: ClassVar[str] = "alu"
    #: on one-hot inputs the result is exactly the encoded op result (``Op.apply``), so the machine may run
    #: decided inputs on integers (``diffcomp.machine.exact``); an ALU that is not (e.g. learned) sets False
    exact: ClassVar[bool] = True

    def __init__(self, encoding: NumberEncoding, ops: Iterable[str] | None = None) -> None:
        cls = type(self)
        if cls.forward is ALU.forward and cls.compute is ALU.compute:
            raise TypeError(f"{cls.__module__}.{cls.__qualname__} subclasses diffcomp.ALU but implements neither "
                            "forward(op, a, b) nor compute(op, a, b); implement one of them (compute gets inputs "
                            "the base class has already checked)")
        if not isinstance(encoding, NumberEncoding):
            raise TypeError(f"{cls.__qualname__}: encoding must be a diffcomp.NumberEncoding such as "
                            f"diffcomp.encoding('unit', base=16), got {type(encoding).__name__}")
        super().__init__()
        self.encoding = encoding
        self.ops: tuple[str, ...] = resolve_ops(ops, self.supported_ops(), self.name)
        self.op_defs: tuple[Op, ...] = tuple(get_registry().get("op", o) for o in self.ops)

    @classmethod
    def supported_ops(cls) -> tuple[str, ...]:
        """The ops this ALU can implement; by default every registered op."""
        return get_registry().names("op")

    def forward(self, op: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The expected encoded result: :meth:`check_inputs`, then :meth:`compute`."""
        self.check_inputs(op, a, b)
        return self.compute(op, a, b)

    def compute(self, op: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The result for checked inputs: ``(batch, *encoding.shape)``; for subclasses that do not override forward."""
        raise NotImplementedError(f"{type(self).__qualname__} implements forward(op, a, b), not compute; call the ALU "
                                  "itself: alu(op, a, b)")

    def vjp(self, op: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, Pullback]:
        """``forward(op, a, b)`` and its pullback: ``grad -> (grad_op, grad_a, grad_b)`` (a vector-Jacobian product).

        What the machine's fused step (:mod:`diffcomp.machine.fused`) calls
        inside its own backward. By default autograd differentiates
        :meth:`forward` (the graph is kept until the pullback runs); an ALU
        with hand-written adjoints overrides this to skip autograd's
        per-operation cost. Inputs are checked tensors without a graph.
        """
        leaves = [x.detach().requires_grad_() for x in (op, a, b)]
        with torch.enable_grad():
            out = self(*leaves)

        def pullback(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            if not out.requires_grad:  # an ALU whose result does not depend on its inputs
                return tuple(torch.zeros_like(x) for x in leaves)
            found = torch.autograd.grad(out, leaves, grad, allow_unused=True, retain_graph=True)  # (backward may run twice)
            return tuple(torch.zeros_like(x) if g is None else g for x, g in zip(leaves, found))

        return out.detach(), pullback

    def check_inputs(self, op: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
        """``ValueError`` naming what was expected, for a malformed call."""
        a = self.encoding.check(a, what=f"{self.name} ALU operand a")
        b = self.encoding.check(b, what=f"{self.name} ALU operand b")
        if not isinstance(op, torch.Tensor) or not op.dtype.is_floating_point:
            raise ValueError(f"{self.name} ALU: op must be a floating-point tensor of probabilities over "
                             f"{self.ops}, got {type(op).__name__ if not isinstance(op, torch.Tensor) else op.dtype}")
        batch = a.shape[: a.dim() - len(self.encoding.shape)]
        if op.shape != (*batch, len(self.ops)):
            raise ValueError(f"{self.name} ALU: op has shape {tuple(op.shape)}, expected "
                             f"{(*batch, len(self.ops))} (batch, one probability per op in {self.ops})")
        if b.shape != a.shape:
            raise ValueError(f"{self.name} ALU: operands have shapes {tuple(a.shape)} and {tuple(b.shape)}; "
                             "they must match")

    def op_distribution(self, names: str | Sequence[str], dtype: torch.dtype = torch.float32,
                        device: torch.device | str | None = None) -> torch.Tensor:
        """One-hot op rows for op names: ``op_distribution(["add", "mul"])`` is ``(2, len(ops))``."""
        single = isinstance(names, str)
        names = [names] if single else list(names)
        for n in names:
            if n not in self.ops:
                raise ValueError(f"{self.name} ALU has no op {n!r}{did_you_mean(n, self.ops)}; its ops: {self.ops}")
        index = torch.tensor([self.ops.index(n) for n in names], device=device)
        out = nn.functional.one_hot(index, len(self.ops)).to(dtype)
        return out[0] if single else out

    def extra_repr(self) -> str:
        return f"encoding={self.encoding}, ops={self.ops}"


def resolve_ops(ops: Iterable[str] | None, supported: Sequence[str], alu_name: str) -> tuple[str, ...]:
    """The ops asked for, in the order asked, checked against what the ALU supports."""
    if ops is None:
        return tuple(supported)
    if isinstance(ops, str):
        raise ValueError(f"{alu_name} ALU: ops must be a sequence of op names such as ('add', 'mul'), "
                         f"got the string {ops!r}")
    ops = tuple(ops)
    if not ops:
        raise ValueError(f"{alu_name} ALU: ops must name at least one op; supported: {', '.join(supported)}")
    known = get_registry().names("op")
    for o in ops:
        if o not in known:
            raise ValueError(f"{alu_name} ALU: unknown op {o!r}{did_you_mean(o, known)}; "
                             f"registered ops: {', '.join(known)}")
        if o not in supported:
            raise ValueError(f"{alu_name} ALU does not implement op {o!r}; it implements: {', '.join(supported)}")
    if len(set(ops)) != len(ops):
        raise ValueError(f"{alu_name} ALU: ops {ops} name an op twice")
    return ops


def alu(name: str, **options) -> ALU:
    """A registered ALU: ``alu("lookup", base=128, ops=("add", "mul"))``, ``alu("circuit", bits=32)``."""
    from .registry import build

    return build("alu", name, options)


class _CallableModule(types.ModuleType):
    """``diffcomp.alu`` is this module and the function :func:`alu`: calling the module calls the function."""

    def __call__(self, *args, **options):
        return alu(*args, **options)


sys.modules[__name__].__class__ = _CallableModule
