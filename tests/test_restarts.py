"""Random restarts of a training stage (``TrainConfig.restarts``): several tries of the stage's first steps
from the same weights, each with a seed of its own, and the stage going on from the best on validation."""

from __future__ import annotations

import json

import pytest
import torch

from diffcomp.train import Trainer, TrainConfig, read_checkpoint, read_metrics, without_time
from diffcomp.train.trainer import try_seed
from test_trainer import (Interrupted, ToyTask, assert_same_tensors, comparable, config, model_state,  # noqa: F401
                          one_thread, toy_model)

# 448 training examples in batches of 32: 14 steps an epoch; the tries end on the first epoch's end, where the
# stage evaluates anyway, so a plain run with the chosen try's seed logs the very same records
STEPS = 14
RESTARTS = dict(epochs=3, lr=0.05, restarts=3, restart_steps=STEPS)


def restarted(path, **settings):
    trainer = Trainer(toy_model(), ToyTask(), config(**{**RESTARTS, **settings}), out_dir=path)
    return trainer, trainer.fit()


def test_try_seeds_differ_and_the_first_is_the_stages_own():
    seeds = [try_seed(5, i) for i in range(64)]
    assert seeds[0] == 5 and len(set(seeds)) == 64 and all(0 <= s < 2**32 for s in seeds)
    assert try_seed(2**32 - 1, 1) < 2**32


def test_the_stage_goes_on_from_the_try_with_the_best_validation(tmp_path):
    _, summary = restarted(tmp_path)
    tries = summary["tries"]
    assert [t["try"] for t in tries] == [0, 1, 2] and all(t["step"] == STEPS for t in tries)
    assert [t["seed"] for t in tries] == [try_seed(0, i) for i in range(3)]
    # the tries differ (their seeds draw other batches, dropout and noise), and the best of them is chosen
    assert len({(t["accuracy"], t["soft_loss"]) for t in tries}) == 3
    best = max(tries, key=lambda t: (t["accuracy"], -t["soft_loss"]))
    assert summary["chosen"] == best["try"]
    # each try ended on a validation evaluation, logged under its own name; the chosen try's became the stage's
    records = read_metrics(tmp_path)
    for t in tries:
        name = "train" if t["try"] == summary["chosen"] else f"train@try{t['try']}"
        at_end = [r for r in records if r["stage"] == name and r["split"] == "validation" and r["step"] == STEPS]
        assert len(at_end) == 1 and at_end[0]["accuracy"] == t["accuracy"], name
    assert {r["stage"] for r in records} == {"train"} | {f"train@try{t['try']}" for t in tries
                                                         if t["try"] != summary["chosen"]}
    assert summary["steps"] == 3 * STEPS and summary["stopped"] == "completed"
    document = read_checkpoint(tmp_path / "checkpoints" / "train.safetensors").document
    assert document["trainer"]["chosen"] == summary["chosen"] and document["summary"]["tries"] == tries


def test_the_chosen_try_goes_on_as_a_plain_run_with_its_seed_would(tmp_path):
    """Weights, optimiser state, RNG states and data order all carry over from the chosen try: the stage ends
    bit-identical to a run without restarts under the chosen try's seed, with the same records."""
    _, summary = restarted(tmp_path / "tries")
    seed = summary["tries"][summary["chosen"]]["seed"]
    plain = Trainer(toy_model(), ToyTask(), config(epochs=3, lr=0.05, seed=seed), out_dir=tmp_path / "plain").fit()
    assert_same_tensors(model_state(tmp_path / "tries" / "checkpoints" / "train.safetensors"),
                        model_state(tmp_path / "plain" / "checkpoints" / "train.safetensors"))
    assert {k: v for k, v in comparable(summary).items() if k not in ("tries", "chosen")} == comparable(plain)
    assert without_time(read_metrics(tmp_path / "tries", stage="train")) == without_time(
        read_metrics(tmp_path / "plain"))


def test_every_try_starts_from_the_same_weights(tmp_path):
    """Try i is the plain run of seed try_seed(0, i) up to the choice: its first evaluation is that run's."""
    restarted(tmp_path / "tries", restarts=2, eval_every_steps=5)
    records = without_time(read_metrics(tmp_path / "tries", split="validation"))
    for attempt in (0, 1):
        out = tmp_path / f"plain{attempt}"
        Trainer(toy_model(), ToyTask(), config(epochs=3, lr=0.05, eval_every_steps=5, seed=try_seed(0, attempt),
                                               max_steps=5), out_dir=out).fit()
        first = without_time(read_metrics(out, split="validation"))[0]
        mine = [r for r in records if r["step"] == 5 and r["stage"] in ("train", f"train@try{attempt}")]
        assert {**first, "stage": "x"} in [{**r, "stage": "x"} for r in mine]


def test_tries_of_the_whole_stage_keep_the_best_finished_one(tmp_path):
    _, summary = restarted(tmp_path, restart_steps=None, restarts=2)
    assert [t["step"] for t in summary["tries"]] == [3 * STEPS] * 2
    assert all(t["stopped"] == "completed" for t in summary["tries"])
    best = max(summary["tries"], key=lambda t: (t["accuracy"], -t["soft_loss"]))
    assert summary["chosen"] == best["try"] and summary["validation"]["accuracy"] == best["accuracy"]
    tests = read_metrics(tmp_path, stage="train", split="test")
    assert tests[-1]["step"] == 3 * STEPS  # the stage's end measures test on the kept weights


