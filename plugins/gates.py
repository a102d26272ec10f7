"""Probabilistic logic gates (paper eqs. 8-9) and the arithmetic circuits built from them.

A bit is the probability that it is 1. The gates treat their inputs as
independent events::

    and(a, b) = a·b                                   (8)
    or(a, b)  = a·b + (1−a)·b + a·(1−b) = a + b − ab  (8)
    xor(a, b) = (1−a)·b + a·(1−b)       = a + b − 2ab (9)
    not(a)    = 1 − a                                 (9)

On 0/1 inputs they are the Boolean gates, so every circuit here is exact on
one-hot (sharp) bits; on soft bits each output stays a probability. As
difflogic observes, every two-input gate is affine in ``{1, a, b, ab}``: fixing
one input leaves an affine function of the other. That makes the carry chain of
an adder a composition of affine maps, which :func:`scan_carries` evaluates for
all bit positions at once with the values of the bit-by-bit ripple.

Numbers are ``(..., bits)`` tensors, least significant bit first, and every
result is taken mod ``2**bits`` (carries out of the top bit are dropped).
Circuits are parameter-free ``nn.Module``s, vectorised over all leading
(batch) dimensions; only the inherently sequential parts (the partial
products of a multiplication, the quotient bits of a division) loop, over bit
positions, never over the batch.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F


# -- gates (eqs. 8-9) ---------------------------------------------------------------------------

def and_(a: Tensor, b: Tensor) -> Tensor:
    """``a·b`` (eq. 8)."""
    return a * b


def or_(a: Tensor, b: Tensor) -> Tensor:
    """``a + b − ab``, the paper's ``ab + (1−a)b + a(1−b)`` (eq. 8)."""
    return a + b - a * b


def xor(a: Tensor, b: Tensor) -> Tensor:
    """``a + b − 2ab``, the paper's ``(1−a)b + a(1−b)`` (eq. 9)."""
    return a + b - 2 * a * b


def not_(a: Tensor) -> Tensor:
    """``1 − a`` (eq. 9)."""
    return 1 - a


