"""The swap (paper §4.1): train with an easy ALU, then run a general one in its place.

A lookup table over unit vectors is easy to train through but does not scale; a
binary circuit scales to any width but is harder to train through. Because
both are ALUs (:class:`diffcomp.ALU`) over the same op names, a trained model can
keep its encoding and run the other ALU through the converters of appendix B::

    table = diffcomp.alu("lookup", base=256)
    circuit = diffcomp.swap(table, "circuit", bits=8)     # still speaks unit(base=256)
    wide = diffcomp.swap(table, "circuit", bits=32,       # speaks binary(bits=32):
                         encoding=diffcomp.encoding("binary", bits=32))  # evaluate on bigger numbers

On one-hot inputs the swap changes no answer when the new ALU's range is a
multiple of the old one's (e.g. base ``2**b`` and ``bits >= b``).
"""

from __future__ import annotations

import sys
import types

import warnings
from typing import Any

import torch

from .alu import ALU, alu as build_alu
from .encodings import NumberEncoding, convert
from .errors import did_you_mean
from .registry import get_registry


class ConvertingALU(ALU):
    """An ALU that speaks ``encoding`` outside while ``inner`` computes in its own.

    Operands are converted into ``inner.encoding`` with :func:`diffcomp.convert`,
    ``inner`` computes, and the result is converted back: the same ``ops``,
    ``forward(op, a, b)`` and shapes as any ALU over ``encoding``. Conversions
    keep probabilities and gradients (appendix B), so the adapter is exact on
    one-hot inputs and differentiable everywhere.
    """

    name = "converting"

    def __init__(self, inner: ALU, encoding: NumberEncoding) -> None:
        if not isinstance(inner, ALU):
            raise ValueError(f"ConvertingALU: inner must be a diffcomp.ALU, got {type(inner).__name__}")
        if not isinstance(encoding, NumberEncoding):
            raise ValueError("ConvertingALU: encoding must be a diffcomp.NumberEncoding such as "
                             f"diffcomp.encoding('unit', base=256), got {type(encoding).__name__}")
        _check_convertible(encoding, inner.encoding)
        super().__init__(encoding, inner.ops)
        self.inner = inner

    def compute(self, op: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        inner = self.inner.encoding
        a_in, b_in = convert(torch.stack([a, b]), self.encoding, inner)  # both operands in one conversion
        return convert(self.inner(op, a_in, b_in), inner, self.encoding)

    def extra_repr(self) -> str:
        return f"encoding={self.encoding}"


def swap(alu: ALU, name: str, *, encoding: NumberEncoding | None = None, **options: Any) -> ALU:
    """Replace ``alu`` by the registered ALU ``name`` with the same ops, in the same order.

    Builds ``diffcomp.alu(name, ops=alu.ops, **options)``. The result speaks
    ``encoding`` (by default ``alu.encoding``, so the model around it is
    unchanged): the new ALU itself when its encoding is that one, else a
    :class:`ConvertingALU` around it. A new ALU lacking one of ``alu.ops`` is a
    ``ValueError`` naming the missing ops and the ops it has; a new range that
    cannot reproduce the old one's answers is a ``UserWarning``.
    """
    if not isinstance(alu, ALU):
        raise ValueError(f"swap: expected a diffcomp.ALU to replace, got {type(alu).__name__}")
    if "ops" in options:
        raise ValueError(f"swap keeps the ops of the ALU it replaces ({', '.join(alu.ops)}); do not pass ops=")
    outer = alu.encoding if encoding is None else encoding
    if not isinstance(outer, NumberEncoding):
        raise ValueError("swap: encoding must be a diffcomp.NumberEncoding such as "
                         f"diffcomp.encoding('binary', bits=32), got {type(outer).__name__}")
    _check_has_ops(alu.ops, name)
    new = build_alu(name, ops=alu.ops, **options)
    if new.encoding == outer:
        return new
    _check_convertible(outer, new.encoding)
    if new.encoding.modulus % outer.modulus:
        warnings.warn(f"swap: the new {name} ALU holds {new.encoding.modulus} values ({new.encoding}), not a "
                      f"multiple of the {outer.modulus} of {outer}; its answers, taken mod {outer.modulus}, "
                      f"will differ from arithmetic mod {outer.modulus} where results wrap or operands do not fit",
                      UserWarning, stacklevel=2)
    return ConvertingALU(new, outer)


def _check_has_ops(ops: tuple[str, ...], name: str) -> None:
    """A swap-specific error when the target ALU's factory declares which ops it supports."""
    factory = get_registry().get("alu", name)
    supported = getattr(factory, "supported_ops", None)
    if not callable(supported):  # a plain factory: building it reports unsupported ops
        return
    has = tuple(supported())
    missing = [o for o in ops if o not in has]
    if missing:
        hint = did_you_mean(missing[0], has) if len(missing) == 1 else ""
        raise ValueError(f"cannot swap in the {name} ALU: it lacks the op(s) {', '.join(missing)}{hint} "
                         f"of the ALU it would replace (ops {', '.join(ops)}); the {name} ALU has: "
                         f"{', '.join(has)}")


def _check_convertible(outer: NumberEncoding, inner: NumberEncoding) -> None:
    registry = get_registry()
    for source, target in ((outer, inner), (inner, outer)):
        if source != target and f"{source.kind}->{target.kind}" not in registry.names("converter"):
            raise ValueError(f"cannot run an ALU over {inner} behind {outer}: no converter from "
                             f"{source.kind!r} to {target.kind!r} is registered; registered converters: "
                             f"{', '.join(registry.names('converter')) or '(none)'}")


class _CallableModule(types.ModuleType):
    """``diffcomp.swap`` is this module and the function :func:`swap`: calling the module calls the function."""

    def __call__(self, *args, **options):
        return swap(*args, **options)


sys.modules[__name__].__class__ = _CallableModule
