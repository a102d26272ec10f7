"""Running recipes end to end: the run folder, the quickstart's claims, kill -9 then --resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffcomp.cli import main
from diffcomp.train import read_metrics, without_time

from test_recipes import TINY

HERE = Path(__file__).resolve().parent


def cli(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "DIFFCOMP_TEST_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "diffcomp", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def test_quickstart_runs_end_to_end_and_meets_its_claims(tmp_path, capsys):
    out = tmp_path / "quickstart"
    # small settings: fewer examples; the stages, the swap and the claims (min_accuracy) are the recipe's own
    code = main(["run", "quickstart", "--out", str(out), "--no-progress",
                 "--set", "task.examples=3000", "--set", "stages.3.task.examples=600",
                 "--set", "stages.4.task.examples=600"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    stages = summary["stages"]
    assert stages["table-7bit"]["test"]["accuracy"] >= 0.99
    assert stages["circuit-16bit"]["test"]["accuracy"] >= 0.99
    assert stages["circuit-32bit"]["test"]["accuracy"] >= 0.99
    assert json.loads((out / "recipe.json").read_text())["name"] == "quickstart"
    records = read_metrics(out)
    assert {r["stage"] for r in records} == {"train-table", "table-7bit", "circuit-16bit", "circuit-32bit"}
    assert all({"stage", "epoch", "step", "split", "loss", "accuracy", "soft_loss", "soft_accuracy"} <= set(r)
               for r in records)
    trained = [r for r in records if r["stage"] == "train-table"]
    assert {r["split"] for r in trained} == {"validation", "test"} and len(trained) >= 6  # a curve, from step 0
    assert trained[0]["step"] == 0 and trained[0]["accuracy"] < 0.5
    summary = json.loads((out / "summary.json").read_text())["stages"]
    assert {"accuracy", "soft_accuracy", "loss", "soft_loss", "examples"} <= set(summary["circuit-32bit"]["test"])
    assert summary["train-table"]["best"]["split"] == "validation"
    assert load_file(str(out / "checkpoints" / "train-table.safetensors"))
    assert (out / "plots" / "train-table.png").read_bytes()[:4] == b"\x89PNG"


def test_a_train_stage_can_change_the_task_then_the_next_stages_use_the_recipes(tmp_path, capsys):
    recipe = tmp_path / "curriculum.toml"  # a first stage on fewer examples, then the recipe's own task
    recipe.write_text(TINY.replace('kind = "train"\nepochs = 2', 'kind = "train"\nname = "warm-up"\nepochs = 1\n'
                                   'task = { examples = 100 }\n\n[[stages]]\nkind = "train"\nepochs = 2'))
    assert main(["run", str(recipe), "--out", str(tmp_path / "run"), "--no-progress"]) == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())["stages"]
    assert summary["warm-up"]["test"]["examples"] == 15  # 15% of the stage's 100
    assert summary["warm-up"]["validation"]["examples"] == 15
    assert summary["1-train"]["test"]["examples"] == 60  # 15% of the recipe's 400
    assert summary["3-evaluate"]["test"]["examples"] == 30  # the evaluate stage's own task: 15% of 200


def test_a_train_stage_with_restarts_reports_its_tries(tmp_path, capsys):
    recipe = tmp_path / "restarts.toml"  # two tries of the first 3 steps; the stage goes on from the better
    recipe.write_text(TINY.replace('kind = "train"\nepochs = 2', 'kind = "train"\nepochs = 2\nrestarts = 2\n'
                                   'restart_steps = 3\neval_every_steps = 3'))
    assert main(["run", str(recipe), "--out", str(tmp_path / "run"), "--no-progress"]) == 0, capsys.readouterr().err
    stage = json.loads((tmp_path / "run" / "summary.json").read_text())["stages"]["0-train"]
    assert [t["try"] for t in stage["tries"]] == [0, 1] and {t["step"] for t in stage["tries"]} == {3}
    other = 1 - stage["chosen"]
    assert {r["stage"] for r in read_metrics(tmp_path / "run")} >= {"0-train", f"0-train@try{other}"}
    assert (tmp_path / "run" / "plots" / f"0-train@try{other}.png").exists()  # the try not taken, drawn alone
    assert (tmp_path / "run" / "plots" / "0-train.png").exists()


def test_an_evaluate_stage_measures_the_splits_it_names(tmp_path, capsys):
    recipe = tmp_path / "splits.toml"
    recipe.write_text(TINY.replace("epochs = 2", "epochs = 1").replace(
        'task = { bits = 8, examples = 200 }', 'task = { bits = 8, examples = 200 }\nsplit = "all"'))
    assert main(["run", str(recipe), "--out", str(tmp_path / "run"), "--no-progress"]) == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())["stages"]
    assert {split: result["examples"] for split, result in summary["2-evaluate"].items()} == {
        "train": 140, "validation": 30, "test": 30}
    assert all(0 <= r["soft_accuracy"] <= 1 for r in summary["2-evaluate"].values())


@pytest.mark.slow
def test_kill_9_then_resume_gives_the_same_final_metrics(tmp_path):
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TINY.replace("epochs = 2", "epochs = 3\ncheckpoint_every_steps = 4"))
    whole, killed = tmp_path / "whole", tmp_path / "killed"

    run = cli("run", str(recipe), "--out", str(whole), "--no-progress")
    assert run.wait(timeout=600) == 0, run.stderr.read()

    victim = cli("run", str(recipe), "--out", str(killed), "--no-progress")
    checkpoint = killed / "checkpoints" / "0-train.safetensors"
    deadline = time.time() + 300
    while not checkpoint.exists() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert victim.poll() is None, "the run ended before it could be killed"
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL
    assert not (killed / "summary.json").exists()

    resumed = cli("run", str(recipe), "--out", str(killed), "--no-progress", "--resume")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()
    assert without_time(read_metrics(killed)) == without_time(read_metrics(whole))
    a = load_file(str(whole / "checkpoints" / "0-train.safetensors"))
    b = load_file(str(killed / "checkpoints" / "0-train.safetensors"))
    assert a.keys() == b.keys()
    for key in a:  # weights, optimiser and RNG states, bit for bit (an unset RNG field is NaN in both)
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, equal_nan=True, msg=key)
    first, second = (json.loads((f / "summary.json").read_text()) for f in (whole, killed))
    assert first["stages"]["2-evaluate"] == second["stages"]["2-evaluate"]


def test_a_finished_run_is_not_overwritten_without_resume(tmp_path, capsys):
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TINY.replace("epochs = 2", "epochs = 1").replace("examples = 400", "examples = 100"))
    out = tmp_path / "run"
    assert main(["run", str(recipe), "--out", str(out), "--no-progress"]) == 0
    before = (out / "metrics.jsonl").read_text()
    assert main(["run", str(recipe), "--out", str(out), "--no-progress"]) == 2
    assert "already holds this run; pass --resume" in capsys.readouterr().err
    assert main(["run", str(recipe), "--out", str(out), "--no-progress", "--resume"]) == 0
    assert without_time(read_metrics(out)) == without_time([json.loads(x) for x in before.splitlines()])


SPAN_SORT = '''
name = "sort-pointers"
seed = 0

[task]
name = "sort"
lengths = [2]
alphabet = "abcd"
examples = 40

[model]
backbone = "llama"
hidden_size = 16
layers = 1
heads = 2
kv_heads = 1
parser = "span"
parser_options = { values = "embeddings", pointers = "sample", mixed_share = 0.5 }

[computer]
alu = "lookup"
base = 128

[[stages]]
kind = "train"
name = "mixed"
parser_options = { pointers = "mix", mixed_share = 0.0 }
epochs = 1

[[stages]]
kind = "train"
name = "drawn"
epochs = 1
'''


def test_a_train_stage_can_change_parser_options_for_its_own_duration(tmp_path, capsys, monkeypatch):
    from diffcomp.train import Trainer

    seen = {}
    fit = Trainer.fit

    def recording_fit(self, *args, **kwargs):
        parser = self.model.parser
        seen[self.stage] = (parser.pointer_mode, parser.mixed_share)
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "fit", recording_fit)
    recipe = tmp_path / "sort.toml"
    recipe.write_text(SPAN_SORT)
    assert main(["run", str(recipe), "--out", str(tmp_path / "run"), "--no-progress"]) == 0, capsys.readouterr().err
    assert seen == {"mixed": ("mix", 0.0), "drawn": ("sample", 0.5)}  # the recipe's [model] again after "mixed"
    stages = json.loads((tmp_path / "run" / "recipe.json").read_text())["stages"]
    assert stages[0]["parser_options"] == {"pointers": "mix", "mixed_share": 0.0} and stages[1]["parser_options"] == {}


def test_a_train_stage_can_change_how_the_computer_trains_for_its_own_duration(tmp_path, capsys, monkeypatch):
    from diffcomp.train import Trainer

    seen = {}
    fit = Trainer.fit

    def recording_fit(self, *args, **kwargs):
        seen[self.stage] = self.model.computer.explore
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "fit", recording_fit)
    recipe = tmp_path / "sort.toml"
    recipe.write_text(SPAN_SORT.replace('name = "mixed"\n', 'name = "mixed"\ncomputer = { explore = 0.25 }\n'))
    assert main(["run", str(recipe), "--out", str(tmp_path / "run"), "--no-progress"]) == 0, capsys.readouterr().err
    assert seen == {"mixed": 0.25, "drawn": 0.0}  # the recipe's [computer] again after "mixed"
    stages = json.loads((tmp_path / "run" / "recipe.json").read_text())["stages"]
    assert stages[0]["computer"] == {"explore": 0.25} and stages[1]["computer"] == {}


def test_run_threads_sets_torchs_threads_for_the_run_and_restores_them(tmp_path, capsys, monkeypatch):
    from cli_checks import fails
    from diffcomp.train import Trainer

    seen = []
    fit = Trainer.fit

    def recording_fit(self, *args, **kwargs):
        seen.append(torch.get_num_threads())
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "fit", recording_fit)
    recipe = tmp_path / "sort.toml"
    recipe.write_text(SPAN_SORT)
    before = torch.get_num_threads()
    want = 2 if before == 1 else 1
    assert main(["run", str(recipe), "--out", str(tmp_path / "run"), "--no-progress", "--threads", str(want)]) == 0
    assert seen == [want, want] and torch.get_num_threads() == before
    capsys.readouterr()
    fails(capsys, ["run", str(recipe), "--out", str(tmp_path / "other"), "--threads", "0"],
          "--threads must be at least 1")
    assert not (tmp_path / "other").exists()


def test_a_stage_computer_option_the_computer_cannot_train_with_is_refused_before_anything_is_written(tmp_path,
                                                                                                     capsys):
    from cli_checks import fails

    recipe = tmp_path / "sort.toml"  # one program, one step: no chain to discount
    recipe.write_text(SPAN_SORT.replace('name = "mixed"\n', 'name = "mixed"\ncomputer = { chain_discount = 0.5 }\n'))
    out = tmp_path / "run"
    for args in (["validate", str(recipe)], ["run", str(recipe), "--out", str(out)]):
        fails(capsys, args, "stages[0] ('mixed', train)", "chain_discount prefers chains that stop early",
              "selection = 'marginal', steps of 2 or more")
    assert not out.exists()