def mux(select: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """``x`` where ``select`` is 1, ``y`` where it is 0: ``or(and(s, x), and(not s, y))``.

    ``select`` is ``(...)`` (one choice per number) and broadcasts over the bits of ``x``, ``y``.
    """
    s = select.unsqueeze(-1)
    return or_(and_(s, x), and_(not_(s), y))


def full_adder(x: Tensor, y: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
    """One full adder per position: ``(sum, carry) = (x ⊕ y ⊕ z, xy ∨ (x ⊕ y)z)``."""
    p = xor(x, y)
    return xor(p, z), or_(and_(x, y), and_(p, z))


def all_(bits: Tensor) -> Tensor:
    """The and of all bits of each number: ``(..., bits) -> (...)``."""
    return bits.prod(-1)


def any_(bits: Tensor) -> Tensor:
    """The or of all bits of each number, ``not(and(not b_i))``: ``(..., bits) -> (...)``."""
    return not_(all_(not_(bits)))


def as_number(flag: Tensor, bits: int) -> Tensor:
    """A ``(...)`` truth value as the number 0 or 1: ``(..., bits)`` with the flag in bit 0."""
    return F.pad(flag.unsqueeze(-1), (0, bits - 1))


# -- the carry chain ----------------------------------------------------------------------------

def scan_carries(generate: Tensor, keep: Tensor, carry_in: Tensor) -> Tensor:
    """All carries of a ripple-carry chain at once: ``(..., bits) -> (..., bits + 1)``.

    The carry out of position ``i`` is ``or(g_i, and(p_i, c_i)) = g_i + k_i·c_i`` with
    ``k_i = and(p_i, not g_i)``: affine in the carry in. Composing these maps,
    ``(g₂, k₂)∘(g₁, k₁) = (g₂ + k₂g₁, k₂k₁)``, is associative, so a Hillis–Steele
    prefix scan gives every carry in ``⌈log₂ bits⌉`` vectorised steps. Returns
    ``c_0 = carry_in, c_1, .., c_bits`` (the last is the carry out).
    """
    g, k = generate, keep
    shift, bits = 1, g.shape[-1]
    while shift < bits:
        g_before = F.pad(g[..., :-shift], (shift, 0))  # the composed map just below, or identity
        k_before = F.pad(k[..., :-shift], (shift, 0), value=1.0)
        g, k = g + k * g_before, k * k_before
        shift *= 2
    carry_in = carry_in.unsqueeze(-1)  # (..., 1)
    return torch.cat([carry_in, g + k * carry_in], dim=-1)  # (..., bits + 1)


def _carry_in(value: float | Tensor, like: Tensor) -> Tensor:
    return torch.as_tensor(value, dtype=like.dtype, device=like.device).expand(like.shape[:-1])


# -- circuits -----------------------------------------------------------------------------------

class RippleCarryAdder(nn.Module):
    """``a + b + carry_in``: a chain of full adders, the sum bits and the carry out.

    ``forward(a, b, carry_in=0) -> (sum, carry_out)`` with ``a``, ``b``
    ``(..., bits)`` and ``carry_in`` a number or ``(...)``; ``sum`` is
    ``(..., bits)`` (mod ``2**bits``) and ``carry_out`` is ``(...)``. The carries
    are found by :func:`scan_carries`; :func:`ripple_carry_add_reference` is the
    same circuit evaluated one full adder at a time.
    """

    def forward(self, a: Tensor, b: Tensor, carry_in: float | Tensor = 0.0) -> tuple[Tensor, Tensor]:
        p = xor(a, b)  # propagate, (..., bits)
        g = and_(a, b)  # generate
        carries = scan_carries(g, and_(p, not_(g)), _carry_in(carry_in, a))  # (..., bits + 1)
        return xor(p, carries[..., :-1]), carries[..., -1]


def ripple_carry_add_reference(a: Tensor, b: Tensor, carry_in: float | Tensor = 0.0) -> tuple[Tensor, Tensor]:
    """The textbook ripple: one :func:`full_adder` per bit, least significant first.

    The reference :class:`RippleCarryAdder` is tested (and benchmarked) against.
    """
    carry, sums = _carry_in(carry_in, a), []
    for i in range(a.shape[-1]):
        s, carry = full_adder(a[..., i], b[..., i], carry)
        sums.append(s)
    return torch.stack(sums, dim=-1), carry


class TwosComplementSubtractor(nn.Module):
    """``a − b = a + not(b) + 1`` (mod ``2**bits``).

    ``forward(a, b) -> (difference, borrow)``: the borrow ``not(carry_out)`` is
    the probability that ``a < b`` as unsigned numbers, ``(...)``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.adder = RippleCarryAdder()

    def forward(self, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        difference, carry_out = self.adder(a, not_(b), 1.0)
        return difference, not_(carry_out)


class ShiftAddMultiplier(nn.Module):
    """``a · b`` (mod ``2**bits``) by shift-and-add: ``Σ_i and(a << i, b_i)``.

    The running total is kept in carry-save form (a sum word and a carry word,
    one :func:`full_adder` per position, vectorised over bits), so adding each
    partial product costs one row of full adders with no carry chain; one
    :class:`RippleCarryAdder` adds the two words at the end. Carries out of
    the top bit are dropped.
    """

    def __init__(self) -> None:
        super().__init__()
        self.adder = RippleCarryAdder()

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        bits = a.shape[-1]
        total = and_(a, b[..., :1])  # partial product 0, (..., bits)
        carry = torch.zeros_like(total)
        for i in range(1, bits):
            partial = and_(F.pad(a[..., : bits - i], (i, 0)), b[..., i : i + 1])  # (a << i) and b_i
            total, carries = full_adder(total, carry, partial)
            carry = F.pad(carries[..., :-1], (1, 0))  # carries move one position up
        return self.adder(total, carry)[0]


class RestoringDivider(nn.Module):
    """Restoring long division: ``forward(a, b) -> (quotient, remainder)``, unsigned.

    For each bit of ``a`` from the most significant: shift it into the partial
    remainder ``r``, try ``r − b`` with a :class:`TwosComplementSubtractor`; the
    quotient bit is ``not(borrow)``, and ``r`` becomes the difference where it
    is set and is restored where it is not (a :func:`mux`). The partial
    remainder carries one extra bit, so ``2r + a_i`` never overflows. Division
    by zero gives quotient and remainder 0 (docs/architecture.md): both are gated by
    ``any(b)``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.subtractor = TwosComplementSubtractor()

    def forward(self, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        bits = a.shape[-1]
        divisor = F.pad(b, (0, 1))  # (..., bits + 1)
        remainder = torch.zeros_like(a)  # (..., bits)
        quotient = []
        for i in reversed(range(bits)):
            shifted = torch.cat([a[..., i : i + 1], remainder], dim=-1)  # 2r + a_i, (..., bits + 1)
            difference, borrow = self.subtractor(shifted, divisor)
            q = not_(borrow)  # (...)
            remainder = mux(q, difference[..., :bits], shifted[..., :bits])
            quotient.append(q)
        quotient = torch.stack(quotient[::-1], dim=-1)  # (..., bits), least significant first
        nonzero = any_(b).unsqueeze(-1)
        return and_(quotient, nonzero), and_(remainder, nonzero)


class Comparator(nn.Module):
    """Unsigned comparison: ``forward(a, b) -> (lt, eq)``, each ``(...)``.

    ``lt`` is the borrow of ``a − b``; ``eq`` is the and of ``not(a_i ⊕ b_i)`` over all bits.
    """

    def __init__(self) -> None:
        super().__init__()
        self.subtractor = TwosComplementSubtractor()

    def forward(self, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        return self.subtractor(a, b)[1], all_(not_(xor(a, b)))
