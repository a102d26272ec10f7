"""The built-in parsers' reads in evaluation, in NumPy: hidden states -> the computer's inputs.

:func:`read` returns, per target, the ``(batch, count, width)``
distributions the torch parser (``plugins/parsers.py``) gives in a decided
evaluation, computed the same way in float32: a span's pointers decided
first where the parser draws them in training (``pointers = "sample"``), and
mixed where it mixes them. The computer's decided inputs are their argmax
(what :func:`diffcomp.model.parsers.decide` makes of them). Numbers are
unit-encoded (a distribution over ``0 .. modulus-1``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .llama import silu, softmax

#: the parsers read here, by their registered names
PARSERS = ("pooled", "attention", "span")
#: parser options that change nothing in a decided evaluation (initial weights, training only)
TRAINING_OPTIONS = frozenset({"value_scale", "mixed_share"})
#: the span parser's ``outside_spans``: the least weight left a token inside a span (the torch parser's too)
OUTSIDE_FLOOR = 1e-6
#: the least length a vector is divided by when scaled to unit length (argument_scale's cosine attention)
UNIT_EPS = 1e-6


class Weights:
    """The parser's weights by their state_dict names (``parser.`` left off)."""

    def __init__(self, weights: Mapping[str, np.ndarray]) -> None:
        self.w = weights

    def __getitem__(self, name: str) -> np.ndarray:
        return self.w["parser." + name]

    def linear(self, name: str, x: np.ndarray) -> np.ndarray:
        out = x @ self[f"{name}.weight"].T
        bias = self.w.get(f"parser.{name}.bias")
        return out if bias is None else out + bias


def _outside_prior(outside: np.ndarray, mask: np.ndarray, floor: float) -> np.ndarray:
    """The span parser's ``outside_spans`` log-weights (``outside_prior`` of the torch parser)."""
    if floor > 0:
        return np.log(np.maximum(outside, floor))
    with np.errstate(divide="ignore"):
        prior = np.log(outside)
    none_outside = ((outside > 0) & mask.astype(bool)).sum(1, keepdims=True) == 0
    return np.where(none_outside, 0.0, prior).astype(outside.dtype)


