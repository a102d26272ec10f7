"""The span parser's ``blank_spans``: the argument, program and readout read the question again, its string
replaced by one placeholder token, so what they read does not depend on the string's letters or length."""

from __future__ import annotations

import pytest
import torch

import diffcomp
from diffcomp.inference.model import supports
from diffcomp.model import build_model, build_parser, build_task, Target
from diffcomp.model.augmented import blank_tokens
from diffcomp.model.tokenizers import encode_texts
from diffcomp.plugins.parsers import SpanParser

LIBRARY = ["insertion_sort", "reverse", "count", "count_distinct", "max", "min", "length", "sum", "nth", "identity"]
OPTIONS = {"spans": ["memory"], "values": "embeddings", "start": "before", "end_keys": "embeddings",
           "choices": "states", "shared_values": True, "outside_spans": True, "choice_queries": 2,
           "step_heads": True}


def _model(blank: bool, seed: int = 0):
    task = build_task("composed", {"lengths": [1, 2, 3], "width": 6, "examples": 64}, seed)
    model = build_model({"backbone": "llama", "hidden_size": 32, "layers": 2, "heads": 4, "kv_heads": 2,
                         "parser": "span", "parser_options": {**OPTIONS, "blank_spans": blank}, "tokenizer": "byte"},
                        {"alu": "lookup", "base": 128, "library": LIBRARY, "steps": 2, "selection": "marginal",
                         "samples": 4, "soft_samples": 1, "argument_search": True, "readout": "learned",
                         "max_steps": 70}, task)
    return model, task


def test_blank_tokens_replaces_a_span_by_one_token():
    ids = torch.tensor([[1, 10, 11, 12, 13, 14, 15], [1, 20, 21, 22, 0, 0, 0]])
    mask = (ids != 0).long()
    out, out_mask = blank_tokens(ids, mask, torch.tensor([2, 2]), torch.tensor([5, 3]), 99, 0)
    assert out.tolist() == [[1, 10, 99, 14, 15], [1, 20, 99, 22, 0]]
    assert out_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    # an empty span (end <= start) inserts the placeholder, also after the last token
    out, out_mask = blank_tokens(ids, mask, torch.tensor([3, 4]), torch.tensor([3, 2]), 99, 0)
    assert out.tolist() == [[1, 10, 11, 99, 12, 13, 14, 15], [1, 20, 21, 22, 99, 0, 0, 0]]
    assert out_mask.sum(1).tolist() == [8, 5]


def _pointers_at_the_quotes(monkeypatch):
    """The span's pointers one-hot at the string's quotes (start: the opening quote, with ``start="before"``; end:
    the closing quote), whatever the weights: the questions below differ in their string only."""
    original = SpanParser.attend
    quote = ord('"') + 2  # the byte tokenizer's id of '"'

    def attend(self, name, hidden, mask, end_hidden=None):
        start, end = original(self, name, hidden, mask, end_hidden)
        quotes = [(row == quote).nonzero()[:2, 0] for row in self._test_ids]  # each question's two quotes
        first, second = (torch.stack([q[k] for q in quotes]) for k in (0, 1))
        return (torch.nn.functional.one_hot(first + 1, start.shape[1]).to(start),
                torch.nn.functional.one_hot(second, end.shape[1]).to(end))

    monkeypatch.setattr(SpanParser, "attend", attend)


@pytest.mark.parametrize("blank", [True, False])
def test_what_the_choices_read_does_not_depend_on_the_string(monkeypatch, blank):
    _pointers_at_the_quotes(monkeypatch)
    model, _ = _model(blank)
    model.eval()
    questions = ['what is letter 2 of "abc"?', 'what is letter 2 of "qwertyuiopasdfgh"?', 'what is letter 2 of "z"?']
    features = model.read({"text": encode_texts(questions, 64)})
    model.parser._test_ids = features.ids
    with torch.no_grad():
        parsed = model.parse(features, decide=False)
    memory = model.encoding.decode(parsed["memory"])
    # the span is the string: its cells end at the string's length (the values are an untrained classifier's)
    assert (memory[0, :3] != 0).all() and memory[0, 3] == 0 and memory[2, 0] != 0 and memory[2, 1] == 0
    same = all(torch.allclose(parsed[name][0], parsed[name][i], atol=1e-6) for name in ("program", "readout",
                                                                                         "registers")
               for i in (1, 2))
    assert same == blank  # read in the question itself, the string's letters and length change every choice


def test_the_second_reading_trains_the_backbone():
    model, task = _model(True)
    model.train()
    batch = {k: v[:8] for k, v in task.dataset("train").tensors.items()}
    parsed = model.parse(model.read(batch))
    parsed["program"].pow(2).sum().backward()  # the choices alone: they read the second pass only
    grads = [p.grad for name, p in model.backbone.named_parameters() if "layers" in name]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_a_model_with_blanked_spans_saves_loads_and_answers_alike(tmp_path):
    model, _ = _model(True, seed=1)
    model.eval()
    questions = ['what is letter 2 of "abc"?', 'sort "cab"', 'how many copies of a are in "banana"?']
    model.save_pretrained(tmp_path / "model")
    again = diffcomp.load(tmp_path / "model")
    assert again.parser.blank_spans and again.ask(questions) == model.ask(questions)
    # the NumPy engine does not read a question twice: it says so, and answering falls back to torch
    import json

    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert "blank_spans" in supports(config)
    from diffcomp.inference import load

    answering, engine, why = load(tmp_path / "model")
    assert engine == "torch" and "blank_spans" in why and answering.ask(questions) == model.ask(questions)


def test_bad_blank_spans_options():
    targets = [Target("memory", 4), Target("registers", 1), Target("program", 2, 3)]
    encoding = diffcomp.encoding("unit", base=16)
    with pytest.raises(ValueError, match="blank_spans must be true or false"):
        build_parser("span", 16, targets, encoding, {"blank_spans": "yes"})
    with pytest.raises(ValueError, match="blank_spans blanks one span"):
        build_parser("span", 16, targets, encoding, {"spans": ["memory", "registers"], "blank_spans": True})
    parser = build_parser("span", 16, targets, encoding, {"blank_spans": True})
    with pytest.raises(ValueError, match="reads the question a second time"):
        parser(torch.randn(2, 5, 16), torch.ones(2, 5))
