"""Using and sharing a trained model: save_pretrained / from_pretrained / diffcomp.load, ask, explain.

A tiny language model is trained for a few steps (what it learns does not
matter here: a saved model must answer exactly as the one that was saved),
saved, and loaded again in a fresh interpreter. Broken folders (an unknown
plug-in, a program that does not assemble, weights of the wrong shape, a
pickle) are each one clear error naming the file, and exit 2 from the CLI.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

import diffcomp
from diffcomp.cli import main
from diffcomp.model import build_model, build_task
from diffcomp.model.pretrained import PretrainedError
from diffcomp.train import TrainConfig, Trainer

QUESTIONS = ['Sort the string "dcba"', 'Sort the string "b"', 'sort("qwer") =', 'Sort the string "zyxwvutsrqponmlk"']
SORT_MODEL = {"backbone": "llama", "hidden_size": 32, "layers": 2, "heads": 2, "kv_heads": 1, "parser": "span",
              "parser_layer": 1, "parser_options": {"values": "embeddings", "start": "before",
                                                    "end_keys": "embeddings"}}
SORT_COMPUTER = {"alu": "lookup", "base": 128, "library": ["insertion_sort"], "cells": 5}


def tiny_sort_model(tmp_path: Path, steps: int = 3):
    task = build_task("sort", {"lengths": [1, 2, 3], "width": 4, "examples": 60}, seed=0)
    model = build_model(SORT_MODEL, SORT_COMPUTER, task)
    Trainer(model, task, TrainConfig(epochs=1, max_steps=steps, batch_size=8, lr=3e-3, progress=False,
                                     eval_splits=("test",)), out_dir=tmp_path / "train", stage="train").fit()
    return model.eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("saved")
    model = tiny_sort_model(tmp)
    model.save_pretrained(tmp / "model")
    return model, tmp / "model"


def test_saved_folder_has_hugging_face_layout(saved):
    _, folder = saved
    assert {"config.json", "model.safetensors", "README.md"} <= {p.name for p in folder.iterdir()}
    config = json.loads((folder / "config.json").read_text())
    assert config["diffcomp_version"] == diffcomp.__version__
    assert config["recipe"]["model"]["parser"] == "span"
    assert config["backbone_config"]["model_type"] == "llama" and config["backbone_config"]["hidden_size"] == 32
    assert "insertion_sort:" in config["library"]["insertion_sort"] or "RET" in config["library"]["insertion_sort"]
    assert config["task"]["answer_format"] == "text"
    with open(folder / "model.safetensors", "rb") as f:  # safetensors: an 8-byte header length, then JSON
        assert f.read(9)[8:9] == b"{"


def test_loaded_model_answers_exactly_as_the_saved_one(saved):
    model, folder = saved
    loaded = diffcomp.load(folder)
    assert not loaded.training
    assert loaded.ask(QUESTIONS) == model.ask(QUESTIONS)
    assert all(isinstance(a, str) for a in loaded.ask(QUESTIONS))
    own = dict(model.state_dict())
    for name, value in loaded.state_dict().items():
        assert torch.equal(value, own[name]), name
    again = type(model).from_pretrained(folder)  # the mixin's entry point
    assert again.ask(QUESTIONS) == model.ask(QUESTIONS)


@pytest.mark.slow  # a fresh interpreter imports torch and transformers
def test_fresh_process_loads_and_gets_the_same_answers(saved):
    model, folder = saved
    script = ("import json, sys, diffcomp\n"
              "model = diffcomp.load(sys.argv[1])\n"
              "print(json.dumps(model.ask(json.loads(sys.argv[2]))))\n")
    result = subprocess.run([sys.executable, "-c", script, str(folder), json.dumps(QUESTIONS)], capture_output=True,
                            text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == model.ask(QUESTIONS)


def test_loading_needs_no_registered_programs(saved, monkeypatch):
    """The library is assembled from the saved text: a changed or missing program plug-in does not matter."""
    _, folder = saved
    library_module = sys.modules["diffcomp.machine.library"]  # where registered programs are looked up

    def refuse(name):
        raise AssertionError(f"looked up the registered program {name!r}")

    monkeypatch.setattr(library_module, "_registered", refuse)
    assert isinstance(diffcomp.load(folder).ask('Sort the string "ba"'), str)


def test_ask_renders_answers_and_grows_memory_for_long_questions(saved):
    model, _ = saved
    cells = model.computer.cells
    long = 'Sort the string "' + "abcdefghij" * 4 + '"'
    answer = model.ask(long)  # one question: one answer
    assert isinstance(answer, str)
    assert model.computer.cells > max(cells, 40) and model.head.length == model.computer.cells


def test_explain_reports_parse_programs_steps_and_probability(saved):
    model, _ = saved
    e = model.explain('Sort the string "dcba"', record=True)
    assert e.answer == model.ask('Sort the string "dcba"')
    assert set(e.parse) == {"registers", "memory"}
    assert len(e.parse["memory"]["values"]) == model.computer.cells
    assert all(0 <= p <= 1 for p in e.parse["memory"]["probability"])
    assert [name for name, _ in e.choices["program"]] == ["insertion_sort"]
    assert e.steps >= 1 and e.halted > 0.5 and 0 < e.answer_probability <= 1 + 1e-6
    assert e.record.counter.shape[0] == e.record.values.shape[0] == e.steps + 1
    assert torch.allclose(e.record.counter.sum(1) + e.record.halted, torch.ones(e.steps + 1), atol=1e-4)
    assert "answer:" in str(e) and json.dumps(e.as_dict())
    soft = model.explain('Sort the string "dcba"', decide=False)
    assert not soft.decided and soft.answer_probability <= 1 + 1e-6


def test_render_answer_formats():
    from diffcomp.model.pretrained import render_answer

    assert render_answer([97, 98, 0, 0], "text") == "ab"
    assert render_answer([7], "number") == 7
    assert render_answer([3, 5], "numbers") == [3, 5]


def test_arithmetic_model_answers_with_a_number(tmp_path):
    task = build_task("arithmetic", {"base": 16, "ops": ["add", "mul"], "examples": 100}, seed=0)
    model = build_model({"backbone": "llama", "hidden_size": 16, "layers": 1, "heads": 2, "kv_heads": 1},
                        {"alu": "lookup", "base": 16}, task).eval()
    answers = model.ask(["Add 3 and 4", "What is 5 times 3?"])
    assert all(isinstance(a, int) and 0 <= a < 16 for a in answers)
    model.save_pretrained(tmp_path / "m")
    assert diffcomp.load(tmp_path / "m").ask(["Add 3 and 4", "What is 5 times 3?"]) == answers
    e = model.explain("Add 3 and 4")
    assert [n for n, _ in e.choices["op"]] and e.steps is None and "operands" in e.parse


def test_minimal_network_saves_and_loads_but_cannot_be_asked(tmp_path):
    task = build_task("arithmetic-onehot", {"base": 16, "ops": ["add", "sub"]}, seed=0)
    model = build_model({"backbone": "minimal"}, {"alu": "lookup", "base": 16}, task).eval()
    model.swap_alu("circuit", keep_encoding=False, bits=8)
    model.save_pretrained(tmp_path / "m")
    loaded = diffcomp.load(tmp_path / "m")
    assert loaded.computer.alu.encoding == model.computer.alu.encoding  # the swap is replayed
    batch = next(iter(DataLoader(task.dataset("test"), batch_size=16)))
    assert torch.equal(loaded(batch).prediction, model(batch).prediction)
    with pytest.raises(ValueError, match="reads numbers, not questions"):
        loaded.ask("Add 3 and 4")


# -- run folders ---------------------------------------------------------------------------------------

RUN_RECIPE = """
name = "tiny-sort"
seed = 0
[task]
name = "sort"
lengths = [1, 2]
width = 3
examples = 40
[model]
backbone = "llama"
hidden_size = 16
layers = 1
heads = 2
kv_heads = 1
parser = "span"
parser_options = { values = "embeddings", start = "before", end_keys = "embeddings" }
[computer]
alu = "lookup"
base = 128
library = ["insertion_sort"]
[[stages]]
kind = "train"
name = "first"
epochs = 1
batch_size = 8
keep_best = true
[[stages]]
kind = "train"
name = "second"
epochs = 1
batch_size = 8
lr = 0.01
"""


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    from diffcomp.recipe import parse_recipe
    from diffcomp.run import run_recipe

    out = tmp_path_factory.mktemp("run") / "tiny"
    run_recipe(parse_recipe(RUN_RECIPE, source="tiny.toml"), out, progress=False)
    return out


@pytest.mark.slow  # trains two short stages
def test_run_folder_loads_its_model_and_each_stage(run_folder):
    assert (run_folder / "model" / "config.json").is_file()  # the last stage wrote model/
    final = diffcomp.load(run_folder)
    rebuilt = diffcomp.load(run_folder, stage="second")  # from the recipe and the checkpoint
    assert final.ask(QUESTIONS) == rebuilt.ask(QUESTIONS)
    first = diffcomp.load(run_folder, stage="first")
    best = diffcomp.load(run_folder, stage="first-best")
    final_state = final.state_dict()
    assert any(not torch.equal(v, final_state[k]) for k, v in first.state_dict().items())  # other weights
    assert isinstance(best.ask(QUESTIONS[0]), str)
    with pytest.raises(PretrainedError, match="no training stage 'third'.*first, second"):
        diffcomp.load(run_folder, stage="third")


@pytest.mark.slow
def test_ask_command(run_folder, tmp_path, capsys, monkeypatch):
    import io

    assert main(["ask", str(run_folder), QUESTIONS[0], QUESTIONS[1]]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == diffcomp.load(run_folder).ask(QUESTIONS[:2])
    assert main(["ask", str(run_folder), "--json", QUESTIONS[0]]) == 0  # questions after an option
    record = json.loads(capsys.readouterr().out)
    assert record["question"] == QUESTIONS[0] and isinstance(record["answer"], str)
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(QUESTIONS[:3]) + "\n"))
    assert main(["ask", str(run_folder), "--stage", "first"]) == 0
    assert capsys.readouterr().out.splitlines() == diffcomp.load(run_folder, stage="first").ask(QUESTIONS[:3])
    plot = tmp_path / "run.png"
    assert main(["ask", str(run_folder), "--explain", "--json", "--plot", str(plot), QUESTIONS[0]]) == 0
    explained = json.loads(capsys.readouterr().out)
    assert explained["steps"] >= 1 and "memory" in explained["parse"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_exec_plot(tmp_path, capsys):
    plot = tmp_path / "exec.png"
    assert main(["exec", "insertion_sort", "--memory", "3,1,2,0", "--plot", str(plot)]) == 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["exec", "insertion_sort", "--memory", "3,1,2,0", "--plot", str(tmp_path / "x.jpg")]) == 2
    assert "PNG" in capsys.readouterr().err


def test_recorder_matches_the_run(tmp_path):
    from diffcomp.machine.plot import Recorder, plot_run

    alu = diffcomp.alu("lookup", base=32)
    machine = diffcomp.Machine(diffcomp.program("insertion_sort"), alu, cells=4, max_steps=200)
    recorder = Recorder(machine)
    state = machine.run(alu.encoding.encode([[0] * machine.n_registers]), alu.encoding.encode([[3, 1, 2, 0]]),
                        trace=recorder)
    recorder.finish(state)
    record = recorder.record()
    assert record.values[0].tolist() == [3, 1, 2, 0] and record.values[-1].tolist() == [1, 2, 3, 0]
    assert record.steps == int(state.steps[0]) and float(record.halted[-1]) > 0.99
    assert len(record.lines) == record.counter.shape[1] and record.lines[0] == "(halted)"
    assert "READ" in " ".join(record.lines)
    assert plot_run(record, tmp_path / "run.png", title="insertion sort").read_bytes()[:4] == b"\x89PNG"


# -- broken folders: one clear error naming the file, exit 2 from the CLI ---------------------------------


def _copy(folder: Path, tmp_path: Path) -> Path:
    import shutil

    target = tmp_path / "copy"
    shutil.copytree(folder, target)
    return target


def _edit_config(folder: Path, edit) -> None:
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))


def _unknown_parser(folder: Path) -> None:
    _edit_config(folder, lambda c: c["recipe"]["model"].__setitem__("parser", "no-such-parser"))


def _unknown_alu(folder: Path) -> None:
    _edit_config(folder, lambda c: c["recipe"]["computer"].__setitem__("alu", "no-such-alu"))


def _bad_program(folder: Path) -> None:
    _edit_config(folder, lambda c: c["library"].__setitem__("insertion_sort", "start: r1 = FROB r0\n RET\n"))


def _wrong_shape(folder: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(folder / "model.safetensors"))
    name = next(k for k in tensors if k.endswith("embed_tokens.weight"))
    tensors[name] = torch.zeros(tensors[name].shape[0], 7)
    save_file(tensors, str(folder / "model.safetensors"))


def _pickle(folder: Path) -> None:
    with open(folder / "model.safetensors", "wb") as f:
        pickle.dump({"x": 1}, f)


def _not_json(folder: Path) -> None:
    (folder / "config.json").write_text("{not json")


BROKEN = {
    "unknown parser": (_unknown_parser, r"config\.json.*'no-such-parser'.*not a registered parser"),
    "unknown alu": (_unknown_alu, r"config\.json.*no-such-alu"),
    "program that does not assemble": (_bad_program, r"config\.json: program 'insertion_sort' does not assemble"),
    "weights of the wrong shape": (_wrong_shape, r"model\.safetensors does not fit this model.*shapes differ"),
    "a pickle": (_pickle, r"model\.safetensors is a pickle-based file"),
    "config not JSON": (_not_json, r"config\.json is not valid JSON"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_folder_is_one_clear_error(saved, tmp_path, case, capsys):
    break_it, message = BROKEN[case]
    folder = _copy(saved[1], tmp_path)
    break_it(folder)
    with pytest.raises(PretrainedError, match=message):
        diffcomp.load(folder)
    assert main(["ask", str(folder), "Sort the string \"ab\""]) == 2
    err = capsys.readouterr().err
    assert err.startswith("diffcomp ask: error: ") and "Traceback" not in err and str(folder) in err


def test_not_a_model_folder(tmp_path, capsys):
    with pytest.raises(PretrainedError, match="holds no config.json"):
        diffcomp.load(tmp_path)
    assert main(["ask", str(tmp_path / "absent"), "x"]) == 2
    assert "no such folder" in capsys.readouterr().err


# -- the plain-PyTorch LLaMA a saved model loads into ---------------------------------------------------


@pytest.mark.parametrize("heads, kv_heads, layers, parser_layer", [(2, 1, 2, 1), (4, 2, 3, None), (2, 2, 1, 1)])
def test_native_llama_matches_transformers(heads, kv_heads, layers, parser_layer):
    """Same weights, same hidden states as transformers' LlamaModel (padded rows included), no transformers import."""
    from diffcomp.model import backbones
    from diffcomp.model.llama import Llama, supported
    from diffcomp.model.tokenizers import ByteTokenizer

    torch.manual_seed(0)
    reference = backbones.llama(258, hidden_size=32, layers=layers, heads=heads, kv_heads=kv_heads,
                                parser_layer=parser_layer)
    config = reference.model.config.to_dict()
    assert supported(config)
    native = backbones.llama_from_config(config)
    assert isinstance(native.model, Llama) and native.parser_layer == reference.parser_layer
    with torch.no_grad():  # trained-looking norms, not all ones
        for p in reference.parameters():
            p.add_(0.1 * torch.randn_like(p))
    native.load_state_dict(reference.state_dict(), strict=True)
    ids, mask = ByteTokenizer()(["Sort the string \"dcba\"", "ab", "What is 12 plus 30?"])
    with torch.no_grad():
        expected, got = reference(ids, mask), native(ids, mask)
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-4), (got - expected).abs().max()
    assert native.model.config.to_dict()["num_hidden_layers"] == reference.parser_layer


