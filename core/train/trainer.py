"""The training engine: :class:`Trainer` runs one stage of a recipe.

A task gives ``dataset("train")``, ``dataset("validation")`` and
``dataset("test")`` (items are dicts of fixed-shape tensors); a model maps a
batch to an output with ``.loss`` (a scalar, the mean over the batch) and
``.correct`` (bool ``(batch,)``, exact match). The trainer runs AdamW over the
model's trainable parameters, evaluates ``eval_splits`` every ``eval_every``
epochs (and, with ``eval_every_steps``, every that many steps) into
``metrics.jsonl``, and checkpoints so that a killed run, resumed, ends
bit-identical to one that never stopped (on CPU).

Every decision the stage makes from an evaluation (``stop_at_accuracy``,
``keep_best``) reads the validation split. The test split is measured at the
stage's last evaluation (and wherever ``eval_splits`` lists it) and logged;
nothing reads it back.

An evaluation measures two accuracies (see :meth:`Trainer.evaluate`):
``accuracy``, the model acting on its decisions, and ``soft_accuracy``, the
model run on its distributions as in training.

Resuming:

- the data order of epoch ``e`` is a function of ``(seed, e)`` alone
  (``DistributedSampler``), and a resumed epoch skips the batches already done;
- the RNG states of torch, numpy and Python, the optimiser state and the step
  are in the checkpoint; the learning rate is a pure function of the step;
- metrics appended after the checkpoint are cut off on resume, so the file
  is the same as an uninterrupted run's (apart from the clock fields).

Random restarts (``restarts = n``, ``restart_steps = m``): the stage's
first ``m`` steps are trained ``n`` times from the same weights, try ``i``
with seed :func:`try_seed` ``(seed, i)`` (try 0 with the stage's own), each
with a fresh optimiser; every try ends on a validation evaluation, and the
stage goes on from the best try (decided accuracy, then the lower soft loss:
the rule ``keep_best`` uses), its weights, optimiser, RNG states and data
order, as if it had been the only one. A try's records are logged under
``<stage>@try<i>``; the chosen try's are renamed to the stage's, so its curve
is whole. No checkpoint is written during the tries: a run killed then
resumes by trying again from the start; one killed after the choice resumes
the chosen try. Decisions read validation only, as ever.

A stage holds nothing about the model beyond its own lifetime: the next
stage (after ``model.swap_alu(...)``, say) makes a new ``Trainer`` on the same
``out_dir``, which appends to the same metrics file and checkpoints under its
own stage name.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import re
import sys
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..errors import DiffcompError
from . import distributed
from .checkpoint import (CheckpointError, load_model_tensors, load_optimizer_tensors, model_tensors,
                         optimizer_tensors, read_checkpoint, write_checkpoint)
from .config import DECIDING_SPLIT, MAX_SEED, TrainConfig
from .metrics import MetricsLog, progress_bar, progress_lines, try_stage
from .rng import rng_tensors, seed_everything, set_rng_tensors
from .schedule import lr_factor

_STAGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
#: settings that may change between a run and its resume without breaking exactness
_RESUMABLE = {"epochs", "max_steps", "stop_at_accuracy", "progress", "device", "eval_batch_size", "restarts",
              "restart_steps"}  # (restarts: a checkpoint is written after the choice)


def try_seed(seed: int, attempt: int) -> int:
    """The seed of try ``attempt`` of a stage with ``restarts`` (try 0: the stage's ``seed`` itself)."""
    return (seed + 0x9E3779B1 * attempt) % (MAX_SEED + 1)


class TrainingDivergedError(DiffcompError, RuntimeError):
    """The loss (or gradient norm) became NaN or infinite; training stopped, the last good checkpoint kept."""

    def __init__(self, stage: str, epoch: int, step: int, what: str, value: float, checkpoint: Path | None):
        self.stage, self.epoch, self.step, self.value, self.checkpoint = stage, epoch, step, value, checkpoint
        kept = (f"the last good checkpoint, {checkpoint}, is intact (resume from it with a lower lr or grad_clip)"
                if checkpoint is not None and checkpoint.exists() else "no checkpoint had been written yet")
        super().__init__(f"training diverged in stage {stage!r} at epoch {epoch}, step {step}: the {what} is "
                         f"{value}; stopped; {kept}")


@attrs.define
class TrainState:
    """Where a stage is; saved in every checkpoint as JSON."""

    epoch: int = 0  # epochs completed
    batch: int = 0  # batches done in the epoch under way
    step: int = 0  # optimiser steps in all
    elapsed_s: float = 0.0  # seconds of training, carried across resumes
    evaluated_step: int = -1  # the step of the latest evaluation
    evaluated_splits: list[str] = attrs.Factory(list)  # the splits it measured
    last: dict[str, dict[str, Any]] = attrs.Factory(dict)  # split -> latest evaluation
    best: dict[str, Any] | None = None  # the best validation evaluation (accuracy, then soft loss; never test)
    stopped: str | None = None  # "completed" | "max_steps" | "stop_at_accuracy" once finished
    metrics_bytes: int = 0  # size of metrics.jsonl when the checkpoint was written
    window: dict[str, float] = attrs.Factory(dict)  # training batches since the last "batches" record: sums
    seed: int | None = None  # the seed the stage's data order and RNGs follow (restarts: the chosen try's)
    tries: list[dict[str, Any]] = attrs.Factory(list)  # restarts: each try's seed and validation evaluation
    chosen: int | None = None  # restarts: the try the stage went on from

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainState:
        names = {f.name for f in attrs.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


class Trainer:
    """Trains ``model`` on ``task`` for one stage, writing metrics and checkpoints under ``out_dir``.

    ``fit(resume=False) -> summary`` trains; ``evaluate(split, dataset=None)``
    measures. Under ``torchrun`` every process runs the same code: each
    trains on its shard, gradients are averaged, evaluation sums the counts
    of all, and only rank 0 writes. Every process must call ``fit`` and
    ``evaluate`` alike.
    """

    def __init__(self, model: nn.Module, task: Any, config: TrainConfig | None = None, *,
                 out_dir: str | os.PathLike, stage: str = "train") -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"Trainer needs a torch.nn.Module as the model, got {type(model).__name__}")
        if not callable(getattr(task, "dataset", None)):
            raise TypeError(f"Trainer needs a task with a dataset(split) method, got {type(task).__name__}")
        config = TrainConfig() if config is None else config
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        if not isinstance(stage, str) or not _STAGE_NAME.match(stage):
            raise ValueError(f"stage name {stage!r} must be letters, digits, '_', '-' or '.', "
                             "starting with a letter or digit (it names the checkpoint file)")
        self.config, self.task, self.stage = config, task, stage
        self.dist = distributed.setup(config.device)
        for name in ("batch_size", "eval_batch_size"):
            size = getattr(config, name)
            if size is not None and size % self.dist.world_size:
                raise ValueError(f"{name} {size} must be divisible by the number of processes "
                                 f"({self.dist.world_size}): each takes an equal share of every batch")
        self.device = self.dist.device
        self.model = model.to(self.device)
        self.out_dir = Path(out_dir)
        if self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        self.checkpoint_path = self.out_dir / "checkpoints" / f"{stage}.safetensors"
        self.best_path = self.out_dir / "checkpoints" / f"{stage}-best.safetensors"  # with keep_best
        self._try: int | None = None  # restarts: the try under way (its records go under <stage>@try<i>)
        self.metrics = MetricsLog(self.out_dir / "metrics.jsonl", enabled=self.dist.is_main,
                                  echo=progress_lines(config.progress))  # a line per record where no bar shows
        self.parameter_names, self.optimizer = self._make_optimizer()
        self.state = TrainState()
        self._datasets: dict[str, Dataset] = {}
        self._clock = (time.perf_counter(), 0.0)  # (when this session started, elapsed_s before it)

    # -- public ------------------------------------------------------------------------

    def dataset(self, split: str) -> Dataset:
        """The task's dataset for ``split`` (made once per trainer)."""
        if split not in self._datasets:
            self._datasets[split] = self.task.dataset(split)
        return self._datasets[split]

    @property
    def per_process_batch(self) -> int:
        return self.config.batch_size // self.dist.world_size

    def steps_per_epoch(self) -> int:
        shard = math.ceil(len(self.dataset("train")) / self.dist.world_size)
        return math.ceil(shard / self.per_process_batch)

    def total_steps(self) -> int:
        """Optimiser steps the stage will take if it runs to the end (the schedule's length)."""
        total = self.config.epochs * self.steps_per_epoch()
        return min(total, self.config.max_steps) if self.config.max_steps else total

    def fit(self, resume: bool = False) -> dict[str, Any]:
        """Train the stage to its end; returns :meth:`summary`.

        ``resume=True`` continues from this stage's checkpoint when there is
        one (a finished stage only has its weights loaded), and otherwise
        starts from scratch, dropping any records this stage left in the metrics.
        Raises :class:`TrainingDivergedError` when the loss stops being finite.
        """
        if self.optimizer is None:
            raise ValueError("the model has no trainable parameters (every parameter has requires_grad=False); "
                             "there is nothing to train")
        with _deterministic(self.config.deterministic):
            tried = False
            if resume and self.checkpoint_path.exists():
                self._restore()
            else:
                if resume:
                    self.metrics.drop_stage(self.stage)
                self.state = TrainState(seed=self.config.seed)
                if self.config.restarts > 1:
                    self._restarts()
                    tried = True
                else:
                    seed_everything(self.config.seed + self.dist.rank)
            if self.state.stopped is None or tried:  # (a chosen try may have finished the stage: its end runs)
                self._train()
        self.dist.barrier()
        return self.summary()

    @torch.no_grad()
    def evaluate(self, split: str, dataset: Dataset | None = None, *, log: bool = False) -> dict[str, Any]:
        """``{"loss", "accuracy", "soft_loss", "soft_accuracy", "examples"}`` of the model on ``dataset``
        (default: the task's ``split``), in evaluation mode.

        ``accuracy`` and ``loss`` are *decided*: the model acts on its most
        likely choices (a model with ``evaluation_outputs``, such as every
        :class:`~diffcomp.model.ComputerModel`, runs its computer on the
        parser's decisions). ``soft_accuracy`` and ``soft_loss`` are *soft*:
        the computer runs on the distributions, as in training, and the answer
        is the most likely value of the final distribution. A model without
        ``evaluation_outputs`` has one evaluation, reported as both.

        ``log=True`` also appends a record to ``metrics.jsonl`` under this stage.
        Under torchrun each process evaluates a shard and the sums are combined.
        """
        dataset = self.dataset(split) if dataset is None else dataset
        if len(dataset) == 0:
            raise ValueError(f"cannot evaluate on split {split!r}: the dataset is empty")
        size = (self.config.eval_batch_size or self.config.batch_size) // self.dist.world_size
        shard = list(range(self.dist.rank, len(dataset), self.dist.world_size))
        batches = [shard[i:i + size] for i in range(0, len(shard), size)]
        totals = torch.zeros(5, dtype=torch.float64, device=self.device)  # loss, correct, soft loss, soft correct, n
        groups = tuple(getattr(self.task, "groups", ()))  # kinds of question, reported one by one
        by_group = torch.zeros(max(len(groups), 1), 4, dtype=torch.float64, device=self.device)
        was_training = self.model.training
        self.model.eval()
        try:
            for batch in self._loader(dataset, batches, seed=0):
                decided, soft = self._evaluation_outputs(batch)
                n = decided.correct.shape[0]
                totals += torch.stack([decided.loss.detach().double() * n, decided.correct.sum().double(),
                                       soft.loss.detach().double() * n, soft.correct.sum().double(),
                                       torch.tensor(n, dtype=torch.float64, device=self.device)])
                _add_groups(by_group, batch.get("group"), decided.correct,
                            getattr(decided, "selection_correct", None))
        finally:
            self.model.train(was_training)
        loss_sum, correct, soft_loss_sum, soft_correct, examples = self.dist.all_reduce_sum(totals).tolist()
        result = {"loss": loss_sum / examples, "accuracy": correct / examples,
                  "soft_loss": soft_loss_sum / examples, "soft_accuracy": soft_correct / examples,
                  "examples": int(examples)}
        result.update(_group_results(self.dist.all_reduce_sum(by_group), groups))
        if log:
            self._log(split, result)
        return result

    def _evaluation_outputs(self, batch: dict[str, Any]) -> tuple[Any, Any]:
        """The model's decided and soft outputs on ``batch`` (the same one twice if it has only one)."""
        both = getattr(self.model, "evaluation_outputs", None)
        if both is None:
            out = self.model(batch)
            _check_output(out)
            return out, out
        outputs = both(batch)
        for out in outputs.values():
            _check_output(out)
        return outputs["decided"], outputs["soft"]

    def summary(self) -> dict[str, Any]:
        """The stage's outcome: final evaluation per split, the best one, steps, why it stopped."""
        s = self.state
        out = {"stage": self.stage, "stopped": s.stopped, "epochs": s.epoch, "steps": s.step,
               **{split: dict(result) for split, result in s.last.items()},
               "best": s.best, "elapsed_s": s.elapsed_s, "checkpoint": str(self.checkpoint_path)}
        if s.tries:
            out.update(tries=[dict(t) for t in s.tries], chosen=s.chosen)
        return out

    @property
    def seed(self) -> int:
        """The seed the stage follows: ``config.seed``, or with ``restarts`` the chosen try's."""
        return self.config.seed if self.state.seed is None else self.state.seed

    @property
    def _record_stage(self) -> str:
        """The stage name records are logged under (a try's own while restarts run)."""
        return self.stage if self._try is None else try_stage(self.stage, self._try)

    # -- the loop ------------------------------------------------------------------------

    def _restarts(self) -> None:
        """Train the first ``restart_steps`` steps once per try, then go on from the best (see the module)."""
        cfg = self.config
        until = min(cfg.restart_steps or self.total_steps(), self.total_steps())
        start = _weights_copy(self.model)
        best_path, elapsed = self.best_path, 0.0

        def try_best(attempt: int) -> Path:  # where a try keeps its best weights (keep_best)
            return best_path.with_name(f"{try_stage(self.stage, attempt)}-best.safetensors")
        tries, best = [], None
        try:
            for attempt in range(cfg.restarts):
                self._try, seed = attempt, try_seed(cfg.seed, attempt)
                if attempt:
                    self.model.load_state_dict(start)
                    self.parameter_names, self.optimizer = self._make_optimizer()
                self.state = TrainState(seed=seed, elapsed_s=elapsed)
                self.best_path = try_best(attempt)
                seed_everything(seed + self.dist.rank)
                self._train(until=until)
                result, s = self.state.last[DECIDING_SPLIT], self.state
                elapsed = s.elapsed_s = self._elapsed()
                tries.append({"try": attempt, "seed": seed, "step": s.step, "stopped": s.stopped,
                              **{k: result[k] for k in ("accuracy", "loss", "soft_accuracy", "soft_loss")}})
                if best is None or _better(result, best["result"]):
                    best = {"try": attempt, "result": result, "state": copy.deepcopy(s),
                            "model": _weights_copy(self.model),
                            "optimizer": copy.deepcopy(self.optimizer.state_dict()), "rng": rng_tensors()}
        finally:
            self._try, self.best_path = None, best_path
        chosen = best["try"]
        self.model.load_state_dict(best["model"])
        self.parameter_names, self.optimizer = self._make_optimizer()
        self.optimizer.load_state_dict(best["optimizer"])
        set_rng_tensors(best["rng"])
        self.state = best["state"]
        self.state.elapsed_s, self.state.tries, self.state.chosen = elapsed, tries, chosen
        self.dist.barrier()
        if self.dist.is_main:  # the chosen try's records and best weights become the stage's
            self.metrics.rename_stage(try_stage(self.stage, chosen), self.stage)
            for attempt in range(cfg.restarts):
                path = try_best(attempt)
                if attempt == chosen and path.exists():
                    os.replace(path, best_path)
                else:
                    path.unlink(missing_ok=True)
        self._save()  # a run killed from here on resumes the chosen try
        if cfg.progress and self.dist.is_main:
            figures = " / ".join(f"{t['accuracy']:.4f}" for t in tries)
            print(f"{self.stage}: restarts: went on from try {chosen} of {len(tries)} (validation accuracy at step "
                  f"{tries[chosen]['step']}: {figures})", file=sys.stderr, flush=True)

    def _train(self, until: int | None = None) -> None:
        """Train to the stage's end (or, for a try of ``restarts``, to step ``until``, ending on a validation
        evaluation and writing no checkpoint)."""
        cfg, s = self.config, self.state
        train_set = self.dataset("train")
        sampler = DistributedSampler(train_set, num_replicas=self.dist.world_size, rank=self.dist.rank,
                                     shuffle=True, seed=self.seed)
        steps_per_epoch, total = self.steps_per_epoch(), self.total_steps()
        ddp = self.dist.wrap(self.model, find_unused_parameters=cfg.find_unused_parameters)
        self._clock = (time.perf_counter(), s.elapsed_s)
        if cfg.eval_at_start and s.step == 0 and s.evaluated_step < 0:
            self._evaluate_all()
        self.model.train()
        while s.stopped is None:
            if s.epoch >= cfg.epochs:  # resumed with fewer epochs than the checkpoint has done
                s.stopped = "completed"
                break
            sampler.set_epoch(s.epoch)
            order = list(sampler)  # this process's share of epoch s.epoch, a function of (seed, epoch)
            batches = [order[i:i + self.per_process_batch] for i in range(0, len(order), self.per_process_batch)]
            with progress_bar(steps_per_epoch, initial=s.batch, desc=f"{self.stage} {s.epoch + 1}/{cfg.epochs}",
                              enabled=cfg.progress and self.dist.is_main) as bar:
                for batch in self._loader(train_set, batches[s.batch:], seed=self.seed + s.epoch):
                    loss, correct, examples = self._step(ddp, batch, total)
                    s.batch, s.step = s.batch + 1, s.step + 1
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
                    if cfg.log_every_steps:
                        self._log_batches(loss, correct, examples)
                    if cfg.max_steps and s.step >= cfg.max_steps:
                        s.stopped = "max_steps"
                        break
                    if cfg.eval_every_steps and s.step % cfg.eval_every_steps == 0 and s.batch < len(batches):
                        self._evaluate_all()  # (the epoch's end evaluates anyway)
                        if s.stopped is not None:
                            break
                    if until is not None and s.step >= until:
                        break
                    if cfg.checkpoint_every_steps and s.step % cfg.checkpoint_every_steps == 0 and until is None:
                        self._save()
            if s.batch == len(batches):  # the epoch is complete
                s.epoch, s.batch = s.epoch + 1, 0
                if s.epoch >= cfg.epochs:
                    s.stopped = s.stopped or "completed"
                if s.epoch % cfg.eval_every == 0 or s.stopped:
                    self._evaluate_all()
                if s.stopped is None and s.epoch % cfg.checkpoint_every == 0 and until is None:
                    self._save()
            if until is not None and s.step >= until:
                break
        if until is not None:  # a try: its decision reads validation at the step it ended on
            if s.evaluated_step != s.step:
                self._evaluate_all()
            if DECIDING_SPLIT not in s.evaluated_splits:
                self._evaluate_all((DECIDING_SPLIT,), extend=True)
            return
        if s.evaluated_step != s.step:
            self._evaluate_all()
        if self.config.keep_best and s.best is not None and s.best["step"] != s.step:
            self._keep_best()
        else:  # the last evaluation was of these weights: add the splits it left out (test, say)
            missing = [split for split in self._final_splits() if split not in s.evaluated_splits]
            if missing:
                self._evaluate_all(missing, extend=True)
        self._save()

    def _final_splits(self) -> tuple[str, ...]:
        """What the stage's last evaluation measures: ``eval_splits``, and validation and test in any case."""
        return tuple(dict.fromkeys((*self.config.eval_splits, "validation", "test")))

    def _keep_best(self) -> None:
        """Load the weights of the best evaluation and evaluate them again, so the records end on them."""
        self.dist.barrier()  # rank 0 wrote the file
        load_model_tensors(self.model, read_checkpoint(self.best_path).group("model"), source=self.best_path)
        best = self.state.best
        self._evaluate_all(self._final_splits())
        self.state.best = best  # the same weights, evaluated again

    def _log_batches(self, loss: float, correct: float, examples: float) -> None:
        """Add a training batch to the window; every ``log_every_steps`` steps write its means and start anew."""
        s, w = self.state, self.state.window
        w["loss"] = w.get("loss", 0.0) + loss * examples
        w["correct"], w["examples"] = w.get("correct", 0.0) + correct, w.get("examples", 0.0) + examples
        if s.step % self.config.log_every_steps:
            return
        self.metrics.append({"stage": self._record_stage, "epoch": s.epoch, "step": s.step, "split": "batches",
                             "loss": w["loss"] / w["examples"], "accuracy": w["correct"] / w["examples"],
                             "examples": int(w["examples"]), "lr": self.optimizer.param_groups[0]["lr"],
                             "elapsed_s": round(self._elapsed(), 3), "time": round(time.time(), 3)})
        s.window = {}

    def _step(self, ddp: nn.Module, batch: dict[str, torch.Tensor], total: int) -> tuple[float, float, float]:
        """One optimiser step; the batch's mean loss, and how many of its examples (of all processes) were right."""
        cfg, s = self.config, self.state
        lr = cfg.lr * lr_factor(cfg.schedule, s.step, total, cfg.warmup_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        out = ddp(batch)
        _check_output(out)
        loss = self.dist.all_reduce_sum(out.loss.detach().float()) / self.dist.world_size
        value = loss.item()
        counts = None
        if cfg.log_every_steps:  # (one more sync per step, so only when asked for)
            counts = self.dist.all_reduce_sum(torch.stack([out.correct.detach().sum().float(),
                                                           torch.tensor(float(out.correct.numel()),
                                                                        device=out.loss.device)]))
        if not math.isfinite(value):
            self._diverged("loss", value)
        out.loss.backward()
        if cfg.grad_clip is not None:
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip).item()
            if not math.isfinite(norm):
                self._diverged("gradient norm", norm)
        self.optimizer.step()
        correct, examples = counts.tolist() if counts is not None else (0.0, 0.0)
        return value, correct, examples

    def _evaluate_all(self, splits: tuple[str, ...] | list[str] | None = None, *, extend: bool = False) -> None:
        """Evaluate ``splits`` (default ``eval_splits``) and make the stage's decisions, from validation only.

        The best evaluation (``keep_best``) and ``stop_at_accuracy`` read the
        validation record's decided accuracy; the test record is only logged.
        ``extend``: these splits complete the evaluation already made at this step.
        """
        s, cfg = self.state, self.config
        splits = cfg.eval_splits if splits is None else tuple(splits)
        for split in splits:
            result = self.evaluate(split, log=True)
            s.last[split] = result
            if split != DECIDING_SPLIT:
                continue  # (test above all: recorded, never read by a decision)
            if s.best is None or _better(result, s.best):
                s.best = {"split": split, **result, "epoch": s.epoch, "step": s.step}
                if cfg.keep_best and self.dist.is_main:
                    write_checkpoint(self.best_path, self._model_group(), {"stage": self.stage, "best": s.best})
            if cfg.stop_at_accuracy is not None and result["accuracy"] >= cfg.stop_at_accuracy and s.stopped is None:
                s.stopped = "stop_at_accuracy"
        s.evaluated_splits = [*s.evaluated_splits, *splits] if extend else list(splits)
        s.evaluated_step = s.step

    def _log(self, split: str, result: Mapping[str, Any]) -> None:
        s = self.state
        lr = self.optimizer.param_groups[0]["lr"] if self.optimizer is not None else None
        self.metrics.append({"stage": self._record_stage, "epoch": s.epoch, "step": s.step, "split": split,
                             "loss": result["loss"], "accuracy": result["accuracy"],
                             "soft_loss": result["soft_loss"], "soft_accuracy": result["soft_accuracy"],
                             "examples": result["examples"], "lr": lr,
                             **{k: result[k] for k in ("selection_accuracy", "groups") if k in result},
                             "elapsed_s": round(self._elapsed(), 3), "time": round(time.time(), 3)})

    def _elapsed(self) -> float:
        start, before = self._clock
        return before + time.perf_counter() - start

    def _diverged(self, what: str, value: float) -> None:
        s = self.state
        raise TrainingDivergedError(self.stage, s.epoch + 1, s.step + 1, what, value,
                                    self.checkpoint_path if self.checkpoint_path.exists() else None)

    def _loader(self, dataset: Dataset, batches: list[list[int]], *, seed: int) -> Iterator[dict[str, Any]]:
        # a private generator: making the loader must not draw from the global RNG,
        # or a resumed run (which makes one more loader) would drift from an unbroken one
        loader = DataLoader(dataset, batch_sampler=batches,
                            generator=torch.Generator().manual_seed(seed),
                            pin_memory=self.device.type == "cuda")
        for batch in loader:
            yield _to_device(batch, self.device)

    # -- optimiser and checkpoints ---------------------------------------------------------

    def _make_optimizer(self) -> tuple[list[str], torch.optim.Optimizer | None]:
        """AdamW over the trainable parameters (None if there are none: such a trainer only evaluates)."""
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        if not named:
            return [], None
        decay = [(n, p) for n, p in named if p.dim() >= 2]
        rest = [(n, p) for n, p in named if p.dim() < 2]
        groups = [{"params": [p for _, p in g], "weight_decay": wd}
                  for g, wd in ((decay, self.config.weight_decay), (rest, 0.0)) if g]
        optimizer = torch.optim.AdamW(groups, lr=self.config.lr, betas=self.config.betas)
        return [n for n, _ in decay + rest], optimizer

    def _save(self) -> None:
        """Write the checkpoint (rank 0); every process calls this, as the RNG states are gathered."""
        s = self.state
        for name, p in self.model.named_parameters():
            if not torch.isfinite(p).all():
                self._diverged(f"parameter {name!r}", float("nan"))
        s.elapsed_s = self._elapsed()
        s.metrics_bytes = self.metrics.size()
        tensors = self._model_group()
        opt_tensors, opt_document = optimizer_tensors(self.optimizer)
        tensors.update({f"optimizer/{k}": v for k, v in opt_tensors.items()})
        for key, value in rng_tensors().items():
            for rank, part in enumerate(self.dist.all_gather(value)):
                tensors[f"rng/{rank}/{key}"] = part
        if self.dist.is_main:
            write_checkpoint(self.checkpoint_path, tensors, {
                "stage": self.stage, "trainer": s.as_dict(), "config": self.config.as_dict(),
                "world_size": self.dist.world_size, "parameters": self.parameter_names,
                "schedule": {"name": self.config.schedule, "step": s.step, "total_steps": self.total_steps(),
                             "lr": self.optimizer.param_groups[0]["lr"]},
                "optimizer": opt_document, "summary": self.summary() if s.stopped else None})

    def _model_group(self) -> dict[str, torch.Tensor]:
        """The model's tensors under ``model/``, as checkpoints hold them."""
        return {f"model/{k}": v for k, v in model_tensors(self.model).items()}

    def _restore(self) -> None:
        ckpt = read_checkpoint(self.checkpoint_path)
        doc = ckpt.document
        if doc.get("stage") != self.stage:
            raise CheckpointError(f"{ckpt.path} belongs to stage {doc.get('stage')!r}, not {self.stage!r}")
        if doc.get("parameters") != self.parameter_names:
            raise CheckpointError(f"{ckpt.path} was written for other trainable parameters than this "
                                  "model has (was the model, or what is frozen, changed?)")
        load_model_tensors(self.model, ckpt.group("model"), source=ckpt.path)
        load_optimizer_tensors(self.optimizer, ckpt.group("optimizer"), doc["optimizer"], source=ckpt.path)
        self.state = TrainState.from_dict(doc["trainer"])
        best = self.state.best
        if best is not None and best.get("split") != DECIDING_SPLIT:  # written before decisions read validation
            warnings.warn(f"{ckpt.path} chose its best evaluation by {best.get('split')!r} accuracy (an older "
                          f"diffcomp); the best is chosen again from the next {DECIDING_SPLIT} evaluation",
                          stacklevel=3)
            self.state.best = None
        changed = sorted(k for k, v in doc.get("config", {}).items()
                         if k not in _RESUMABLE and self.config.as_dict().get(k) != v)
        if changed or doc.get("world_size") != self.dist.world_size:
            what = ", ".join(changed) or f"world size {doc.get('world_size')} -> {self.dist.world_size}"
            warnings.warn(f"resuming stage {self.stage!r} with changed settings ({what}); the run will "
                          "not match an uninterrupted one exactly", stacklevel=3)
        rng = ckpt.group(f"rng/{self.dist.rank}")
        if rng:
            set_rng_tensors(rng)
        else:
            seed_everything(self.seed + self.dist.rank + self.state.step)
        if self.state.stopped is None:
            self.metrics.truncate(self.state.metrics_bytes)


def _weights_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of ``model``'s state (parameters and buffers), detached from it."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _add_groups(by_group: torch.Tensor, group: torch.Tensor | None, correct: torch.Tensor,
                selection: torch.Tensor | None) -> None:
    """Add a batch to ``by_group`` ``(groups, 4)``: examples, correct, selections counted, selections right."""
    if selection is None and group is None:
        return
    index = (group if group is not None else torch.zeros_like(correct, dtype=torch.long)).to(by_group.device)
    ones = torch.ones_like(correct, dtype=torch.float64)
    chosen = selection if selection is not None else torch.zeros_like(correct)
    counted = ones if selection is not None else torch.zeros_like(ones)
    rows = torch.stack([ones, correct.double(), counted, chosen.double()], 1).to(by_group.device)
    by_group.index_add_(0, index.long().view(-1), rows)