def read(parser: str, options: Mapping[str, Any], targets: list[tuple[str, int, int | None]], w: Weights,
         hidden: np.ndarray, mask: np.ndarray, embeddings: np.ndarray, modulus: int) -> dict[str, np.ndarray]:
    """``{target: (batch, count, width)}`` distributions for ``targets`` ``(name, count, classes)`` (``classes``
    None: numbers, ``width`` the modulus)."""
    if parser == "pooled":
        return _pooled(options, targets, w, hidden, mask, modulus)
    normalised = embeddings / np.sqrt((embeddings * embeddings).mean(-1, keepdims=True) + 1e-6)
    grams = _grams(options, w, normalised) if options.get("ngram") else None
    sources = {"states": hidden, "embeddings": normalised, "tokens": hidden, "ngrams": grams}
    spans = options.get("spans", ()) if parser == "span" else ()
    out, outside = {}, np.ones(mask.shape, np.float32)
    for name, count, classes in targets:  # the spans first: the other targets may attend outside them
        if name in spans:
            out[name], inside = _span(options, name, count, w, sources, mask)
            outside = outside * (1 - inside)
    prior = _outside_prior(outside, mask, options.get("outside_floor", OUTSIDE_FLOOR)) \
        if options.get("outside_spans") and spans else None
    keys = _keys(options, w, "keys" if options.get("shared_keys", True) or not spans else "other_keys",
                 sources[options["keys"]])
    by_grams = {name: options["choices"] == "ngrams" and classes is not None for name, _, classes in targets}
    blanked = np.zeros(mask.shape, np.float32) if prior is None else 1 - np.exp(prior)  # (blind_choices)
    gram_keys = bag = None
    # the numbers first: with blind_choices, the choices read n-grams with the tokens they read blanked (with
    # choice_bag "blind", their bag alone)
    for name, count, classes in sorted((t for t in targets if t[0] not in spans), key=lambda t: by_grams[t[0]]):
        if by_grams[name] and gram_keys is None:
            blind, blind_bag = grams, options.get("choice_bag") == "blind"
            if options.get("blind_choices") or blind_bag:  # the numbers' tokens and the spans' blanked (see the
                blind = _grams(options, w, normalised * (1 - blanked)[..., None])  # torch parser)
            if options.get("blind_choices"):
                grams = blind
            gram_keys = w.linear("choice_keys", grams)
            bag = _bag(blind if blind_bag else grams, mask, prior) if options.get("choice_bag") else None
        argument = classes is None and not _reads_states(options, classes)  # (argument_scale, argument_cap)
        own_prior = prior
        if argument and prior is not None and options.get("outside_first"):  # kept off the first token (a BOS)
            floor = options.get("outside_floor", OUTSIDE_FLOOR)
            own_prior = prior.copy()
            own_prior[:, 0] = np.float32(np.log(floor)) if floor > 0 else -np.inf  # (as the torch parser)
        weights = _attend(options, w[f"queries.{name}"], _bias(options, w, name),
                          gram_keys if by_grams[name] else keys, mask, own_prior,
                          cosine=options.get("argument_scale") if argument else None,
                          cap=options.get("argument_cap") if argument else None)  # (batch, count * queries, seq)
        if classes is None:
            blanked = np.maximum(blanked, weights.max(1))
        if _reads_states(options, classes):  # each output's queries' attended states (or n-grams), side by side
            read = np.einsum("bcs,bsh->bch", weights, grams if by_grams[name] else hidden).reshape(len(hidden), count,
                                                                                                  -1)
            if _bagged(options, classes):  # and the question's bag of n-grams
                read = np.concatenate([read, np.broadcast_to(bag[:, None], (len(hidden), count, bag.shape[-1]))], -1)
            scores = w.linear(f"heads.{name}", read)  # (batch, count, width), or (batch, count, count * width)
            if _own_heads(options, classes):  # output c reads its own classifier's block
                scores = scores.reshape(len(hidden), count, count, -1)[:, np.arange(count), np.arange(count)]
            out[name] = softmax(scores)
        else:  # each token's distribution, mixed by the attention: sum_s a_s softmax(head(h_s))
            head = spans[0] if classes is None and options.get("shared_values") and spans else name
            p = softmax(w.linear(f"heads.{head}", sources[options["values"]]))  # (batch, seq, width)
            out[name] = np.einsum("bcs,bsw->bcw", weights, p)
    return {name: out[name] for name, _, _ in targets}


def _reads_states(options: Mapping[str, Any], classes: int | None) -> bool:
    """Whether a target (``classes`` None: numbers) is classified from its attended states (or n-grams)."""
    return options["values"] == "states" or (classes is not None and options["choices"] in ("states", "ngrams"))


def _grams(options: Mapping[str, Any], w: Weights, normalised: np.ndarray) -> np.ndarray:
    """Each token's n-gram feature ``silu(grams([e_s; e_(s-1); ...]))``: ``(batch, seq, hidden)``."""
    seq = normalised.shape[1]
    window = [normalised] + [np.pad(normalised, ((0, 0), (k, 0), (0, 0)))[:, :seq] for k in range(1, options["ngram"])]
    return silu(w.linear("grams", np.concatenate(window, axis=-1)))


def _bag(grams: np.ndarray, mask: np.ndarray, prior: np.ndarray | None) -> np.ndarray:
    """The question's bag of n-grams ``(batch, hidden)``: per feature, ``max_s (grams_s + prior_s)`` over the real
    tokens (the torch parser's ``bag_of_grams``)."""
    values = grams if prior is None else grams + prior[..., None]
    return np.where(mask.astype(bool)[..., None], values, -np.inf).max(1)


def _bagged(options: Mapping[str, Any], classes: int | None) -> bool:
    """Whether a target's classifier also reads the bag of n-grams (``choice_bag``: a choice read from n-grams)."""
    return bool(options.get("choice_bag")) and classes is not None and options["choices"] == "ngrams"


