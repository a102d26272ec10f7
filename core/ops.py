"""ALU operations as data: a name, an arity and an integer function.

The meaning of every op is its integer function; results are taken modulo the
encoding's range (``n`` for a unit encoding of base n, ``2**b`` for b bits).
The lookup ALU builds its tables from these functions, the circuit ALU is
tested against them, and the machine's classical reference uses them too, so
there is one definition of what ``div`` means.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np

if TYPE_CHECKING:
    import torch

#: ``fn(a, b)``: on Python ints, int64 NumPy arrays or int64 tensors alike (see :func:`where`)
IntFn = Callable[[Any, Any], Any]


def _check_arity(instance: "Op", attribute: attrs.Attribute, value: int) -> None:
    if value not in (0, 1, 2):
        raise ValueError(f"op {instance.name!r}: arity must be 0, 1 or 2, got {value!r}")


def _check_name(instance: "Op", attribute: attrs.Attribute, value: str) -> None:
    if not isinstance(value, str) or not value.isidentifier() or value != value.lower():
        raise ValueError(f"op name must be a lower-case identifier such as 'add', got {value!r}")


@attrs.frozen
class Op:
    """One ALU operation.

    ``fn(a, b)`` takes two int64 tensors (or NumPy arrays) of one shape, each
    holding values in ``[0, modulus)``, and returns one of that shape; the
    result is reduced modulo the encoding's range by :meth:`table`. ``arity``
    says how many operands the op reads (``zero`` reads none, ``inc`` one).
    An op that handles tensors only is applied to NumPy arrays through
    tensors (:meth:`apply_ints`).
    """

    name: str = attrs.field(validator=_check_name)
    fn: IntFn = attrs.field(eq=False)
    arity: int = attrs.field(default=2, validator=_check_arity)
    doc: str = ""

    def table(self, modulus: int, device: "torch.device | str | None" = None) -> "torch.Tensor":
        """``T[j, k] = fn(j, k) mod modulus`` for all operands: a ``(modulus, modulus)`` int64 index table."""
        import torch

        values = torch.arange(modulus, dtype=torch.int64, device=device)
        a, b = torch.meshgrid(values, values, indexing="ij")
        return self.apply(a, b, modulus)

    def int_table(self, modulus: int) -> np.ndarray:
        """:meth:`table` as a NumPy array (what the exact machine gathers from)."""
        values = np.arange(modulus, dtype=np.int64)
        return self.apply_ints(values[:, None], values[None, :], modulus)

    def apply_ints(self, a: np.ndarray, b: np.ndarray, modulus: int) -> np.ndarray:
        """The op on int64 NumPy arrays, reduced into ``[0, modulus)`` (broadcast to one shape)."""
        shape = np.broadcast_shapes(np.shape(a), np.shape(b))
        try:
            with np.errstate(all="ignore"):  # int64 wraps, as a tensor's does
                out = np.asarray(self.fn(a, b))
        except (TypeError, RuntimeError):  # an op written for tensors only
            import torch

            out = self.apply(torch.from_numpy(np.ascontiguousarray(a)), torch.from_numpy(np.ascontiguousarray(b)),
                             modulus).numpy()
        return np.broadcast_to(out.astype(np.int64), shape) % modulus

    def apply(self, a: "torch.Tensor", b: "torch.Tensor", modulus: int) -> "torch.Tensor":
        """The op on integer tensors, reduced into ``[0, modulus)``."""
        import torch

        out = self.fn(a, b)
        if not isinstance(out, torch.Tensor):
            out = torch.as_tensor(out, dtype=torch.int64)
        return torch.broadcast_to(out.to(torch.int64), torch.broadcast_shapes(a.shape, b.shape)).remainder(modulus)

    def __call__(self, a: int, b: int, modulus: int) -> int:
        """The op on Python integers (the classical reference, exact at any width).

        Built-in ops are written so that ``fn`` works on Python ints as well as
        tensors (see :func:`where`); a plug-in op that only handles tensors is
        evaluated on int64 tensors instead.
        """
        try:
            out = self.fn(int(a), int(b))
        except (TypeError, RuntimeError):
            import torch

            out = self.apply(torch.tensor(int(a)), torch.tensor(int(b)), modulus)
        return int(out) % modulus


def where(condition, x, y):
    """``torch.where`` for tensors, ``numpy.where`` for arrays, a conditional expression for Python values."""
    if isinstance(condition, np.ndarray):
        return np.where(condition, x, y)
    torch = sys.modules.get("torch")  # nothing is a tensor while torch is not imported
    if torch is not None and isinstance(condition, torch.Tensor):
        return torch.where(condition, torch.as_tensor(x), torch.as_tensor(y))
    return x if condition else y
