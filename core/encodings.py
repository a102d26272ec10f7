"""Number encodings (paper, appendix B) and conversion between them.

A :class:`NumberEncoding` turns integers into tensors whose last dimensions
hold one number, and back. The concrete encodings (``unit``, ``binary``) and
the converters between them are plug-ins (``diffcomp.plugins.encodings``);
this module fixes the interface and finds converters by encoding name.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from .registry import get_registry

IntLike = Any  # int, nested sequences of int, numpy integer arrays, integer tensors


class NumberEncoding(abc.ABC):
    """A way of holding a number in a tensor.

    Arithmetic is modular: an encoding holds ``modulus`` values,
    ``0 .. max_value``. :meth:`encode` refuses integers outside that range
    unless asked to wrap them; :meth:`decode` returns the most likely value.
    """

    #: the name this encoding is registered under (``"unit"``, ``"binary"``)
    kind: ClassVar[str]
    #: :meth:`categorical`, :meth:`from_categorical` and :meth:`probability_zero` are linear in the number's
    #: entries (``unit``: sums of probabilities), so the machine's fused step holds them as matrices
    linear: ClassVar[bool] = False

    @property
    @abc.abstractmethod
    def shape(self) -> tuple[int, ...]:
        """Shape of one encoded number (the trailing dimensions of a tensor)."""

    @property
    @abc.abstractmethod
    def modulus(self) -> int:
        """How many values the encoding holds; arithmetic is modulo this."""

    @property
    def max_value(self) -> int:
        return self.modulus - 1

    @property
    @abc.abstractmethod
    def options(self) -> Mapping[str, Any]:
        """The options that rebuild this encoding: ``diffcomp.encoding(kind, **options)``."""

    @abc.abstractmethod
    def _encode(self, values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Encode an int64 tensor of in-range values."""

    @abc.abstractmethod
    def _decode(self, x: torch.Tensor) -> torch.Tensor:
        """Decode a checked tensor into an int64 tensor of its batch shape."""

    def encode(self, ints: IntLike, *, wrap: bool = False, dtype: torch.dtype = torch.float32,
               device: torch.device | str | None = None) -> torch.Tensor:
        """Encode integers: returns ``(*ints.shape, *self.shape)`` of ``dtype``.

        Values outside ``[0, modulus)`` are an error unless ``wrap=True``, which
        takes them modulo :attr:`modulus`.
        """
        if not dtype.is_floating_point:
            raise ValueError(f"{self}: encode dtype must be a floating-point dtype, got {dtype}")
        values = self.check_ints(ints, wrap=wrap)
        return self._encode(values.to(device) if device is not None else values, dtype)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """The most likely integer of each encoded number: an int64 tensor of the batch shape."""
        return self._decode(self.check(x))

    # -- what the machine and the model ask of a number -----------------------------------------
    # Defaults go through the registered converters to a ``unit`` encoding;
    # an encoding that can answer directly overrides them (the built-ins do,
    # so core needs no ``unit`` plug-in and never branches on ``kind``).

    def categorical(self, x: torch.Tensor, size: int) -> torch.Tensor:
        """``(..., size)``: the probability that the number, taken modulo ``size``, is each ``k < size``.

        What an address is (a distribution over memory cells or program lines, eq. 2).
        """
        return _through_unit(x, self, size)

    def categorical_index(self, values: Any, size: int) -> Any:
        """On integers, where :meth:`categorical` puts a decided number (the exact machine's addresses)."""
        return values % size

    def categorical_below(self, x: torch.Tensor, size: int) -> torch.Tensor:
        """``(..., size)``: the probability that the number *is* each ``k < size``, without wrapping: the mass of
        the numbers from ``size`` on is left out, so the entries sum to ``P(x < size)`` (an address with
        ``addressing = "zero"``, which points nowhere beyond memory). ``size`` is at most :attr:`modulus`.
        """
        if not 0 < size <= self.modulus:
            raise ValueError(f"{self}: categorical_below needs a size from 1 to the modulus {self.modulus}, got {size}")
        if self.modulus > MAX_CATEGORICAL:
            raise ValueError(f"{self}: categorical_below would enumerate {self.modulus} numbers; an encoding this "
                             f"wide must answer it itself")
        return self.categorical(x, self.modulus)[..., :size]

    def from_categorical(self, p: torch.Tensor) -> torch.Tensor:
        """``(..., size) -> (..., *shape)``: the number that is ``k`` with probability ``p_k`` (``size <= modulus``)."""
        return convert(p, encoding("unit", base=p.shape[-1]), self)

    def probability_zero(self, x: torch.Tensor) -> torch.Tensor:
        """``P(x = 0)`` for numbers ``(..., *shape)`` -> ``(...)``: the ``JEZ`` condition (eq. 6)."""
        return self.categorical(x, self.modulus)[..., 0]

    def distribution(self, logits: torch.Tensor) -> torch.Tensor:
        """Scores ``(..., *shape)`` to an encoded number (how a parser's outputs become numbers)."""
        raise ValueError(f"{self} cannot turn scores into numbers: it does not define distribution()")

    def decide(self, x: torch.Tensor) -> torch.Tensor:
        """The encoded most likely number: nothing left in doubt (one-hot, for ``unit``)."""
        return self.encode(self.decode(x), wrap=True, dtype=x.dtype, device=x.device)

    def log_likelihood(self, x: torch.Tensor, values: torch.Tensor,
                       eps: float = 1e-9) -> tuple[torch.Tensor, torch.Tensor]:
        """``log P(x = value)`` per number ``(...)``, and per-number scores ``(..., *shape)`` for reporting."""
        raise ValueError(f"answers cannot be read from {self}: it does not define log_likelihood()")

    def is_decided(self, x: torch.Tensor) -> bool:
        """Whether every number in ``x`` is exactly an encoded integer: nothing in doubt (one-hot, for ``unit``)."""
        x = self.check(x)
        return bool(torch.equal(self.encode(self.decode(x), wrap=True, dtype=x.dtype, device=x.device), x))

    def to_ints(self, x: torch.Tensor) -> Any:
        """:meth:`decode` as (nested lists of) exact non-negative Python ints."""
        values = self.decode(x).tolist()
        return _map_nested(values, lambda v: v % self.modulus)

    def check(self, x: torch.Tensor, what: str = "input") -> torch.Tensor:
        """Raise ``ValueError`` unless ``x`` is a floating tensor ending in :attr:`shape`."""
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{what} must be a torch.Tensor encoded with {self}, got {type(x).__name__}")
        if not x.dtype.is_floating_point:
            raise ValueError(f"{what} must be a floating-point tensor (probabilities) encoded with "
                             f"{self}, got dtype {x.dtype}")
        n = len(self.shape)
        if x.dim() < n or tuple(x.shape[x.dim() - n:]) != self.shape:
            raise ValueError(f"{what} has shape {tuple(x.shape)}, but {self} expects shape "
                             f"(..., {', '.join(map(str, self.shape))})")
        return x

    def check_ints(self, ints: IntLike, *, wrap: bool = False) -> torch.Tensor:
        """Integers as an int64 tensor, checked to lie in ``[0, modulus)`` (or wrapped).

        At 64 bits, values of ``2**63`` and above are held by their bit pattern
        (two's complement) in int64.
        """
        if isinstance(ints, torch.Tensor):
            if ints.dtype.is_floating_point or ints.dtype.is_complex or ints.dtype == torch.bool:
                raise ValueError(f"{self}: expected integers, got a tensor of dtype {ints.dtype}")
            values = ints.to(torch.int64)
        elif self.modulus > _INT64_MAX:  # exact range check in Python, then keep the bit pattern
            nested = _map_nested(_tolist(ints), lambda v: self._in_range(_as_int(v, self), wrap))
            return torch.tensor(_map_nested(nested, lambda v: v - (1 << 64) if v > _INT64_MAX else v),
                                dtype=torch.int64)
        else:
            try:
                values = torch.tensor(_map_nested(_tolist(ints), lambda v: _as_int(v, self)), dtype=torch.int64)
            except OverflowError:
                raise ValueError(f"{self} holds 0..{self.max_value}; got an integer beyond 64 bits") from None
        if wrap:
            return values if self.modulus > _INT64_MAX else values.remainder(self.modulus)
        if values.numel():
            self._in_range(int(values.min()), wrap=False)
            self._in_range(int(values.max()), wrap=False)
        return values

    def _in_range(self, value: int, wrap: bool) -> int:
        if wrap:
            return value % self.modulus
        if not 0 <= value < self.modulus:
            raise ValueError(f"{self} holds 0..{self.max_value}; got {value} "
                             "(pass wrap=True to take values modulo the range)")
        return value

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, NumberEncoding) and self.kind == other.kind
                and dict(self.options) == dict(other.options))

    def __hash__(self) -> int:
        return hash((self.kind, tuple(sorted(self.options.items()))))

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{self.kind}({options})"