def _queries(options: Mapping[str, Any], classes: int | None) -> int:
    """Queries per output: ``choice_queries`` for a choice read from states, else 1."""
    return options.get("choice_queries", 1) if classes is not None and _reads_states(options, classes) else 1


def _own_heads(options: Mapping[str, Any], classes: int | None) -> bool:
    """Whether each output of a choice target has a classifier of its own (``step_heads``)."""
    return bool(options.get("step_heads")) and classes is not None and _reads_states(options, classes)


def _pooled(options: Mapping[str, Any], targets: list, w: Weights, hidden: np.ndarray, mask: np.ndarray,
            modulus: int) -> dict[str, np.ndarray]:
    m = mask.astype(hidden.dtype)
    if options["pool"] == "last":
        z = hidden[np.arange(hidden.shape[0]), m.sum(1).astype(np.int64) - 1]  # (batch, hidden)
    else:
        z = np.einsum("bsh,bs->bh", hidden, m) / m.sum(1, keepdims=True)
    return {name: softmax(w.linear(f"heads.{name}", z).reshape(len(z), count, -1)) for name, count, classes in targets}


def _keys(options: Mapping[str, Any], w: Weights, projection: str, source: np.ndarray) -> np.ndarray:
    """Each token's key from its state and the ``lookback`` states before it: ``(batch, seq, key_size)``."""
    shifted = [np.pad(source, ((0, 0), (k, 0), (0, 0)))[:, : source.shape[1]] for k in range(1, options["lookback"] + 1)]
    return np.concatenate([source, *shifted], axis=-1) @ w[f"{projection}.weight"].T


def _bias(options: Mapping[str, Any], w: Weights, name: str) -> np.ndarray | None:
    return w[f"position_bias.{name}"] if options["positions"] else None


def _attend(options: Mapping[str, Any], queries: np.ndarray, bias: np.ndarray | None, keys: np.ndarray,
            allowed: np.ndarray, prior: np.ndarray | None = None, cosine: float | None = None,
            cap: float | None = None) -> np.ndarray:
    """``softmax(q K^T / sqrt(d) + bias + prior)`` over the allowed places: ``(batch, count, places)``; with
    ``cosine = c`` (``argument_scale``), ``c cos(q, k)`` in place of ``q k / sqrt(d)``; with ``cap = c``
    (``argument_cap``), ``c tanh(q k / (c sqrt(d)))``."""
    if cosine is None:
        logits = np.einsum("bsk,ck->bcs", keys, queries) / np.float32(np.sqrt(options["key_size"]))
    else:
        logits = np.float32(cosine) * np.einsum("bsk,ck->bcs", _unit(keys), _unit(queries))
    if cap is not None:
        logits = np.float32(cap) * np.tanh(logits / np.float32(cap))
    if bias is not None:
        seq = min(keys.shape[1], options["positions"])
        logits[..., :seq] += bias[:, :seq]
    if prior is not None:
        logits = logits + prior[:, None, :]
    return softmax(np.where(allowed.astype(bool)[:, None, :], logits, -np.inf))


def _unit(x: np.ndarray) -> np.ndarray:
    """``x`` scaled to unit length along its last dimension (as the torch parser's)."""
    return x / np.maximum(np.sqrt((x * x).sum(-1, keepdims=True)), np.float32(UNIT_EPS))


