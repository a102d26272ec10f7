"""Bad input, tried as a new user would: one message naming what is wrong and what would be valid, exit 2,
nothing written. Whatever ``validate`` can know it checks, so a run never fails on it later."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffcomp.cli import main
from diffcomp.recipe import load_recipe
from test_recipes import TINY, fails, write
from test_registry import BROKEN, install_fake_distribution, run_cli


def refused(capsys, tmp_path: Path, recipe: str, overrides: list[str], *fragments: str) -> None:
    """``validate`` and ``run`` both refuse, with the same message, and the run writes nothing."""
    sets = [a for o in overrides for a in ("--set", o)]
    fails(capsys, ["validate", recipe, *sets], *fragments)
    out = tmp_path / "run"
    fails(capsys, ["run", recipe, "--out", str(out), *sets], *fragments)
    assert not out.exists(), "a refused run must write nothing"


# -- what only building the model and walking the stages can see ----------------------------


def test_a_computer_whose_numbers_do_not_fit_the_task(tmp_path, capsys):
    refused(capsys, tmp_path, "quickstart", ["computer.base=64"], "quickstart.toml",
            "task 'arithmetic-onehot' has numbers and answers modulo 128", "unit(base=64)")
    path = str(write(tmp_path, TINY))
    refused(capsys, tmp_path, path, ["computer.base=256"], "modulo 16", "unit(base=256)")


@pytest.mark.parametrize("bits", [0, 100000])
def test_a_swap_to_an_alu_that_cannot_be_built(tmp_path, capsys, bits):
    path = str(write(tmp_path, TINY))
    refused(capsys, tmp_path, path, [f"stages.1.bits={bits}"], "stages[1] ('1-swap', swap)",
            f"circuit ALU: bits must be a positive integer from 1 to 64", f"got {bits}")


def test_an_evaluation_on_a_task_the_swapped_computer_cannot_hold(tmp_path, capsys):
    path = str(write(tmp_path, TINY))  # after the swap to 8 bits, an evaluation on 12-bit numbers
    refused(capsys, tmp_path, path, ["stages.2.task.bits=12"], "stages[2] ('2-evaluate', evaluate)", "modulo 4096")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_asked_for_where_there_is_none(tmp_path, capsys):
    path = str(write(tmp_path, TINY))
    refused(capsys, tmp_path, path, ["stages.0.device=\"cuda\""], "stages[0] ('0-train', train)",
            "CUDA is not available here", "'auto' or 'cpu'")


def test_a_pretrained_backbone_needs_a_folder(tmp_path, capsys):
    refused(capsys, tmp_path, "llama-pretrained", ["model.path=\"\""], "llama-pretrained.toml",
            "backbone = 'pretrained' needs path")
    refused(capsys, tmp_path, "llama-pretrained", [f"model.path=\"{tmp_path / 'nowhere'}\""],
            "nowhere' is not a folder", "save_pretrained")


def test_a_pretrained_recipe_is_checked_without_loading_its_weights(tmp_path, capsys, monkeypatch):
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    folder = tmp_path / "lm"  # a small causal LM whose embedding has room for the byte tokenizer
    LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, num_key_value_heads=1)).save_pretrained(folder)
    capsys.readouterr()

    def no_weights(*args, **kwargs):
        raise AssertionError("validate loaded the weights")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", no_weights)
    args = ["validate", "llama-pretrained", "--quiet", "--set", f"model.path=\"{folder}\"", "--set",
            "model.tokenizer=\"byte\"", "--set", "task.examples=50"]
    assert main(args) == 0, capsys.readouterr().err
    fails(capsys, args[:-2] + ["--set", "model.parser_layer=7"], "parser_layer must be an integer from 1 to 2")


# -- single keys, blamed on the key as written ------------------------------------------------


@pytest.mark.parametrize("seed", ["-5", str(2**64), str(10**23)])
def test_a_seed_out_of_range_is_blamed_on_seed(tmp_path, capsys, seed):
    path = str(write(tmp_path, TINY))
    err = fails(capsys, ["validate", path, "--set", f"seed={seed}"], f"with --set seed={seed}: seed = {seed}",
                "from 0 to 4294967295")
    assert "TrainConfig" not in err and "stages[0]" not in err
    fails(capsys, ["validate", str(write(tmp_path, TINY.replace("seed = 3", f"seed = {seed}")))],
          f"recipe.toml: seed = {seed}: a seed is an integer from 0 to 4294967295")


@pytest.mark.parametrize("floor", ["2", "99", "-0.5"])
def test_min_accuracy_is_a_fraction(tmp_path, capsys, floor):
    path = str(write(tmp_path, TINY))
    refused(capsys, tmp_path, path, [f"stages.2.min_accuracy={floor}"], f"stages[2].min_accuracy = {floor}",
            "a fraction from 0 to 1")


def test_a_set_error_names_the_recipe_once(tmp_path, capsys):
    err = fails(capsys, ["validate", "quickstart", "--set", "stages.0.lr=-1"], "with --set stages.0.lr=-1",
                "lr must be a number in (0, inf]")
    assert err.count("quickstart.toml") == 1, err


# -- files that are not what they should be -----------------------------------------------------


@pytest.mark.parametrize("content, fragment", [
    (bytes(range(256)) * 3, "is not UTF-8 text"),
    (TINY.encode("utf-16"), "is UTF-16 text; save it as UTF-8"),
])
def test_a_recipe_file_that_is_not_text_is_named(tmp_path, capsys, content, fragment):
    path = tmp_path / "odd.toml"
    path.write_bytes(content)
    fails(capsys, ["validate", str(path)], f"{path}: the recipe file", fragment)
    fails(capsys, ["run", str(path), "--out", str(tmp_path / "run")], f"{path}: the recipe file", fragment)
    assert not (tmp_path / "run").exists()


def test_no_recipe_or_program_given(capsys):
    fails(capsys, ["validate", ""], "no recipe given", "quickstart")
    assert main(["exec", " "]) == 2
    assert "no program given" in capsys.readouterr().err


def test_a_folder_given_as_the_recipe(tmp_path, capsys):
    fails(capsys, ["validate", str(tmp_path)], f"{tmp_path} is a folder, not a recipe file")
    (tmp_path / "x.toml").mkdir()
    fails(capsys, ["validate", str(tmp_path / "x.toml")], "x.toml is a folder, not a recipe file")


# -- the run folder -------------------------------------------------------------------------------


def test_out_naming_a_file(tmp_path, capsys):
    path, out = str(write(tmp_path, TINY)), tmp_path / "taken"
    out.write_text("mine")
    err = fails(capsys, ["run", path, "--out", str(out)], f"--out {out} is a file, not a folder")
    assert "--resume" not in err
    assert out.read_text() == "mine"


def test_resume_needs_a_run_to_resume(tmp_path, capsys):
    path = str(write(tmp_path, TINY))
    fails(capsys, ["run", path, "--resume"], "--resume continues the run in a folder", "--out")
    fails(capsys, ["run", path, "--resume", "--out", str(tmp_path / "nowhere")],
          "nothing to resume", "nowhere does not exist")
    assert not (tmp_path / "nowhere").exists()
    (tmp_path / "empty").mkdir()
    fails(capsys, ["run", path, "--resume", "--out", str(tmp_path / "empty")], "nothing to resume", "is empty")
    assert not any((tmp_path / "empty").iterdir())


@pytest.mark.parametrize("name, text", [("state.json", "{not json"), ("state.json", "[1, 2]"),
                                        ("recipe.json", "\x00\x01")])
def test_a_damaged_run_record_is_named(tmp_path, capsys, name, text):
    path = write(tmp_path, TINY)
    out = tmp_path / "run"
    out.mkdir()
    (out / "recipe.json").write_text(load_recipe(str(path)).to_json())
    (out / name).write_text(text)
    before = sorted((p.name, p.read_bytes()) for p in out.iterdir())
    fails(capsys, ["run", str(path), "--out", str(out), "--resume"], str(out / name), "damaged")
    assert sorted((p.name, p.read_bytes()) for p in out.iterdir()) == before


# -- failures during a run ---------------------------------------------------------------------------


def test_a_deterministic_failure_does_not_suggest_resume(tmp_path, capsys):
    path = write(tmp_path, TINY.replace("epochs = 2\nlr = 0.05", "epochs = 1\nmax_steps = 1\nlr = 1e-6")
                 + "min_accuracy = 1.0\n")  # one tiny step cannot reach 100%: the claim fails, every time
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "ClaimNotMetError" in err and "below the recipe's min_accuracy 1.0" in err
    assert "continue with --resume" not in err and "--resume would fail the same way" in err


@pytest.mark.slow
def test_an_interrupted_run_says_how_to_resume(tmp_path):
    import signal
    import time

    path = write(tmp_path, TINY.replace("epochs = 2", "epochs = 10000"))  # far more than the test waits for
    out = tmp_path / "run"
    env = {**os.environ, "DIFFCOMP_TEST_THREADS": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    # SIGINT as a terminal sends it: a suite started in the background (`... &` in a script) ignores SIGINT, and
    # a child would inherit that (Python then installs no handler for it), so the run restores the default
    process = subprocess.Popen([sys.executable, "-m", "diffcomp", "run", str(path), "--out", str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while not (out / "metrics.jsonl").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, process.stderr.read()
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)  # reads both pipes while waiting: a full pipe cannot block the run
    assert process.returncode == 130, err
    assert "diffcomp run: interrupted" in err and f"continue with --resume --out {out}" in err
    assert "Traceback" not in err


def test_a_transient_failure_suggests_resume(tmp_path, capsys, monkeypatch):
    import diffcomp.run

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(diffcomp.run, "run_recipe", disk_full)
    out = tmp_path / "run"
    assert main(["run", str(write(tmp_path, TINY)), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and f"continue with --resume --out {out}" in err


# -- a plug-in that fails to import --------------------------------------------------------------


@pytest.mark.slow
def test_a_broken_plugin_is_one_clean_line_in_every_command(tmp_path):
    install_fake_distribution(tmp_path, "broken-dist", "broken_plugin", BROKEN)
    lines = {}
    for args in (["plugins"], ["validate", "quickstart", "--quiet"], ["exec", "insertion_sort", "--memory", "1,0"]):
        result = run_cli(args, tmp_path)
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr and "warnings.warn" not in result.stderr, result.stderr
        assert "PluginWarning" not in result.stderr and "registry.py" not in result.stderr, result.stderr
        [line] = [x for x in result.stderr.splitlines() if "broken_plugin" in x]
        assert line.startswith(f"diffcomp {args[0]}: warning: diffcomp plug-in 'broken_plugin'"), line
        lines[args[0]] = line.split(": warning: ", 1)[1]
    assert len(set(lines.values())) == 1, lines  # the same message from every command


# -- diffcomp exec ---------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, fragments", [
    (["--base", "100000000000"], ["base 100000000000 would hold", "GiB", "fewer cells or a smaller base"]),
    (["--cells", "1000000000"], ["1000000000 memory cells", "under 512 MiB"]),
    (["--cells", "2"], ["--cells 2 is fewer than the 4 values --memory gives"]),
])
def test_exec_limits(capsys, argv, fragments):
    assert main(["exec", "insertion_sort", "--memory", "3,1,2,0", *argv]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err and err.count("\n") == 1
    for fragment in fragments:
        assert fragment in err, err


def test_exec_of_a_folder_or_a_file_that_is_not_text(tmp_path, capsys):
    assert main(["exec", str(tmp_path)]) == 2
    assert f"{tmp_path} is a folder; PROGRAM is an assembly file" in capsys.readouterr().err
    binary = tmp_path / "prog.asm"
    binary.write_bytes(b"\x00\xff\xfe garbage")
    assert main(["exec", str(binary)]) == 2
    assert f"{binary}: the assembly file is not UTF-8 text" in capsys.readouterr().err


def test_memory_that_cannot_be_had_is_one_line_not_a_traceback(capsys, monkeypatch):
    import diffcomp.cli.exec_cmd

    def too_big(args):
        torch.empty(2**62, dtype=torch.uint8)  # more than any machine can allocate

    monkeypatch.setattr(diffcomp.cli.exec_cmd, "run", too_big)
    assert main(["exec", "insertion_sort"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("diffcomp exec: error: out of memory:") and err.count("\n") == 1, err


def test_exec_trace_into_a_closed_pipe_ends_quietly():
    env = {**os.environ, "DIFFCOMP_TEST_THREADS": "1", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "diffcomp", "exec", "fibonacci", "--registers", "12",
                                "--trace"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    first = process.stdout.readline()  # as `| head -1` does: read, then close
    process.stdout.close()
    err = process.stderr.read().decode()
    assert process.wait(timeout=120) == 141
    assert b"step" in first
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


# -- progress where there is no terminal -------------------------------------------------------------


def test_progress_is_a_line_per_record_when_not_on_a_terminal(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", str(write(tmp_path, TINY)), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    lines = [line for line in err.splitlines() if "  epoch " in line]
    assert len(lines) == len(records) >= 3, err
    for line, record in zip(lines, records):
        assert line.startswith(f"{record['stage']}  epoch {record['epoch']}  step {record['step']}  "
                               f"{record['split']}  loss ")
        assert f"accuracy {record['accuracy']:.4f}" in line
    assert main(["run", str(write(tmp_path, TINY)), "--out", str(tmp_path / "quiet"), "--no-progress"]) == 0
    assert "  epoch " not in capsys.readouterr().err


# -- more holes of the same kind --------------------------------------------------------------------


@pytest.mark.parametrize("override, fragments", [
    ("stages.0.name=\"my stage\"", ["stages[0].name = 'my stage'", "letters, digits"]),
    ("stages.1.name=\"../elsewhere\"", ["stages[1].name = '../elsewhere'", "letters, digits"]),
    ("name=\"../../elsewhere\"", ["name = '../../elsewhere'", "without '/'"]),
    # 2**40: weights past any address space, so the allocation fails on every machine
    ("model.hidden_size=1099511627776", ["the model is too big to build here", "make it smaller"]),
])
def test_names_that_would_be_paths_and_models_too_big_to_build(tmp_path, capsys, override, fragments):
    recipe = "llama-arithmetic" if "hidden_size" in override else str(write(tmp_path, TINY))
    refused(capsys, tmp_path, recipe, [override], *fragments)


def test_variant_names_are_unique_folder_names(tmp_path, capsys):
    fails(capsys, ["validate", "tables-vs-circuits", "--set", "variants.1.name=\"table\""],
          "variant names must be unique")
    fails(capsys, ["validate", "tables-vs-circuits", "--set", "variants.1.name=\"../x\""], "variants[1].name = '../x'")


def test_an_out_folder_that_cannot_be_made(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    err = fails(capsys, ["run", str(write(tmp_path, TINY)), "--out", str(blocker / "run")],
                f"cannot make the run folder {blocker / 'run'}", "choose another --out")
    assert "--resume" not in err


@pytest.mark.parametrize("options, fragments", [
    ({"cells": 10**9}, ["1000000000 memory cells and 16 registers", "under 512 MiB", "fewer cells"]),
    ({"base": 10**11}, ["base 100000000000 would hold", "GiB", "or a smaller base"]),
])
def test_execute_refuses_a_state_too_large_before_allocating_it(options, fragments, monkeypatch):
    """``diffcomp.execute`` itself says what is too large (``diffcomp exec`` shows the same line, exit 2)."""
    def no_allocation(*args, **kwargs):
        raise AssertionError("the machine was built before the size was checked")

    import diffcomp

    monkeypatch.setattr(sys.modules["diffcomp.machine.execute"], "Machine", no_allocation)  # (the module, not the function)
    with pytest.raises(ValueError) as error:
        diffcomp.execute("insertion_sort", [3, 1, 2, 0], **options)
    for fragment in fragments:
        assert fragment in str(error.value), str(error.value)