_INT64_MAX = 2**63 - 1
#: the widest modulus the default categorical_below enumerates
MAX_CATEGORICAL = 1 << 16


def _through_unit(x: torch.Tensor, source: NumberEncoding, size: int) -> torch.Tensor:
    """``source.categorical`` through the registered converters (via the next power of two if need be)."""
    target = encoding("unit", base=size)
    try:
        return convert(x, source, target)
    except ValueError:
        wide = encoding("unit", base=1 << (size - 1).bit_length())
        return convert(convert(x, source, wide), wide, target)


def _tolist(ints: IntLike) -> Any:
    return ints.tolist() if hasattr(ints, "tolist") else ints


def _as_int(v: Any, encoding: NumberEncoding) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"{encoding}: expected integers, got {v!r} ({type(v).__name__})")
    return v


def _map_nested(values: Any, fn) -> Any:
    if isinstance(values, (list, tuple)):
        return [_map_nested(v, fn) for v in values]
    return fn(values)


def encoding(name: str, **options: Any) -> NumberEncoding:
    """A registered encoding: ``encoding("unit", base=128)``, ``encoding("binary", bits=32)``."""
    from .registry import build

    return build("encoding", name, options)


def convert(x: torch.Tensor, source: NumberEncoding, target: NumberEncoding) -> torch.Tensor:
    """Convert a batch of numbers from ``source`` to ``target`` encoding, keeping probabilities.

    A distribution in gives a distribution out; an identity conversion returns
    ``x`` itself. Converters are plug-ins (``register_converters``).
    """
    source.check(x, what="convert() input")
    if source == target:
        return x
    registry = get_registry()
    key = f"{source.kind}->{target.kind}"
    if key not in registry.names("converter"):
        known = ", ".join(registry.names("converter")) or "(none)"
        raise ValueError(f"no converter from {source.kind!r} to {target.kind!r} encodings is registered; "
                         f"registered converters: {known}")
    return registry.get("converter", key)(x, source, target)
