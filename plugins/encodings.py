"""The built-in number encodings and the converters between them (paper, appendix B)."""

from __future__ import annotations

import functools
from typing import Any

import torch

import diffcomp
from diffcomp.encodings import NumberEncoding


def _positive_int(what: str, value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} encoding: {what} must be a positive integer, got {value!r}")
    return value


class UnitEncoding(NumberEncoding):
    """A probability distribution over ``{0, .., base-1}``; one-hot when certain.

    The paper's unit vectors: ``2`` in base 5 is ``[0, 0, 1, 0, 0]``.
    """

    kind = "unit"
    linear = True  # every map below is a sum of probabilities

    def __init__(self, base: int) -> None:
        self.base = _positive_int("base", base, self.kind)

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.base,)

    @property
    def modulus(self) -> int:
        return self.base

    @property
    def options(self) -> dict[str, Any]:
        return {"base": self.base}

    def _encode(self, values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return torch.nn.functional.one_hot(values, self.base).to(dtype)  # (*batch, base)

    def _decode(self, x: torch.Tensor) -> torch.Tensor:
        return x.argmax(dim=-1)

    def categorical(self, x: torch.Tensor, size: int) -> torch.Tensor:
        return x if size == self.base else x @ fold_table(self.base, size, str(x.device), x.dtype)

    def categorical_below(self, x: torch.Tensor, size: int) -> torch.Tensor:
        if not 0 < size <= self.base:
            raise ValueError(f"{self}: categorical_below needs a size from 1 to the base {self.base}, got {size}")
        return x[..., :size]

    def from_categorical(self, p: torch.Tensor) -> torch.Tensor:
        return self.categorical(p, self.base) if p.shape[-1] == self.base else \
            p @ fold_table(p.shape[-1], self.base, str(p.device), p.dtype)

    def probability_zero(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., 0]

    def is_decided(self, x: torch.Tensor) -> bool:
        x = self.check(x)  # one-hot: no negative mass, and the largest entry is all of it
        return bool((x.amax(-1) == 1).all() and (x.sum(-1) == 1).all() and (x.amin() >= 0 if x.numel() else True))

    def distribution(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.softmax(-1)

    def log_likelihood(self, x: torch.Tensor, values: torch.Tensor,
                       eps: float = 1e-9) -> tuple[torch.Tensor, torch.Tensor]:
        logp = torch.log(x.clamp_min(0) + eps)  # (..., base)
        return logp.gather(-1, values.unsqueeze(-1)).squeeze(-1), logp


class BinaryEncoding(NumberEncoding):
    """Independent bit probabilities, least significant bit first; ``bits`` from 1 to 64."""

    kind = "binary"

    def __init__(self, bits: int) -> None:
        self.bits = _positive_int("bits", bits, self.kind)
        if self.bits > 64:
            raise ValueError(f"binary encoding: bits must be at most 64 (numbers are decoded into int64), got {bits}")

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.bits,)

    @property
    def modulus(self) -> int:
        return 1 << self.bits

    @property
    def options(self) -> dict[str, Any]:
        return {"bits": self.bits}

    def _encode(self, values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        shifts = torch.arange(self.bits, device=values.device)
        return ((values.unsqueeze(-1) >> shifts) & 1).to(dtype)  # (*batch, bits)

    def _decode(self, x: torch.Tensor) -> torch.Tensor:
        weights = torch.ones((), dtype=torch.int64, device=x.device) << torch.arange(self.bits, device=x.device)
        return ((x > 0.5).to(torch.int64) * weights).sum(-1)  # int64 wraps at 64 bits (two's complement)

    def categorical(self, x: torch.Tensor, size: int) -> torch.Tensor:
        m = size.bit_length() - 1
        if size == 1 << m and m <= self.bits:  # only the low m bits matter
            return bit_product(x[..., :m])
        if self.bits <= MAX_ENUMERATED_BITS:  # every value, folded modulo size
            return binary_to_unit(x, self, UnitEncoding(size))
        wide = 1 << (size - 1).bit_length()  # the low bits of the next power of two, then folded
        return bit_product(x[..., : wide.bit_length() - 1]) @ fold_table(wide, size, str(x.device), x.dtype)

    def categorical_index(self, values, size: int):
        m = size.bit_length() - 1
        if (size == 1 << m and m <= self.bits) or self.bits <= MAX_ENUMERATED_BITS:
            return values % size
        return (values % (1 << (size - 1).bit_length())) % size

    def categorical_below(self, x: torch.Tensor, size: int) -> torch.Tensor:
        if not 0 < size <= self.modulus:
            raise ValueError(f"{self}: categorical_below needs a size from 1 to the modulus {self.modulus}, got {size}")
        low = (size - 1).bit_length()  # the numbers below size need these bits; every higher bit must be off
        return bit_product(x[..., :low])[..., :size] * (1 - x[..., low:]).prod(-1, keepdim=True)

    def from_categorical(self, p: torch.Tensor) -> torch.Tensor:
        return p @ bit_table(p.shape[-1], self.bits, str(p.device), p.dtype)  # (..., bits)

    def probability_zero(self, x: torch.Tensor) -> torch.Tensor:
        return (1 - x).prod(-1)  # every bit off

    def distribution(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.sigmoid()  # one independent probability per bit

    def log_likelihood(self, x: torch.Tensor, values: torch.Tensor,
                       eps: float = 1e-9) -> tuple[torch.Tensor, torch.Tensor]:
        bits = self.encode(values, wrap=True, dtype=x.dtype, device=x.device)  # (..., bits)
        p = x.clamp(0, 1)
        log1, log0 = torch.log(p + eps), torch.log(1 - p + eps)
        return (bits * log1 + (1 - bits) * log0).sum(-1), log1 - log0


@functools.lru_cache(maxsize=64)
def bit_table(n: int, bits: int, device: str = "cpu", dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``B[k]`` is the bit vector of ``k mod 2**bits``: an ``(n, bits)`` 0/1 table, cached per dtype."""
    return BinaryEncoding(bits).encode(torch.arange(n), wrap=True, dtype=dtype, device=device)


@functools.lru_cache(maxsize=64)
def fold_table(n: int, m: int, device: str = "cpu", dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``F[k, k mod m] = 1``: an ``(n, m)`` 0/1 table taking unit(n) to unit(m), cached per dtype (no copy per call)."""
    return UnitEncoding(m).encode(torch.arange(n), wrap=True, dtype=dtype, device=device)


def unit_to_binary(x: torch.Tensor, source: UnitEncoding, target: BinaryEncoding) -> torch.Tensor:
    """``x @ B``: the probability of each bit is the mass of the numbers that have it set."""
    table = bit_table(source.base, target.bits, str(x.device), x.dtype)
    return torch.einsum("...n,nb->...b", x, table)  # (*batch, bits)


def bit_product(bits: torch.Tensor) -> torch.Tensor:
    """``P(k) = prod_i b_i^{k_i} (1 - b_i)^{1 - k_i}`` for all ``k < 2**bits``: ``(*batch, 2**bits)``.

    Built one bit at a time: with ``P_i`` over the low ``i`` bits,
    ``P_{i+1} = [P_i * (1 - b_i), P_i * b_i]`` (a number's ``i``-th bit picks the half).
    """
    dist = torch.ones(*bits.shape[:-1], 1, dtype=bits.dtype, device=bits.device)
    for i in range(bits.shape[-1]):
        b = bits[..., i : i + 1]
        dist = torch.cat([dist * (1 - b), dist * b], dim=-1)
    return dist


#: the widest binary -> unit conversion that enumerates every value before folding
MAX_ENUMERATED_BITS = 20


def binary_to_unit(x: torch.Tensor, source: BinaryEncoding, target: UnitEncoding) -> torch.Tensor:
    """The exact product formula of appendix B, reduced modulo ``target.base``.

    When ``base`` is a power of two ``2**m <= 2**bits``, only the low ``m`` bits
    matter; otherwise all ``2**bits`` values are enumerated and folded.
    """
    n, bits = target.base, source.bits
    m = n.bit_length() - 1
    if n == 1 << m and m <= bits:
        return bit_product(x[..., :m])
    if bits > MAX_ENUMERATED_BITS:
        raise ValueError(f"cannot convert {source} to {target} exactly: the base is not a power of two "
                         f"and 2**{bits} values are too many to enumerate (at most {MAX_ENUMERATED_BITS} bits)")
    dist = bit_product(x)  # (*batch, 2**bits)
    if n >= dist.shape[-1]:
        return torch.nn.functional.pad(dist, (0, n - dist.shape[-1]))
    return dist @ fold_table(dist.shape[-1], n, str(x.device), x.dtype)


def unit_to_unit(x: torch.Tensor, source: UnitEncoding, target: UnitEncoding) -> torch.Tensor:
    """Widen (pad with zeros) or narrow (fold ``k`` onto ``k mod base``)."""
    return x @ fold_table(source.base, target.base, str(x.device), x.dtype)


def binary_to_binary(x: torch.Tensor, source: BinaryEncoding, target: BinaryEncoding) -> torch.Tensor:
    """Widen (zero-extend) or narrow (keep the low bits: the value modulo ``2**bits``)."""
    if target.bits <= source.bits:
        return x[..., : target.bits]
    return torch.nn.functional.pad(x, (0, target.bits - source.bits))


@diffcomp.hookimpl
def register_encodings(register):
    register("unit", UnitEncoding)
    register("binary", BinaryEncoding)


@diffcomp.hookimpl
def register_converters(register):
    register("unit", "binary", unit_to_binary)
    register("binary", "unit", binary_to_unit)
    register("unit", "unit", unit_to_unit)
    register("binary", "binary", binary_to_binary)
