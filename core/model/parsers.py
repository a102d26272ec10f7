"""The parser interface (paper §3.4): hidden states -> the computer's inputs.

A parser turns the backbone's token states into what a computer asks for:
each :class:`Target` is either a *choice* among classes (the op, the program
to select) or *numbers* in the computer's encoding (operands, registers,
memory cells), all as probability distributions. Concrete parsers (``pooled``,
the paper's; ``attention``) are plug-ins: ``register_parsers`` registers a
factory ``factory(hidden_size, targets, encoding, **options) -> Parser``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import attrs
import torch
from torch import nn

from ..encodings import NumberEncoding


@attrs.frozen
class Target:
    """``count`` outputs named ``name``: a choice among ``classes``, or numbers (``classes=None``)."""

    name: str
    count: int = 1
    classes: int | None = None

    def shape(self, encoding: NumberEncoding) -> tuple[int, ...]:
        """Shape of one output: ``(classes,)`` or ``encoding.shape``."""
        return (self.classes,) if self.classes is not None else tuple(encoding.shape)

    def width(self, encoding: NumberEncoding) -> int:
        return math.prod(self.shape(encoding))


def distribution(logits: torch.Tensor, target: Target, encoding: NumberEncoding) -> torch.Tensor:
    """Scores to probabilities: softmax for a choice; for a number, as its encoding says (softmax, a sigmoid per bit)."""
    if target.classes is not None:
        return logits.softmax(-1)
    return encoding.distribution(logits)


def decide(probs: torch.Tensor, target: Target, encoding: NumberEncoding) -> torch.Tensor:
    """A parsed distribution made certain: the one-hot of its argmax, or each bit rounded for binary numbers.

    A trained model's parse is its most likely one. Running the computer on
    it, rather than on the distribution, matters for long programs: a sort
    of cells each 99.9% certain forks a little mass at every comparison, and
    after hundreds of steps the result is a blur of orders.
    """
    if target.classes is None:
        return encoding.decide(probs)
    return torch.nn.functional.one_hot(probs.argmax(-1), probs.shape[-1]).to(probs.dtype)


class Parser(nn.Module):
    """``forward(hidden, mask) -> {target.name: (batch, count, *target.shape(encoding))}``.

    ``hidden`` is ``(batch, seq, hidden_size)``, ``mask`` ``(batch, seq)`` with 1
    on real tokens. Subclasses implement :meth:`scores`; the base turns scores
    into distributions.
    """

    def __init__(self, hidden_size: int, targets: Sequence[Target], encoding: NumberEncoding) -> None:
        super().__init__()
        if not targets:
            raise ValueError("a parser needs at least one target")
        names = [t.name for t in targets]
        if len(set(names)) != len(names):
            raise ValueError(f"parser targets must have distinct names, got {names}")
        self.hidden_size = hidden_size
        self.targets = tuple(targets)
        self.encoding = encoding

    #: whether :meth:`forward` wants ``embeddings``, the token embeddings before any layer
    reads_embeddings = False
    #: options a train stage may change for its own duration (a stage's ``parser_options``), each
    #: the name of the attribute holding it: options of how the parser trains, never of its weights
    stage_options: ClassVar[dict[str, str]] = {}

    @classmethod
    def check_stage_options(cls, changes: dict[str, Any], options: dict[str, Any]) -> None:
        """``ValueError`` unless a stage may set ``changes`` on a parser built with ``options``."""
        unknown = [name for name in changes if name not in cls.stage_options]
        if unknown:
            allowed = ", ".join(cls.stage_options) or "none"
            raise ValueError(f"a stage cannot change the parser option {unknown[0]!r}; the options a stage "
                             f"may change for this parser: {allowed}")

    def built_options(self) -> dict[str, Any]:
        """Options the parser was built with that :meth:`check_stage_options` reads beside the stage options."""
        return {}

    def set_stage_options(self, **changes: Any) -> dict[str, Any]:
        """Apply a stage's ``changes``; returns the values they replaced (to restore after the stage)."""
        current = {name: getattr(self, attribute) for name, attribute in self.stage_options.items()}
        self.check_stage_options(changes, {**self.built_options(), **current, **changes})
        for name, value in changes.items():
            setattr(self, self.stage_options[name], value)
        return {name: current[name] for name in changes}

    def resize(self, name: str, count: int) -> None:
        """Write ``count`` outputs for target ``name``; ``ValueError`` where weights depend on the count.

        The base parser has weights per output; parsers without (the span
        parser's spans) override this, so a model can read longer inputs.
        """
        raise ValueError(f"{type(self).__name__} has weights for each of its {name!r} outputs, so it cannot "
                         f"write {count}; build the model with room for the longest input (e.g. [computer] cells), "
                         "or use a parser whose outputs share their weights (the span parser)")

    def _resized(self, name: str, count: int) -> None:
        """Replace target ``name`` by the same target with ``count`` outputs."""
        self.targets = tuple(attrs.evolve(t, count=count) if t.name == name else t for t in self.targets)

    #: in evaluation, whether choices the parser draws in training (a span's pointers) take their most
    #: likely value (True: the model's decided evaluation) or stay distributions (False: its soft one);
    #: the model sets it for each evaluation
    decide_choices: bool = True

    #: whether the parser reads the question a second time with its spans blanked (the model then sets
    #: :attr:`reread` for each forward; see the span parser's ``blank_spans``)
    rereads: bool = False
    #: set by the model around a forward of a parser that :attr:`rereads`: ``reread(start, end)``, ``start`` and
    #: ``end`` ``(batch,)`` token positions, returns ``(hidden, mask, embeddings)`` of the question with tokens
    #: ``start .. end - 1`` replaced by one placeholder token (``embeddings`` ``None`` unless the parser reads them)
    reread: Any = None

    #: ``(batch,)``: the log-probability of the choices a sampling parser drew in its last forward
    #: (e.g. the span parser's pointers with ``pointers="sample"``), for the model's score-function
    #: gradient; ``None`` for a parser that only mixes
    log_q: torch.Tensor | None = None

    def scores(self, hidden: torch.Tensor, mask: torch.Tensor,
               embeddings: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Unnormalised scores: ``{name: (batch, count, width)}``."""
        raise NotImplementedError

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor,
                embeddings: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``embeddings`` ``(batch, seq, hidden)``: the token embeddings, for parsers that read them."""
        if self.reads_embeddings and embeddings is None:
            raise ValueError(f"{type(self).__name__} reads the token embeddings too: call it with embeddings=")
        scores = self.scores(hidden, mask, embeddings) if self.reads_embeddings else self.scores(hidden, mask)
        out = {}
        for t in self.targets:
            s = scores[t.name].reshape(hidden.shape[0], t.count, *t.shape(self.encoding))
            out[t.name] = distribution(s, t, self.encoding)
        return out

    def extra_repr(self) -> str:
        inner = ", ".join(f"{t.name}x{t.count}" for t in self.targets)
        return f"hidden_size={self.hidden_size}, targets=({inner}), encoding={self.encoding}"


def build_parser(name: str, hidden_size: int, targets: Sequence[Target], encoding: NumberEncoding,
                 options: dict[str, Any] | None = None) -> Parser:
    """The registered parser ``name`` (``pooled``, ``attention``, ...) with ``options``."""
    from ..registry import lookup

    factory = lookup("parser", name)
    parser = factory(hidden_size, tuple(targets), encoding, **(options or {}))
    if not isinstance(parser, Parser):
        raise ValueError(f"parser {name!r} built a {type(parser).__name__}, not a diffcomp.model.Parser")
    return parser
