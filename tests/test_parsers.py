"""Parsers: plug-ins that turn token states into distributions the computer reads."""

from __future__ import annotations

import math

import pytest
import torch

import diffcomp
from diffcomp.model import Target, build_model, build_parser, build_task
from diffcomp.plugins.parsers import outside_prior, span_tokens
from diffcomp.registry import names

UNIT = diffcomp.encoding("unit", base=10)
BINARY = diffcomp.encoding("binary", bits=6)
TARGETS = (Target("op", 1, 4), Target("operands", 2), Target("memory", 5))


def states(seed: int = 0, batch: int = 3, seq: int = 7, hidden: int = 16, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    hidden_states = torch.randn(batch, seq, hidden, generator=g, dtype=dtype)
    mask = torch.ones(batch, seq, dtype=torch.int64)
    mask[0, 5:] = 0  # a shorter question, right-padded
    return hidden_states, mask


def test_registered():
    assert {"pooled", "attention", "span"} <= set(names("parser"))


@pytest.mark.parametrize("name", ["pooled", "attention"])
@pytest.mark.parametrize("encoding", [UNIT, BINARY], ids=["unit", "binary"])
def test_outputs_are_distributions_of_the_right_shape(name, encoding):
    torch.manual_seed(0)
    parser = build_parser(name, 16, TARGETS, encoding)
    hidden, mask = states()
    out = parser(hidden, mask)
    assert out["op"].shape == (3, 1, 4)
    assert torch.allclose(out["op"].sum(-1), torch.ones(3, 1))
    assert out["operands"].shape == (3, 2, *encoding.shape) and out["memory"].shape == (3, 5, *encoding.shape)
    if encoding.kind == "unit":
        assert torch.allclose(out["memory"].sum(-1), torch.ones(3, 5))
    else:  # one probability per bit
        assert ((out["memory"] > 0) & (out["memory"] < 1)).all()


@pytest.mark.parametrize("name", ["pooled", "attention"])
def test_padding_is_ignored(name):
    torch.manual_seed(0)
    parser = build_parser(name, 16, TARGETS, UNIT)
    hidden, mask = states()
    before = parser(hidden, mask)
    hidden = hidden.clone()
    hidden[0, 5:] = 100.0  # change only the padded positions of the first question
    after = parser(hidden, mask)
    for key in before:
        assert torch.allclose(before[key], after[key]), key


def test_pooled_last_reads_the_last_real_token():
    torch.manual_seed(0)
    parser = build_parser("pooled", 16, TARGETS, UNIT, {"pool": "last"})
    hidden, mask = states()
    before = parser(hidden, mask)
    hidden = hidden.clone()
    hidden[0, :4] += 1.0  # everything of question 0 but its last real token (index 4)
    assert torch.allclose(before["op"][0], parser(hidden, mask)["op"][0])
    hidden[0, 4] += 1.0
    assert not torch.allclose(before["op"][0], parser(hidden, mask)["op"][0])


def test_attention_position_bias_can_pick_a_token():
    torch.manual_seed(0)
    parser = build_parser("attention", 16, (Target("memory", 3),), UNIT, {"positions": 8})
    with torch.no_grad():  # cell c attends to token c + 2 only
        parser.position_bias["memory"].fill_(-1e4)
        for c in range(3):
            parser.position_bias["memory"][c, c + 2] = 1e4
    hidden, mask = states()
    out = parser.scores(hidden, mask)["memory"]  # (batch, cells, base)
    expected = parser.heads["memory"](hidden[:, 2:5])
    assert torch.allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize("name", ["pooled", "attention"])
def test_gradcheck(name):
    torch.manual_seed(0)
    parser = build_parser(name, 4, (Target("op", 1, 3), Target("operands", 2)), diffcomp.encoding("unit", base=3),
                          {"key_size": 4} if name == "attention" else {})
    parser = parser.double()
    hidden, mask = states(batch=2, hidden=4, seq=3, dtype=torch.float64)
    hidden.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda h: parser(h, mask)["operands"], (hidden,), fast_mode=True)


@pytest.mark.parametrize("name, options, message", [
    ("pooled", {"pool": "max"}, "pool must be one of"),
    ("attention", {"positions": -1}, "positions non-negative"),
    ("pooled", {"colour": 1}, "colour"),
])
def test_bad_options(name, options, message):
    with pytest.raises((ValueError, TypeError), match=message):
        build_parser(name, 16, TARGETS, UNIT, options)


def test_unknown_parser_names_the_registered_ones():
    with pytest.raises(LookupError, match="registered parsers: attention, pooled, span"):
        build_parser("pooler", 16, TARGETS, UNIT)


def test_duplicate_target_names():
    with pytest.raises(ValueError, match="distinct names"):
        build_parser("pooled", 16, (Target("a"), Target("a")), UNIT)


# -- attention values read from each token ------------------------------------------


def _reference_token_mixture(parser, target, hidden, mask, tokens):
    """Dense reference: ``sum_s a_s dist(head(tokens_s))``, one target, unit numbers or choices."""
    keys = parser.keys(hidden)
    logits = torch.einsum("bsk,ck->bcs", keys, parser.queries[target.name]) / parser.key_size ** 0.5
    weights = logits.masked_fill((mask == 0)[:, None, :], float("-inf")).softmax(-1)  # (batch, count, seq)
    per_token = parser.heads[target.name](tokens).softmax(-1)  # (batch, seq, classes)
    return torch.einsum("bcs,bsn->bcn", weights, per_token)


@pytest.mark.parametrize("values", ["tokens", "embeddings"])
def test_token_values_are_the_attention_mixture_of_each_tokens_distribution(values):
    torch.manual_seed(0)
    parser = build_parser("attention", 16, TARGETS, UNIT, {"values": values})
    hidden, mask = states()
    embeddings = torch.randn(hidden.shape, generator=torch.Generator().manual_seed(1))
    out = parser(hidden, mask, embeddings=embeddings)
    tokens = hidden if values == "tokens" else embeddings / embeddings.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()
    for target in TARGETS:
        expected = _reference_token_mixture(parser, target, hidden, mask, tokens)
        assert torch.allclose(out[target.name], expected, atol=1e-6), target.name


def test_token_values_are_exact_when_attention_picks_one_token():
    torch.manual_seed(0)
    parser = build_parser("attention", 16, (Target("operands", 2),), UNIT, {"values": "embeddings", "positions": 8})
    with torch.no_grad():  # operand c reads token 1 + 2 c only
        parser.position_bias["operands"].fill_(-1e4)
        parser.position_bias["operands"][0, 1] = parser.position_bias["operands"][1, 3] = 1e4
        parser.heads["operands"].weight.zero_()
        parser.heads["operands"].bias.zero_()
    hidden, mask = states()
    embeddings = torch.zeros_like(hidden)
    embeddings[:, 1, 0] = embeddings[:, 3, 1] = 1.0  # token 1 "means" 7, token 3 "means" 2
    with torch.no_grad():
        parser.heads["operands"].weight[7, 0] = parser.heads["operands"].weight[2, 1] = 100.0
    out = parser(hidden, mask, embeddings=embeddings)["operands"]  # (batch, 2, base)
    assert torch.equal(UNIT.decode(out), torch.tensor([[7, 2]] * 3))
    assert torch.allclose(out.max(-1).values, torch.ones(3, 2))


def test_token_values_mix_bits_for_binary_numbers():
    torch.manual_seed(0)
    parser = build_parser("attention", 16, (Target("operands", 2),), BINARY, {"values": "tokens"})
    hidden, mask = states()
    out = parser(hidden, mask)["operands"]  # (batch, 2, bits)
    keys = parser.keys(hidden)
    weights = torch.einsum("bsk,ck->bcs", keys, parser.queries["operands"]).div(8).masked_fill(
        (mask == 0)[:, None, :], float("-inf")).softmax(-1)
    expected = torch.einsum("bcs,bsw->bcw", weights, parser.heads["operands"](hidden).sigmoid())
    assert torch.allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize("values", ["tokens", "embeddings"])
def test_token_values_ignore_padding(values):
    torch.manual_seed(0)
    parser = build_parser("attention", 16, TARGETS, UNIT, {"values": values})
    hidden, mask = states()
    embeddings = hidden.flip(-1)
    before = parser(hidden, mask, embeddings=embeddings)
    hidden, embeddings = hidden.clone(), embeddings.clone()
    hidden[0, 5:] = embeddings[0, 5:] = 100.0
    after = parser(hidden, mask, embeddings=embeddings)
    for key in before:
        assert torch.allclose(before[key], after[key], atol=1e-6), key


@pytest.mark.parametrize("name, targets, read", [
    ("attention", (Target("op", 1, 3), Target("operands", 2)), "operands"),
    ("span", (Target("registers", 1), Target("memory", 3)), "memory"),
])
@pytest.mark.parametrize("values", ["tokens", "embeddings"])
def test_token_values_gradcheck(name, targets, read, values):
    torch.manual_seed(0)
    parser = build_parser(name, 4, targets, diffcomp.encoding("unit", base=3), {"key_size": 4, "values": values})
    parser = parser.double()
    hidden, mask = states(batch=2, hidden=4, seq=4, dtype=torch.float64)
    embeddings = torch.randn(2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    hidden.requires_grad_(True)
    embeddings.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda h, e: parser(h, mask, embeddings=e)[read], (hidden, embeddings),
                                    fast_mode=True)


def test_value_scale_sharpens_the_initial_distributions():
    hidden, mask = states()
    entropy = {}
    for scale in (1.0, 8.0):
        torch.manual_seed(0)
        p = build_parser("attention", 16, (Target("operands", 2),), UNIT, {"values": "tokens", "value_scale": scale})
        probs = p(hidden, mask)["operands"]
        entropy[scale] = -(probs * probs.log()).sum(-1).mean().item()
    assert entropy[8.0] < entropy[1.0] - 0.1


