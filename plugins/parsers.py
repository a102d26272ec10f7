"""The built-in parsers: ``pooled`` (the paper's), ``attention`` (one query per output) and ``span``."""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

import diffcomp
from diffcomp.encodings import NumberEncoding
from diffcomp.errors import is_fraction
from diffcomp.inference.parsers import OUTSIDE_FLOOR, UNIT_EPS  # the least weight outside_spans leaves a span's token
from diffcomp.model.parsers import Parser, Target

POOLS = ("last", "mean")
VALUES = ("states", "tokens", "embeddings")
CHOICES = ("values", "states", "ngrams")
KEYS = ("states", "embeddings", "ngrams")
SPAN_VALUES = ("tokens", "embeddings")
SPAN_STARTS = ("at", "before")
POINTERS = ("mix", "sample")


class PooledParser(Parser):
    """The paper's parser (§3.4): one vector ``z`` per question, a linear classifier per target.

    ``pool="last"`` reads the last real token (which sees the whole question
    through causal attention); ``"mean"`` averages the real tokens.
    """

    def __init__(self, hidden_size: int, targets: Sequence[Target], encoding: NumberEncoding, *,
                 pool: str = "last") -> None:
        super().__init__(hidden_size, targets, encoding)
        if pool not in POOLS:
            raise ValueError(f"pooled parser: pool must be one of {POOLS}, got {pool!r}")
        self.pool = pool
        self.heads = nn.ModuleDict({t.name: nn.Linear(hidden_size, t.count * t.width(encoding))
                                    for t in self.targets})

    def scores(self, hidden: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        mask = mask.to(hidden.dtype)
        if self.pool == "last":
            last = mask.sum(1).long() - 1  # (batch,): right padding, so the last real token
            z = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (batch, hidden)
        else:
            z = torch.einsum("bsh,bs->bh", hidden, mask) / mask.sum(1, keepdim=True)
        return {name: head(z) for name, head in self.heads.items()}


class AttentionParser(Parser):
    """Each output (an operand, a register, a memory cell, the op) has a learned query.

    The query attends over the token states (eq.: ``a = softmax(q K^T / sqrt(d))``,
    ``v = a H``) and one classifier per target, shared by its outputs, reads
    ``v``: a cell per character parses without a linear layer as wide as the
    question. ``positions > 0`` adds a learned bias per output and token
    position (up to that many tokens), for inputs laid out by position.

    ``values="states"`` (the default) classifies the attended state
    ``head(a H)``; ``values="tokens"`` classifies every token's own state and
    mixes the distributions, ``p = sum_s a_s softmax(head(h_s))`` (per bit
    for binary numbers), so a number token decides its own value and the
    attention only chooses which token: a question with one token per number
    (the ``words`` tokenizer) parses without composing digits. ``value_scale``
    multiplies the classifiers' initial weights: above 1 the initial
    distributions are already peaked at random values, which breaks the
    symmetry of a uniform parse (under which ``add`` gives an operand no
    gradient) from the first step. ``lookback > 0`` builds each token's key
    from its own state and those of the ``lookback`` tokens before it, so
    "the token after a quote" is a query from the first step instead of a
    feature the backbone must first learn to compute. ``keys="embeddings"``
    builds the keys from the token embeddings instead of the states: what a
    query then finds is a local pattern of tokens, the same in a question of
    any length, where a state also carries where in the question it is.
    ``choices="states"`` classifies the choice targets (the program, the
    readout: what the question asks for) from the attended states whatever
    ``values`` says, while numbers still read their tokens' values.
    ``choices="ngrams"`` classifies them from *n-grams* instead: each token's
    feature is ``silu(W [e_s; e_(s-1); ...; e_(s-n+1)])``, the normalised
    embeddings of the token and the ``ngram - 1`` tokens before it (zeros
    before the question), and the choice's queries attend by keys of their
    own projected from these features (a one-layer convolution over the
    bytes). A word is then read the same wherever it stands: after any frame
    ("how many copies of" where training had only "count the copies of")
    and after a string of any length, where a state carries what came
    before it. ``keys="ngrams"`` builds the other queries' keys (the numbers',
    and a span's pointers') from the same n-gram features: "the letter after
    'letter '" is then a pattern of the question's words alone. ``ngram``
    sets ``n`` (8 by default; only where choices or keys read n-grams).
    ``choice_bag=True`` (with ``choices="ngrams"``) gives each choice's
    classifier a *bag of n-grams* beside what its queries attend: per
    feature, its largest value over the question's tokens, ``max_s (g_s +
    prior_s)`` (the span parser's ``outside_spans`` prior keeps the string's
    tokens out of it). A query reads one place, and the words that tell two
    kinds apart can stand further apart than an n-gram reaches ("the
    smallest letter number 3 of ...": "smallest" says ``min``, "number 3"
    says ``nth``, and both together say sort first); the bag holds both, in
    a question of any length and in any order. ``choice_bag="blind"``
    pools the bag from n-grams of the question with the tokens the numbers
    read blanked (as ``blind_choices`` does, below), while the queries still
    read the open n-grams: the bag then holds no n-gram of the argument's
    value ("4th"), from which each value of k could learn a chain of its
    own, and a frame word the argument's query happens to attend in a
    question without an argument is missing from the bag alone, not from
    what the queries read. ``blind_choices=True`` (with
    ``choices="ngrams"``) makes the choices read n-grams of the question with
    the tokens the numbers read blanked: each token's embedding is scaled by
    ``1 - b_s``, ``b_s`` the most any number output attends to it (and, with
    the span parser's ``outside_spans``, its probability of lying in a span;
    no gradient through either). An n-gram near the argument holds its value
    ("5th lowest"), and a choice that reads it can learn a chain right for
    that value at trained lengths only ("the 6th smallest letter" of a string
    of at most 6 is its largest): blind, the choice sees "_th lowest". A
    question with no argument still has the argument's query, and the word
    it attends to is blanked as well. A stage may set it for its own
    duration (it changes no weight). ``choice_dropout=p`` (choices read
    from states or n-grams) drops each feature a choice's classifier reads
    (what its queries attend, and the bag) with probability ``p`` in
    training, the rest scaled by ``1 / (1 - p)``, as a text classifier's
    dropout does; evaluation reads every feature. A stage may set it, too.

    ``argument_spread=e`` mixes, in training, each number target's attention
    (an argument register's) with the uniform attention over the question's
    tokens (with the span parser's ``outside_spans``, over the tokens
    outside the spans, by their probability of lying there): ``(1 - e) a_s
    + e u_s``. Every token's value then takes part in each question's
    argument, not only the attended token's, and a token whose value answers
    right gains, by its share, wherever the attention sits. Without it, a
    query that settled on a token of constant value (one that reads 0, which
    answers "letter 1") leaves the token that names the argument ("3rd") a
    gradient in proportion to its attention, near 0, and that token's value
    is never learned, where the attention could move to it only once it is.
    Evaluation attends as learned. A stage may set it for its own duration.
    With the span parser's ``shared_values`` the string's letters share the
    argument's classifier, and where no token's value answers right the
    spread's share of the loss lands on theirs too (library-mixed: the
    memory parse broke).

    ``argument_scale=c`` makes a number target read from its tokens' values
    (an argument register; not a choice, not a span) attend by ``c cos(q,
    k)`` in place of ``q k / sqrt(d)``, the query and each key scaled to unit
    length: its logits lie in ``[-c, c]`` however the query grows, so with
    the span parser's ``outside_spans`` and ``c < -log(outside_floor) / 2``
    no token inside a span (or on its delimiters, with
    ``outside_delimiters``) can outweigh one outside, and no token's weight
    falls below ``e^(-2c)`` of another's. Unbounded, library-mixed's argument
    query put a logit on the opening quote 22-25 above those of the tokens
    outside the string, the prior's ``log 1e-6`` outgrown. ``argument_cap=c``
    bounds the same
    logits by soft-capping instead: ``c tanh(l / c)`` of the scaled dot
    product ``l``, which leaves small logits (and the keys' norms, which
    cosine attention drops) nearly as they were. One or the other; both are
    the model's (a stage cannot change them).

    Choices read from states (``choices="states"``, or ``values="states"``)
    or from n-grams may read more than one place: ``choice_queries = n``
    gives each choice output ``n`` queries, and its classifier reads what
    they attend side by side (``n * hidden``), as a multi-head attention
    pool does. One query
    finds one token; a question's kind is often told by a word in one
    phrasing and a word elsewhere in another ("sort ..." against "... in
    alphabetical order"). ``step_heads=True`` gives each output of a choice
    target a classifier of its own: the steps of a chain then choose apart
    (the second step's ``identity`` is not the class of whatever token the
    first step reads as ``insertion_sort``), where a shared classifier makes
    the steps differ only in where they attend.
    """

    def __init__(self, hidden_size: int, targets: Sequence[Target], encoding: NumberEncoding, *,
                 key_size: int = 64, positions: int = 0, values: str = "states", value_scale: float = 1.0,
                 lookback: int = 0, keys: str = "states", choices: str = "values", choice_queries: int = 1,
                 step_heads: bool = False, ngram: int | None = None, choice_bag: bool | str = False,
                 blind_choices: bool = False, choice_dropout: float = 0.0, argument_spread: float = 0.0,
                 argument_scale: float | None = None, argument_cap: float | None = None) -> None:
        super().__init__(hidden_size, targets, encoding)
        if choices not in CHOICES:
            raise ValueError(f"attention parser: choices must be one of {CHOICES}, got {choices!r}")
        self.choices = choices
        if not (isinstance(choice_bag, bool) or choice_bag == "blind"):
            raise ValueError(f"attention parser: choice_bag must be true, false or 'blind' (the bag pooled from "
                             f"n-grams with the numbers' and the spans' tokens blanked), got {choice_bag!r}")
        if choice_bag and choices != "ngrams":
            raise ValueError(f"attention parser: choice_bag pools the n-grams the choices read; it applies with "
                             f"choices = 'ngrams' only, got choices = {choices!r}")
        #: whether a choice's classifier also reads the bag of the question's n-grams (their largest values), and
        #: whether that bag is pooled with the numbers' tokens blanked ("blind")
        self.choice_bag = choice_bag
        _check_blind(blind_choices, choices)
        #: whether the choices read n-grams of the question with the tokens the numbers read blanked
        self.blind_choices = blind_choices
        _check_dropout(choice_dropout, choices, values)
        #: in training, each feature a choice's classifier reads is dropped with this probability
        self.choice_dropout = float(choice_dropout)
        _check_spread(argument_spread)
        #: in training, the share of the uniform attention (outside the spans) in each number target's attention
        self.argument_spread = float(argument_spread)
        _check_bound("argument_scale", argument_scale, values,
                     "the scale of a number target's cosine attention: its logits lie in [-scale, scale]")
        #: number targets read from their tokens' values attend by cosine similarity times this (None: by the
        #: scaled dot product)
        self.argument_scale = None if argument_scale is None else float(argument_scale)
        _check_bound("argument_cap", argument_cap, values,
                     "a number target's attention logits become cap * tanh(logit / cap), in (-cap, cap)")
        if argument_cap is not None and argument_scale is not None:
            raise ValueError("attention parser: argument_cap and argument_scale both bound a number target's "
                             "logits; set one of them")
        #: number targets read from their tokens' values have their attention logits soft-capped at this
        #: (``cap * tanh(logit / cap)``; None: not capped)
        self.argument_cap = None if argument_cap is None else float(argument_cap)
        if ngram is not None and (isinstance(ngram, bool) or not isinstance(ngram, int) or ngram < 1):
            raise ValueError(f"attention parser: ngram must be a positive integer (tokens per n-gram), got {ngram!r}")
        #: tokens per n-gram (0: nothing reads n-grams; see _use_grams)
        self.ngram, self._ngram_option = 0, ngram
        if isinstance(choice_queries, bool) or not isinstance(choice_queries, int) or choice_queries < 1:
            raise ValueError(f"attention parser: choice_queries must be a positive integer (queries per choice "
                             f"output), got {choice_queries!r}")
        if not isinstance(step_heads, bool):
            raise ValueError(f"attention parser: step_heads must be true or false, got {step_heads!r}")
        if (choice_queries > 1 or step_heads) and not _classifies_choices(choices, values):
            raise ValueError("attention parser: choice_queries and step_heads apply to choices read from the "
                             "attended states or n-grams: set choices = 'states' or 'ngrams' (or values = "
                             "'states')")
        #: queries per choice output, and whether each output of a choice target has a classifier of its own
        self.choice_queries, self.step_heads = choice_queries, step_heads
        if positions < 0 or key_size < 1:
            raise ValueError(f"attention parser: key_size must be positive and positions non-negative, got "
                             f"key_size={key_size!r}, positions={positions!r}")
        if isinstance(lookback, bool) or not isinstance(lookback, int) or lookback < 0:
            raise ValueError(f"attention parser: lookback must be a non-negative integer, got {lookback!r}")
        if values not in VALUES:
            raise ValueError(f"attention parser: values must be one of {VALUES}, got {values!r}")
        if keys not in KEYS:
            raise ValueError(f"attention parser: keys must be one of {KEYS}, got {keys!r}")
        if not value_scale > 0:
            raise ValueError(f"attention parser: value_scale must be positive, got {value_scale!r}")
        self.key_size, self.positions, self.values = key_size, positions, values
        self.key_source = keys
        self.reads_embeddings = values == "embeddings" or keys == "embeddings"
        self.lookback = lookback
        self.keys = nn.Linear(hidden_size * (1 + lookback), key_size, bias=False)
        if choices == "ngrams" or keys == "ngrams":
            self._use_grams(hidden_size)
        if not self._more_key_sources:
            self._check_ngram_read()
        if choices == "ngrams":  # the choices' keys, from the n-grams
            self.choice_keys = nn.Linear(hidden_size, key_size, bias=False)
        self.queries = nn.ParameterDict({t.name: nn.Parameter(torch.randn(t.count * self._queries(t), key_size)
                                                              / math.sqrt(key_size))
                                         for t in self.targets})  # (count * queries, key)
        self.position_bias = nn.ParameterDict({t.name: nn.Parameter(torch.zeros(t.count * self._queries(t),
                                                                                positions))
                                               for t in self.targets} if positions else {})
        self.heads = nn.ModuleDict({t.name: nn.Linear(hidden_size * (self._queries(t) + self._bagged(t)),
                                                      t.width(encoding) * (t.count if self._own_heads(t) else 1))
                                    for t in self.targets})
        with torch.no_grad():
            for head in self.heads.values():
                head.weight.mul_(value_scale)
            for t in self.targets:  # the bag's weights start at 0: a choice starts as it would without it
                if self._bagged(t):
                    self.heads[t.name].weight[:, hidden_size * self._queries(t):] = 0

    def _reads_states(self, target: Target) -> bool:
        """Whether ``target`` is classified from its attended states or n-grams (else from its tokens' values)."""
        return self.values == "states" or (target.classes is not None and self.choices in ("states", "ngrams"))

    def _reads_values(self, target: Target) -> bool:
        """Whether ``target`` is a number read from the values of the tokens it attends (an argument register)."""
        return target.classes is None and not self._reads_states(target)

    def _reads_grams(self, target: Target) -> bool:
        """Whether ``target`` is a choice read from n-grams (``choices="ngrams"``)."""
        return target.classes is not None and self.choices == "ngrams"

    #: whether a subclass has keys of more sources (which may read n-grams) to set up after this class's __init__
    _more_key_sources: ClassVar[bool] = False

    #: a stage may blind the choices, or open them, and drop their features (the weights are the same either way)
    stage_options: ClassVar[dict[str, str]] = {"blind_choices": "blind_choices", "choice_dropout": "choice_dropout",
                                               "argument_spread": "argument_spread"}

    @classmethod
    def check_stage_options(cls, changes: dict[str, Any], options: dict[str, Any]) -> None:
        super().check_stage_options(changes, options)
        choices, values = (options.get(name, cls._default(name)) for name in ("choices", "values"))
        if "blind_choices" in changes:
            _check_blind(changes["blind_choices"], choices)
        if "choice_dropout" in changes:
            _check_dropout(changes["choice_dropout"], choices, values)
        if "argument_spread" in changes:
            _check_spread(changes["argument_spread"])

    @classmethod
    def _default(cls, name: str) -> Any:
        """Option ``name``'s default in this parser class (the span parser's ``values`` differs from ours)."""
        return inspect.signature(cls.__init__).parameters[name].default

    def built_options(self) -> dict[str, Any]:
        return {"choices": self.choices, "values": self.values}

    def _check_ngram_read(self) -> None:
        if self._ngram_option is not None and not self.ngram:
            kind = "span" if self._more_key_sources else "attention"
            raise ValueError(f"{kind} parser: ngram sets the n-grams that choices or keys read; it applies where "
                             f"one of them is 'ngrams' only")

    def _use_grams(self, hidden_size: int) -> None:
        """Build the n-gram features (once): ``grams``, from the embeddings of ``ngram`` tokens."""
        if not self.ngram:
            self.ngram = 8 if self._ngram_option is None else self._ngram_option
            self.grams = nn.Linear(hidden_size * self.ngram, hidden_size)
            self.reads_embeddings = True

    def gram_states(self, normalised: torch.Tensor | None) -> torch.Tensor | None:
        """Each token's n-gram feature ``(batch, seq, hidden)``: ``silu(grams([e_s; e_(s-1); ...]))`` over the
        normalised embeddings of the token and the ``ngram - 1`` before it (zeros before the question); ``None``
        where nothing reads n-grams."""
        if not self.ngram or normalised is None:
            return None
        seq = normalised.shape[1]
        window = [normalised] + [torch.nn.functional.pad(normalised, (0, 0, k, 0))[:, :seq]
                                 for k in range(1, self.ngram)]
        return torch.nn.functional.silu(self.grams(torch.cat(window, dim=-1)))

    def _bagged(self, target: Target) -> bool:
        """Whether ``target``'s classifier also reads the bag of n-grams (``choice_bag``)."""
        return self.choice_bag and self._reads_grams(target)

    def _queries(self, target: Target) -> int:
        """Queries per output of ``target``: ``choice_queries`` for a choice read from states, else 1."""
        return self.choice_queries if target.classes is not None and self._reads_states(target) else 1

    def _own_heads(self, target: Target) -> bool:
        """Whether each output of ``target`` has a classifier of its own (``step_heads``, choices)."""
        return self.step_heads and target.classes is not None and self._reads_states(target)

    def scores(self, hidden: torch.Tensor, mask: torch.Tensor,
               embeddings: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        normalised = _normalised(embeddings)
        grams = self.gram_states(normalised) if self.key_source == "ngrams" else None
        return self._parse(self.targets, hidden, mask, normalised, grams=grams)

    def _parse(self, targets: Sequence[Target], hidden: torch.Tensor, mask: torch.Tensor,
               normalised: torch.Tensor | None, prior: torch.Tensor | None = None,
               grams: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Scores of ``targets``, each output reading the tokens its query attends to.

        ``normalised``: the RMS-normalised token embeddings (``None`` when the parser reads none);
        ``prior`` ``(batch, seq)``: log-weights added to every query's attention logits (``None``: none);
        ``grams``: the n-gram features (``None`` when nothing reads them).
        """
        keys = self.key_states(_source(self.key_source, hidden, normalised, grams),
                               getattr(self, "other_keys", None))  # (batch, seq, key)
        tokens = _source(self.values, hidden, normalised)
        blind = self.blind_choices and any(map(self._reads_grams, targets))
        blind_bag = self.choice_bag == "blind" and any(map(self._bagged, targets))
        if grams is None and self.choices == "ngrams" and not blind:  # (made here when no key reads them: see
            grams = self.gram_states(normalised)                      # SpanParser.scores; blind: below)

        def parse(t: Target, grams: torch.Tensor | None, gram_keys: torch.Tensor | None,
                  bag: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
            """Target ``t``'s scores, and its outputs' attention ``(batch, count, seq)``."""
            read_from = grams if self._reads_grams(t) else hidden
            weights = self._weights(self.queries[t.name], self.position_bias[t.name] if self.positions else None,
                                    gram_keys if self._reads_grams(t) else keys, mask, self._prior(t, prior),
                                    cosine=self._cosine(t), cap=self._cap(t))  # (batch, count, seq)
            read_weights = weights  # what the target reads by; the attention learned is returned
            if t.classes is None and self.argument_spread and self.training:  # (see argument_spread)
                spread = self.argument_spread
                read_weights = (1 - spread) * weights + spread * uniform_weights(mask, prior, weights.dtype).unsqueeze(1)
            if self._reads_states(t):  # each output's queries' attended states (or n-grams), side by side
                read = torch.einsum("bcs,bsh->bch", read_weights, read_from).reshape(hidden.shape[0], t.count, -1)
                if self._bagged(t):  # and the question's bag of n-grams, the same for every output
                    read = torch.cat([read, bag.unsqueeze(1).expand(-1, t.count, -1)], dim=-1)
                if self.choice_dropout and t.classes is not None:
                    read = torch.nn.functional.dropout(read, self.choice_dropout, self.training)
                scores = self.heads[t.name](read)  # (batch, count, width), or (batch, count, count * width)
                if self._own_heads(t):  # output c reads its own classifier's block
                    scores = scores.view(*scores.shape[:2], t.count, -1).diagonal(0, 1, 2).transpose(1, 2)
                return scores, weights
            return self._mixed_tokens(t, read_weights, self.value_head(t)(tokens)), weights

        out, blind_grams = {}, None
        if blind or blind_bag:  # the numbers first; the choices (blind_choices) or their bag (choice_bag "blind")
            # then read n-grams of the question with the numbers' tokens and the spans' (outside_spans) blanked.
            # (batch, seq): how much a number reads a token, or a span holds it
            blanked = torch.zeros_like(mask, dtype=normalised.dtype) if prior is None else 1 - prior.detach().exp()
            for t in targets:
                if not self._reads_grams(t):
                    out[t.name], weights = parse(t, None, None, None)
                    if t.classes is None:
                        blanked = torch.maximum(blanked, weights.detach().amax(1))
            blind_grams = self.gram_states(normalised * (1 - blanked).unsqueeze(-1))
            if blind:
                grams = blind_grams
        gram_keys = self.choice_keys(grams) if self.choices == "ngrams" else None
        bag = (bag_of_grams(blind_grams if blind_bag else grams, mask, prior)
               if self.choice_bag and any(map(self._bagged, targets)) else None)
        for t in targets:
            if t.name not in out:
                out[t.name] = parse(t, grams, gram_keys, bag)[0]
        return {t.name: out[t.name] for t in targets}

    def value_head(self, target: Target) -> nn.Module:
        """The classifier of a token's value that ``target`` reads (by default its own)."""
        return self.heads[target.name]

    def key_states(self, hidden: torch.Tensor, projection: nn.Linear | None = None) -> torch.Tensor:
        """Each token's key ``(batch, seq, key_size)``, from its state and the ``lookback`` states before it.

        ``projection``: the keys' weights (by default the parser's ``keys``).
        """
        if self.lookback:  # token s also shows the states of s-1 .. s-lookback (zeros before the question)
            shifted = [torch.nn.functional.pad(hidden, (0, 0, k, 0))[:, : hidden.shape[1]]
                       for k in range(1, self.lookback + 1)]
            hidden = torch.cat([hidden, *shifted], dim=-1)
        return (self.keys if projection is None else projection)(hidden)

    def _cosine(self, target: Target) -> float | None:
        """The scale of ``target``'s cosine attention (``argument_scale``: numbers read from their tokens' values),
        or None where it attends by the scaled dot product."""
        return self.argument_scale if self._reads_values(target) else None

    def _prior(self, target: Target, prior: torch.Tensor | None) -> torch.Tensor | None:
        """The log-weights ``target``'s attention adds (the span parser's ``outside_first``: a number read from its
        tokens' values has the first token's set as a token's inside a span)."""
        if prior is None or not getattr(self, "outside_first", False) or not self._reads_values(target):
            return prior
        first = torch.zeros_like(prior, dtype=torch.bool)
        first[:, 0] = True
        floor = math.log(self.outside_floor) if self.outside_floor > 0 else float("-inf")
        return prior.masked_fill(first, floor)

    def _cap(self, target: Target) -> float | None:
        """The soft cap of ``target``'s attention logits (``argument_cap``), or None."""
        return self.argument_cap if self._reads_values(target) else None

    def _weights(self, queries: torch.Tensor, bias: torch.Tensor | None, keys: torch.Tensor,
                 mask: torch.Tensor, prior: torch.Tensor | None = None, cosine: float | None = None,
                 cap: float | None = None) -> torch.Tensor:
        """``softmax(q K^T / sqrt(d) + bias + prior)`` over the real tokens: ``(batch, count, seq)``; with
        ``cosine = c``, ``c cos(q, k)`` in place of ``q k / sqrt(d)``; with ``cap = c``, ``c tanh(q k / (c
        sqrt(d)))``."""
        if cosine is None:
            logits = torch.einsum("bsk,ck->bcs", keys, queries) / math.sqrt(self.key_size)
        else:
            logits = cosine * torch.einsum("bsk,ck->bcs", _unit(keys), _unit(queries))
        if cap is not None:
            logits = cap * torch.tanh(logits / cap)
        if bias is not None:
            seq = min(keys.shape[1], self.positions)
            logits = logits.clone()
            logits[..., :seq] = logits[..., :seq] + bias[:, :seq]
        if prior is not None:
            logits = logits + prior.unsqueeze(1)
        return logits.masked_fill(~mask.bool()[:, None, :], float("-inf")).softmax(-1)

    def _mixed_tokens(self, target: Target, weights: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """Scores whose distribution is ``sum_s weights_s dist(scores_s)``: ``(batch, count, width)``."""
        batch, seq = scores.shape[:2]
        shape = target.shape(self.encoding)
        if target.classes is None and self.encoding.kind == "binary":  # a mixture of per-bit probabilities
            return _bit_logits(torch.einsum("bcs,bsw->bcw", weights, scores.sigmoid()))
        logp = scores.reshape(batch, seq, -1, shape[-1]).log_softmax(-1).reshape(batch, 1, seq, -1)
        mixed = torch.logsumexp(torch.log(weights.clamp_min(1e-30)).unsqueeze(-1) + logp, dim=2)
        return mixed  # (batch, count, width): log of the mixture, which softmax returns exactly


class SpanParser(AttentionParser):
    """Reads a run of tokens into consecutive outputs, as extractive question answering reads a span.

    For each target named in ``spans`` (number targets, e.g. ``"memory"``)
    two learned pointers attend over the tokens: ``start`` at the span's
    first token (or, with ``start="before"``, at the token before it: an
    opening delimiter, such as a quote, is easier to find than "the first
    letter after a quote") and ``end`` at the first token after the span.
    Output ``c`` is the value of token ``start + c`` while that token lies
    before ``end``, and the number 0 from there on (the zero terminator of a
    C string, and the empty cells after it)::

        q_s   = P(end > s) * p_s + P(end <= s) * zero       # p_s: token s's value distribution
        out_c = sum_s start_s * q_(s + c)                    # q beyond the question: zero

    Nothing depends on the output's index but the shift, so a span longer
    than any trained one parses the same way (a string of 16 characters
    after training on 8 to 12). Each token's value distribution ``p_s`` is
    classified from its own state (``values="tokens"``) or from its
    embedding (``values="embeddings"``). Targets not in ``spans`` are parsed
    as by the ``attention`` parser, whose options (``keys``, ``key_size``,
    ``positions``, ``value_scale``) apply to both.

    ``end_keys`` gives the end pointer keys of its own source (``"states"``
    or ``"embeddings"``, with a projection of its own; by default the same
    keys as the start). The closing delimiter of a span sits further along in
    a longer question, where the backbone's states differ from any trained
    one; keys from the embeddings (with ``lookback``: "a quote after a
    letter") are the same at any length, while the start pointer, whose
    delimiter sits where the template puts it, keeps the states' context.

    ``pointers="sample"`` draws each example's start and end in training
    (the outputs are then the tokens of that one span) and sets ``log_q``,
    the draws' log-probability, so the model trains the pointers by the
    score-function gradient; in evaluation each pointer takes its most
    likely place (in a soft evaluation, ``decide_choices`` false, the
    pointers stay distributions and the span mixes, as with ``"mix"``). With ``"mix"`` (the default) the outputs mix every span
    the pointers allow: the computer treats its cells as independent, so a
    start split between two places can score answers neither gives, and the
    split can persist. ``mixed_share`` (with ``"sample"``) keeps that share
    of each training batch (its first rows) on the mixture: pointers drawn
    from scratch seldom land on the span, and those rows give every weight a
    gradient from the first step, while the drawn rows penalise a split.

    ``shared_values=True``: the other number targets (e.g. an argument
    register) read a token's value with the first span's classifier, so a
    letter the question names as an argument has the value it has in the
    string, learned once.

    ``shared_keys=False``: the other targets' queries attend by keys of
    their own (a projection of the same source), not by the start
    pointer's. The start pointer makes its delimiter's key stand out (the
    quote before the string, outside the span), and an argument's query
    sharing those keys can settle on it and read the quote's value for
    every question, where a softmax leaves the other tokens no gradient.

    ``outside_spans=True``: the other targets (an argument, the program, the
    readout) attend to the tokens outside the spans only: each token's
    attention logit gains ``log P(token outside every span)`` (the pointers'
    distributions, without gradient: the spans are trained by what they
    read). An argument named in a question ("count the letter b in
    'abcb'") is then never one of the string's own letters, and a choice
    reads what the question asks rather than the string it asks about.
    Without it an argument's query, sharing the keys with the start pointer,
    can settle on the string's first letter (the key the start pointer made
    distinct), where a softmax leaves the other tokens no gradient.
    ``outside_first=True`` (with ``outside_spans``) weighs the question's
    first token, for a number read from its tokens' values, as a token
    inside a span: a tokenizer's BOS holds no text, and a query that settles
    there reads a value learned as a constant (library-mixed's seed 1 read
    "letter 2" from it for every ``nth`` question once its quote was out of
    reach). The choices attend as before.
    ``outside_floor`` is the least factor ``P(outside)`` leaves on a token's
    weight (``1e-6`` by default): a query whose keys grow without bound (keys
    of its own from n-grams) can outweigh ``log 1e-6`` and read the string's
    first letter again, which ``outside_floor = 0`` forbids (a token certainly
    inside a span gets no weight; a question whose every token is certainly
    inside one attends as without ``outside_spans``).

    ``outside_delimiters=True`` (with ``outside_spans``): a span's
    delimiters count as inside it, the token the start pointer marks (with
    ``start="before"``: the opening quote) and the token the end pointer
    marks (the closing quote). The start pointer makes its delimiter's key
    stand out, and a delimiter's value is trained toward 0 wherever the end
    pointer overreaches (the terminator): an argument that settles there
    reads 0 for every question, which answers "letter 1" (k - 1 = 0) for
    most questions at lengths 1-3, a trap the argument seldom leaves.

    ``blank_spans=True``: the other targets read a second pass of the
    backbone over the question with the span (one span only) replaced by a
    single placeholder token, at the pointers' most likely places (no
    gradient to the pointers, which train by what they read). What they read
    then does not depend on the string: its letters and its length are
    gone, so a question about a string of 16 letters reads to them as one
    about a string of 3, where states read in the question itself carry the
    string (and a choice learned at lengths 1-6 can drift with it). The
    argument's value still comes from its own token. Needs the model's
    second reading (:attr:`~diffcomp.model.Parser.reread`, set by the model);
    ``outside_spans`` has nothing left to do there.
    """

    def __init__(self, hidden_size: int, targets: Sequence[Target], encoding: NumberEncoding, *,
                 spans: Sequence[str] = ("memory",), values: str = "tokens", lookback: int = 1, start: str = "at",
                 keys: str = "states", end_keys: str | None = None, pointers: str = "mix", mixed_share: float = 0.0,
                 key_size: int = 64, positions: int = 0, value_scale: float = 1.0, choices: str = "values",
                 shared_values: bool = False, outside_spans: bool = False, choice_queries: int = 1,
                 step_heads: bool = False, ngram: int | None = None, shared_keys: bool = True,
                 outside_floor: float | None = None, blank_spans: bool = False,
                 outside_delimiters: bool = False, choice_bag: bool | str = False, blind_choices: bool = False,
                 choice_dropout: float = 0.0, argument_spread: float = 0.0,
                 argument_scale: float | None = None, argument_cap: float | None = None,
                 outside_first: bool = False) -> None:
        if values not in SPAN_VALUES:
            raise ValueError(f"span parser: values must be one of {SPAN_VALUES}, got {values!r}")
        if start not in SPAN_STARTS:
            raise ValueError(f"span parser: start must be one of {SPAN_STARTS}, got {start!r}")
        super().__init__(hidden_size, targets, encoding, values=values, lookback=lookback, keys=keys,
                         key_size=key_size, positions=positions, value_scale=value_scale, choices=choices,
                         choice_queries=choice_queries, step_heads=step_heads, ngram=ngram, choice_bag=choice_bag,
                         blind_choices=blind_choices, choice_dropout=choice_dropout,
                         argument_spread=argument_spread, argument_scale=argument_scale,
                         argument_cap=argument_cap)
        self.start = start
        _check_pointers(pointers, mixed_share)
        self.pointer_mode, self.mixed_share = pointers, float(mixed_share)
        if end_keys is not None and end_keys not in KEYS:
            raise ValueError(f"span parser: end_keys must be one of {KEYS} (or left out: the keys' source), "
                             f"got {end_keys!r}")
        self.end_key_source = keys if end_keys is None else end_keys
        self.reads_embeddings = self.reads_embeddings or self.end_key_source == "embeddings"
        if self.end_key_source == "ngrams":
            self._use_grams(hidden_size)
        self._check_ngram_read()
        # an end pointer with keys of another source projects them with its own weights
        self.end_keys = (None if self.end_key_source == keys else
                         nn.Linear(hidden_size * (1 + lookback), key_size, bias=False))
        if isinstance(spans, str) or not isinstance(spans, Sequence) or not spans:
            raise ValueError(f"span parser: spans must be a non-empty list of target names, got {spans!r}")
        numbers = [t.name for t in self.targets if t.classes is None]
        unknown = [name for name in spans if name not in numbers]
        if unknown:
            raise ValueError(f"span parser: spans names {', '.join(map(repr, unknown))}, which the computer does "
                             f"not read as numbers; its number targets: {', '.join(numbers) or 'none'}")
        self.spans = tuple(dict.fromkeys(spans))
        if not isinstance(shared_values, bool):
            raise ValueError(f"span parser: shared_values must be true or false, got {shared_values!r}")
        self.shared_values = shared_values
        if not isinstance(outside_spans, bool):
            raise ValueError(f"span parser: outside_spans must be true or false, got {outside_spans!r}")
        self.outside_spans = outside_spans
        if outside_floor is not None:
            if not is_fraction(outside_floor):
                raise ValueError(f"span parser: outside_floor must be a number in [0, 1) (the least factor left on "
                                 f"the weight of a token inside a span; 0: none), got {outside_floor!r}")
            if not outside_spans:
                raise ValueError("span parser: outside_floor sets how little weight outside_spans leaves a token "
                                 "inside a span; it applies with outside_spans = true only")
        _check_outside("outside_delimiters", outside_delimiters, outside_spans,
                       "keeps the other targets off a span's delimiters too")
        #: whether a span's delimiters (the pointers' own tokens) count as inside it for ``outside_spans``
        self.outside_delimiters = outside_delimiters
        _check_outside("outside_first", outside_first, outside_spans,
                       "keeps the argument off the question's first token as off the spans")
        #: whether the numbers read from their tokens' values keep off the question's first token too (a BOS)
        self.outside_first = outside_first
        #: the least factor ``outside_spans`` leaves on the weight of a token inside a span
        self.outside_floor = OUTSIDE_FLOOR if outside_floor is None else float(outside_floor)
        if not isinstance(blank_spans, bool):
            raise ValueError(f"span parser: blank_spans must be true or false, got {blank_spans!r}")
        if blank_spans and len(self.spans) != 1:
            raise ValueError(f"span parser: blank_spans blanks one span; spans names {len(self.spans)}: "
                             f"{', '.join(self.spans)}")
        #: whether the other targets read the question again with the span blanked
        self.blank_spans = blank_spans
        if not isinstance(shared_keys, bool):
            raise ValueError(f"span parser: shared_keys must be true or false, got {shared_keys!r}")
        self.shared_keys = shared_keys
        if not shared_keys:  # the other targets' keys: a projection of their own, from the same source
            self.other_keys = nn.Linear(hidden_size * (1 + lookback), key_size, bias=False)
        self.pointers = nn.ParameterDict({name: nn.Parameter(torch.randn(2, self.key_size) / math.sqrt(self.key_size))
                                          for name in self.spans})  # (start/end, key)
        for name in self.spans:  # span targets use the pointers instead
            del self.queries[name]
            if name in self.position_bias:
                self.position_bias[name] = nn.Parameter(torch.zeros(2, self.positions))
        zero = encoding.encode(torch.zeros(1, dtype=torch.int64)).reshape(-1)  # (width,): the number 0
        self.register_buffer("zero", zero, persistent=False)

    def value_head(self, target: Target) -> nn.Module:
        if self.shared_values and target.classes is None:
            return self.heads[self.spans[0]]
        return super().value_head(target)

    _more_key_sources: ClassVar[bool] = True  # end_keys: checked after they are set up

    #: a stage may draw the pointers (e.g. after a stage that mixed them); the weights stay the same
    stage_options: ClassVar[dict[str, str]] = {**AttentionParser.stage_options, "pointers": "pointer_mode",
                                               "mixed_share": "mixed_share"}

    @classmethod
    def check_stage_options(cls, changes: dict[str, Any], options: dict[str, Any]) -> None:
        super().check_stage_options(changes, options)
        _check_pointers(options.get("pointers", "mix"), options.get("mixed_share", 0.0))

    def resize(self, name: str, count: int) -> None:
        """A span target reads any number of cells with the same weights; other targets cannot grow."""
        if name not in self.spans:
            super().resize(name, count)
        self._resized(name, count)

    def scores(self, hidden: torch.Tensor, mask: torch.Tensor,
               embeddings: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        normalised = _normalised(embeddings)  # once: the values, the keys and the end keys may all read it
        # the n-grams once, here where a pointer's keys read them; else where the choices do (in _parse: the
        # order the graph is built in sets the order gradients sum in, and a trained run's figures with it)
        grams = self._pointer_grams(normalised)
        tokens = _source(self.values, hidden, normalised)
        key_source = _source(self.key_source, hidden, normalised, grams)
        end_source = None if self.end_keys is None else _source(self.end_key_source, hidden, normalised, grams)
        self.log_q, out, outside, placed = None, {}, None, None
        for t in self.targets:
            if t.name in self.spans:
                start, end = self.attend(t.name, key_source, mask, end_source)
                if self.pointer_mode == "sample":
                    start, end, log_q = self._draw(start, end)
                    if log_q is not None:
                        self.log_q = log_q if self.log_q is None else self.log_q + log_q
                out[t.name] = self._span(t, start, end, self.heads[t.name](tokens))
                if self.blank_spans:  # the span's most likely tokens, blanked in the second reading
                    placed = (start.detach().argmax(1), end.detach().argmax(1))
                elif self.outside_spans:
                    first, after = start.detach(), end.detach()
                    if self.outside_delimiters:  # from the start pointer's token to the end pointer's
                        first, after = delimited(first, after, self.start)
                    away = 1 - span_tokens(first, after, mask.shape[1])
                    outside = away if outside is None else outside * away
        rest = [t for t in self.targets if t.name not in self.spans]
        if self.blank_spans and rest:  # the other targets read the question again, the span blanked
            if self.reread is None:
                raise ValueError("span parser: blank_spans reads the question a second time, which the model does "
                                 "(AugmentedModel.parse sets reread); called on its own it cannot")
            hidden, mask, embeddings = self.reread(*placed)
            normalised = _normalised(embeddings)
            grams = self._pointer_grams(normalised)
        prior = None if outside is None else outside_prior(outside, mask, self.outside_floor)
        others = self._parse(rest, hidden, mask, normalised, prior, grams)
        return {t.name: (out[t.name] if t.name in out else others[t.name]) for t in self.targets}

    def _pointer_grams(self, normalised: torch.Tensor | None) -> torch.Tensor | None:
        """The n-gram features where a pointer's keys read them (else ``None``: the choices make their own)."""
        return self.gram_states(normalised) if "ngrams" in (self.key_source, self.end_key_source) else None

    @property
    def rereads(self) -> bool:
        """Whether the model must give this parser a second reading (``blank_spans``)."""
        return self.blank_spans

    def _draw(self, start: torch.Tensor, end: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Training: each row's pointers drawn (but the first ``mixed_share`` of the rows), and their
        log-probability (0 on mixed rows); evaluation: each pointer at its most likely place, or (a soft
        evaluation, ``decide_choices`` false) the pointers' distributions as they are."""
        if not self.training and not self.decide_choices:
            return start, end, None
        (drawn_start, log_start), (drawn_end, log_end) = _pick(start, self.training), _pick(end, self.training)
        if not self.training:
            return drawn_start, drawn_end, None
        mixed = (torch.arange(start.shape[0], device=start.device) < round(self.mixed_share * start.shape[0]))
        keep = mixed.unsqueeze(1)
        return (torch.where(keep, start, drawn_start), torch.where(keep, end, drawn_end),
                torch.where(mixed, torch.zeros_like(log_start), log_start + log_end))

    def attend(self, name: str, hidden: torch.Tensor, mask: torch.Tensor,
               end_hidden: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Where target ``name``'s span starts, and the token after it: both ``(batch, seq + 1)``.

        ``hidden`` ``(batch, seq, hidden)``: what the keys are built from (the
        states, or the normalised embeddings with ``keys="embeddings"``);
        ``end_hidden``: the end pointer's, where ``end_keys`` names another
        source (``None``: the same keys).

        Place ``seq`` is one past the question's last token: an end there is
        a span that runs to the end of the question (that place's key shows
        the tokens before it only); a start there is an empty span.
        """
        batch, seq = mask.shape
        real = torch.cat([mask, torch.zeros_like(mask[:, :1])], dim=1)  # (batch, seq + 1)

        def padded_keys(source: torch.Tensor, projection: nn.Linear) -> torch.Tensor:
            padded = torch.cat([source, source.new_zeros(batch, 1, source.shape[-1])], dim=1) * real.unsqueeze(-1)
            return self.key_states(padded, projection)  # (batch, seq + 1, key): padding shows as zeros

        keys = padded_keys(hidden, self.keys)
        if self.end_keys is None:
            end_keys = keys
        elif end_hidden is None:
            raise ValueError("span parser: end_keys names a source of its own; attend needs it as end_hidden")
        else:
            end_keys = padded_keys(end_hidden, self.end_keys)
        after_last = torch.arange(seq + 1, device=mask.device) == mask.sum(1, keepdim=True)  # (batch, seq + 1)
        bias = self.position_bias[name] if self.positions else None
        pointers = self.pointers[name]
        start = self._weights(pointers[:1], None if bias is None else bias[:1], keys[:, :seq], mask)[:, 0]
        # the span starts at the token pointed to, or at the one after it (the pointer marks a delimiter)
        start = torch.nn.functional.pad(start, (1, 0) if self.start == "before" else (0, 1))  # (batch, seq + 1)
        end = self._weights(pointers[1:], None if bias is None else bias[1:], end_keys, real.bool() | after_last)[:, 0]
        return start, end

    def _span(self, target: Target, start: torch.Tensor, end: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        batch, seq = scores.shape[:2]
        shape = target.shape(self.encoding)
        if self.encoding.kind == "binary":
            p = scores.sigmoid()  # (batch, seq, bits)
        else:
            p = scores.reshape(batch, seq, -1, shape[-1]).softmax(-1).reshape(batch, seq, -1)
        zero = self.zero.to(p.dtype)
        inside = (1 - end.cumsum(1)[:, :seq]).clamp(0, 1).unsqueeze(-1)  # (batch, seq, 1): P(end > s)
        q = inside * p + (1 - inside) * zero  # (batch, seq, width)
        q = torch.cat([q, zero.expand(batch, target.count, -1)], dim=1)  # past the question: zero
        windows = q.unfold(1, target.count, 1)  # (batch, seq + 1, width, count): q_(s + c)
        mixed = torch.einsum("bs,bswc->bcw", start, windows)  # (batch, count, width)
        if self.encoding.kind == "binary":
            return _bit_logits(mixed)
        return torch.log(mixed.clamp_min(1e-30))  # softmax returns the mixture exactly


def bag_of_grams(grams: torch.Tensor, mask: torch.Tensor, prior: torch.Tensor | None) -> torch.Tensor:
    """The question's bag of n-grams ``(batch, hidden)``: per feature, ``max_s (grams_s + prior_s)`` over its real
    tokens (``prior`` ``(batch, seq)``: log-weights that keep the spans' tokens out, or ``None``)."""
    logits = grams if prior is None else grams + prior.unsqueeze(-1)
    return logits.masked_fill(~mask.bool().unsqueeze(-1), float("-inf")).amax(1)


def outside_prior(outside: torch.Tensor, mask: torch.Tensor, floor: float) -> torch.Tensor:
    """``(batch, seq)`` log-weights that keep a query outside the spans: ``log max(P(outside), floor)``; with
    ``floor = 0``, ``-inf`` on tokens certainly inside, and nothing on a question none of whose tokens is
    outside (a query there attends as if no span were read)."""
    if floor > 0:
        return torch.log(outside.clamp_min(floor))
    none_outside = ((outside > 0) & mask.bool()).sum(1, keepdim=True) == 0
    return torch.log(outside).masked_fill(none_outside, 0.0)


def uniform_weights(mask: torch.Tensor, prior: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """``(batch, seq)``: the uniform attention over the real tokens, each weighed by ``exp(prior)`` where a prior
    is given (the span parser's ``outside_spans``: its probability of lying outside the spans; no gradient)."""
    logits = torch.zeros(mask.shape, dtype=dtype, device=mask.device) if prior is None else prior.detach().to(dtype)
    return logits.masked_fill(~mask.bool(), float("-inf")).softmax(-1)


def delimited(start: torch.Tensor, end: torch.Tensor, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A span's ``start`` and ``end`` ``(batch, seq + 1)`` widened to its delimiters: one token earlier where the
    start pointer marks the token before the span (``where="before"``), and one token later at the end (the end
    pointer's own token, the first after the span)."""
    if where == "before":
        start = torch.nn.functional.pad(start[:, 1:], (0, 1))
    return start, torch.nn.functional.pad(end[:, :-1], (1, 0))


def span_tokens(start: torch.Tensor, end: torch.Tensor, seq: int) -> torch.Tensor:
    """``(batch, seq)``: each token's probability of lying in the span whose first token is distributed as
    ``start`` and whose first token after it as ``end`` (both ``(batch, seq + 1)``, independent):
    ``P(start <= s) * P(end > s)``."""
    return (start.cumsum(1)[:, :seq] * (1 - end.cumsum(1)[:, :seq])).clamp(0, 1)


def _check_blind(blind_choices: Any, choices: Any) -> None:
    if not isinstance(blind_choices, bool):
        raise ValueError(f"attention parser: blind_choices must be true or false, got {blind_choices!r}")
    if blind_choices and choices != "ngrams":
        raise ValueError(f"attention parser: blind_choices blanks the numbers' tokens in the n-grams the choices "
                         f"read; it applies with choices = 'ngrams' only, got choices = {choices!r}")


def _classifies_choices(choices: Any, values: Any) -> bool:
    """Whether a choice is classified from what its queries attend (states or n-grams), not from token values."""
    return "states" in (choices, values) or choices == "ngrams"


def _check_dropout(choice_dropout: Any, choices: Any, values: Any) -> None:
    if not is_fraction(choice_dropout):
        raise ValueError(f"attention parser: choice_dropout must be a number in [0, 1) (the chance that a feature "
                         f"a choice's classifier reads is dropped in training), got {choice_dropout!r}")
    if choice_dropout and not _classifies_choices(choices, values):
        raise ValueError("attention parser: choice_dropout drops the features a choice's classifier reads; it applies "
                         "to choices read from the attended states or n-grams: set choices = 'states' or 'ngrams' "
                         "(or values = 'states')")


def _unit(x: torch.Tensor) -> torch.Tensor:
    """``x`` scaled to unit length along its last dimension (a zero vector stays zero)."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(UNIT_EPS)


def _check_bound(name: str, value: Any, values: str, what: str) -> None:
    """``argument_scale`` or ``argument_cap``: left out, or a positive number, for numbers read from token values."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"attention parser: {name} must be a positive number ({what}) or left out, got {value!r}")
    if values == "states":
        raise ValueError(f"attention parser: {name} applies to numbers read from their tokens' values "
                         "(values = 'embeddings' or 'tokens'); with values = 'states' no target reads them")


def _check_outside(name: str, value: Any, outside_spans: bool, what: str) -> None:
    """A switch that widens ``outside_spans``: true or false, and true only with ``outside_spans``."""
    if not isinstance(value, bool):
        raise ValueError(f"span parser: {name} must be true or false, got {value!r}")
    if value and not outside_spans:
        raise ValueError(f"span parser: {name} {what}; it applies with outside_spans = true only")


def _check_spread(argument_spread: Any) -> None:
    if not is_fraction(argument_spread):
        raise ValueError(f"attention parser: argument_spread must be a number in [0, 1) (the share of the uniform "
                         f"attention in a number target's attention in training; 0: none), got {argument_spread!r}")


def _check_pointers(pointers: Any, mixed_share: Any) -> None:
    if pointers not in POINTERS:
        raise ValueError(f"span parser: pointers must be one of {POINTERS}, got {pointers!r}")
    if not is_fraction(mixed_share):
        raise ValueError(f"span parser: mixed_share must be a number in [0, 1), got {mixed_share!r}")
    if mixed_share and pointers != "sample":
        raise ValueError("span parser: mixed_share applies to pointers = 'sample' only")


def _pick(weights: torch.Tensor, draw: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One place per row of ``weights`` ``(batch, places)``: drawn from it (``draw``) or its most likely.

    Returns the one-hot ``(batch, places)`` and the place's log-probability ``(batch,)``.
    """
    chosen = torch.multinomial(weights.detach(), 1).squeeze(1) if draw else weights.argmax(-1)
    log_p = torch.log(weights.gather(1, chosen.unsqueeze(1)).squeeze(1).clamp_min(1e-30))
    return torch.nn.functional.one_hot(chosen, weights.shape[-1]).to(weights.dtype), log_p


def _bit_logits(p: torch.Tensor) -> torch.Tensor:
    """Per-bit probabilities back to the scores whose sigmoid gives them (clamped away from 0 and 1)."""
    return torch.logit(p.clamp(1e-7, 1 - 1e-7))


def _source(kind: str, hidden: torch.Tensor, normalised: torch.Tensor | None,
            grams: torch.Tensor | None = None) -> torch.Tensor:
    """What keys or values of ``kind`` read: the normalised embeddings, the n-gram features, or else the states."""
    return normalised if kind == "embeddings" else grams if kind == "ngrams" else hidden


def _normalised(embeddings: torch.Tensor | None) -> torch.Tensor | None:
    return None if embeddings is None else _rms(embeddings)


def _rms(embeddings: torch.Tensor) -> torch.Tensor:
    """Token embeddings RMS-normalised, so the classifiers see states of unit scale."""
    return embeddings * torch.rsqrt(embeddings.pow(2).mean(-1, keepdim=True) + 1e-6)


@diffcomp.hookimpl
def register_parsers(register):
    register("pooled", PooledParser)
    register("attention", AttentionParser)
    register("span", SpanParser)
