"""Learning-rate schedules as pure functions of the step.

The learning rate of step ``s`` is ``lr * lr_factor(...)``; nothing but the
step is state, so a resumed run needs no scheduler object to restore.
"""

from __future__ import annotations

import math

#: OneCycleLR's defaults: start at lr / 25, end at start / 1e4
ONECYCLE_START = 1 / 25
ONECYCLE_END = ONECYCLE_START / 1e4
ONECYCLE_WARMUP = 0.3


def lr_factor(schedule: str, step: int, total_steps: int, warmup_steps: int = 0) -> float:
    """The multiplier of the peak learning rate for the optimiser step ``step`` (0-based).

    ``constant``: linear warm-up over ``warmup_steps``, then 1. ``cosine``: warm-up, then
    ``(1 + cos(pi t)) / 2`` with ``t`` going from 0 towards 1 over the remaining steps.
    ``onecycle``: from 1/25 up to 1 over the warm-up (30% of the steps when
    ``warmup_steps`` is 0), then cosine down to 1/25e4.
    """
    if schedule == "onecycle":
        warmup = warmup_steps or max(1, round(ONECYCLE_WARMUP * total_steps))
        if step < warmup:
            return ONECYCLE_START + (1 - ONECYCLE_START) * step / warmup
        return ONECYCLE_END + (1 - ONECYCLE_END) * _cosine(step - warmup, total_steps - warmup)
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return _cosine(step - warmup_steps, total_steps - warmup_steps)
    raise ValueError(f"unknown learning-rate schedule {schedule!r}; valid: constant, cosine, onecycle")


def _cosine(step: int, steps: int) -> float:
    """1 at ``step`` 0, falling along a half cosine towards 0 at ``step == steps``."""
    if steps <= 0:
        return 1.0
    t = min(step / steps, 1.0)
    return 0.5 * (1 + math.cos(math.pi * t))