@pytest.mark.parametrize("options, message", [
    ({"values": "pixels"}, "values must be one of"),
    ({"value_scale": 0}, "value_scale must be positive"),
])
def test_bad_value_options(options, message):
    with pytest.raises(ValueError, match=message):
        build_parser("attention", 16, TARGETS, UNIT, options)


def test_embeddings_parser_needs_embeddings():
    parser = build_parser("attention", 16, TARGETS, UNIT, {"values": "embeddings"})
    with pytest.raises(ValueError, match="reads the token embeddings too"):
        parser(*states())


# -- span: a run of tokens into consecutive outputs -------------------------------------


def _span_reference(parser, target, hidden, mask, tokens, encoding, key_source, end_source=None):
    """Loops over outputs and tokens: output c is token start + c's value while before end, else 0."""
    start, end = parser.attend(target.name, key_source, mask, end_source)  # (batch, seq + 1) each
    seq = mask.shape[1]
    per_token = parser.heads[target.name](tokens)
    per_token = per_token.sigmoid() if encoding.kind == "binary" else per_token.softmax(-1)
    zero = encoding.encode(torch.zeros((), dtype=torch.int64)).to(hidden.dtype).reshape(-1)
    batch = start.shape[0]
    out = torch.zeros(batch, target.count, zero.numel(), dtype=hidden.dtype)
    for b in range(batch):
        for c in range(target.count):
            for s in range(seq + 1):
                if s + c < seq:
                    inside = end[b, s + c + 1:].sum()  # P(end > s + c)
                    value = inside * per_token[b, s + c] + (1 - inside) * zero
                else:
                    value = zero
                out[b, c] += start[b, s] * value
    return out


@pytest.mark.parametrize("encoding", [UNIT, BINARY], ids=["unit", "binary"])
@pytest.mark.parametrize("values", ["tokens", "embeddings"])
@pytest.mark.parametrize("start, keys, end_keys", [("at", "states", None), ("before", "states", None),
                                                   ("before", "embeddings", None), ("before", "states", "embeddings"),
                                                   ("at", "embeddings", "states")])
def test_span_matches_the_loop_reference(encoding, values, start, keys, end_keys):
    torch.manual_seed(0)
    parser = build_parser("span", 16, TARGETS, encoding,
                          {"values": values, "start": start, "keys": keys, "end_keys": end_keys})
    hidden, mask = states()
    embeddings = torch.randn(hidden.shape, generator=torch.Generator().manual_seed(1))
    out = parser(hidden, mask, embeddings=embeddings)
    normalised = embeddings / embeddings.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()
    tokens = hidden if values == "tokens" else normalised
    source = {"states": hidden, "embeddings": normalised}
    expected = _span_reference(parser, TARGETS[2], hidden, mask, tokens, encoding, source[keys],
                               None if end_keys is None else source[end_keys])
    assert out["memory"].shape == (3, 5, *encoding.shape)
    assert torch.allclose(out["memory"].reshape(3, 5, -1), expected, atol=1e-5)
    for name in ("op", "operands"):  # the other targets are parsed as by the attention parser
        assert out[name].shape[1] == {"op": 1, "operands": 2}[name]


@pytest.mark.parametrize("encoding", [UNIT, BINARY], ids=["unit", "binary"])
@pytest.mark.parametrize("start", ["at", "before"])
def test_span_is_exact_when_the_pointers_pick_tokens(encoding, start):
    torch.manual_seed(0)
    parser = build_parser("span", 16, (Target("memory", 6),), encoding,
                          {"values": "embeddings", "positions": 8, "start": start})
    with torch.no_grad():  # the span is tokens 2, 3, 4: it starts at 2 (after 1) and the token after it is 5
        parser.keys.weight.zero_()
        parser.position_bias["memory"].fill_(-1e4)
        parser.position_bias["memory"][0, 2 if start == "at" else 1] = parser.position_bias["memory"][1, 5] = 1e4
        head = parser.heads["memory"]
        head.weight.zero_()
        head.bias.fill_(-50.0 if encoding.kind == "binary" else 0.0)
    hidden, mask = states()
    embeddings = torch.zeros_like(hidden)
    wanted = {2: 7, 3: 3, 4: 9, 5: 5, 6: 1}  # tokens 5 and 6 lie after the span: they must not be read
    for position, number in wanted.items():
        embeddings[:, position, position] = 1.0
        code = encoding.encode(torch.tensor(number)).reshape(-1)
        with torch.no_grad():
            head.weight[:, position] = 200.0 * code if encoding.kind == "unit" else 100.0 * code
    out = parser(hidden, mask, embeddings=embeddings)["memory"]
    assert torch.equal(encoding.decode(out), torch.tensor([[7, 3, 9, 0, 0, 0]] * 3))
    assert torch.allclose(out, encoding.encode(encoding.decode(out)).to(out.dtype), atol=1e-6)  # one-hot


def test_span_needs_no_weights_per_output_so_longer_spans_load_the_same_weights():
    torch.manual_seed(0)
    short = build_parser("span", 16, (Target("memory", 4),), UNIT, {"values": "tokens"})
    long = build_parser("span", 16, (Target("memory", 9),), UNIT, {"values": "tokens"})
    long.load_state_dict(short.state_dict())  # no shape depends on the number of outputs
    hidden, mask = states(seq=12)
    a, b = short(hidden, mask)["memory"], long(hidden, mask)["memory"]
    assert torch.allclose(a, b[:, :4], atol=1e-6)


def test_span_ignores_padding_and_lookback_reads_the_token_before():
    torch.manual_seed(0)
    parser = build_parser("span", 16, TARGETS, UNIT, {"lookback": 1})
    hidden, mask = states()
    before = parser(hidden, mask)
    changed = hidden.clone()
    changed[0, 5:] = 100.0
    after = parser(changed, mask)
    for key in before:
        assert torch.allclose(before[key], after[key], atol=1e-6), key
    keys = parser.key_states(hidden)
    shifted = parser.keys(torch.cat([hidden, torch.nn.functional.pad(hidden, (0, 0, 1, 0))[:, :-1]], -1))
    assert torch.allclose(keys, shifted, atol=1e-6)
    assert torch.allclose(keys[:, 0], parser.keys(torch.cat([hidden[:, 0], torch.zeros_like(hidden[:, 0])], -1)),
                          atol=1e-6)


@pytest.mark.parametrize("options, message", [
    ({"spans": ["op"]}, "number targets: operands, memory"),
    ({"spans": ["cells"]}, "spans names 'cells'"),
    ({"spans": "memory"}, "non-empty list"),
    ({"values": "states"}, "values must be one of"),
    ({"lookback": -1}, "lookback must be a non-negative integer"),
    ({"start": "after"}, "start must be one of"),
    ({"keys": "tokens"}, "keys must be one of"),
    ({"end_keys": "tokens"}, "end_keys must be one of"),
    ({"pointers": "gumbel"}, "pointers must be one of"),
    ({"shared_values": "yes"}, "shared_values must be true or false"),
    ({"outside_spans": 1}, "outside_spans must be true or false"),
    ({"outside_spans": True, "outside_floor": 1}, r"outside_floor must be a number in \[0, 1\)"),
    ({"outside_spans": True, "outside_floor": -0.5}, r"outside_floor must be a number in \[0, 1\)"),
    ({"outside_spans": True, "outside_floor": "none"}, r"outside_floor must be a number in \[0, 1\)"),
    ({"outside_floor": 0.0}, "applies with outside_spans = true only"),
    ({"choice_queries": 0}, "choice_queries must be a positive integer"),
    ({"choice_queries": True}, "choice_queries must be a positive integer"),
    ({"step_heads": "yes"}, "step_heads must be true or false"),
    ({"choice_queries": 2}, "apply to choices read from the attended states"),
    ({"step_heads": True}, "apply to choices read from the attended states"),
    ({"choices": "ngrams", "ngram": 0}, "ngram must be a positive integer"),
    ({"choices": "ngrams", "ngram": "3"}, "ngram must be a positive integer"),
    ({"choices": "states", "ngram": 3}, "applies where one of them is 'ngrams' only"),
    ({"keys": "embeddings", "end_keys": "states", "ngram": 3}, "applies where one of them is 'ngrams' only"),
    ({"shared_keys": "no"}, "shared_keys must be true or false"),
    ({"choices": "ngrams", "choice_bag": "yes"}, "choice_bag must be true, false or 'blind'"),
    ({"choices": "ngrams", "choice_bag": 1}, "choice_bag must be true, false or 'blind'"),
    ({"choices": "states", "choice_bag": "blind"}, "applies with choices = 'ngrams' only"),
    ({"choices": "states", "choice_bag": True}, "applies with choices = 'ngrams' only"),
    ({"choices": "ngrams", "blind_choices": 1}, "blind_choices must be true or false"),
    ({"choices": "values", "blind_choices": True}, "applies with choices = 'ngrams' only"),
])
def test_span_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        build_parser("span", 16, TARGETS, UNIT, options)


@pytest.mark.parametrize("keys", ["states", "embeddings"])
def test_span_with_embedding_keys_and_values_reads_the_tokens_alone(keys):
    torch.manual_seed(0)
    parser = build_parser("span", 16, TARGETS, UNIT, {"values": "embeddings", "keys": keys})
    hidden, mask = states()
    embeddings = torch.randn(hidden.shape, generator=torch.Generator().manual_seed(1))
    before = parser(hidden, mask, embeddings=embeddings)
    after = parser(hidden.flip(1), mask, embeddings=embeddings)  # other states, the same tokens
    same = all(torch.allclose(before[k], after[k], atol=1e-6) for k in before)
    assert same == (keys == "embeddings")


