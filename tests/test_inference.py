"""The NumPy engine: a saved model's decided answers without torch, equal to the torch model's.

Each supported configuration is built small (random weights: the engines must agree on any weights, not only
on trained ones), saved, and answered both ways; the backbone's states and the parser's decisions are compared
too. Then: which engine answers what (``auto`` falls back to torch), the command line, and that answering
imports no torch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import diffcomp
from diffcomp.cli import main
from diffcomp.inference import EngineError, load
from diffcomp.inference.model import NumpyModel
from diffcomp.model import build_model, build_task

QUESTIONS = ['Sort the string "dcba"', 'Sort the string "b"', 'sort("qwer") =', 'Sort the string "zyxwvutsrqponmlk"',
             'Sort the string "héllo wörld"', "Sort the string \"a\" and \"b\"", "", "?"]
SORT = build_task("sort", {"lengths": [1, 2, 3], "width": 4, "examples": 60}, seed=0)
LLAMA = {"backbone": "llama", "hidden_size": 32, "layers": 2, "heads": 4, "kv_heads": 2, "parser_layer": 2}
MACHINE = {"alu": "lookup", "base": 128, "library": ["insertion_sort"], "cells": 5}

#: library-mixed's and library-compose's computers, tasks and span parser (the configurations below vary them)
COMPOSE_COMPUTER = {"alu": "lookup", "base": 128, "library": ["insertion_sort", "reverse", "count", "count_distinct",
                                                             "max", "min", "length", "sum", "nth", "identity"],
                    "steps": 2, "selection": "marginal", "readout": "learned", "max_steps": 70}
MIXED_COMPUTER = {"alu": "lookup", "base": 128, "library": ["insertion_sort", "reverse", "count", "max", "min", "length",
                                                           "nth", "identity"],
                  "selection": "marginal", "samples": 4, "readout": "learned", "max_steps": 70}
COMPOSE_TASK = build_task("composed", {"lengths": [1, 2, 3], "width": 6, "examples": 100}, seed=0)
MIXED_TASK = build_task("mixed", {"lengths": [1, 2, 3], "width": 6, "examples": 100}, seed=0)
LIBRARY_SPAN = {"spans": ["memory"], "values": "embeddings", "start": "before", "end_keys": "embeddings",
                "choices": "states", "shared_values": True, "outside_spans": True}

CONFIGS = {
    "span, drawn pointers, embeddings (llama-sort)": (
        {**LLAMA, "parser_layer": 1, "parser": "span",
         "parser_options": {"values": "embeddings", "start": "before", "end_keys": "embeddings", "pointers": "sample"}},
        MACHINE, SORT),
    "span, mixed pointers, token states, positions": (
        {**LLAMA, "parser": "span", "parser_options": {"values": "tokens", "keys": "embeddings", "positions": 6,
                                                       "lookback": 2, "key_size": 16}},
        MACHINE, SORT),
    "attention, states, words": (
        {**LLAMA, "tokenizer": "words", "parser": "attention", "parser_options": {"lookback": 1}}, MACHINE, SORT),
    "attention, embeddings, choices from states": (
        {**LLAMA, "heads": 2, "kv_heads": 1, "parser": "attention",
         "parser_options": {"values": "embeddings", "keys": "embeddings", "choices": "states"}}, MACHINE, SORT),
    "pooled, last": ({**LLAMA, "parser": "pooled", "parser_options": {"pool": "last"}}, MACHINE, SORT),
    "pooled, mean": ({**LLAMA, "parser": "pooled", "parser_options": {"pool": "mean"}}, MACHINE, SORT),
    "a library chained two deep, a learned readout (library-compose)": (
        {**LLAMA, "parser": "attention", "parser_options": {"values": "embeddings", "choices": "states"}},
        {**COMPOSE_COMPUTER, "selection": "sample"}, COMPOSE_TASK),
    "span, shared values, outside the spans, marginal selection (library-mixed)": (
        {**LLAMA, "parser": "span", "parser_options": LIBRARY_SPAN}, MIXED_COMPUTER, MIXED_TASK),
    "library-compose's parser, the spans' delimiters kept from the other targets": (
        {**LLAMA, "parser": "span",
         "parser_options": {**LIBRARY_SPAN, "outside_delimiters": True, "outside_floor": 0.0, "choice_queries": 2,
                            "step_heads": True}},
        {**COMPOSE_COMPUTER, "samples": 4}, COMPOSE_TASK),
    "library-mixed's model, addresses beyond memory reading 0": (
        {**LLAMA, "parser": "span", "parser_options": LIBRARY_SPAN}, {**MIXED_COMPUTER, "addressing": "zero"},
        MIXED_TASK),
    "span, choices by three queries and a classifier per chain step (library-compose)": (
        {**LLAMA, "parser": "span", "parser_options": {**LIBRARY_SPAN, "choice_queries": 3, "step_heads": True}},
        {**COMPOSE_COMPUTER, "samples": 4}, COMPOSE_TASK),
    "library-compose's parser: choices from n-grams, a classifier per chain step, kept off the quotes": (
        {**LLAMA, "parser": "span",
         "parser_options": {**LIBRARY_SPAN, "choices": "ngrams", "outside_delimiters": True, "step_heads": True}},
        {**COMPOSE_COMPUTER, "samples": 4}, COMPOSE_TASK),
    "span, one choice over whole chains (library-compose, choice = 'chains')": (
        {**LLAMA, "parser": "span", "parser_options": {**LIBRARY_SPAN, "choice_queries": 2}},
        {**COMPOSE_COMPUTER, "samples": 4, "choice": "chains"}, COMPOSE_TASK),
    "span, choices from n-grams, two queries and a classifier per chain step, strictly outside the spans": (
        {**LLAMA, "parser": "span",
         "parser_options": {**LIBRARY_SPAN, "choices": "ngrams", "keys": "ngrams", "ngram": 4, "outside_floor": 0.0,
                            "shared_keys": False, "choice_queries": 2, "step_heads": True}},
        {**COMPOSE_COMPUTER, "samples": 4}, COMPOSE_TASK),
    "library-compose's parser with a bag of n-grams beside each chain step's attended one": (
        {**LLAMA, "parser": "span",
         "parser_options": {**LIBRARY_SPAN, "choices": "ngrams", "outside_delimiters": True, "step_heads": True,
                            "choice_bag": True}},
        {**COMPOSE_COMPUTER, "samples": 4}, COMPOSE_TASK),
    "library-compose's parser, its choices blind to the argument's and the string's tokens": (
        {**LLAMA, "parser": "span",
         "parser_options": {**LIBRARY_SPAN, "choices": "ngrams", "outside_delimiters": True, "step_heads": True,
                            "blind_choices": True}},
        {**COMPOSE_COMPUTER, "samples": 4}, COMPOSE_TASK),
    "library-compose's parser, its choices' bag blind to the argument's and the string's tokens": (
        {**LLAMA, "parser": "span",
         "parser_options": {**LIBRARY_SPAN, "choices": "ngrams", "outside_delimiters": True, "step_heads": True,
                            "choice_bag": "blind"}},
        {**COMPOSE_COMPUTER, "samples": 4}, COMPOSE_TASK),
    "library-mixed's parser with the argument's attention spread in training (argument_spread)": (
        {**LLAMA, "parser": "span",
         "parser_options": {**LIBRARY_SPAN, "choices": "ngrams", "outside_delimiters": True, "argument_spread": 0.3}},
        MIXED_COMPUTER, MIXED_TASK),
    "library-mixed's parser with the argument's cosine attention (argument_scale)": (
        {**LLAMA, "parser": "span",
         "parser_options": {**LIBRARY_SPAN, "choices": "ngrams", "outside_delimiters": True, "argument_scale": 4.0}},
        MIXED_COMPUTER, MIXED_TASK),
    "library-mixed's parser with the argument's attention logits soft-capped (argument_cap)": (
        {**LLAMA, "parser": "span",
         "parser_options": {**LIBRARY_SPAN, "choices": "ngrams", "outside_delimiters": True, "argument_cap": 1.0}},
        MIXED_COMPUTER, MIXED_TASK),
    "library-mixed's parser, the argument's logits capped and kept off the first token (outside_first)": (
        {**LLAMA, "parser": "span",
         "parser_options": {**LIBRARY_SPAN, "choices": "ngrams", "outside_delimiters": True, "argument_cap": 3.0,
                            "outside_first": True}},
        MIXED_COMPUTER, MIXED_TASK),
}


def saved_model(tmp_path: Path, name: str, seed: int = 0):
    """A model of configuration ``name`` with random weights drawn from ``seed``, saved in ``tmp_path / "model"``.

    The weights are wider than an initialisation's, so that pointers and values are decided far from ties and
    differ between questions: spans land inside and outside strings, programs and readouts vary.
    """
    model_table, computer, task = CONFIGS[name]
    model = build_model(model_table, computer, task).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, p in model.named_parameters():
            if not key.endswith("norm.weight"):
                p.copy_(torch.randn(p.shape, generator=g) * (2.0 if p.dim() < 2 else 2.0 / p.shape[-1] ** 0.5))
    model.save_pretrained(tmp_path / "model")
    return model, tmp_path / "model"


#: weight seeds under which a configuration's random model answers something other than an empty string for
#: several questions (random spans often start after they end)
SEEDS = {"span, drawn pointers, embeddings (llama-sort)": (2, 6), "span, mixed pointers, token states, positions": (8,),
         "attention, states, words": (4, 7), "a library chained two deep, a learned readout (library-compose)": (0, 4),
         "span, shared values, outside the spans, marginal selection (library-mixed)": (13, 14),
         "library-mixed's model, addresses beyond memory reading 0": (13, 14),
         "library-compose's parser, the spans' delimiters kept from the other targets": (39,),
         "span, choices by three queries and a classifier per chain step (library-compose)": (8, 24),
         "span, one choice over whole chains (library-compose, choice = 'chains')": (6, 29),
         "library-compose's parser: choices from n-grams, a classifier per chain step, kept off the quotes": (27,),
         "span, choices from n-grams, two queries and a classifier per chain step, strictly outside the spans":
             (21, 34),
         "library-compose's parser with a bag of n-grams beside each chain step's attended one": (52,),
         "library-compose's parser, its choices blind to the argument's and the string's tokens": (77,),
         "library-compose's parser, its choices' bag blind to the argument's and the string's tokens": (58,),
         "library-mixed's parser with the argument's attention spread in training (argument_spread)": (13, 57),
         "library-mixed's parser with the argument's cosine attention (argument_scale)": (13, 57),
         "library-mixed's parser with the argument's attention logits soft-capped (argument_cap)": (13, 57),
         "library-mixed's parser, the argument's logits capped and kept off the first token (outside_first)":
             (13, 57)}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_numpy_answers_as_the_torch_model(tmp_path, name):
    for seed in SEEDS.get(name, (0, 1)):
        model, folder = saved_model(tmp_path / str(seed), name, seed)
        fast = NumpyModel(folder)
        expected = model.ask(QUESTIONS)
        assert fast.ask(QUESTIONS) == expected == diffcomp.load(folder).ask(QUESTIONS)
        assert fast.ask(QUESTIONS[0]) == expected[0]
        answered = [a for a in expected if (a if isinstance(a, (str, int)) else any(a))]
        assert len(answered) >= 2 and len({str(a) for a in expected}) >= 2, expected  # a comparison that says something


@pytest.mark.parametrize("name", list(CONFIGS))
def test_numpy_states_and_decisions_match_the_torch_model(tmp_path, name):
    model, folder = saved_model(tmp_path, name, SEEDS.get(name, (0,))[0])
    fast = NumpyModel(folder)
    questions = QUESTIONS[:4]
    fast.fit_to(int(fast.tokenize(questions)[1].sum(1).max()))  # as ask() does first
    from diffcomp.model.answers import _prepare

    text = _prepare(model, questions)
    with torch.no_grad():
        features = model.read({"text": text})
        decided = model.decide(model.parse(features, decide=True))
    np.testing.assert_allclose(fast.hidden_states(questions), features[0].numpy(), rtol=1e-4, atol=1e-5)
    ids, mask = fast.tokenize(questions)
    from diffcomp.inference import parsers

    parsed = parsers.read(fast.parser, fast.options, fast.targets, fast.reader, fast.backbone(ids, mask), mask,
                          fast.backbone.embed(ids), fast.modulus)
    with torch.no_grad():
        distributions = model.parse(features, decide=True)
    for target, value in decided.items():
        assert parsed[target].argmax(-1).tolist() == value.argmax(-1).tolist(), target
        np.testing.assert_allclose(parsed[target], distributions[target].numpy(), rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("name", ["span, drawn pointers, embeddings (llama-sort)", "attention, embeddings, choices "
                                  "from states", "pooled, mean"])
def test_numpy_explains_as_the_torch_model(tmp_path, name):
    model, folder = saved_model(tmp_path, name, SEEDS.get(name, (0,))[0])
    fast = NumpyModel(folder)
    for question in QUESTIONS[:4]:
        ours, theirs = fast.explain(question).as_dict(), model.explain(question).as_dict()
        for key in ("question", "answer", "answer_numbers", "steps", "halted", "decided"):
            assert ours[key] == theirs[key], key
        assert ours["answer_probability"] == pytest.approx(theirs["answer_probability"])
        for target, entry in theirs["parse"].items():
            assert ours["parse"][target]["values"] == entry["values"]
            np.testing.assert_allclose(ours["parse"][target]["probability"], entry["probability"], atol=1e-5)
        for target, options in theirs["choices"].items():
            assert [o["name"] for o in ours["choices"][target]][:1] == [o["name"] for o in options][:1]
            np.testing.assert_allclose([o["probability"] for o in ours["choices"][target]],
                                       [o["probability"] for o in options], atol=1e-5)
    with pytest.raises(ValueError, match="torch model"):
        fast.explain(QUESTIONS[0], decide=False)


def test_a_library_model_reads_a_string_longer_than_it_trained_on_from_either_engine(tmp_path):
    """A learned readout with memory among its places grows the memory and the answer to the question, as a
    text answer read from memory does: a reverse of 12 letters is 12 numbers, not the 4 it trained on."""
    name = "span, shared values, outside the spans, marginal selection (library-mixed)"
    model, folder = saved_model(tmp_path, name, seed=14)
    questions = ['reverse the string "abcdefghijkl"', 'Sort the string "dcba"']
    fast = NumpyModel(folder)
    expected = model.ask(questions)
    assert fast.ask(questions) == expected == diffcomp.load(folder).ask(questions)
    assert all(len(numbers) >= 13 for numbers in fast.answers(questions))  # 12 letters and the terminator at least
    assert model.head.length == model.computer.cells >= 13
    # each answer written by where it was read: text from memory, a number from a register
    places = fast._places(fast.parse(questions))
    assert [type(a) for a in expected] == [str if place == "memory" else int for place in places]


def test_a_library_answer_is_written_by_the_place_it_was_read_from():
    from diffcomp.model.saved import render_answer

    assert render_answer([100, 101, 0, 0], "place", "memory") == "de"
    assert render_answer([3, 0, 0, 0], "place", "r0") == 3
    assert render_answer([0, 0, 0, 0], "place", "memory") == ""  # an empty string, not the number 0
    assert render_answer([3, 0], "place") == [3, 0]  # a place not known: the numbers


def test_a_chain_is_explained_by_torch_only(tmp_path):
    _, folder = saved_model(tmp_path, "a library chained two deep, a learned readout (library-compose)")
    assert "chains 2 programs" in NumpyModel(folder).explains
    with pytest.raises(EngineError, match="cannot explain"):
        load(folder, engine="numpy", explain=True)
    assert load(folder, explain=True)[1] == "torch" and load(folder)[1] == "numpy"


def test_torch_explains_a_chain_step_by_step_and_names_the_readout(tmp_path):
    """A chain (two programs, a learned readout) is explained without a traced run: each step's choice, the
    readout by its place, and the same answer as ask."""
    model, _ = saved_model(tmp_path, "a library chained two deep, a learned readout (library-compose)", seed=4)
    explanation = model.explain(QUESTIONS[0])
    assert set(explanation.choices) == {"program 1", "program 2", "readout"}
    programs = list(model.computer.programs)
    for step in ("program 1", "program 2"):
        names = [name for name, _ in explanation.choices[step]]
        assert sorted(names) == sorted(programs)
        assert sum(p for _, p in explanation.choices[step]) == pytest.approx(1, abs=1e-4)
    assert {name for name, _ in explanation.choices["readout"]} == set(model.computer.readouts)
    assert explanation.answer == model.ask([QUESTIONS[0]])[0]
    assert explanation.steps is None  # no one program's run to count


def test_a_choice_over_whole_chains_is_explained_by_its_chains(tmp_path):
    """choice = 'chains': one choice, each class a chain named by its programs; the most likely is what ran."""
    model, _ = saved_model(tmp_path, "span, one choice over whole chains (library-compose, choice = 'chains')", seed=29)
    explanation = model.explain(QUESTIONS[0])
    assert set(explanation.choices) == {"chain", "readout"}
    programs = list(model.computer.programs)
    names = [name for name, _ in explanation.choices["chain"]]
    assert sorted(names) == sorted(f"{a}, then {b}" for a in programs for b in programs)
    assert sum(p for _, p in explanation.choices["chain"]) == pytest.approx(1, abs=1e-4)
    model.ask([QUESTIONS[0]])
    ran = ", then ".join(programs[k] for k in model.computer.chosen[0].tolist())
    assert names[0] == ran
    assert explanation.answer == model.ask([QUESTIONS[0]])[0]


def test_the_torch_machine_and_the_numpy_engine_run_one_interpreter(tmp_path, monkeypatch):
    """Both call diffcomp.machine.exact.run_ints: the integer machine exists once."""
    from diffcomp.machine import exact

    calls = []
    real = exact.run_ints
    monkeypatch.setattr(exact, "run_ints", lambda *a, **k: calls.append(1) or real(*a, **k))
    model, folder = saved_model(tmp_path, "span, drawn pointers, embeddings (llama-sort)")
    model.ask(QUESTIONS[:2])
    assert calls
    calls.clear()
    NumpyModel(folder).ask(QUESTIONS[:2])
    assert calls


# -- which engine answers -----------------------------------------------------------------------------


def test_auto_answers_with_numpy_and_falls_back_to_torch(tmp_path):
    model, folder = saved_model(tmp_path, "pooled, last")
    fast, engine, why = load(folder)
    assert engine == "numpy" and isinstance(fast, NumpyModel) and why is None
    slow, engine, _ = load(folder, engine="torch")
    assert engine == "torch" and slow.ask(QUESTIONS) == fast.ask(QUESTIONS)
    config = json.loads((folder / "config.json").read_text())
    del config["interface"]  # as a model saved before the interface was recorded
    (folder / "config.json").write_text(json.dumps(config))
    answered, engine, why = load(folder)
    assert engine == "torch" and "does not describe the computer's interface" in why
    assert answered.ask(QUESTIONS) == model.ask(QUESTIONS)
    with pytest.raises(EngineError, match="saved by an older diffcomp"):
        load(folder, engine="numpy")


def test_a_model_the_numpy_engine_does_not_read_goes_to_torch(tmp_path):
    task = build_task("arithmetic", {"base": 16, "ops": ["add", "mul"], "examples": 100}, seed=0)
    model = build_model({**LLAMA, "tokenizer": "words", "parser": "attention"}, {"alu": "lookup", "base": 16},
                        task).eval()  # one ALU call, no machine
    model.save_pretrained(tmp_path / "m")
    answered, engine, why = load(tmp_path / "m")
    assert engine == "torch" and "interface" in why
    assert answered.ask(["Add 3 and 4"]) == model.ask(["Add 3 and 4"])
    _, folder = saved_model(tmp_path / "renamed", "pooled, last")
    config = json.loads((folder / "config.json").read_text())
    config["recipe"]["computer"]["alu"] = "circuit"  # the recipe no longer names what the interface describes
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(EngineError, match="recorded for"):
        load(folder, engine="numpy")
    with pytest.raises(EngineError, match="stage"):
        load(folder, engine="numpy", stage="train")
    config["recipe"]["computer"]["alu"] = "lookup"
    config["recipe"]["model"]["parser_options"] = {"pool": "last", "shared_values": True}
    (folder / "config.json").write_text(json.dumps(config))  # an option its interface does not record
    with pytest.raises(EngineError, match="shared_values were not recorded"):
        load(folder, engine="numpy")
    config["recipe"]["model"]["parser_options"] = {"pool": "last"}
    del config["interface"]["targets"]  # an interface that lacks an entry
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(EngineError, match="does not say what the NumPy engine reads"):
        load(folder, engine="numpy")
    assert load(folder)[1] == "torch"


def test_wrong_weights_are_a_clear_error_from_either_engine(tmp_path, capsys):
    from safetensors.numpy import load_file, save_file

    _, folder = saved_model(tmp_path, "span, drawn pointers, embeddings (llama-sort)")
    tensors = load_file(str(folder / "model.safetensors"))
    tensors["parser.keys.weight"] = np.zeros((3, 3), dtype=np.float32)
    save_file(tensors, str(folder / "model.safetensors"))
    for engine in ("numpy", "auto"):
        assert main(["ask", str(folder), "--engine", engine, QUESTIONS[0]]) == 2
        err = capsys.readouterr().err
        assert err.startswith("diffcomp ask: error: ") and str(folder) in err and "parser.keys.weight" in err
        assert "Traceback" not in err


def test_ask_command_says_which_engine_answered(tmp_path, capsys):
    model, folder = saved_model(tmp_path, "span, drawn pointers, embeddings (llama-sort)")
    assert main(["ask", str(folder), "--json", *QUESTIONS[:2]]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [x["engine"] for x in lines] == ["numpy", "numpy"]
    assert [x["answer"] for x in lines] == model.ask(QUESTIONS[:2])
    assert main(["ask", str(folder), "--json", "--explain", QUESTIONS[0]]) == 0
    explained = json.loads(capsys.readouterr().out)
    assert explained["engine"] == "numpy" and explained["answer"] == lines[0]["answer"]
    assert main(["ask", str(folder), "--json", "--explain", "--soft", QUESTIONS[0]]) == 0
    assert json.loads(capsys.readouterr().out)["engine"] == "torch"
    assert main(["ask", str(folder), "--engine", "numpy", "--plot", str(tmp_path / "p.png"), QUESTIONS[0]]) == 2
    assert "--plot need(s) the torch model" in capsys.readouterr().err


def test_answering_from_the_command_line_imports_no_torch(tmp_path):
    model, folder = saved_model(tmp_path, "span, drawn pointers, embeddings (llama-sort)")
    code = ("import sys\nfrom diffcomp.cli import main\nassert main(['ask', sys.argv[1], sys.argv[2]]) == 0\n"
            "print('torch' in sys.modules, 'transformers' in sys.modules, 'huggingface_hub' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code, str(folder), QUESTIONS[0]], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    answer, imported = result.stdout.splitlines()
    assert answer == model.ask(QUESTIONS[0]) and imported == "False False False"


# -- a Hub repository id, without the network ---------------------------------------------------------


def test_from_pretrained_reads_a_hub_repository_from_the_local_cache(tmp_path):
    """``from_pretrained("owner/name")`` goes through huggingface_hub's snapshot_download; offline, with the
    snapshot laid out in a cache as the Hub client writes it, it loads from there."""
    model, folder = saved_model(tmp_path, "pooled, last")
    cache = tmp_path / "hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = cache / "models--someone--tiny-sort" / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for f in folder.iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    (cache / "models--someone--tiny-sort" / "refs").mkdir()
    (cache / "models--someone--tiny-sort" / "refs" / "main").write_text(commit)
    code = ("import json, sys\nfrom diffcomp.model import AugmentedModel\n"
            "m = AugmentedModel.from_pretrained('someone/tiny-sort')\nprint(json.dumps(m.ask(json.loads(sys.argv[1]))))\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "home")}
    result = subprocess.run([sys.executable, "-c", code, json.dumps(QUESTIONS)], capture_output=True, text=True,
                            timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == model.ask(QUESTIONS)
    missing = subprocess.run([sys.executable, "-c", code.replace("tiny-sort", "absent"), "[]"], capture_output=True,
                             text=True, timeout=300, env=env)
    assert missing.returncode != 0 and "someone/absent" in missing.stderr


@pytest.mark.parametrize("floor", [1e-6, 0.0])
def test_numpy_keeps_queries_outside_the_spans_as_torch_does(floor):
    """outside_spans' log-weights: the floored log-probability, or (outside_floor = 0) -inf on the tokens certainly
    inside a span and nothing on a question with no token outside one; the NumPy engine's and torch's alike."""
    from diffcomp.inference.parsers import _outside_prior
    from diffcomp.plugins.parsers import outside_prior

    g = torch.Generator().manual_seed(0)
    outside = torch.rand(4, 9, generator=g, dtype=torch.float64)
    outside[outside < 0.3] = 0.0  # certainly inside
    outside[2] = 0.0
    mask = torch.ones(4, 9, dtype=torch.long)
    mask[3, 6:] = 0
    outside[3, :6] = 0.0  # every real token inside; padding outside
    ours = _outside_prior(outside.numpy(), mask.numpy(), floor)
    theirs = outside_prior(outside, mask, floor).numpy()
    np.testing.assert_array_equal(np.isneginf(ours), np.isneginf(theirs))
    np.testing.assert_allclose(np.where(np.isneginf(ours), 0, ours), np.where(np.isneginf(theirs), 0, theirs))
    assert np.isneginf(theirs).any() == (floor == 0)
    if floor == 0:
        assert (theirs[2] == 0).all() and (theirs[3] == 0).all()
