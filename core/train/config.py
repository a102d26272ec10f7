"""Training settings: :class:`TrainConfig`, validated when made.

Every field is checked when the config is built (a recipe's ``[stage]``
table, ``--set`` overrides, or Python), so a typo fails before any work
starts with a message naming the field and what would be valid.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import attrs

from ..errors import did_you_mean, is_fraction

SCHEDULES = ("constant", "cosine", "onecycle")
DEVICES = ("auto", "cpu", "cuda")
SPLITS = ("train", "validation", "test")
#: the split every decision of a stage reads (stop_at_accuracy, keep_best); test is never read by one
DECIDING_SPLIT = "validation"
#: seeds are 0 .. 2**32 - 1 (numpy's range; tasks derive their generators' seeds from it)
MAX_SEED = 2**32 - 1
#: the most tries a stage's ``restarts`` may ask for (each holds a copy of the model and optimiser in memory)
MAX_RESTARTS = 64


def _fail(attribute: attrs.Attribute, message: str, value: Any) -> None:
    raise ValueError(f"TrainConfig.{attribute.name} {message}, got {value!r}")


def _int(minimum: int, optional: bool = False, maximum: int | None = None):
    def check(_, attribute, value):
        if optional and value is None:
            return
        if (isinstance(value, bool) or not isinstance(value, int) or value < minimum
                or (maximum is not None and value > maximum)):
            bound = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
            _fail(attribute, f"must be an integer {bound}" + (" or None" if optional else ""), value)
    return check


def _number(low: float, high: float = math.inf, *, open_low: bool = False, open_high: bool = False,
            optional: bool = False):
    def check(_, attribute, value):
        if optional and value is None:
            return
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and (value > low if open_low else value >= low) and (value < high if open_high else value <= high)
        if not ok:
            lo, hi = ("(" if open_low else "["), (")" if open_high else "]")
            _fail(attribute, f"must be a number in {lo}{low}, {high}{hi}" + (" or None" if optional else ""), value)
    return check


def _choice(options: tuple[str, ...]):
    def check(_, attribute, value):
        if value not in options:
            _fail(attribute, f"must be one of {', '.join(map(repr, options))}{did_you_mean(value, options)}",
                  value)
    return check


def _bool(_, attribute, value):
    if not isinstance(value, bool):
        _fail(attribute, "must be true or false", value)


def _betas(_, attribute, value):
    if (not isinstance(value, tuple) or len(value) != 2
            or not all(is_fraction(b) for b in value)):
        _fail(attribute, "must be two numbers in [0, 1), e.g. (0.9, 0.999)", value)


def _splits(_, attribute, value):
    if not isinstance(value, tuple) or not value or any(s not in SPLITS for s in value) or len(set(value)) < len(value):
        _fail(attribute, f"must be a non-empty list of distinct splits from {SPLITS}", value)


def _tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _float(value: Any) -> Any:  # accept integers for float fields (TOML `lr = 1` is an int)
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


@attrs.frozen(kw_only=True)
class TrainConfig:
    """How one training stage runs. All fields have defaults; each is checked when the config is made.

    Data order, initial RNG states and evaluation are functions of ``seed`` (and
    the epoch), so two runs with one config give bit-identical results on CPU,
    and a killed run resumed from its checkpoint finishes exactly as if it had
    never stopped.
    """

    #: passes over the training split
    epochs: int = attrs.field(default=10, validator=_int(1))
    #: examples per optimiser step, over all processes together (under torchrun each
    #: of the ``world_size`` processes takes ``batch_size / world_size``)
    batch_size: int = attrs.field(default=32, validator=_int(1))
    #: examples per evaluation batch, over all processes together; None: ``batch_size``. Evaluation holds no
    #: gradient, and a soft machine steps a batch's rows together, so larger batches evaluate several times
    #: faster; decided accuracy does not depend on it (soft runs end when a batch's last row halts, so soft
    #: figures may move in the last digits)
    eval_batch_size: int | None = attrs.field(default=None, validator=_int(1, optional=True))
    #: peak learning rate of AdamW
    lr: float = attrs.field(default=1e-3, converter=_float, validator=_number(0, open_low=True))
    #: AdamW's decoupled weight decay, applied to matrices (parameters with 2 or
    #: more dimensions) only; biases, norms and 1-d parameters are not decayed
    weight_decay: float = attrs.field(default=0.0, converter=_float, validator=_number(0))
    #: AdamW's (beta1, beta2)
    betas: tuple[float, float] = attrs.field(default=(0.9, 0.999), converter=_tuple, validator=_betas)
    #: learning-rate schedule over the stage's steps: "constant" (after warm-up),
    #: "cosine" (warm-up, then cosine decay to 0) or "onecycle" (from lr/25 up to lr
    #: over the warm-up, 30% of the steps when ``warmup_steps`` is 0, then cosine
    #: decay to lr/25e4, as PyTorch's OneCycleLR)
    schedule: str = attrs.field(default="constant", validator=_choice(SCHEDULES))
    #: optimiser steps of linear warm-up from (nearly) 0 to ``lr``
    warmup_steps: int = attrs.field(default=0, validator=_int(0))
    #: clip the global gradient norm to this value; None: no clipping
    grad_clip: float | None = attrs.field(default=None, converter=_float,
                                          validator=_number(0, open_low=True, optional=True))
    #: evaluate every this many epochs (and always after the last one)
    eval_every: int = attrs.field(default=1, validator=_int(1))
    #: also evaluate before the first optimiser step (step 0: where the curves start)
    eval_at_start: bool = attrs.field(default=False, validator=_bool)
    #: also evaluate every this many optimiser steps, mid-epoch (finer curves); None: only per epoch
    eval_every_steps: int | None = attrs.field(default=None, validator=_int(1, optional=True))
    #: every this many optimiser steps, write the training batches' mean loss and accuracy since the last
    #: such record (split "batches": the model in training mode, on the batches it trained on); None: never
    log_every_steps: int | None = attrs.field(default=None, validator=_int(1, optional=True))
    #: the splits each evaluation measures, each one record in metrics.jsonl; the stage's last
    #: evaluation also measures validation and test whether listed or not
    eval_splits: tuple[str, ...] = attrs.field(default=SPLITS, converter=_tuple, validator=_splits)
    #: write a checkpoint every this many epochs (and always at the end of the stage)
    checkpoint_every: int = attrs.field(default=1, validator=_int(1))
    #: also write one every this many optimiser steps, mid-epoch; None: only per epoch
    checkpoint_every_steps: int | None = attrs.field(default=None, validator=_int(1, optional=True))
    #: seeds the data order, the RNGs of torch, numpy and Python at the start of the stage
    seed: int = attrs.field(default=0, validator=_int(0, maximum=MAX_SEED))
    #: "auto" (CUDA when present, else CPU), "cpu" or "cuda"; under torchrun each
    #: process takes the GPU of its local rank
    device: str = attrs.field(default="auto", validator=_choice(DEVICES))
    #: show progress (rank 0 only): a bar on a terminal, else a line per metrics record on stderr
    progress: bool = attrs.field(default=True, validator=_bool)
    #: stop the stage after this many optimiser steps in all; None: run every epoch
    max_steps: int | None = attrs.field(default=None, validator=_int(1, optional=True))
    #: stop the stage once an evaluation's validation accuracy (decided) reaches this; None: never
    stop_at_accuracy: float | None = attrs.field(default=None, converter=_float,
                                                 validator=_number(0, 1, open_low=True, optional=True))
    #: end the stage with the weights of its best evaluation (by validation accuracy, then the lower
    #: soft loss among equals), not its last
    keep_best: bool = attrs.field(default=False, validator=_bool)
    #: random restarts: train the stage's first ``restart_steps`` steps this many times from the same weights,
    #: each try with a seed of its own (try 0 with ``seed``), and go on with the try whose validation
    #: evaluation is best (decided accuracy, then the lower soft loss); 1: no restarts
    restarts: int = attrs.field(default=1, validator=_int(1, maximum=MAX_RESTARTS))
    #: the optimiser steps each try trains before the choice; None: the whole stage (the best finished try is
    #: kept); read only when ``restarts`` is 2 or more
    restart_steps: int | None = attrs.field(default=None, validator=_int(1, optional=True))
    #: ask torch for deterministic algorithms during the stage (bit-identical reruns on CPU)
    deterministic: bool = attrs.field(default=True, validator=_bool)
    #: passed to DistributedDataParallel under torchrun: set when some trainable
    #: parameters get no gradient in a step
    find_unused_parameters: bool = attrs.field(default=False, validator=_bool)

    def __attrs_post_init__(self) -> None:
        for name, used in (("stop_at_accuracy", self.stop_at_accuracy is not None), ("keep_best", self.keep_best)):
            if used and DECIDING_SPLIT not in self.eval_splits:
                raise ValueError(f"TrainConfig.{name} watches the {DECIDING_SPLIT} accuracy (no decision reads "
                                 f"test), but eval_splits {list(self.eval_splits)} does not evaluate "
                                 f"{DECIDING_SPLIT!r}; add it, e.g. eval_splits = {['validation', 'test']}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """Build from a mapping (a recipe table); unknown keys are an error with a suggestion."""
        known = [f.name for f in attrs.fields(cls)]
        for key in values:
            if key not in known:
                raise ValueError(f"unknown training setting {key!r}{did_you_mean(key, known)}; "
                                 f"valid settings: {', '.join(known)}")
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        """The settings as plain JSON-able values."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in attrs.asdict(self).items()}