def test_span_shared_values_read_other_number_targets_with_the_spans_classifier():
    """An operand that attends to one token has the value the span's classifier gives that token."""
    torch.manual_seed(0)
    parser = build_parser("span", 16, TARGETS, UNIT, {"values": "embeddings", "shared_values": True})
    hidden, mask = states()
    embeddings = torch.randn(hidden.shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        parser.queries["operands"].mul_(0)  # attention spread over the tokens: the mixture of their values
        parser.keys.weight.mul_(0)
    out = parser(hidden, mask, embeddings=embeddings)
    normalised = embeddings / embeddings.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()
    token_values = parser.heads["memory"](normalised).softmax(-1)  # (batch, seq, base): the span's classifier
    real = mask.unsqueeze(-1).float()
    expected = (token_values * real).sum(1) / real.sum(1)  # uniform attention over the real tokens
    got = out["operands"][:, 0]  # (the parser returns distributions)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    own = build_parser("span", 16, TARGETS, UNIT, {"values": "embeddings"})
    own.load_state_dict(parser.state_dict())
    assert not torch.allclose(own(hidden, mask, embeddings=embeddings)["operands"][:, 0], got, atol=1e-3)


def test_span_outside_spans_attends_to_the_tokens_outside_the_span_only():
    """With decided pointers the other targets read exactly what they read with the span's tokens masked out; the
    span itself parses as without the option, and no gradient reaches the pointers through the exclusion."""
    torch.manual_seed(0)
    options = {"values": "embeddings", "shared_values": True, "pointers": "sample", "start": "before"}
    on = build_parser("span", 16, TARGETS, UNIT, {**options, "outside_spans": True}).eval()
    off = build_parser("span", 16, TARGETS, UNIT, options).eval()
    off.load_state_dict(on.state_dict())
    hidden, mask = states()
    embeddings = torch.randn(hidden.shape, generator=torch.Generator().manual_seed(1))
    start, end = on.attend("memory", hidden, mask)
    start, end = (torch.nn.functional.one_hot(x.argmax(-1), x.shape[-1]).float() for x in (start, end))
    inside = span_tokens(start, end, mask.shape[1])
    assert set(inside.unique().tolist()) <= {0.0, 1.0}
    got = on(hidden, mask, embeddings=embeddings)
    masked = mask * (1 - inside).long()
    assert (masked.sum(1) > 0).all() and (masked != mask).any()  # some tokens lie in the span, some outside
    expected = off(hidden, masked, embeddings=embeddings)
    for name in ("operands", "op"):
        torch.testing.assert_close(got[name], expected[name], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got["memory"], off(hidden, mask, embeddings=embeddings)["memory"])
    plain = off(hidden, mask, embeddings=embeddings)
    assert not torch.allclose(plain["operands"], got["operands"], atol=1e-3)  # the exclusion changed something
    on.train()
    on.pointer_mode = "mix"
    out = on(hidden, mask, embeddings=embeddings)
    out["operands"].sum().backward()  # the operands' loss alone
    assert on.pointers["memory"].grad is None or not on.pointers["memory"].grad.any()
    assert on.queries["operands"].grad.abs().sum() > 0


@pytest.mark.parametrize("start", ["before", "at"])
def test_outside_delimiters_keeps_the_other_targets_off_the_spans_delimiters_too(start):
    """With decided pointers the other targets read what they read with the span and its delimiters masked out:
    the start pointer's own token (with start="before") and the end pointer's token."""
    options = {"values": "embeddings", "shared_values": True, "pointers": "sample", "start": start,
               "outside_spans": True}
    hidden, mask = states(seq=9)
    embeddings = torch.randn(hidden.shape, generator=torch.Generator().manual_seed(1))
    for seed in range(50):  # weights whose spans are not empty, with tokens left outside them
        torch.manual_seed(seed)
        on = build_parser("span", 16, TARGETS, UNIT, {**options, "outside_delimiters": True,
                                                     "outside_floor": 0.0}).eval()
        start_p, end_p = on.attend("memory", hidden, mask)
        first, after = start_p.argmax(-1), end_p.argmax(-1)  # the span's first token and the first token after it
        lo = first - 1 if start == "before" else first
        position = torch.arange(mask.shape[1])
        inside = (position >= lo[:, None]) & (position <= after[:, None])  # the span and both delimiters
        masked = mask * (~inside).long()
        if (masked.sum(1) > 0).all() and (after > first).all():
            break
    else:
        pytest.fail("no weights gave every row a span with tokens outside it")
    off = build_parser("span", 16, TARGETS, UNIT, {**options, "outside_spans": False}).eval()
    off.load_state_dict(on.state_dict())
    got = on(hidden, mask, embeddings=embeddings)
    expected = off(hidden, masked, embeddings=embeddings)
    for name in ("operands", "op"):
        torch.testing.assert_close(got[name], expected[name], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="outside_delimiters .* applies with outside_spans = true only"):
        build_parser("span", 16, TARGETS, UNIT, {"outside_delimiters": True})
    with pytest.raises(ValueError, match="outside_delimiters must be true or false"):
        build_parser("span", 16, TARGETS, UNIT, {"outside_spans": True, "outside_delimiters": 1})


def test_outside_prior_floors_the_log_probability_or_forbids_what_is_certainly_inside():
    outside = torch.tensor([[1.0, 0.0, 0.5, 0.0], [0.0, 0.0, 0.0, 1.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])  # the second question: every real token inside
    floored = outside_prior(outside, mask, 1e-6)
    torch.testing.assert_close(floored, torch.log(outside.clamp_min(1e-6)))
    strict = outside_prior(outside, mask, 0.0)
    assert strict[0].tolist() == [0.0, float("-inf"), pytest.approx(float(torch.log(torch.tensor(0.5)))),
                                  float("-inf")]
    assert strict[1].tolist() == [0.0] * 4  # attends as without outside_spans


def test_outside_floor_zero_keeps_a_query_off_the_span_however_strong_its_keys():
    """A query whose logits outweigh log 1e-6 reads a token inside the span at the default floor; with
    outside_floor = 0 it reads exactly what it reads with the span's tokens masked out."""
    torch.manual_seed(0)
    options = {"values": "embeddings", "shared_values": True, "pointers": "sample", "start": "before"}
    strict = build_parser("span", 16, TARGETS, UNIT, {**options, "outside_spans": True, "outside_floor": 0}).eval()
    floored = build_parser("span", 16, TARGETS, UNIT, {**options, "outside_spans": True}).eval()
    off = build_parser("span", 16, TARGETS, UNIT, options).eval()
    hidden, mask = states()
    embeddings = torch.randn(hidden.shape, generator=torch.Generator().manual_seed(1))
    start, end = strict.attend("memory", hidden, mask)
    start, end = (torch.nn.functional.one_hot(x.argmax(-1), x.shape[-1]).float() for x in (start, end))
    inside = span_tokens(start, end, mask.shape[1])
    masked = mask * (1 - inside).long()
    assert (masked.sum(1) > 0).all() and (masked != mask).any()
    # the operands' query aligned with a token inside the span, and scaled far past log 1e-6
    row, where = (int(i) for i in torch.nonzero(inside * mask)[0])
    with torch.no_grad():
        query = strict.queries["operands"]
        query.copy_(strict.key_states(hidden)[row, where].expand_as(query) * 50)
    floored.load_state_dict(strict.state_dict())
    off.load_state_dict(strict.state_dict())
    got, leaky = strict(hidden, mask, embeddings=embeddings), floored(hidden, mask, embeddings=embeddings)
    expected = off(hidden, masked, embeddings=embeddings)
    torch.testing.assert_close(got["operands"], expected["operands"], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(leaky["operands"][row], expected["operands"][row], atol=1e-2)  # the floor leaked
    strict.train()
    strict.pointer_mode = "mix"
    strict(hidden, mask, embeddings=embeddings)["operands"].sum().backward()  # no NaN through the -inf weights
    grads = [p.grad for p in strict.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_span_tokens_is_the_probability_of_lying_in_the_span():
    g = torch.Generator().manual_seed(0)
    start, end = (torch.rand(2, 6, generator=g).softmax(-1) for _ in range(2))
    seq = 5
    got = span_tokens(start, end, seq)
    for b in range(2):  # by enumeration of the (start, end) pairs
        for s in range(seq):
            expected = sum(float(start[b, i] * end[b, j]) for i in range(6) for j in range(6) if i <= s < j)
            assert abs(float(got[b, s]) - expected) < 1e-6


def test_span_end_keys_from_embeddings_make_the_end_pointer_independent_of_the_states():
    torch.manual_seed(0)
    parser = build_parser("span", 16, TARGETS, UNIT, {"values": "embeddings", "end_keys": "embeddings"})
    assert parser.reads_embeddings and parser.end_keys is not None  # a projection of its own
    hidden, mask = states()
    embeddings = torch.randn(hidden.shape, generator=torch.Generator().manual_seed(1))
    normalised = embeddings / embeddings.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()
    start, end = parser.attend("memory", hidden, mask, normalised)
    other_start, other_end = parser.attend("memory", hidden.flip(1), mask, normalised)  # other states
    assert torch.allclose(end, other_end, atol=1e-6)  # the end reads the tokens alone
    assert not torch.allclose(start, other_start, atol=1e-3)  # the start still reads the states
    with pytest.raises(ValueError, match="needs it as end_hidden"):
        parser.attend("memory", hidden, mask)
    same = build_parser("span", 16, TARGETS, UNIT, {"end_keys": "states"})
    assert same.end_keys is None  # the keys' own source: one projection, as without the option


def test_span_pointers_sample_reads_one_drawn_span_and_keeps_its_log_probability():
    torch.manual_seed(0)
    parser = build_parser("span", 16, TARGETS, UNIT, {"values": "embeddings", "start": "before",
                                                      "pointers": "sample"})
    hidden, mask = states()
    embeddings = torch.randn(hidden.shape, generator=torch.Generator().manual_seed(1))
    normalised = embeddings / embeddings.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()
    start, end = parser.attend("memory", hidden, mask)  # the pointers' distributions
    values = parser.heads["memory"](normalised)
    target = TARGETS[2]

    parser.train()
    torch.manual_seed(5)
    out = parser(hidden, mask, embeddings=embeddings)["memory"]
    torch.manual_seed(5)  # the same draws, by hand
    drawn_start = torch.multinomial(start, 1).squeeze(1)
    drawn_end = torch.multinomial(end, 1).squeeze(1)
    one_hot = torch.nn.functional.one_hot
    expected = parser._span(target, one_hot(drawn_start, start.shape[1]).float(),
                            one_hot(drawn_end, end.shape[1]).float(), values).softmax(-1)
    assert torch.allclose(out, expected, atol=1e-6)
    rows = torch.arange(3)
    log_q = start[rows, drawn_start].log() + end[rows, drawn_end].log()
    assert parser.log_q.shape == (3,) and torch.allclose(parser.log_q, log_q, atol=1e-5)
    parser.log_q.sum().backward()  # the score function's gradient reaches the pointers and the keys
    assert parser.pointers["memory"].grad.abs().sum() > 0 and parser.keys.weight.grad.abs().sum() > 0

    parser.eval()  # evaluation: each pointer at its most likely place, nothing drawn
    out = parser(hidden, mask, embeddings=embeddings)["memory"]
    expected = parser._span(target, one_hot(start.argmax(1), start.shape[1]).float(),
                            one_hot(end.argmax(1), end.shape[1]).float(), values).softmax(-1)
    assert torch.allclose(out, expected, atol=1e-6) and parser.log_q is None


def test_augmented_model_trains_sampled_pointers_by_the_score_function():
    small = {"backbone": "llama", "hidden_size": 16, "layers": 1, "heads": 2, "kv_heads": 1, "parser": "span",
             "parser_options": {"values": "embeddings", "pointers": "sample"}}
    task = build_task("sort", {"lengths": [2], "examples": 16, "alphabet": "abcd"}, seed=0)
    model = build_model(small, {"alu": "lookup", "base": 128}, task)
    batch = task.dataset("train").tensors
    model.train()
    out = model(batch)
    assert model.parser.log_q is not None and model.parser.log_q.shape == (len(batch["answer"]),)
    out.loss.backward()
    assert model.parser.pointers["memory"].grad.abs().sum() > 0
    model.zero_grad()
    model.parser.pointer_mode = "mix"  # without draws there is no score function, and the pointers still learn
    model(batch).loss.backward()
    assert model.parser.log_q is None and model.parser.pointers["memory"].grad.abs().sum() > 0


def test_span_mixed_share_keeps_the_first_rows_on_the_mixture():
    torch.manual_seed(0)
    options = {"values": "embeddings", "pointers": "sample"}
    sampled = build_parser("span", 16, TARGETS, UNIT, {**options, "mixed_share": 0.5})
    mixed = build_parser("span", 16, TARGETS, UNIT, {"values": "embeddings"})
    mixed.load_state_dict(sampled.state_dict())
    hidden, mask = states(batch=4)
    mask[0, 5:] = 0
    embeddings = torch.randn(hidden.shape, generator=torch.Generator().manual_seed(1))
    sampled.train()
    mixed.train()
    out = sampled(hidden, mask, embeddings=embeddings)["memory"]
    reference = mixed(hidden, mask, embeddings=embeddings)["memory"]
    assert torch.allclose(out[:2], reference[:2], atol=1e-6)  # rows 0, 1: the mixture
    assert not torch.allclose(out[2:], reference[2:], atol=1e-3)  # rows 2, 3: one drawn span each
    assert torch.equal(sampled.log_q[:2], torch.zeros(2)) and torch.all(sampled.log_q[2:] < 0)
    with pytest.raises(ValueError, match="mixed_share applies to pointers = 'sample' only"):
        build_parser("span", 16, TARGETS, UNIT, {"mixed_share": 0.5})
    with pytest.raises(ValueError, match="mixed_share must be a number in \\[0, 1\\)"):
        build_parser("span", 16, TARGETS, UNIT, {**options, "mixed_share": 1.0})


CHAIN = (Target("program", 2, 5), Target("operands", 2), Target("memory", 5))


@pytest.mark.parametrize("name", ["attention", "span"])
def test_choice_queries_and_step_heads_read_each_outputs_queries_side_by_side(name):
    """Each chain step's three queries attend on their own; its classifier (its own, with step_heads) reads their
    attended states concatenated: written out by hand, in float64."""
    torch.manual_seed(0)
    options = {"values": "embeddings", "choices": "states", "choice_queries": 3, "step_heads": True}
    parser = build_parser(name, 16, CHAIN, UNIT, options).double()
    hidden, mask = states(dtype=torch.float64)
    embeddings = torch.randn(hidden.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = parser(hidden, mask, embeddings=embeddings)["program"]  # (batch, 2, 5) distributions
    assert parser.queries["program"].shape == (6, parser.key_size)
    assert parser.heads["program"].weight.shape == (10, 48)
    keys = parser.key_states(hidden)
    head = parser.heads["program"]
    for step in range(2):
        q = parser.queries["program"][3 * step: 3 * step + 3]  # (3, key): this step's queries
        logits = torch.einsum("bsk,qk->bqs", keys, q) / parser.key_size ** 0.5
        weights = logits.masked_fill(~mask.bool()[:, None], float("-inf")).softmax(-1)
        read = torch.einsum("bqs,bsh->bqh", weights, hidden).flatten(1)  # (batch, 3 * hidden)
        rows = slice(5 * step, 5 * step + 5)  # this step's classifier
        expected = (read @ head.weight[rows].T + head.bias[rows]).softmax(-1)
        torch.testing.assert_close(got[:, step], expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name, options", [
    ("attention", {"choices": "states"}),  # the choices read the states: checked against them
    ("span", {"choices": "ngrams", "ngram": 2, "keys": "ngrams", "shared_keys": False}),  # against the embeddings
])
def test_choice_queries_and_step_heads_gradcheck(name, options):
    torch.manual_seed(0)
    parser = build_parser(name, 8, CHAIN, UNIT, {**options, "values": "embeddings", "choice_queries": 2,
                                                 "step_heads": True}).double()
    hidden, mask = states(hidden=8, dtype=torch.float64)
    embeddings = torch.randn(hidden.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    if options["choices"] == "states":
        check = lambda h: parser(h, mask, embeddings=embeddings)["program"]  # noqa: E731
        hidden.requires_grad_()
        assert torch.autograd.gradcheck(check, (hidden,))
    else:
        check = lambda e: parser(hidden, mask, embeddings=e)["program"]  # noqa: E731
        embeddings.requires_grad_()
        assert torch.autograd.gradcheck(check, (embeddings,))


def test_one_choice_query_and_shared_heads_are_the_plain_parser():
    """The defaults keep the weights' shapes and the outputs of a parser built before the options existed."""
    torch.manual_seed(0)
    plain = build_parser("span", 16, CHAIN, UNIT, {"values": "embeddings", "choices": "states"})
    same = build_parser("span", 16, CHAIN, UNIT, {"values": "embeddings", "choices": "states",
                                                   "choice_queries": 1, "step_heads": False})
    same.load_state_dict(plain.state_dict())  # the same names and shapes
    hidden, mask = states()
    embeddings = torch.randn(hidden.shape, generator=torch.Generator().manual_seed(1))
    for key, value in plain(hidden, mask, embeddings=embeddings).items():
        torch.testing.assert_close(same(hidden, mask, embeddings=embeddings)[key], value)


def _grams_by_hand(parser, embeddings, normalise=True):
    """Each token's n-gram feature, written out: silu(W [e_s; e_(s-1); ...] + b), zeros before the question (the
    embeddings RMS-normalised first, unless ``normalise`` is false)."""
    e = embeddings * torch.rsqrt(embeddings.pow(2).mean(-1, keepdim=True) + 1e-6) if normalise else embeddings
    batch, seq, size = e.shape
    out = torch.zeros(batch, seq, size, dtype=e.dtype)
    for s in range(seq):
        window = torch.cat([e[:, s - k] if s - k >= 0 else torch.zeros(batch, size, dtype=e.dtype)
                            for k in range(parser.ngram)], dim=-1)
        out[:, s] = torch.nn.functional.silu(window @ parser.grams.weight.T + parser.grams.bias)
    return out


@pytest.mark.parametrize("name", ["attention", "span"])
def test_ngram_choices_read_the_attended_ngrams(name):
    """choices = 'ngrams': each chain step's two queries attend by the n-grams' own keys, and its classifier reads
    the attended n-gram features side by side; the numbers read as before. Written out by hand, in float64."""
    torch.manual_seed(0)
    options = {"values": "embeddings", "choices": "ngrams", "ngram": 3, "choice_queries": 2, "step_heads": True}
    parser = build_parser(name, 16, CHAIN, UNIT, options).double()
    assert parser.reads_embeddings and parser.grams.weight.shape == (16, 48)
    hidden, mask = states(dtype=torch.float64)
    embeddings = torch.randn(hidden.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = parser(hidden, mask, embeddings=embeddings)
    grams = _grams_by_hand(parser, embeddings)
    keys = grams @ parser.choice_keys.weight.T
    head = parser.heads["program"]
    for step in range(2):
        q = parser.queries["program"][2 * step: 2 * step + 2]
        logits = torch.einsum("bsk,qk->bqs", keys, q) / parser.key_size ** 0.5
        weights = logits.masked_fill(~mask.bool()[:, None], float("-inf")).softmax(-1)
        read = torch.einsum("bqs,bsh->bqh", weights, grams).flatten(1)  # (batch, 2 * hidden)
        rows = slice(5 * step, 5 * step + 5)
        expected = (read @ head.weight[rows].T + head.bias[rows]).softmax(-1)
        torch.testing.assert_close(got["program"][:, step], expected, rtol=1e-10, atol=1e-12)
    # the numbers do not read the n-grams: the same as a parser whose choices read the states
    plain = build_parser(name, 16, CHAIN, UNIT, {"values": "embeddings", "choices": "states"}).double()
    plain.load_state_dict({k: v for k, v in parser.state_dict().items()
                           if not k.startswith(("grams", "choice_keys", "heads.program", "queries.program"))},
                          strict=False)
    reference = plain(hidden, mask, embeddings=embeddings)
    for key in ("operands", "memory"):
        torch.testing.assert_close(got[key], reference[key])


def _check_bagged_choices(got, parser, grams, bag_grams, prior, mask):
    """Each of the two chain steps' choice, written out: its query attends over ``grams`` by their keys (with the
    prior), and its classifier reads the attended n-gram beside the bag, per feature ``max_s (bag_grams_s +
    prior_s)`` over the real tokens."""
    bag = torch.stack([torch.stack([max(bag_grams[b, s, h] + prior[b, s] for s in range(mask.shape[1]) if mask[b, s])
                                    for h in range(bag_grams.shape[-1])]) for b in range(mask.shape[0])])
    keys = grams @ parser.choice_keys.weight.T
    head = parser.heads["program"]
    for step in range(2):
        logits = torch.einsum("bsk,k->bs", keys, parser.queries["program"][step]) / parser.key_size ** 0.5
        weights = (logits + prior).masked_fill(~mask.bool(), float("-inf")).softmax(-1)
        read = torch.cat([torch.einsum("bs,bsh->bh", weights, grams), bag], dim=-1)  # (batch, 2 * hidden)
        rows = slice(5 * step, 5 * step + 5)
        expected = (read @ head.weight[rows].T + head.bias[rows]).softmax(-1)
        torch.testing.assert_close(got[:, step], expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["attention", "span"])
def test_a_choice_bag_adds_the_questions_largest_ngram_features(name):
    """choice_bag = true: each chain step's classifier reads its attended n-gram and, beside it, the bag: per
    feature, the largest over the question's real tokens of the n-gram feature plus the outside_spans prior
    (the span parser's, from its pointers; none for the attention parser). Written out by hand, in float64."""
    torch.manual_seed(0)
    options = {"values": "embeddings", "choices": "ngrams", "ngram": 3, "step_heads": True, "choice_bag": True,
               **({"outside_spans": True} if name == "span" else {})}
    parser = build_parser(name, 16, CHAIN, UNIT, options).double()
    assert parser.heads["program"].weight.shape == (10, 32)  # two steps' classifiers, each over 2 * hidden
    assert parser.heads["operands"].weight.shape == (10, 16)  # the numbers read no bag
    with torch.no_grad():  # the bag's weights start at 0: drawn here, so that the bag is read
        parser.heads["program"].weight[:, 16:] = torch.randn(10, 16, dtype=torch.float64) / 4
    hidden, mask = states(dtype=torch.float64)
    embeddings = torch.randn(hidden.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = parser(hidden, mask, embeddings=embeddings)
    grams = _grams_by_hand(parser, embeddings)
    prior = torch.zeros(mask.shape, dtype=torch.float64)
    if name == "span":  # the tokens' log P(outside the span), at least log 1e-6
        start, end = parser.attend("memory", hidden, mask, embeddings * torch.rsqrt(
            embeddings.pow(2).mean(-1, keepdim=True) + 1e-6))
        prior = torch.log((1 - span_tokens(start, end, mask.shape[1])).clamp_min(1e-6))
        assert (prior < -0.01).any()  # the prior leaves some token out: the check below says something
    _check_bagged_choices(got["program"], parser, grams, grams, prior, mask)
    # the numbers read as without the bag
    plain = build_parser(name, 16, CHAIN, UNIT, {**options, "choice_bag": False}).double()
    plain.load_state_dict({k: v for k, v in parser.state_dict().items() if not k.startswith("heads.program")},
                          strict=False)
    reference = plain(hidden, mask, embeddings=embeddings)
    for key in ("operands", "memory"):
        torch.testing.assert_close(got[key], reference[key])


def test_a_choice_bag_reads_neither_padding_nor_a_certain_span():
    """The bag is a set of the question's n-grams outside its spans: padding after the question changes nothing,
    a token certainly inside a span (outside_floor 0) adds nothing, and the order of the tokens is not read."""
    from diffcomp.plugins.parsers import bag_of_grams
    g = torch.Generator().manual_seed(3)
    grams = torch.randn(2, 6, 4, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    bag = bag_of_grams(grams, mask, None)
    torch.testing.assert_close(bag[0], grams[0, :4].amax(0))
    padded = grams.clone()
    padded[0, 4:] = 100.0  # padding: never read
    torch.testing.assert_close(bag_of_grams(padded, mask, None), bag)
    prior = torch.zeros(2, 6, dtype=torch.float64)
    prior[1, 2:4] = float("-inf")  # certainly inside a span
    torch.testing.assert_close(bag_of_grams(grams, mask, prior)[1], grams[1, [0, 1, 4, 5]].amax(0))
    shuffled = grams[:, [3, 1, 0, 2, 4, 5]]
    torch.testing.assert_close(bag_of_grams(shuffled, mask, None), bag)


@pytest.mark.parametrize("name", ["attention", "span"])
def test_a_choice_bag_gradcheck(name):
    torch.manual_seed(0)
    options = {"values": "embeddings", "choices": "ngrams", "ngram": 2, "step_heads": True, "choice_bag": True,
               **({"outside_spans": True} if name == "span" else {})}
    parser = build_parser(name, 8, CHAIN, UNIT, options).double()
    with torch.no_grad():  # the bag's weights, drawn (they start at 0)
        parser.heads["program"].weight[:, 8:] = torch.randn(10, 8, dtype=torch.float64) / 2
    hidden, mask = states(hidden=8, dtype=torch.float64)
    embeddings = torch.randn(hidden.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    embeddings.requires_grad_()
    assert torch.autograd.gradcheck(lambda e: parser(hidden, mask, embeddings=e)["program"], (embeddings,))


def test_a_choice_bag_starts_silent():
    """The bag's weights start at 0: a new parser with choice_bag chooses as the same parser without it, and the
    bag's weights still get a gradient."""
    torch.manual_seed(0)
    options = {"values": "embeddings", "choices": "ngrams", "ngram": 3, "step_heads": True, "outside_spans": True}
    bagged = build_parser("span", 16, CHAIN, UNIT, {**options, "choice_bag": True})
    plain = build_parser("span", 16, CHAIN, UNIT, options)
    state = bagged.state_dict()
    assert (state["heads.program.weight"][:, 16:] == 0).all() and state["heads.program.weight"][:, :16].abs().sum() > 0
    state["heads.program.weight"] = state["heads.program.weight"][:, :16]
    plain.load_state_dict(state)
    hidden, mask = states()
    embeddings = torch.randn(hidden.shape, generator=torch.Generator().manual_seed(1))
    got = bagged(hidden, mask, embeddings=embeddings)["program"]
    torch.testing.assert_close(got, plain(hidden, mask, embeddings=embeddings)["program"])
    got.log_softmax(-1)[:, :, 0].sum().backward()
    assert bagged.heads["program"].weight.grad[:, 16:].abs().sum() > 0


def _blanked_by_hand(parser, name, hidden, mask):
    """The outside_spans prior (log P(outside the span), at least log 1e-6; zeros for the attention parser) and
    each token's blank b: the most any number output attends to it, or its probability of lying in a span."""
    prior = torch.zeros(mask.shape, dtype=torch.float64)
    numbers = [("operands", parser.key_states(hidden))]
    if name == "span":
        start, end = parser.attend("memory", hidden, mask)
        prior = torch.log((1 - span_tokens(start, end, mask.shape[1])).clamp_min(1e-6))
    else:
        numbers.append(("memory", parser.key_states(hidden)))
    blank = 1 - prior.exp()
    for target, keys in numbers:  # each number output's attention
        logits = torch.einsum("bsk,ck->bcs", keys, parser.queries[target]) / parser.key_size ** 0.5
        weights = (logits + prior.unsqueeze(1)).masked_fill(~mask.bool()[:, None], float("-inf")).softmax(-1)
        blank = torch.maximum(blank, weights.amax(1))
    assert blank.max() > 0.3  # something is blanked: the checks that use it say something
    return prior, blank


@pytest.mark.parametrize("name", ["attention", "span"])
def test_blind_choices_read_ngrams_with_the_numbers_and_spans_blanked(name):
    """blind_choices = true: the choices read n-grams of the question whose tokens are scaled by 1 - b, b the most
    any number output attends to the token (and, with outside_spans, its probability of lying in a span): the
    argument's value and the string are blanked. Written out by hand, in float64; the numbers read as without."""
    torch.manual_seed(0)
    options = {"values": "embeddings", "choices": "ngrams", "ngram": 3, "step_heads": True, "blind_choices": True,
               **({"outside_spans": True} if name == "span" else {})}
    parser = build_parser(name, 16, CHAIN, UNIT, options).double()
    with torch.no_grad():  # sharper attention than at initialisation: the numbers' tokens stand out
        for queries in parser.queries.values():
            queries.mul_(8)
    hidden, mask = states(dtype=torch.float64)
    embeddings = torch.randn(hidden.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = parser(hidden, mask, embeddings=embeddings)
    plain = build_parser(name, 16, CHAIN, UNIT, {**options, "blind_choices": False}).double()
    plain.load_state_dict(parser.state_dict())
    reference = plain(hidden, mask, embeddings=embeddings)
    for key in ("operands", "memory"):
        torch.testing.assert_close(got[key], reference[key])
    normalised = embeddings * torch.rsqrt(embeddings.pow(2).mean(-1, keepdim=True) + 1e-6)
    prior, blank = _blanked_by_hand(parser, name, hidden, mask)
    grams = _grams_by_hand(parser, normalised * (1 - blank).unsqueeze(-1), normalise=False)
    keys = grams @ parser.choice_keys.weight.T
    head = parser.heads["program"]
    for step in range(2):
        logits = torch.einsum("bsk,k->bs", keys, parser.queries["program"][step]) / parser.key_size ** 0.5
        weights = (logits + prior).masked_fill(~mask.bool(), float("-inf")).softmax(-1)
        rows = slice(5 * step, 5 * step + 5)
        expected = (torch.einsum("bs,bsh->bh", weights, grams) @ head.weight[rows].T + head.bias[rows]).softmax(-1)
        torch.testing.assert_close(got["program"][:, step], expected, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(got["program"], reference["program"])


@pytest.mark.parametrize("name", ["attention", "span"])
def test_a_blind_bag_pools_ngrams_with_the_numbers_and_spans_blanked(name):
    """choice_bag = 'blind': the bag is pooled from n-grams of the question whose tokens are scaled by 1 - b (b as
    for blind_choices: the most any number output attends to the token, and its probability of lying in a span),
    while the queries attend over, and read, the open n-grams. Written out by hand, in float64."""
    torch.manual_seed(0)
    options = {"values": "embeddings", "choices": "ngrams", "ngram": 3, "step_heads": True, "choice_bag": "blind",
               **({"outside_spans": True} if name == "span" else {})}
    parser = build_parser(name, 16, CHAIN, UNIT, options).double()
    with torch.no_grad():  # sharper attention than at initialisation, and the bag's weights drawn (they start at 0)
        for queries in parser.queries.values():
            queries.mul_(8)
        parser.heads["program"].weight[:, 16:] = torch.randn(10, 16, dtype=torch.float64) / 4
    hidden, mask = states(dtype=torch.float64)
    embeddings = torch.randn(hidden.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = parser(hidden, mask, embeddings=embeddings)
    normalised = embeddings * torch.rsqrt(embeddings.pow(2).mean(-1, keepdim=True) + 1e-6)
    prior, blank = _blanked_by_hand(parser, name, hidden, mask)
    open_grams = _grams_by_hand(parser, embeddings)
    blind_grams = _grams_by_hand(parser, normalised * (1 - blank).unsqueeze(-1), normalise=False)
    _check_bagged_choices(got["program"], parser, open_grams, blind_grams, prior, mask)
    # against the open bag: the same weights choose otherwise, and the numbers read alike
    opened = build_parser(name, 16, CHAIN, UNIT, {**options, "choice_bag": True}).double()
    opened.load_state_dict(parser.state_dict())
    reference = opened(hidden, mask, embeddings=embeddings)
    for key in ("operands", "memory"):
        torch.testing.assert_close(got[key], reference[key])
    assert not torch.allclose(got["program"], reference["program"])


@pytest.mark.parametrize("blind, bag", [(True, False), (True, True), (False, "blind"), (True, "blind")])
def test_blind_choices_gradcheck(blind, bag):
    torch.manual_seed(0)
    parser = build_parser("span", 8, CHAIN, UNIT, {"values": "embeddings", "choices": "ngrams", "ngram": 2,
                                                   "step_heads": True, "blind_choices": blind, "choice_bag": bag,
                                                   "outside_spans": True}).double()
    with torch.no_grad():
        parser.heads["program"].weight.normal_(0, 0.5)
    hidden, mask = states(hidden=8, dtype=torch.float64)
    embeddings = torch.randn(hidden.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    embeddings.requires_grad_()
    assert torch.autograd.gradcheck(lambda e: parser(hidden, mask, embeddings=e)["program"], (embeddings,))


def test_a_stage_may_open_or_blind_the_choices():
    """blind_choices is a stage option (the weights are the same either way): set for a stage and given back, and
    refused on a parser whose choices do not read n-grams."""
    options = {"values": "embeddings", "choices": "ngrams", "ngram": 3, "outside_spans": True}
    parser = build_parser("span", 16, CHAIN, UNIT, {**options, "blind_choices": True})
    hidden, mask = states()
    embeddings = torch.randn(hidden.shape, generator=torch.Generator().manual_seed(1))
    blind = parser(hidden, mask, embeddings=embeddings)["program"]
    assert parser.set_stage_options(blind_choices=False) == {"blind_choices": True}
    opened = parser(hidden, mask, embeddings=embeddings)["program"]
    plain = build_parser("span", 16, CHAIN, UNIT, options)
    plain.load_state_dict(parser.state_dict())
    torch.testing.assert_close(opened, plain(hidden, mask, embeddings=embeddings)["program"])
    assert not torch.allclose(opened, blind)
    parser.set_stage_options(blind_choices=True)
    torch.testing.assert_close(parser(hidden, mask, embeddings=embeddings)["program"], blind)
    with pytest.raises(ValueError, match="applies with choices = 'ngrams' only"):
        build_parser("span", 16, CHAIN, UNIT, {"values": "embeddings"}).set_stage_options(blind_choices=True)
    with pytest.raises(ValueError, match="blind_choices must be true or false"):
        parser.set_stage_options(blind_choices="yes")


@pytest.mark.parametrize("bag", [False, True])
def test_choice_dropout_drops_what_a_choice_reads_in_training_only(bag):
    """choice_dropout = p: in training, each feature a choice's classifier reads (its attended n-gram, and the bag)
    is 0 or its value / (1 - p), about a share p of them 0; the numbers and spans read as without it, and
    evaluation reads every feature."""
    torch.manual_seed(0)
    options = {"values": "embeddings", "choices": "ngrams", "ngram": 3, "step_heads": True, "outside_spans": True,
               "choice_bag": bag}
    parser = build_parser("span", 16, CHAIN, UNIT, {**options, "choice_dropout": 0.3}).double()
    plain = build_parser("span", 16, CHAIN, UNIT, options).double()
    plain.load_state_dict(parser.state_dict())
    read = {}
    for name, module in (("dropped", parser), ("plain", plain)):
        module.heads["program"].register_forward_pre_hook(lambda m, args, name=name: read.update({name: args[0]}))
    hidden, mask = states(dtype=torch.float64)
    embeddings = torch.randn(hidden.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    parser.eval(), plain.eval()
    evaluated, reference = parser(hidden, mask, embeddings=embeddings), plain(hidden, mask, embeddings=embeddings)
    for key in evaluated:
        torch.testing.assert_close(evaluated[key], reference[key])
    parser.train(), plain.train()
    got, reference = parser(hidden, mask, embeddings=embeddings), plain(hidden, mask, embeddings=embeddings)
    for key in ("operands", "memory"):
        torch.testing.assert_close(got[key], reference[key])
    dropped, full = read["dropped"], read["plain"]
    assert dropped.shape == full.shape == (mask.shape[0], 2, 16 * (1 + bag))
    kept = dropped != 0
    torch.testing.assert_close(dropped[kept], full[kept] / 0.7)
    assert 0.2 < 1 - kept.double().mean() < 0.4
    head = parser.heads["program"]
    for step in range(2):  # the classifier reads the dropped features
        rows = slice(5 * step, 5 * step + 5)
        expected = (dropped[:, step] @ head.weight[rows].T + head.bias[rows]).softmax(-1)
        torch.testing.assert_close(got["program"][:, step], expected)


def test_choice_dropout_is_a_stage_option_and_bad_values_are_refused():
    options = {"values": "embeddings", "choices": "ngrams", "ngram": 3}
    parser = build_parser("span", 16, CHAIN, UNIT, options)
    assert parser.set_stage_options(choice_dropout=0.5) == {"choice_dropout": 0.0}
    assert parser.choice_dropout == 0.5
    parser.set_stage_options(choice_dropout=0.0)
    assert parser.choice_dropout == 0.0
    for bad in (1, -0.1, True, "half"):
        with pytest.raises(ValueError, match=r"choice_dropout must be a number in \[0, 1\)"):
            build_parser("span", 16, CHAIN, UNIT, {**options, "choice_dropout": bad})
        with pytest.raises(ValueError, match=r"choice_dropout must be a number in \[0, 1\)"):
            parser.set_stage_options(choice_dropout=bad)
    with pytest.raises(ValueError, match="applies to choices read from the attended states or n-grams"):
        build_parser("span", 16, CHAIN, UNIT, {"values": "embeddings", "choice_dropout": 0.2})


@pytest.mark.parametrize("name, options, numbers", [
    ("span", {"values": "embeddings", "outside_spans": True, "shared_values": True}, ("operands",)),  # not the span
    ("attention", {"values": "tokens"}, ("operands", "memory")),  # uniform over the question's tokens
])
def test_argument_spread_mixes_a_numbers_attention_with_the_uniform_one_in_training(name, options, numbers):
    """argument_spread = e: in training a number target (not a choice, not a span) reads its tokens' values by
    (1 - e) * its attention + e * the uniform attention (outside the spans). The tokens' values mix linearly, so its
    distribution is (1 - e) * the plain parser's + e * that of a query attending uniformly (zero query: the
    logits are the outside prior alone); the choice and a span are the plain parser's; evaluation is too."""
    torch.manual_seed(0)
    spread = build_parser(name, 16, TARGETS, UNIT, {**options, "argument_spread": 0.25}).double()
    plain = build_parser(name, 16, TARGETS, UNIT, options).double()
    plain.load_state_dict(spread.state_dict())
    uniform = build_parser(name, 16, TARGETS, UNIT, options).double()
    uniform.load_state_dict(spread.state_dict())
    with torch.no_grad():
        for key in numbers:
            uniform.queries[key].zero_()
    hidden, mask = states(dtype=torch.float64)
    embeddings = torch.randn(hidden.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got, want, even = (p(hidden, mask, embeddings=embeddings) for p in (spread, plain, uniform))
    for key in numbers:
        torch.testing.assert_close(got[key], 0.75 * want[key] + 0.25 * even[key])
        assert not torch.allclose(got[key], want[key])
    for key in {"op", "memory"} - set(numbers):
        torch.testing.assert_close(got[key], want[key])
    spread.eval(), plain.eval()
    for key, value in spread(hidden, mask, embeddings=embeddings).items():
        torch.testing.assert_close(value, plain(hidden, mask, embeddings=embeddings)[key])


def test_argument_spread_is_exact_on_one_hot_attention_and_gradchecks():
    """With the attention one-hot (queries far along one token's key), evaluation reads that token's value exactly,
    and training reads it with share 1 - e, the uniform mixture with e; the spread parser gradchecks in float64."""
    torch.manual_seed(0)
    options = {"values": "embeddings", "outside_spans": True, "argument_spread": 0.5}
    parser = build_parser("span", 16, TARGETS, UNIT, options).double()
    hidden, mask = states(dtype=torch.float64)
    embeddings = torch.randn(hidden.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():  # both outputs' queries far along token 1's key in question 1 (the shared keys)
        parser.queries["operands"].copy_(1e3 * parser.key_states(hidden)[1, 1].expand(2, -1))
        uniform = build_parser("span", 16, TARGETS, UNIT, options).double()
        uniform.load_state_dict(parser.state_dict())
        uniform.queries["operands"].zero_()
    parser.eval(), uniform.eval()
    learned = parser(hidden, mask, embeddings=embeddings)["operands"][1]
    token = embeddings[1, 1] * torch.rsqrt(embeddings[1, 1].pow(2).mean() + 1e-6)  # its normalised embedding
    value = parser.heads["operands"](token).softmax(-1)
    torch.testing.assert_close(learned, value.expand(2, -1))
    even = uniform(hidden, mask, embeddings=embeddings)["operands"][1]
    parser.train()
    torch.testing.assert_close(parser(hidden, mask, embeddings=embeddings)["operands"][1], 0.5 * learned + 0.5 * even)
    with torch.no_grad():
        parser.queries["operands"].normal_()
    embeddings.requires_grad_()
    assert torch.autograd.gradcheck(lambda e: parser(hidden, mask, embeddings=e)["operands"], (embeddings,))


def test_argument_spread_is_a_stage_option_and_bad_values_are_refused():
    parser = build_parser("span", 16, TARGETS, UNIT, {"values": "embeddings"})
    assert parser.set_stage_options(argument_spread=0.2) == {"argument_spread": 0.0}
    assert parser.argument_spread == 0.2
    for bad in (1, -0.1, True, "some"):
        with pytest.raises(ValueError, match=r"argument_spread must be a number in \[0, 1\)"):
            build_parser("span", 16, TARGETS, UNIT, {"values": "embeddings", "argument_spread": bad})
        with pytest.raises(ValueError, match=r"argument_spread must be a number in \[0, 1\)"):
            parser.set_stage_options(argument_spread=bad)
    assert parser.argument_spread == 0.2  # a refused change leaves the option as it was


#: (parser, options, its number targets read from tokens' values) for the bounded-logit options' tests
NUMBER_READERS = [
    ("span", {"values": "embeddings", "outside_spans": True, "shared_values": True}, ("operands",)),  # not the span
    ("attention", {"values": "tokens"}, ("operands", "memory")),
]


def bounded_and_plain(name: str, options: dict, setting: dict, numbers: tuple[str, ...], query_scale: float):
    """A parser with ``setting`` (eval mode, float64) and the plain parser with its weights, the number targets'
    queries scaled by ``query_scale``, and the parsers' scores on random states; the other targets are checked
    equal. Returns the bounded parser, both scores, the inputs and what each number target attended with."""
    torch.manual_seed(0)
    bounded = build_parser(name, 16, TARGETS, UNIT, {**options, **setting}).double().eval()
    plain = build_parser(name, 16, TARGETS, UNIT, options).double().eval()
    with torch.no_grad():
        for key in numbers:
            bounded.queries[key].mul_(query_scale)
    plain.load_state_dict(bounded.state_dict())
    hidden, mask = states(dtype=torch.float64)
    embeddings = torch.randn(hidden.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    calls, attend = [], bounded._weights

    def record(queries, bias, keys, mask, prior=None, **bounds):
        if any(v is not None for v in bounds.values()):
            calls.append((queries, keys, prior))
        return attend(queries, bias, keys, mask, prior, **bounds)
    bounded._weights = record
    got, want = bounded.scores(hidden, mask, embeddings), plain.scores(hidden, mask, embeddings)
    for key in set(got) - set(numbers):
        torch.testing.assert_close(got[key], want[key])
    by_query = {id(bounded.queries[key]): key for key in numbers}
    attended = {by_query[id(queries)]: (queries, keys, prior) for queries, keys, prior in calls}
    assert sorted(attended) == sorted(numbers) and len(calls) == len(numbers)
    return bounded, plain, got, want, (hidden, mask, embeddings), attended


def assert_reads_by(bounded, got, want, inputs, attended, name: str, logits_of) -> None:
    """Each number target's scores are its tokens' values mixed by softmax(logits_of(queries, keys) + prior)."""
    hidden, mask, embeddings = inputs
    tokens = embeddings * torch.rsqrt(embeddings.pow(2).mean(-1, keepdim=True) + 1e-6) if name == "span" else hidden
    for key, (queries, keys, prior) in attended.items():
        logits = logits_of(queries, keys) + (0 if prior is None else prior[:, None, :])
        weights = logits.masked_fill(~mask.bool()[:, None, :], float("-inf")).softmax(-1)  # (batch, count, seq)
        target = next(t for t in bounded.targets if t.name == key)
        # the tokens' values mixed by these weights, as every number target mixes them (tested with the plain parser)
        torch.testing.assert_close(got[key], bounded._mixed_tokens(target, weights, bounded.value_head(target)(tokens)))
        assert not torch.allclose(got[key], want[key])


@pytest.mark.parametrize("name, options, numbers", NUMBER_READERS)
def test_argument_scale_attends_by_cosine_similarity(name, options, numbers):
    """argument_scale = c: a number target read from its tokens' values (not a choice, not a span) attends by
    softmax(c cos(q, k) + prior); the logits stay in [-c, c] however long the query grows (the prior, log
    outside_floor, then always decides); the other targets are the plain parser's."""
    cosine, _, got, want, inputs, attended = bounded_and_plain(name, options, {"argument_scale": 3.0}, numbers, 1.0)

    def logits_of(queries, keys):
        unit_k, unit_q = keys / keys.norm(dim=-1, keepdim=True), queries / queries.norm(dim=-1, keepdim=True)
        logits = 3.0 * torch.einsum("bsk,ck->bcs", unit_k, unit_q)
        assert logits.abs().max() <= 3.0 + 1e-12
        return logits
    assert_reads_by(cosine, got, want, inputs, attended, name, logits_of)
    with torch.no_grad():  # queries a thousand times longer attend the same
        for key in numbers:
            cosine.queries[key].mul_(1e3)
    longer = cosine.scores(inputs[0], inputs[1], inputs[2])
    for key in numbers:
        torch.testing.assert_close(longer[key], got[key])


def test_argument_scale_is_exact_on_one_hot_attention_and_gradchecks():
    """With a large scale and the query along one token's key, the attention is one-hot and the number reads that
    token's value exactly; the cosine parser gradchecks in float64, through the query and the embeddings."""
    torch.manual_seed(0)
    options = {"values": "embeddings", "outside_spans": True, "argument_scale": 200.0}
    parser = build_parser("span", 16, TARGETS, UNIT, options).double()
    hidden, mask = states(dtype=torch.float64)
    embeddings = torch.randn(hidden.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        parser.queries["operands"].copy_(parser.key_states(hidden)[1, 1].expand(2, -1))
    prior_free = {"values": "embeddings", "argument_scale": 200.0}
    free = build_parser("span", 16, TARGETS, UNIT, prior_free).double()
    free.load_state_dict(parser.state_dict())
    learned = free(hidden, mask, embeddings=embeddings)["operands"][1]
    token = embeddings[1, 1] * torch.rsqrt(embeddings[1, 1].pow(2).mean() + 1e-6)  # its normalised embedding
    torch.testing.assert_close(learned, free.heads["operands"](token).softmax(-1).expand(2, -1))
    scaled = build_parser("span", 16, TARGETS, UNIT, {**options, "argument_scale": 2.0}).double()
    scaled.load_state_dict(parser.state_dict())
    with torch.no_grad():
        scaled.queries["operands"].normal_()
    embeddings.requires_grad_()
    assert torch.autograd.gradcheck(lambda e: scaled(hidden, mask, embeddings=e)["operands"], (embeddings,))
    query = scaled.queries["operands"].detach().clone().requires_grad_()

    def through_query(q):  # the parser with its query replaced by q
        return torch.func.functional_call(scaled, {"queries.operands": q}, (hidden, mask),
                                          {"embeddings": embeddings.detach()})["operands"]
    assert torch.autograd.gradcheck(through_query, (query,))


@pytest.mark.parametrize("name, options, numbers", NUMBER_READERS)
def test_argument_cap_soft_caps_a_numbers_attention_logits(name, options, numbers):
    """argument_cap = c: a number target read from its tokens' values attends by softmax(c tanh(q k / (c sqrt(d)))
    + prior): the plain logits where they are small, never beyond c; the other targets are the plain parser's."""
    # queries long enough that some logits pass the cap
    capped, plain, got, want, inputs, attended = bounded_and_plain(name, options, {"argument_cap": 2.0}, numbers, 20.0)

    def logits_of(queries, keys):
        raw = torch.einsum("bsk,ck->bcs", keys, queries) / math.sqrt(capped.key_size)
        assert raw.abs().max() > 2.0  # the cap binds somewhere
        return 2.0 * torch.tanh(raw / 2.0)
    assert_reads_by(capped, got, want, inputs, attended, name, logits_of)
    with torch.no_grad():  # small logits: the capped parser reads as the plain one, to within (l/c)^2 / 3
        for key in numbers:
            capped.queries[key].mul_(1e-3)
            plain.queries[key].mul_(1e-3)
    small, plain_small = capped.scores(*inputs), plain.scores(*inputs)
    for key in numbers:
        torch.testing.assert_close(small[key], plain_small[key], rtol=1e-5, atol=1e-6)


def test_argument_cap_is_exact_on_one_hot_attention_and_gradchecks():
    """With a large cap and the query far along one token's key, the attention is one-hot and the number reads that
    token's value exactly; with a small cap the parser gradchecks in float64 (through the embeddings and the query),
    in the saturated region too."""
    torch.manual_seed(0)
    parser = build_parser("span", 16, TARGETS, UNIT, {"values": "embeddings", "argument_cap": 1e4}).double().eval()
    hidden, mask = states(dtype=torch.float64)
    embeddings = torch.randn(hidden.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        parser.queries["operands"].copy_(1e3 * parser.key_states(hidden)[1, 1].expand(2, -1))
    learned = parser(hidden, mask, embeddings=embeddings)["operands"][1]
    token = embeddings[1, 1] * torch.rsqrt(embeddings[1, 1].pow(2).mean() + 1e-6)
    torch.testing.assert_close(learned, parser.heads["operands"](token).softmax(-1).expand(2, -1))
    options = {"values": "embeddings", "outside_spans": True, "argument_cap": 1.5}
    small = build_parser("span", 16, TARGETS, UNIT, options).double()
    small.load_state_dict(parser.state_dict())
    with torch.no_grad():
        small.queries["operands"].normal_().mul_(3)
    embeddings.requires_grad_()
    assert torch.autograd.gradcheck(lambda e: small(hidden, mask, embeddings=e)["operands"], (embeddings,))
    query = small.queries["operands"].detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda q: torch.func.functional_call(
        small, {"queries.operands": q}, (hidden, mask), {"embeddings": embeddings.detach()})["operands"], (query,))


@pytest.mark.parametrize("option", ["argument_scale", "argument_cap"])
def test_bounded_logit_options_bad_values_are_refused(option):
    for bad in (0, -1.0, True, "big", float("inf"), float("nan")):
        with pytest.raises(ValueError, match=f"{option} must be a positive number"):
            build_parser("span", 16, TARGETS, UNIT, {"values": "embeddings", option: bad})
    with pytest.raises(ValueError, match=f"{option} applies to numbers read from their tokens' values"):
        build_parser("attention", 16, TARGETS, UNIT, {"values": "states", option: 2.0})
    parser = build_parser("span", 16, TARGETS, UNIT, {"values": "embeddings"})
    with pytest.raises(ValueError):  # it changes what the weights mean: no stage may change it
        parser.set_stage_options(**{option: 2.0})
    with pytest.raises(ValueError, match="argument_cap and argument_scale both bound"):
        build_parser("span", 16, TARGETS, UNIT, {"values": "embeddings", "argument_cap": 2.0, "argument_scale": 2.0})


def test_outside_first_keeps_the_argument_off_the_first_token():
    """outside_first: a number read from its tokens' values weighs the question's first token (a BOS) as a token
    inside a span (outside_floor of its weight; none with outside_floor = 0); the choices attend as before."""
    torch.manual_seed(0)
    # logits capped at 6: 12 apart at most, so the prior's log 1e-6 cannot be outgrown
    options = {"values": "embeddings", "outside_spans": True, "choices": "ngrams", "ngram": 3, "argument_cap": 6.0}
    kept = build_parser("span", 16, CHAIN, UNIT, {**options, "outside_first": True}).double().eval()
    plain = build_parser("span", 16, CHAIN, UNIT, options).double().eval()
    plain.load_state_dict(kept.state_dict())
    hidden, mask = states(dtype=torch.float64)
    hidden[:, 0] = 3 * torch.randn(hidden.shape[-1], generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    embeddings = torch.randn(hidden.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    numbers = [t.name for t in kept.targets if t.classes is None and t.name not in kept.spans]
    with torch.no_grad():  # the first token's state the same in every question, the numbers' queries along its key
        for name in numbers:
            kept.queries[name].copy_(kept.key_states(hidden)[0, 0])
            plain.queries[name].copy_(kept.queries[name])
    seen = {}
    for parser in (kept, plain):
        attend = parser._weights

        def record(queries, bias, keys, mask, prior=None, parser=parser, attend=attend, **bounds):
            out = attend(queries, bias, keys, mask, prior, **bounds)
            seen.setdefault(id(parser), []).append((queries, prior, out))
            return out
        parser._weights = record
    got, want = kept.scores(hidden, mask, embeddings), plain.scores(hidden, mask, embeddings)
    for name in set(got) - set(numbers):
        torch.testing.assert_close(got[name], want[name])
    for (q, prior, out), (_, plain_prior, plain_out) in zip(seen[id(kept)], seen[id(plain)]):
        if any(q is kept.queries[name] for name in numbers):
            assert plain_out[:, :, 0].min() > 0.25  # the plain parser's largest weight, on the first token
            torch.testing.assert_close(prior[:, 0], torch.full_like(prior[:, 0], math.log(1e-6)))
            torch.testing.assert_close(prior[:, 1:], plain_prior[:, 1:])
            # the same logits but the first token's: its odds against the rest fall by exp(its prior's change)
            odds, plain_odds = out[:, :, 0] / (1 - out[:, :, 0]), plain_out[:, :, 0] / (1 - plain_out[:, :, 0])
            torch.testing.assert_close(odds / plain_odds, (prior[:, :1] - plain_prior[:, :1]).exp().expand_as(odds))
            assert out[:, :, 0].max() < 1e-4
        else:
            torch.testing.assert_close(prior, plain_prior)
            torch.testing.assert_close(out, plain_out)
    none = build_parser("span", 16, CHAIN, UNIT, {**options, "outside_first": True, "outside_floor": 0.0}).double()
    none.load_state_dict(kept.state_dict())
    none.eval()
    assert none._prior(next(t for t in none.targets if t.name in numbers), torch.zeros(2, 4))[:, 0].eq(
        float("-inf")).all()
    with pytest.raises(ValueError, match="outside_first must be true or false"):
        build_parser("span", 16, CHAIN, UNIT, {**options, "outside_first": 1})
    with pytest.raises(ValueError, match="outside_first keeps the argument off the question's first token"):
        build_parser("span", 16, CHAIN, UNIT, {"values": "embeddings", "outside_first": True})


def test_a_stage_checks_choice_dropout_against_the_parsers_own_defaults():
    """The span parser reads token values by default (the attention parser, states): a stage of a span parser built
    without ``values`` or ``choices`` cannot set choice_dropout, in the recipe's check or on the built parser."""
    from diffcomp.plugins.parsers import AttentionParser, SpanParser

    with pytest.raises(ValueError, match="applies to choices read from the attended states or n-grams"):
        SpanParser.check_stage_options({"choice_dropout": 0.3}, {"choice_dropout": 0.3})
    AttentionParser.check_stage_options({"choice_dropout": 0.3}, {"choice_dropout": 0.3})  # reads states
    parser = build_parser("span", 16, CHAIN, UNIT, {})
    with pytest.raises(ValueError, match="applies to choices read from the attended states or n-grams"):
        parser.set_stage_options(choice_dropout=0.3)
    assert parser.choice_dropout == 0.0


def test_an_ngram_sees_its_own_tokens_only():
    """A token's n-gram feature depends on it and the n - 1 tokens before it, nothing else: a word reads the same
    after any frame and any string."""
    torch.manual_seed(0)
    parser = build_parser("attention", 16, CHAIN, UNIT, {"values": "embeddings", "choices": "ngrams", "ngram": 3})
    embeddings = torch.randn(2, 9, 16, generator=torch.Generator().manual_seed(1))
    changed = embeddings.clone()
    changed[:, :4] = torch.randn(2, 4, 16)  # tokens 0-3 differ; tokens 6.. see tokens 4.. only
    a = parser.gram_states(embeddings * torch.rsqrt(embeddings.pow(2).mean(-1, keepdim=True) + 1e-6))
    b = parser.gram_states(changed * torch.rsqrt(changed.pow(2).mean(-1, keepdim=True) + 1e-6))
    torch.testing.assert_close(a[:, 6:], b[:, 6:])
    assert not torch.allclose(a[:, 4:6], b[:, 4:6])


def test_ngram_keys_attend_by_the_ngrams():
    """keys = 'ngrams': the numbers' queries attend by keys projected from the n-gram features; a span's end
    pointer may read them alone (end_keys). Written out by hand, in float64."""
    torch.manual_seed(0)
    parser = build_parser("attention", 16, TARGETS, UNIT, {"keys": "ngrams", "ngram": 2}).double()
    assert parser.reads_embeddings and not hasattr(parser, "choice_keys")
    hidden, mask = states(dtype=torch.float64)
    embeddings = torch.randn(hidden.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = parser(hidden, mask, embeddings=embeddings)["operands"]
    keys = _grams_by_hand(parser, embeddings) @ parser.keys.weight.T
    logits = torch.einsum("bsk,ck->bcs", keys, parser.queries["operands"]) / parser.key_size ** 0.5
    weights = logits.masked_fill(~mask.bool()[:, None], float("-inf")).softmax(-1)
    expected = parser.heads["operands"](torch.einsum("bcs,bsh->bch", weights, hidden))  # values = states
    torch.testing.assert_close(got, expected.softmax(-1), rtol=1e-10, atol=1e-12)
    span = build_parser("span", 16, TARGETS, UNIT, {"values": "embeddings", "end_keys": "ngrams", "ngram": 3})
    assert span.ngram == 3 and span.end_keys.weight.shape == (span.key_size, 16 * (1 + span.lookback))
    out = span(hidden.float(), mask, embeddings=embeddings.float())["memory"]
    assert out.shape == (3, 5, 10) and torch.isfinite(out).all()


def test_unshared_keys_give_the_other_targets_keys_of_their_own():
    """shared_keys = false: the argument's query attends by a projection of its own (the pointers keep theirs);
    its output is the shared-keys parser's with that projection in place of the pointers' keys."""
    torch.manual_seed(0)
    options = {"values": "embeddings", "outside_spans": True}
    own = build_parser("span", 16, TARGETS, UNIT, {**options, "shared_keys": False}).double()
    shared = build_parser("span", 16, TARGETS, UNIT, options).double()
    shared.load_state_dict({k: v for k, v in own.state_dict().items() if k != "other_keys.weight"})
    hidden, mask = states(dtype=torch.float64)
    embeddings = torch.randn(hidden.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    a, b = own(hidden, mask, embeddings=embeddings), shared(hidden, mask, embeddings=embeddings)
    torch.testing.assert_close(a["memory"], b["memory"])  # the pointers read the same keys
    assert not torch.allclose(a["operands"], b["operands"])
    with torch.no_grad():  # the other targets' keys swapped for the pointers': the shared parser's outputs
        own.other_keys.weight.copy_(own.keys.weight)
    for key, value in own(hidden, mask, embeddings=embeddings).items():
        torch.testing.assert_close(value, b[key])