def test_native_llama_falls_back_for_configs_it_does_not_reproduce():
    from diffcomp.model.llama import supported

    base = {"model_type": "llama", "hidden_act": "silu", "rope_parameters": {"rope_type": "default"}}
    assert supported(base)
    assert not supported({**base, "rope_parameters": {"rope_type": "llama3", "factor": 8.0}})
    assert not supported({**base, "attention_bias": True})
    assert not supported({**base, "model_type": "mistral"})


@pytest.mark.slow  # a fresh interpreter
def test_loading_a_saved_llama_does_not_import_transformers_or_matplotlib(saved):
    _, folder = saved
    script = ("import sys, diffcomp\n"
              "diffcomp.load(sys.argv[1]).ask('Sort the string \"ba\"')\n"
              "print(sorted(m for m in ('transformers', 'matplotlib') if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", script, str(folder)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_tokenizer_from_files_travels_with_the_model(tmp_path):
    """A model on a local tokenizer folder saves the tokenizer's files and loads them from its own folder."""
    import shutil

    from test_backbones import make_tokenizer

    make_tokenizer(tmp_path / "tok")
    task = build_task("arithmetic", {"base": 16, "ops": ["add", "mul"], "examples": 100}, seed=0)
    model = build_model({"backbone": "llama", "hidden_size": 16, "layers": 1, "heads": 2, "kv_heads": 1,
                         "tokenizer": str(tmp_path / "tok")}, {"alu": "lookup", "base": 16}, task).eval()
    questions = ["Add 3 and 4", "What is 5 times 3 ?"]
    model.save_pretrained(tmp_path / "m")
    shutil.rmtree(tmp_path / "tok")  # the receiver has only the saved folder
    assert (tmp_path / "m" / "tokenizer.json").is_file()
    assert json.loads((tmp_path / "m" / "config.json").read_text())["recipe"]["model"]["tokenizer"] == "."
    assert diffcomp.load(tmp_path / "m").ask(questions) == model.ask(questions)
    assert json.loads((tmp_path / "m" / "config.json").read_text())["recipe"]["model"]["tokenizer"] == "."


def test_a_model_on_a_pretrained_backbone_says_it_cannot_be_saved_yet(tmp_path):
    from diffcomp.run import save_model
    from test_backbones import make_causal_lm, make_tokenizer

    tok = make_tokenizer(tmp_path / "lm")
    make_causal_lm(tmp_path / "lm", len(tok))
    task = build_task("arithmetic", {"base": 16, "ops": ["add"], "examples": 50}, seed=0)
    model = build_model({"backbone": "pretrained", "path": str(tmp_path / "lm")}, {"alu": "lookup", "base": 16}, task)
    with pytest.raises(PretrainedError, match="'pretrained' backbone"):
        model.save_pretrained(tmp_path / "m")
    assert not (tmp_path / "m").exists()  # refused before anything is written
    with pytest.warns(UserWarning, match="model/ folder was not written"):  # a run still ends well
        save_model(model, tmp_path / "run" / "model")
    assert not (tmp_path / "run" / "model").exists()