def _span(options: Mapping[str, Any], name: str, count: int, w: Weights, sources: Mapping[str, np.ndarray],
          mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cells ``count`` long read from a span: ``out_c = sum_s start_s q_(s + c)``, ``q_s`` token s's value while
    ``s`` is before the end, 0 after (see the span parser); and each token's probability of lying in the span
    ``(batch, seq)``."""
    batch, seq = mask.shape
    real = np.concatenate([mask, np.zeros((batch, 1), mask.dtype)], axis=1)  # (batch, seq + 1)

    def padded_keys(source: np.ndarray, projection: str) -> np.ndarray:
        padded = np.concatenate([source, np.zeros_like(source[:, :1])], axis=1) * real[..., None]
        return _keys(options, w, projection, padded)  # (batch, seq + 1, key)

    keys = padded_keys(sources[options["keys"]], "keys")
    end_keys = keys if options["end_keys"] == options["keys"] else padded_keys(sources[options["end_keys"]],
                                                                                "end_keys")
    after_last = np.arange(seq + 1)[None, :] == mask.sum(1, keepdims=True)
    bias, pointers = _bias(options, w, name), w[f"pointers.{name}"]
    start = _attend(options, pointers[:1], None if bias is None else bias[:1], keys[:, :seq], mask)[:, 0]
    start = np.pad(start, ((0, 0), (1, 0) if options["start"] == "before" else (0, 1)))  # (batch, seq + 1)
    end = _attend(options, pointers[1:], None if bias is None else bias[1:], end_keys, real.astype(bool) | after_last)
    end = end[:, 0]
    if options["pointers"] == "sample":  # drawn in training, decided in evaluation
        start, end = (np.eye(seq + 1, dtype=np.float32)[x.argmax(-1)] for x in (start, end))
    p = softmax(w.linear(f"heads.{name}", sources[options["values"]]))  # (batch, seq, width)
    zero = np.zeros(p.shape[-1], dtype=p.dtype)
    zero[0] = 1
    inside = np.clip(1 - end.cumsum(1)[:, :seq], 0, 1)[..., None]  # P(end > s)
    q = np.concatenate([inside * p + (1 - inside) * zero, np.broadcast_to(zero, (batch, count, len(zero)))], axis=1)
    windows = np.lib.stride_tricks.sliding_window_view(q, count, axis=1)  # (batch, seq + 1, width, count)
    first, after = start, end
    if options.get("outside_delimiters"):  # the delimiters count as inside (see the torch parser's delimited)
        if options["start"] == "before":
            first = np.pad(start[:, 1:], ((0, 0), (0, 1)))
        after = np.pad(end[:, :-1], ((0, 0), (1, 0)))
    span = np.clip(first.cumsum(1)[:, :seq] * (1 - after.cumsum(1)[:, :seq]), 0, 1)
    return np.einsum("bs,bswc->bcw", start, windows), span


def shapes(parser: str, options: Mapping[str, Any], targets: list, hidden: int, width: Mapping[str, int]
           ) -> dict[str, tuple[int, ...]]:
    """The shape of every weight the parser has (``parser.`` left off); ``width[name]``: a target's values."""
    if parser == "pooled":
        return {k: v for name, count, _ in targets for k, v in
                ((f"heads.{name}.weight", (count * width[name], hidden)), (f"heads.{name}.bias", (count * width[name],)))}
    key, spans = options["key_size"], options.get("spans", ()) if parser == "span" else ()
    out = {"keys.weight": (key, hidden * (1 + options["lookback"]))}
    if options.get("ngram"):
        out.update({"grams.weight": (hidden, hidden * options["ngram"]), "grams.bias": (hidden,)})
    if options["choices"] == "ngrams":
        out["choice_keys.weight"] = (key, hidden)
    if parser == "span" and not options.get("shared_keys", True):
        out["other_keys.weight"] = out["keys.weight"]
    if parser == "span" and options["end_keys"] != options["keys"]:
        out["end_keys.weight"] = out["keys.weight"]
    for name, count, classes in targets:
        queries = _queries(options, classes)
        classifiers = count if _own_heads(options, classes) else 1
        out[f"heads.{name}.weight"] = (width[name] * classifiers, hidden * (queries + _bagged(options, classes)))
        out[f"heads.{name}.bias"] = (width[name] * classifiers,)
        if name in spans:
            out[f"pointers.{name}"] = (2, key)
        else:
            out[f"queries.{name}"] = (count * queries, key)
        if options["positions"]:
            out[f"position_bias.{name}"] = (2 if name in spans else count * queries, options["positions"])
    return out