def _group_results(by_group: torch.Tensor, groups: tuple[str, ...]) -> dict[str, Any]:
    """``selection_accuracy`` (whether the model ran the task's programs, or a chain that answers alike: see
    :meth:`diffcomp.model.computer.MachineComputer.answers_alike`) and ``groups``: per kind of question."""
    out: dict[str, Any] = {}
    examples, correct, counted, chosen = by_group.sum(0).tolist()
    if counted:
        out["selection_accuracy"] = chosen / counted
    if groups and examples:
        out["groups"] = {name: {"examples": int(n), "accuracy": c / n,
                                **({"selection_accuracy": s / k} if k else {})}
                         for name, (n, c, k, s) in zip(groups, by_group.tolist()) if n}
    return out


def _better(result: Mapping[str, Any], best: Mapping[str, Any]) -> bool:
    """Whether a validation evaluation beats the best so far: higher accuracy, or as high and a lower soft loss
    (so a stage whose accuracy has not moved yet keeps the weights that fit best, not its first ones)."""
    if result["accuracy"] != best["accuracy"]:
        return result["accuracy"] > best["accuracy"]
    return result.get("soft_loss", math.inf) < best.get("soft_loss", math.inf)


def _check_output(out: Any) -> torch.Tensor:
    """The model output's ``correct`` vector, after checking the output has the contract's shape."""
    loss, correct = getattr(out, "loss", None), getattr(out, "correct", None)
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        raise TypeError(f"the model must return an output whose .loss is a scalar tensor, got "
                        f"{type(loss).__name__ if not isinstance(loss, torch.Tensor) else tuple(loss.shape)}")
    if not isinstance(correct, torch.Tensor) or correct.dtype != torch.bool or correct.dim() != 1:
        raise TypeError("the model must return an output whose .correct is a bool tensor of shape (batch,), "
                        f"got {correct!r:.80}")
    return correct


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


@contextlib.contextmanager
def _deterministic(enabled: bool) -> Iterator[None]:
    """Deterministic algorithms for the stage (warn, not fail, where an op has none); restored after."""
    if not enabled:
        yield
        return
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    if torch.cuda.is_available():
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
