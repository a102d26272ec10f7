"""The training engine: learning, metrics, schedules, stopping, divergence, exact resume after SIGKILL.

The tiny task and model here follow the trainer's contract (a task with
``dataset(split)``, a model returning ``.loss``/``.logits``/``.correct``); the
distributed and checkpoint tests import them. Run as a script, this file is
the child process of the kill-and-resume tests.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import attrs
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from diffcomp.errors import DiffcompError
from diffcomp.train import (CheckpointError, TrainConfig, Trainer, TrainingDivergedError, lr_factor,
                            read_checkpoint, read_metrics, without_time)

HERE = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (and the test machine's cores are shared)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- a tiny task and model under the trainer's contract ----------------------------------


class ToyDataset(Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y  # (n, dim), (n,)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "y": self.y[i]}


@attrs.frozen
class ToyTask:
    """Which of ``classes`` scores of a fixed random linear map of ``x`` is largest (70/15/15 split).

    ``test_shift``: the test split's labels are moved on by this much (mod ``classes``), so a model
    that learns the task gets the test split wrong: its validation and test accuracies differ.
    """

    name: str = "toy-argmax"
    examples: int = 640
    dim: int = 8
    classes: int = 4
    seed: int = 0
    test_shift: int = 0

    def dataset(self, split: str) -> ToyDataset:
        g = torch.Generator().manual_seed(self.seed)
        w = torch.randn(self.dim, self.classes, generator=g)
        x = torch.randn(self.examples, self.dim, generator=g)  # (examples, dim)
        y = torch.einsum("nd,dc->nc", x, w).argmax(-1)  # (examples,)
        train, validation = int(0.7 * self.examples), int(0.85 * self.examples)
        part = {"train": slice(0, train), "validation": slice(train, validation), "test": slice(validation, None)}
        if split == "test":
            y = (y + self.test_shift) % self.classes
        return ToyDataset(x[part[split]], y[part[split]])


@attrs.frozen
class Output:
    loss: torch.Tensor
    logits: torch.Tensor
    correct: torch.Tensor


class ToyModel(nn.Module):
    """A small MLP. In training it draws from torch (dropout), numpy and Python ``random`` (input noise),
    so a resume that failed to restore any of those generators would drift."""

    def __init__(self, dim: int = 8, classes: int = 4, hidden: int = 32, dropout: float = 0.1,
                 noise: float = 0.01, nan_at: int | None = None):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, classes))
        self.noise, self.nan_at, self.calls = noise, nan_at, 0

    def forward(self, batch: dict[str, torch.Tensor]) -> Output:
        x = batch["x"]
        if self.training:
            self.calls += 1
            if self.noise:
                jitter = np.random.normal(size=tuple(x.shape)) * self.noise + random.gauss(0, self.noise)
                x = x + torch.as_tensor(jitter, dtype=x.dtype)
        logits = self.net(x)  # (batch, classes)
        loss = nn.functional.cross_entropy(logits, batch["y"])
        if self.training and self.nan_at is not None and self.calls >= self.nan_at:
            loss = loss * float("nan")
        return Output(loss, logits, logits.argmax(-1) == batch["y"])


def toy_model(seed: int = 0, **options) -> ToyModel:
    torch.manual_seed(seed)
    return ToyModel(**options)


def config(**overrides) -> TrainConfig:
    settings = dict(epochs=3, batch_size=32, lr=1e-2, seed=0, progress=False)
    return TrainConfig(**{**settings, **overrides})


def model_state(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path).group("model")


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


def comparable(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in ("elapsed_s", "checkpoint")}


# -- learning and metrics ----------------------------------------------------------------


def test_learns_the_task(tmp_path):
    trainer = Trainer(toy_model(), ToyTask(), config(epochs=6), out_dir=tmp_path)
    before = trainer.evaluate("test")
    summary = trainer.fit()
    assert before["examples"] == 96 and before["accuracy"] < 0.6  # four classes: untrained is near chance
    assert summary["stopped"] == "completed" and summary["epochs"] == 6 and summary["steps"] == 6 * 14
    # seeds 0-4 (model, data and order) end at 0.92-0.96 on validation and test, 0.97-0.98 on train
    assert summary["test"]["accuracy"] >= 0.8 and summary["validation"]["accuracy"] >= 0.8, summary
    assert summary["train"]["accuracy"] >= 0.8 and summary["train"]["examples"] == 448
    assert summary["test"]["loss"] < before["loss"] / 2
    assert summary["best"]["split"] == "validation"
    assert summary["best"]["accuracy"] >= summary["validation"]["accuracy"]
    # a model without decided and soft evaluations has one, reported as both
    assert summary["test"]["soft_accuracy"] == summary["test"]["accuracy"]


def test_metrics_file_has_one_record_per_evaluation(tmp_path):
    Trainer(toy_model(), ToyTask(), config(epochs=5, eval_every=2), out_dir=tmp_path).fit()
    records = read_metrics(tmp_path)
    # epochs 2 and 4 by eval_every, and 5 because it is the last; the three splits each time
    splits = ("train", "validation", "test")
    assert [(r["epoch"], r["split"]) for r in records] == [(e, s) for e in (2, 4, 5) for s in splits]
    assert [r["step"] for r in records] == [28] * 3 + [56] * 3 + [70] * 3
    for r in records:
        assert r["stage"] == "train" and 0 <= r["accuracy"] <= 1 and r["loss"] > 0
        assert 0 <= r["soft_accuracy"] <= 1 and r["soft_loss"] > 0
        assert r["examples"] == (448 if r["split"] == "train" else 96)
        assert r["lr"] == pytest.approx(1e-2) and r["elapsed_s"] >= 0 and r["time"] > 1e9
    # the records are the trainer's own evaluations, not a separate computation
    last = {r["split"]: r for r in records[-3:]}
    checkpoint = read_checkpoint(tmp_path / "checkpoints" / "train.safetensors").document
    assert checkpoint["summary"]["test"]["accuracy"] == last["test"]["accuracy"]


def test_a_second_stage_appends_to_the_same_metrics(tmp_path):
    model = toy_model()
    Trainer(model, ToyTask(), config(epochs=1), out_dir=tmp_path, stage="table").fit()
    model.net[0].weight.requires_grad_(False)  # the next stage may freeze or swap parts
    frozen = model.net[0].weight.detach().clone()
    Trainer(model, ToyTask(), config(epochs=2), out_dir=tmp_path, stage="circuit").fit()
    assert [(r["stage"], r["epoch"]) for r in read_metrics(tmp_path, split="test")] == [
        ("table", 1), ("circuit", 1), ("circuit", 2)]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["circuit.safetensors",
                                                                         "table.safetensors"]
    assert torch.equal(model.net[0].weight, frozen)  # frozen: not in the optimiser, unchanged


def test_evaluate_on_a_given_dataset_and_log_it(tmp_path):
    trainer = Trainer(toy_model(), ToyTask(), config(), out_dir=tmp_path, stage="eval")
    other = ToyTask(seed=5).dataset("test")
    result = trainer.evaluate("shifted", other, log=True)
    model = trainer.model.eval()
    with torch.no_grad():
        out = model({"x": other.x, "y": other.y})  # the whole set at once: the reference
    assert result["examples"] == 96
    assert result["accuracy"] == out.correct.double().mean().item()
    assert result["loss"] == pytest.approx(out.loss.item(), rel=1e-6)
    assert read_metrics(tmp_path)[0]["split"] == "shifted"


def test_same_seed_same_run_different_seed_different_run(tmp_path):
    runs = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        Trainer(toy_model(), ToyTask(), config(epochs=2, seed=seed), out_dir=tmp_path / name).fit()
        runs[name] = model_state(tmp_path / name / "checkpoints" / "train.safetensors")
    assert_same_tensors(runs["a"], runs["b"])
    assert without_time(read_metrics(tmp_path / "a")) == without_time(read_metrics(tmp_path / "b"))
    assert not torch.equal(runs["a"]["net.0.weight"], runs["c"]["net.0.weight"])  # the data order moved


# -- schedules and stopping ----------------------------------------------------------------


def test_lr_schedules():
    assert [lr_factor("constant", s, 10, 4) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    cosine = [lr_factor("cosine", s, 12, 2) for s in range(12)]
    assert cosine[:3] == [0.5, 1.0, 1.0] and cosine[7] == pytest.approx(0.5)
    assert all(a > b for a, b in zip(cosine[2:], cosine[3:])) and cosine[-1] > 0
    one = [lr_factor("onecycle", s, 100) for s in range(100)]
    assert one[0] == pytest.approx(1 / 25) and max(one) == one[30] == 1.0
    assert one[-1] == pytest.approx(1 / 25e4 + (1 - 1 / 25e4) * 0.5 * (1 + math.cos(math.pi * 69 / 70)))
    with pytest.raises(ValueError, match="unknown learning-rate schedule"):
        lr_factor("linear", 0, 10)


def test_the_trainer_follows_the_schedule(tmp_path):
    Trainer(toy_model(), ToyTask(), config(epochs=2, schedule="cosine", warmup_steps=5), out_dir=tmp_path).fit()
    lrs = [r["lr"] for r in read_metrics(tmp_path, split="test")]
    # the lr of the last step of each epoch (steps 14 and 28 of 28)
    assert lrs == [pytest.approx(1e-2 * lr_factor("cosine", s, 28, 5)) for s in (13, 27)]


def test_max_steps_stops_mid_epoch_and_evaluates(tmp_path):
    summary = Trainer(toy_model(), ToyTask(), config(max_steps=20), out_dir=tmp_path).fit()
    assert summary["stopped"] == "max_steps" and summary["steps"] == 20 and summary["epochs"] == 1
    assert [(r["epoch"], r["step"]) for r in read_metrics(tmp_path, split="test")] == [(1, 14), (1, 20)]


def test_eval_every_steps_adds_mid_epoch_evaluations(tmp_path):
    Trainer(toy_model(), ToyTask(), config(epochs=2, eval_every_steps=5, eval_splits=["test"]), out_dir=tmp_path).fit()
    assert [r["step"] for r in read_metrics(tmp_path, split="validation")] == [28]  # the last evaluation adds it
    # 14 steps an epoch: steps 5 and 10 mid-epoch, 14 at its end (not twice), then 15, 20, 25 and 28
    assert [(r["epoch"], r["step"]) for r in read_metrics(tmp_path, split="test")] == [
        (0, 5), (0, 10), (1, 14), (1, 15), (1, 20), (1, 25), (2, 28)]


def test_eval_at_start_adds_an_evaluation_before_the_first_step(tmp_path):
    trainer = Trainer(toy_model(), ToyTask(), config(epochs=1, eval_at_start=True), out_dir=tmp_path)
    untrained = Trainer(toy_model(), ToyTask(), config(), out_dir=tmp_path / "other").evaluate("validation")
    trainer.fit()
    records = read_metrics(tmp_path, split="validation")
    assert [r["step"] for r in records] == [0, 14]
    assert records[0]["accuracy"] == untrained["accuracy"]  # the model as it was built


def test_log_every_steps_writes_the_training_batches_means(tmp_path, monkeypatch):
    seen = []  # (loss, correct, examples) of every training batch, kept by hand
    forward = ToyModel.forward

    def recording(self, batch):
        out = forward(self, batch)
        if self.training:
            seen.append((out.loss.item(), out.correct.sum().item(), len(out.correct)))
        return out

    monkeypatch.setattr(ToyModel, "forward", recording)
    Trainer(toy_model(), ToyTask(), config(epochs=2, log_every_steps=4, eval_splits=["test"]), out_dir=tmp_path).fit()
    records = read_metrics(tmp_path, split="batches")
    assert [r["step"] for r in records] == [4, 8, 12, 16, 20, 24, 28]  # 14 steps an epoch
    for record in records:
        window = seen[record["step"] - 4: record["step"]]
        examples = sum(n for _, _, n in window)
        assert record["examples"] == examples
        assert record["loss"] == pytest.approx(sum(loss * n for loss, _, n in window) / examples, rel=1e-6)
        assert record["accuracy"] == pytest.approx(sum(c for _, c, _ in window) / examples)
    Trainer(toy_model(), ToyTask(), config(epochs=1, eval_splits=["test"]), out_dir=tmp_path / "plain").fit()
    assert read_metrics(tmp_path / "plain", split="batches") == []  # written only when asked for


def test_log_every_steps_windows_survive_a_resume(tmp_path):
    settings = config(epochs=2, log_every_steps=4, checkpoint_every_steps=6, eval_splits=["test"])
    Trainer(toy_model(), ToyTask(), settings, out_dir=tmp_path / "a").fit()


    class CrashesAtStep19(ToyModel):
        def forward(self, batch):
            if self.training and self.calls == 18:
                raise Interrupted
            return super().forward(batch)

    torch.manual_seed(0)
    with pytest.raises(Interrupted):  # the last checkpoint is step 18's, mid-window (16 < 18 < 20)
        Trainer(CrashesAtStep19(), ToyTask(), settings, out_dir=tmp_path / "b").fit()
    Trainer(toy_model(), ToyTask(), settings, out_dir=tmp_path / "b").fit(resume=True)
    a, b = (without_time(read_metrics(tmp_path / run, split="batches")) for run in ("a", "b"))
    assert a == b and [r["step"] for r in a] == [4, 8, 12, 16, 20, 24, 28]


def test_stop_at_accuracy_mid_epoch(tmp_path):
    summary = Trainer(toy_model(), ToyTask(), config(epochs=30, eval_every_steps=3, stop_at_accuracy=0.8),
                      out_dir=tmp_path).fit()
    records = read_metrics(tmp_path, split="validation")
    assert summary["stopped"] == "stop_at_accuracy" and summary["steps"] % 3 == 0 and summary["steps"] % 14 != 0
    assert records[-1]["accuracy"] >= 0.8 > max(r["accuracy"] for r in records[:-1])


def test_keep_best_ends_the_stage_on_its_best_evaluation(tmp_path):
    # a high learning rate makes the toy task's accuracy jump around between evaluations
    settings = dict(epochs=3, lr=1.0, eval_splits=["validation"], eval_every_steps=3)
    plain = Trainer(toy_model(), ToyTask(), config(**settings), out_dir=tmp_path / "plain").fit()
    kept_trainer = Trainer(toy_model(), ToyTask(), config(**settings, keep_best=True), out_dir=tmp_path / "kept")
    kept = kept_trainer.fit()
    records = read_metrics(tmp_path / "kept", split="validation")
    best = max(r["accuracy"] for r in records)
    assert plain["validation"]["accuracy"] < best, "the settings must make the last evaluation worse than the best"
    assert kept["validation"]["accuracy"] == best == kept["best"]["accuracy"]
    assert records[-1]["accuracy"] == best and records[-1]["step"] == records[-2]["step"]  # re-evaluated at the end
    assert kept_trainer.evaluate("validation")["accuracy"] == best  # the model holds the best weights
    tests = read_metrics(tmp_path / "kept", split="test")  # measured once, on the weights kept
    assert len(tests) == 1 and tests[0]["step"] == records[-1]["step"]
    assert kept["test"]["accuracy"] == kept_trainer.evaluate("test")["accuracy"]
    assert_same_tensors(model_state(tmp_path / "kept" / "checkpoints" / "train.safetensors"),
                        model_state(tmp_path / "kept" / "checkpoints" / "train-best.safetensors"))


def test_stop_at_accuracy(tmp_path):
    summary = Trainer(toy_model(), ToyTask(), config(epochs=30, stop_at_accuracy=0.8), out_dir=tmp_path).fit()
    records = read_metrics(tmp_path, split="validation")
    assert summary["stopped"] == "stop_at_accuracy" and summary["epochs"] < 30
    assert records[-1]["accuracy"] >= 0.8 > max(r["accuracy"] for r in records[:-1])


@pytest.mark.parametrize("settings", [dict(stop_at_accuracy=0.8), dict(keep_best=True, lr=1.0)],
                         ids=["stop_at_accuracy", "keep_best"])
def test_decisions_read_validation_never_test(tmp_path, settings):
    """Two runs whose test splits disagree (one has its labels shifted, so a model that learns gets it wrong)
    make the same decisions: the same stop, the same kept weights, the same validation records."""
    runs = {}
    for shift in (0, 1):
        trainer = Trainer(toy_model(), ToyTask(test_shift=shift),
                          config(epochs=12, eval_every_steps=3, eval_splits=["train", "validation", "test"],
                                 **settings), out_dir=tmp_path / str(shift))
        runs[shift] = (trainer.fit(), read_metrics(tmp_path / str(shift)))
    (plain, plain_records), (shifted, shifted_records) = runs[0], runs[1]
    tests = [r["accuracy"] for r in shifted_records if r["split"] == "test"]
    validations = [r for r in shifted_records if r["split"] == "validation"]
    assert shifted["test"]["accuracy"] < 0.5 < shifted["validation"]["accuracy"]  # the splits disagree
    assert max(tests) > shifted["test"]["accuracy"] + 0.05  # a decision that read test would end elsewhere
    assert plain["test"]["accuracy"] != shifted["test"]["accuracy"]
    for key in ("stopped", "steps", "epochs", "best", "validation", "train"):
        assert plain[key] == shifted[key], key
    assert [r for r in without_time(plain_records) if r["split"] != "test"] == \
        [r for r in without_time(shifted_records) if r["split"] != "test"]
    assert_same_tensors(model_state(tmp_path / "0" / "checkpoints" / "train.safetensors"),
                        model_state(tmp_path / "1" / "checkpoints" / "train.safetensors"))
    if "stop_at_accuracy" in settings:  # the first validation at the bar stopped it
        assert shifted["stopped"] == "stop_at_accuracy"
        assert validations[-1]["accuracy"] >= 0.8 > max(r["accuracy"] for r in validations[:-1])
    else:  # the kept weights are validation's best, evaluated again at the end
        assert shifted["best"]["accuracy"] == max(r["accuracy"] for r in validations) == validations[-1]["accuracy"]
        assert shifted["best"]["step"] != shifted["steps"]


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("field, value, message", [
    ("epochs", 0, "epochs must be an integer >= 1"),
    ("batch_size", 2.5, "batch_size must be an integer"),
    ("epochs", True, "epochs must be an integer"),
    ("lr", -1.0, "lr must be a number in (0"),
    ("lr", float("nan"), "lr must be a number"),
    ("betas", (0.9, 1.5), "betas must be two numbers"),
    ("schedule", "cosin", "did you mean 'cosine'"),
    ("device", "gpu", "must be one of 'auto', 'cpu', 'cuda'"),
    ("stop_at_accuracy", 1.5, "stop_at_accuracy must be a number in (0, 1]"),
    ("eval_every_steps", 0, "eval_every_steps must be an integer >= 1 or None"),
    ("eval_splits", ("train", "dev"), "eval_splits must be a non-empty list"),
    ("progress", "yes", "progress must be true or false"),
])
def test_config_rejects_bad_values(field, value, message):
    with pytest.raises(ValueError, match=f"TrainConfig.{field}") as info:
        TrainConfig(**{field: value})
    assert message in str(info.value)


def test_config_from_dict():
    c = TrainConfig.from_dict({"epochs": 2, "lr": 1, "betas": [0.8, 0.9], "grad_clip": 1})
    assert c.lr == 1.0 and isinstance(c.lr, float) and c.betas == (0.8, 0.9) and c.grad_clip == 1.0
    assert TrainConfig.from_dict(c.as_dict()) == c
    with pytest.raises(ValueError, match="unknown training setting 'epoch' .did you mean 'epochs'"):
        TrainConfig.from_dict({"epoch": 2})
    with pytest.raises(ValueError, match="stop_at_accuracy watches the validation accuracy .no decision reads test"):
        TrainConfig(stop_at_accuracy=0.9, eval_splits=("train", "test"))
    with pytest.raises(ValueError, match="keep_best watches the validation accuracy"):
        TrainConfig(keep_best=True, eval_splits=("test",))


def test_trainer_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="stage name 'a/b'"):
        Trainer(toy_model(), ToyTask(), config(), out_dir=tmp_path, stage="a/b")
    with pytest.raises(TypeError, match="dataset.split."):
        Trainer(toy_model(), object(), config(), out_dir=tmp_path)
    frozen = Trainer(toy_model().requires_grad_(False), ToyTask(), config(), out_dir=tmp_path)
    assert frozen.evaluate("test")["examples"] == 96  # a frozen model can still be evaluated
    with pytest.raises(ValueError, match="no trainable parameters"):
        frozen.fit()
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            Trainer(toy_model(), ToyTask(), config(device="cuda"), out_dir=tmp_path)


def test_a_model_that_breaks_the_output_contract(tmp_path):
    class NoCorrect(ToyModel):
        def forward(self, batch):
            out = super().forward(batch)
            return Output(out.loss, out.logits, out.correct.long())

    with pytest.raises(TypeError, match=r"\.correct is a bool tensor of shape \(batch,\)"):
        Trainer(NoCorrect(), ToyTask(), config(), out_dir=tmp_path).fit()


# -- divergence -----------------------------------------------------------------------------------


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    model = toy_model(nan_at=17)  # epoch 2, its 3rd step
    trainer = Trainer(model, ToyTask(), config(checkpoint_every_steps=5), out_dir=tmp_path)
    with pytest.raises(TrainingDivergedError) as info:
        trainer.fit()
    error = info.value
    assert isinstance(error, DiffcompError)
    assert (error.stage, error.epoch, error.step) == ("train", 2, 17)
    assert "stage 'train' at epoch 2, step 17: the loss is nan" in str(error) and "is intact" in str(error)
    checkpoint = read_checkpoint(tmp_path / "checkpoints" / "train.safetensors")
    assert checkpoint.document["trainer"]["step"] == 15  # the last checkpoint before the NaN
    assert all(torch.isfinite(t).all() for t in checkpoint.group("model").values())
    assert not list((tmp_path / "checkpoints").glob(".*"))  # no stray temporary files

    # it resumes: from step 15, the NaN comes again at step 17 (the model counts calls afresh)
    fresh = Trainer(toy_model(nan_at=2), ToyTask(), config(checkpoint_every_steps=5), out_dir=tmp_path)
    with pytest.raises(TrainingDivergedError, match="step 17"):
        fresh.fit(resume=True)


def test_nan_before_any_checkpoint_says_so(tmp_path):
    with pytest.raises(TrainingDivergedError, match="no checkpoint had been written yet"):
        Trainer(toy_model(nan_at=1), ToyTask(), config(), out_dir=tmp_path).fit()


def test_infinite_gradient_norm_is_divergence_too(tmp_path):
    class InfGrad(ToyModel):
        def forward(self, batch):
            out = super().forward(batch)
            if self.training and self.calls == 3:  # a finite loss whose gradient is not: d sqrt(u)/du at u = 0
                out = Output(out.loss + torch.sqrt(self.net[0].weight.sum() * 0), out.logits, out.correct)
            return out

    with pytest.raises(TrainingDivergedError, match="the gradient norm is (inf|nan)"):
        Trainer(InfGrad(), ToyTask(), config(grad_clip=1.0), out_dir=tmp_path).fit()


# -- resume --------------------------------------------------------------------------------------


class Interrupted(BaseException):
    """Stands in for a crash in the middle of a stage (in-process)."""


def test_resume_after_a_crash_between_the_metrics_and_the_checkpoint(tmp_path, monkeypatch):
    settings = config(epochs=4, checkpoint_every=2)
    Trainer(toy_model(), ToyTask(), settings, out_dir=tmp_path / "a").fit()

    # run b dies at the end of epoch 4, after its metrics are written but before the checkpoint:
    # the resumed run must redo epochs 3-4 from the epoch-2 checkpoint and not log epoch 3 twice
    saves = []
    original = Trainer._save

    def save(self):
        saves.append(self.state.epoch)
        if self.state.epoch == 4:
            raise Interrupted
        original(self)

    monkeypatch.setattr(Trainer, "_save", save)
    with pytest.raises(Interrupted):
        Trainer(toy_model(), ToyTask(), settings, out_dir=tmp_path / "b").fit()
    assert saves == [2, 4] and len(read_metrics(tmp_path / "b")) == 12  # 4 evaluations of 3 splits
    monkeypatch.setattr(Trainer, "_save", original)
    random.seed(99), np.random.seed(99), torch.manual_seed(99)  # the checkpoint's RNG states must win
    summary = Trainer(toy_model(seed=7), ToyTask(), settings, out_dir=tmp_path / "b").fit(resume=True)

    assert without_time(read_metrics(tmp_path / "b")) == without_time(read_metrics(tmp_path / "a"))
    assert_same_tensors(model_state(tmp_path / "a" / "checkpoints" / "train.safetensors"),
                        model_state(tmp_path / "b" / "checkpoints" / "train.safetensors"))
    a = read_checkpoint(tmp_path / "a" / "checkpoints" / "train.safetensors").document["summary"]
    assert comparable(summary) == comparable(a)


def test_resuming_a_finished_stage_loads_its_weights(tmp_path):
    first = Trainer(toy_model(), ToyTask(), config(epochs=1), out_dir=tmp_path)
    summary = first.fit()
    model = toy_model(seed=1)
    again = Trainer(model, ToyTask(), config(epochs=1), out_dir=tmp_path).fit(resume=True)
    assert comparable(again) == comparable(summary)
    assert len(read_metrics(tmp_path)) == 3  # nothing re-run, nothing re-logged
    assert_same_tensors(dict(model.state_dict()), dict(first.model.state_dict()))


def test_resuming_a_checkpoint_whose_best_was_chosen_by_test_starts_the_best_afresh(tmp_path):
    from diffcomp.train.checkpoint import write_checkpoint

    settings = config(epochs=2, checkpoint_every_steps=5, keep_best=True, eval_every_steps=4)
    Trainer(toy_model(), ToyTask(), config(**{**settings.as_dict(), "max_steps": 10}), out_dir=tmp_path).fit()
    path = tmp_path / "checkpoints" / "train.safetensors"
    old = read_checkpoint(path)  # as an older diffcomp wrote it: best by test, no evaluated_splits, unfinished
    trainer_state = {k: v for k, v in old.document["trainer"].items() if k != "evaluated_splits"}
    trainer_state.update(stopped=None, best={**trainer_state["best"], "split": "test", "accuracy": 1.0})
    write_checkpoint(path, old.tensors, {**{k: v for k, v in old.document.items() if k not in ("format", "version")},
                                         "trainer": trainer_state})
    with pytest.warns(UserWarning, match="chose its best evaluation by 'test' accuracy .an older diffcomp."):
        summary = Trainer(toy_model(), ToyTask(), settings, out_dir=tmp_path).fit(resume=True)
    assert summary["best"]["split"] == "validation" and summary["best"]["accuracy"] < 1.0


def test_resume_with_changed_settings_warns(tmp_path):
    Trainer(toy_model(), ToyTask(), config(epochs=1), out_dir=tmp_path).fit()
    with pytest.warns(UserWarning, match=r"changed settings \(batch_size, lr\); the run will not match"):
        Trainer(toy_model(), ToyTask(), config(epochs=2, lr=0.5, batch_size=16), out_dir=tmp_path).fit(resume=True)


def test_resume_without_a_checkpoint_starts_the_stage_afresh(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(
        json.dumps({"stage": "earlier", "split": "test"}) + "\n" + json.dumps({"stage": "train", "split": "x"}) + "\n")
    Trainer(toy_model(), ToyTask(), config(epochs=1), out_dir=tmp_path).fit(resume=True)
    assert [(r["stage"], r["split"]) for r in read_metrics(tmp_path)] == [
        ("earlier", "test"), ("train", "train"), ("train", "validation"), ("train", "test")]


def test_resume_refuses_a_checkpoint_of_another_model(tmp_path):
    Trainer(toy_model(), ToyTask(), config(epochs=1, max_steps=2), out_dir=tmp_path).fit()
    with pytest.raises(CheckpointError, match="other trainable parameters"):
        Trainer(_half_frozen(), ToyTask(), config(epochs=1), out_dir=tmp_path).fit(resume=True)
    with pytest.raises(CheckpointError, match="does not fit this model"):
        Trainer(toy_model(hidden=16), ToyTask(), config(epochs=1), out_dir=tmp_path).fit(resume=True)


def _half_frozen() -> ToyModel:
    model = toy_model()
    model.net[0].requires_grad_(False)
    return model


# -- with the project's own model and task ----------------------------------------------------------


def minimal_arithmetic():
    from diffcomp.model import build_model, build_task

    task = build_task("arithmetic-onehot", {"base": 8, "ops": ["add", "mul"], "examples": 128}, seed=0)
    return build_model({"backbone": "minimal"}, {"alu": "lookup", "base": 8}, task), task


def test_the_minimal_network_learns_arithmetic_to_100_percent(tmp_path):
    model, task = minimal_arithmetic()
    trainer = Trainer(model, task, config(epochs=15, batch_size=16, lr=0.1, stop_at_accuracy=1.0), out_dir=tmp_path)
    before = trainer.evaluate("test")
    summary = trainer.fit()
    assert before["accuracy"] < 0.5 and before["examples"] == 19
    assert summary["stopped"] == "stop_at_accuracy" and summary["validation"]["accuracy"] == 1.0, summary
    assert summary["test"]["accuracy"] == 1.0, summary
    assert summary["train"]["accuracy"] == 1.0 and summary["epochs"] < 15


def test_the_minimal_network_resumes_exactly(tmp_path, monkeypatch):
    settings = config(epochs=4, batch_size=16, lr=0.1, checkpoint_every_steps=4)
    model, task = minimal_arithmetic()
    Trainer(model, task, settings, out_dir=tmp_path / "a").fit()

    original = Trainer._save

    def save(self):
        if self.state.step == 20:  # epoch 4, batch 2: resumes from step 16, mid-epoch 3
            raise Interrupted
        original(self)

    monkeypatch.setattr(Trainer, "_save", save)
    with pytest.raises(Interrupted):
        Trainer(*minimal_arithmetic(), settings, out_dir=tmp_path / "b").fit()
    monkeypatch.setattr(Trainer, "_save", original)
    Trainer(*minimal_arithmetic(), settings, out_dir=tmp_path / "b").fit(resume=True)
    assert without_time(read_metrics(tmp_path / "b")) == without_time(read_metrics(tmp_path / "a"))
    assert_same_tensors(model_state(tmp_path / "a" / "checkpoints" / "train.safetensors"),
                        model_state(tmp_path / "b" / "checkpoints" / "train.safetensors"))


def test_progress_bar_only_on_a_terminal(monkeypatch, capsys):
    from diffcomp.train.metrics import progress_bar

    assert progress_bar(10).disable  # pytest's stderr is not a terminal
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert progress_bar(10, enabled=False).disable
    with progress_bar(10, desc="train 1/3") as bar:
        assert not bar.disable
        bar.update(4)
    assert "train 1/3" in capsys.readouterr().err


# -- kill -9 and resume, for real -------------------------------------------------------------------

# checkpoints every 5 steps and every 2 epochs (14 steps an epoch); the child hangs before step 45, in
# epoch 4: the last checkpoint is mid-epoch 3 (step 40), and epoch 3's metrics (step 42) outlive it
KILL_SETTINGS, HANG_AT = dict(epochs=4, checkpoint_every=2, checkpoint_every_steps=5), 45


def run_child(out_dir: Path, settings: dict, *, resume: bool, hang_at: int | None = None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    argv = [sys.executable, str(Path(__file__).resolve()), str(out_dir), json.dumps(settings),
            "resume" if resume else "fresh", str(hang_at or 0)]
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow  # two fresh Python processes, each importing torch
def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path):
    settings, hang_at = KILL_SETTINGS, HANG_AT
    reference = Trainer(toy_model(), ToyTask(), config(**settings), out_dir=tmp_path / "a").fit()

    child = run_child(tmp_path / "b", settings, resume=False, hang_at=hang_at)
    marker = tmp_path / "b" / "hanging"
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert child.poll() is None, f"the child exited early: {child.communicate()}"
        assert time.monotonic() < deadline, "the child never reached the step it hangs at"
        time.sleep(0.05)
    assert (tmp_path / "b" / "checkpoints" / "train.safetensors").exists()
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait(timeout=30) == -signal.SIGKILL
    checkpoint = read_checkpoint(tmp_path / "b" / "checkpoints" / "train.safetensors").document
    assert checkpoint["summary"] is None and checkpoint["trainer"]["step"] == 40
    assert read_metrics(tmp_path / "b")[-1]["step"] == 42  # logged after the checkpoint: to be undone

    resumed = run_child(tmp_path / "b", settings, resume=True)
    stdout, stderr = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, stderr
    summary = json.loads(stdout.strip().splitlines()[-1])

    assert comparable(summary) == comparable(reference)
    assert without_time(read_metrics(tmp_path / "b")) == without_time(read_metrics(tmp_path / "a"))
    assert_same_tensors(model_state(tmp_path / "a" / "checkpoints" / "train.safetensors"),
                        model_state(tmp_path / "b" / "checkpoints" / "train.safetensors"))


def _child_main(out_dir: str, settings: str, mode: str, hang_at: str) -> None:
    """The child of the kill tests: trains the toy; with ``hang_at`` N, stops dead before training step N."""
    model = toy_model()
    if int(hang_at):
        def hang(module, args):
            if module.training and module.calls + 1 == int(hang_at):
                Path(out_dir, "hanging").touch()
                time.sleep(3600)  # wait here to be killed
        model.register_forward_pre_hook(hang)
    summary = Trainer(model, ToyTask(), config(**json.loads(settings)), out_dir=out_dir).fit(resume=mode == "resume")
    print(json.dumps(summary))


if __name__ == "__main__":
    _child_main(*sys.argv[1:])


def test_the_best_evaluation_is_the_most_accurate_then_the_best_fitting():
    from diffcomp.train.trainer import _better

    assert _better({"accuracy": 0.6, "soft_loss": 9.0}, {"accuracy": 0.5, "soft_loss": 1.0})
    assert _better({"accuracy": 0.0, "soft_loss": 27.6}, {"accuracy": 0.0, "soft_loss": 59.5})  # nothing right yet
    assert not _better({"accuracy": 0.5, "soft_loss": 3.0}, {"accuracy": 0.5, "soft_loss": 2.0})
    assert not _better({"accuracy": 0.4, "soft_loss": 0.1}, {"accuracy": 0.5, "soft_loss": 2.0})