def test_keep_best_keeps_the_chosen_trys_best(tmp_path):
    trainer, summary = restarted(tmp_path, keep_best=True, lr=1.0, eval_every_steps=3, eval_splits=["validation"])
    best_path = tmp_path / "checkpoints" / "train-best.safetensors"
    assert best_path.exists() and not list((tmp_path / "checkpoints").glob("*@try*"))
    validations = read_metrics(tmp_path, stage="train", split="validation")
    assert summary["best"]["accuracy"] == max(r["accuracy"] for r in validations)
    assert trainer.evaluate("validation")["accuracy"] == summary["best"]["accuracy"]
    assert_same_tensors(model_state(best_path), model_state(tmp_path / "checkpoints" / "train.safetensors"))


def test_the_choice_reads_validation_never_test(tmp_path):
    runs = {}
    for shift in (0, 1):
        trainer = Trainer(toy_model(), ToyTask(test_shift=shift), config(**RESTARTS), out_dir=tmp_path / str(shift))
        runs[shift] = trainer.fit()
    assert runs[0]["test"]["accuracy"] != runs[1]["test"]["accuracy"]  # the test splits disagree
    assert runs[0]["tries"] == runs[1]["tries"] and runs[0]["chosen"] == runs[1]["chosen"]
    assert_same_tensors(model_state(tmp_path / "0" / "checkpoints" / "train.safetensors"),
                        model_state(tmp_path / "1" / "checkpoints" / "train.safetensors"))


@pytest.mark.parametrize("when", ["during the tries", "after the choice"])
def test_a_run_killed_then_resumed_ends_as_an_unbroken_one(tmp_path, monkeypatch, when):
    _, reference = restarted(tmp_path / "a")
    calls, original_train, original_save = [], Trainer._train, Trainer._save

    def train(self, until=None):
        calls.append(until)
        if len(calls) == 2:
            raise Interrupted  # in the second try: no checkpoint yet
        return original_train(self, until=until)

    def save(self):
        if self.state.epoch == 2:
            raise Interrupted  # the stage's checkpoint is the one written at the choice (epoch 1)
        original_save(self)

    if when == "during the tries":
        monkeypatch.setattr(Trainer, "_train", train)
    else:
        monkeypatch.setattr(Trainer, "_save", save)
    with pytest.raises(Interrupted):
        restarted(tmp_path / "b")
    monkeypatch.undo()
    checkpoint = tmp_path / "b" / "checkpoints" / "train.safetensors"
    assert checkpoint.exists() == (when == "after the choice")
    torch.manual_seed(99)  # the checkpoint's RNG states (or the tries' own seeds) must win
    # a new process builds the model the stage starts from (earlier stages' weights); after the choice the
    # checkpoint's weights replace whatever the model holds
    model = toy_model() if when == "during the tries" else toy_model(seed=7)
    trainer = Trainer(model, ToyTask(), config(**RESTARTS), out_dir=tmp_path / "b")
    summary = trainer.fit(resume=True)
    assert comparable(summary) == comparable(reference)
    assert without_time(read_metrics(tmp_path / "b")) == without_time(read_metrics(tmp_path / "a"))
    assert_same_tensors(model_state(tmp_path / "a" / "checkpoints" / "train.safetensors"), model_state(checkpoint))


def test_restarts_one_is_a_plain_stage(tmp_path):
    a = Trainer(toy_model(), ToyTask(), config(epochs=2), out_dir=tmp_path / "a").fit()
    b = Trainer(toy_model(), ToyTask(), config(epochs=2, restarts=1, restart_steps=5), out_dir=tmp_path / "b").fit()
    assert comparable(a) == comparable(b) and "tries" not in b
    assert without_time(read_metrics(tmp_path / "a")) == without_time(read_metrics(tmp_path / "b"))


@pytest.mark.parametrize("field, value, message", [
    ("restarts", 0, "restarts must be an integer from 1 to 64"),
    ("restarts", 65, "restarts must be an integer from 1 to 64"),
    ("restarts", 2.0, "restarts must be an integer"),
    ("restart_steps", 0, "restart_steps must be an integer >= 1 or None"),
])
def test_bad_restart_settings(field, value, message):
    with pytest.raises(ValueError, match=f"TrainConfig.{field}") as info:
        TrainConfig(**{field: value})
    assert message in str(info.value)


def test_metrics_rename_and_drop_a_stages_tries(tmp_path):
    from diffcomp.train.metrics import MetricsLog

    log = MetricsLog(tmp_path / "metrics.jsonl")
    for stage in ("earlier", "train@try0", "train@try1", "train", "training"):
        log.append({"stage": stage, "split": "validation", "accuracy": 0.5})
    log.rename_stage("train@try1", "train")
    assert [r["stage"] for r in read_metrics(tmp_path)] == ["earlier", "train@try0", "train", "train", "training"]
    log.drop_stage("train")
    assert [r["stage"] for r in read_metrics(tmp_path)] == ["earlier", "training"]
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])["accuracy"] == 0.5
