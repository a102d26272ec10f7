"""Differentiable memory and registers (paper §3.2, eqs. 2-5).

Memory ``M`` is ``(batch, cells, *shape)`` and the register file ``R`` is
``(batch, registers, *shape)``: one number per row, in the ALU's encoding
(``shape`` is ``(base,)`` for ``unit``, ``(bits,)`` for ``binary``). Both are
addressed by a probability distribution over rows:

- read (eq. 2): ``r_j = M_ij a_i``, a dot product with the address;
- write (eqs. 3-5): ``M <- (1 - p a) ⊙ M + a ⊗ (p c)``, the probability
  mixture of keeping and overwriting each row (eq. 3 mixed with the old memory
  by the write probability ``p``, eq. 4; eq. 5 is ``p = 1``). The value is
  passed weighted, ``p c``, so that several writers mix without dividing by
  ``p``: ``Σ_k p_k c_k`` with ``p = Σ_k p_k``.

Addresses are numbers too: :meth:`Memory.address` turns a number in the
machine's encoding into a distribution over cells (the encoding's own
``categorical``), so any ALU plugs in. With ``addressing="wrap"`` (the
paper's, the default) an address is taken modulo the number of cells; with
``addressing="zero"`` an address beyond the cells points nowhere: a read
there gives the number 0 (memory is zero past its end, as after a string's
terminator) and a write there is lost, so a program reads the same at any
memory size that holds what it writes (:meth:`Memory.load`). The sharp
interpreter (:func:`diffcomp.execute`) reports an out-of-range address
instead.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..encodings import NumberEncoding


#: how a memory address beyond the cells is taken: modulo the cells (the paper's), or as pointing nowhere
ADDRESSING = ("wrap", "zero")


class Addresses:
    """Numbers in ``encoding`` -> distributions over ``0 .. size-1``: the value modulo ``size`` (``wrap=True``),
    or the value itself, whose mass from ``size`` on points nowhere (``wrap=False``: the entries sum to
    ``P(x < size)``).

    The encoding answers (:meth:`~diffcomp.NumberEncoding.categorical`,
    :meth:`~diffcomp.NumberEncoding.categorical_below`); an encoding that
    does not goes through the registered converters.
    """

    def __init__(self, encoding: NumberEncoding, size: int, *, wrap: bool = True) -> None:
        self.encoding, self.size, self.wrap = encoding, size, wrap
        self(encoding.encode([0]))  # fails now, not at the first step, if it cannot

    def __call__(self, x: Tensor) -> Tensor:
        if self.wrap:
            return self.encoding.categorical(x, self.size)  # (batch, size)
        return self.encoding.categorical_below(x, self.size)

    def of_ints(self, values: Any) -> Any:
        """What :meth:`__call__` does to decided numbers, on integers (the exact machine's addresses; without
        ``wrap``, a value from ``size`` on stays as it is: beyond every place)."""
        return self.encoding.categorical_index(values, self.size) if self.wrap else values


def probability_zero(x: Tensor, encoding: NumberEncoding) -> Tensor:
    """``P(x = 0)`` for a batch of numbers ``(batch, *shape)`` -> ``(batch,)``: the ``JEZ`` condition.

    The encoding answers (:meth:`~diffcomp.NumberEncoding.probability_zero`):
    ``unit``: the mass on 0; ``binary``: every bit off, ``prod_i (1 - b_i)``.
    """
    return encoding.probability_zero(x)


def _rows(weights: Tensor, like: Tensor) -> Tensor:
    """``(batch, rows)`` weights broadcast against ``(batch, rows, *shape)``."""
    return weights.reshape(*weights.shape, *([1] * (like.dim() - weights.dim())))


class Registers:
    """The register file ``R`` ``(batch, registers, *shape)`` (paper eq. 5)."""

    @staticmethod
    def read(R: Tensor, address: Tensor) -> Tensor:
        """``v_j = R_ij a_i``: the number at a ``(batch, registers)`` address -> ``(batch, *shape)``.

        ``address`` may also be ``(batch, k, registers)``, k addresses at once -> ``(batch, k, *shape)``.
        """
        many = address.dim() == 3
        out = torch.bmm(address if many else address.unsqueeze(1), R.flatten(2))  # (batch, k, numel)
        return out.view(*out.shape[:2], *R.shape[2:]) if many else out.view(R.shape[0], *R.shape[2:])

    @staticmethod
    def write(R: Tensor, address: Tensor, value: Tensor, p: Tensor) -> Tensor:
        """Eq. 5 with write probability ``p`` ``(batch,)``: ``R <- (1 - p a) ⊙ R + a ⊗ value``.

        ``value`` ``(batch, *shape)`` is the *weighted* value ``p·c``; for a
        mixture of writers with probabilities ``p_k`` it is ``Σ_k p_k c_k`` and
        ``p = Σ_k p_k``. With ``p = 1`` this is eq. 5 exactly.
        """
        a = _rows(address, R)  # (batch, rows, 1, ...)
        return torch.addcmul((1 - _rows(p, a) * a) * R, a, value.unsqueeze(1))  # (one node for ⊙ and +)


class Memory:
    """Memory ``M`` ``(batch, cells, *shape)`` (paper eqs. 2-4), addressed by numbers in ``encoding``."""

    def __init__(self, encoding: NumberEncoding, cells: int, addressing: str = "wrap") -> None:
        if isinstance(cells, bool) or not isinstance(cells, int) or cells < 1:
            raise ValueError(f"memory needs a positive whole number of cells, got {cells!r}")
        check_addressing(addressing)
        if addressing == "zero" and cells > encoding.modulus:
            raise ValueError(f"memory with addressing = 'zero' can have at most {encoding.modulus} cells (the "
                             f"numbers of {encoding}), got {cells}")
        self.encoding, self.cells, self.addressing = encoding, cells, addressing
        self.address = Addresses(encoding, cells, wrap=addressing == "wrap")
        self._zero = encoding.encode([0]).reshape(encoding.shape)  # the number 0, read beyond the cells

    @staticmethod
    def read(M: Tensor, address: Tensor) -> Tensor:
        """Eq. 2: ``r_j = M_ij a_i`` for a ``(batch, cells)`` address distribution -> ``(batch, *shape)``."""
        return Registers.read(M, address)

    def load(self, M: Tensor, address: Tensor) -> Tensor:
        """What a read at ``address`` (made by :attr:`address`) gives: eq. 2, and with ``addressing="zero"`` the
        number 0 for the address's mass beyond the cells, ``r = M^T a + (1 - sum_i a_i) zero``."""
        read = self.read(M, address)
        if self.addressing == "wrap":
            return read
        beyond = 1 - address.sum(-1)  # (batch,): P(the address is beyond the cells)
        return read + beyond.reshape(-1, *[1] * (read.dim() - 1)) * self._zero.to(read)

    @staticmethod
    def write(M: Tensor, address: Tensor, value: Tensor, p: Tensor) -> Tensor:
        """Eqs. 3-4: ``M <- (1 - p) M + p [(1 - a) ⊙ M + a ⊗ c] = (1 - p a) ⊙ M + a ⊗ value``.

        ``address`` ``a`` ``(batch, cells)``; ``p`` ``(batch,)`` the probability
        that the write happens; ``value`` ``(batch, *shape)`` is ``p·c``, the
        written number weighted by that probability (as for
        :meth:`Registers.write`).
        """
        return Registers.write(M, address, value, p)

    def __repr__(self) -> str:
        more = "" if self.addressing == "wrap" else f", addressing={self.addressing!r}"
        return f"Memory(cells={self.cells}, encoding={self.encoding}{more})"


def check_addressing(addressing: Any) -> None:
    """A clear error unless ``addressing`` is one of :data:`ADDRESSING`."""
    if addressing not in ADDRESSING:
        raise ValueError(f"addressing must be 'wrap' (an address beyond memory is taken modulo the cells, the "
                         f"paper's) or 'zero' (it reads 0 and a write there is lost), got {addressing!r}")


__all__ = ["Memory", "Registers", "Addresses", "probability_zero", "ADDRESSING", "check_addressing"]
