"""PNG plots of a run's ``metrics.jsonl``: curves per stage, and variants side by side (paper Fig. 3)."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any


def read_metrics(folder: Path) -> list[dict[str, Any]]:
    path = Path(folder) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no screen
    import matplotlib.pyplot as plt

    return plt


def _curves(rows: list[dict[str, Any]]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """stage -> split -> its records in order: a training stage's evaluations along its optimiser steps."""
    curves: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        curves[row["stage"]][row["split"]].append(row)
    return curves


def _draw(acc, loss, records: list[dict[str, Any]], label: str) -> None:
    """A split's accuracy and loss against step: decided solid, soft (where recorded) dashed, one colour."""
    steps = [r["step"] for r in records]
    line, = acc.plot(steps, [r["accuracy"] for r in records], marker=".", label=label)
    loss.plot(steps, [r["loss"] for r in records], marker=".", color=line.get_color(), label=label)
    soft = [r for r in records if "soft_accuracy" in r]
    if soft:
        acc.plot([r["step"] for r in soft], [r["soft_accuracy"] for r in soft], linestyle="--", marker=".",
                 color=line.get_color(), label=f"{label} (soft)")
        loss.plot([r["step"] for r in soft], [r["soft_loss"] for r in soft], linestyle="--", marker=".",
                  color=line.get_color(), label=f"{label} (soft)")


def _is_training(splits: dict[str, list[dict[str, Any]]]) -> bool:
    return not all(r["step"] == 0 for records in splits.values() for r in records)


#: the order splits are drawn in (others after, by name)
_ORDER = {"train": 0, "validation": 1, "test": 2, "batches": 3}


def plot_run(folder: Path) -> list[Path]:
    """``plots/<stage>.png`` per training stage: accuracy and loss against step for each split evaluated.

    Solid lines are decided (the model acting on its most likely choices, the
    records' ``accuracy`` and ``loss``), dashed ones soft (``soft_accuracy``,
    ``soft_loss``: the computer run on the distributions, as in training).
    """
    folder = Path(folder)
    rows = read_metrics(folder)
    written = []
    plt = _pyplot()
    for stage, splits in _curves(rows).items():
        if not _is_training(splits):
            continue  # an evaluate stage: its numbers are in summary.json
        fig, (acc, loss) = plt.subplots(1, 2, figsize=(10, 3.8))
        for split in sorted(splits, key=lambda x: (_ORDER.get(x, 9), x)):
            _draw(acc, loss, splits[split], split)
        acc.set(title=f"{stage}: accuracy (dashed: soft)", xlabel="step", ylim=(-0.02, 1.02))
        loss.set(title=f"{stage}: loss (dashed: soft)", xlabel="step", yscale=_loss_scale(loss))
        acc.legend(fontsize="small")
        written.append(_save(plt, fig, folder / "plots" / f"{stage}.png"))
    return written + plot_groups(folder, rows)


def plotted_split(records: list[dict[str, Any]]) -> str:
    """The split a stage's per-kind plot draws: the one evaluated most often (a curve), test among equals."""
    counts = Counter(r["split"] for r in records)
    return max(counts, key=lambda name: (counts[name], name == "test"))


def plot_groups(folder: Path, rows: list[dict[str, Any]] | None = None) -> list[Path]:
    """``plots/<stage>-by-kind.png``: per kind of question, accuracy and selection accuracy against step.

    Drawn for training stages whose evaluation records carry ``groups``
    (tasks with kinds of question, e.g. ``mixed`` and ``composed``): how each
    kind is answered, and whether the model ran the kind's own programs, on
    the split evaluated most often (:func:`plotted_split`).
    """
    folder = Path(folder)
    rows = read_metrics(folder) if rows is None else rows
    by_stage: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if row.get("groups") and row["split"] != "batches":
            by_stage[row["stage"]].append(row)
    written = []
    plt = _pyplot()
    for stage, records in by_stage.items():
        if not _is_training({"all": records}):
            continue  # an evaluate stage
        split = plotted_split(records)
        records = [r for r in records if r["split"] == split]
        kinds = list(dict.fromkeys(k for r in records for k in r["groups"]))
        fig, (acc, sel) = plt.subplots(1, 2, figsize=(13, 4))
        base = list(dict.fromkeys(k.split(" (")[0] for k in kinds))  # one colour per kind; its variants dashed
        colours = {k: plt.get_cmap("tab10")(i % 10) for i, k in enumerate(base)}
        for kind in kinds:
            points = [(r["step"], r["groups"][kind]) for r in records if kind in r["groups"]]
            style = {"color": colours[kind.split(" (")[0]], "linestyle": "-" if " (" not in kind else "--",
                     "marker": "."}
            acc.plot([s for s, _ in points], [g["accuracy"] for _, g in points], label=kind, **style)
            sel.plot([s for s, _ in points], [g.get("selection_accuracy", float("nan")) for _, g in points],
                     label=kind, **style)
        acc.set(title=f"{stage}: {split} accuracy per kind", xlabel="step", ylim=(-0.02, 1.02))
        sel.set(title=f"{stage}: the kind's programs (or alike) chosen", xlabel="step", ylim=(-0.02, 1.02))
        # beside the axes, not over the curves: a kind's lines often end near the top, where a legend would sit
        sel.legend(fontsize="x-small", loc="center left", bbox_to_anchor=(1.02, 0.5))
        written.append(_save(plt, fig, folder / "plots" / f"{stage}-by-kind.png"))
    return written


def plot_comparison(folder: Path, variants: list[str], split: str = "test") -> Path | None:
    """``plots/comparison.png``: each variant's training curves side by side, as in the paper's Fig. 3."""
    folder = Path(folder)
    plt = _pyplot()
    fig, (acc, loss) = plt.subplots(1, 2, figsize=(10, 3.8))
    drew = False
    for variant in variants:
        for stage, splits in _curves(read_metrics(folder / variant)).items():
            records = splits.get(split, [])
            if not records or not _is_training(splits):
                continue
            _draw(acc, loss, records, variant if stage.endswith("train") else f"{variant}: {stage}")
            drew = True
    if not drew:
        plt.close(fig)
        return None
    acc.set(title=f"{split} accuracy (dashed: soft)", xlabel="step", ylim=(-0.02, 1.02))
    loss.set(title=f"{split} loss (dashed: soft)", xlabel="step", yscale=_loss_scale(loss))
    acc.legend(fontsize="x-small", ncol=2)
    return _save(plt, fig, folder / "plots" / "comparison.png")


def _save(plt, fig, path: Path) -> Path:
    """Lay out ``fig``, write it to ``path`` (its folder made if need be) and close it."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _loss_scale(axes) -> str:
    """Log scale, unless some loss is not positive (a perfect fit reaches 0, which log cannot show)."""
    values = [y for line in axes.get_lines() for y in line.get_ydata()]
    return "log" if values and min(values) > 0 else "linear"
