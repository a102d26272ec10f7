"""PNG plots of a run's ``metrics.jsonl``: curves per stage, and variants side by side (paper Fig. 3)."""

from __future__ import annotations

import json
from collections import defaultdict
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


def _curves(rows: list[dict[str, Any]]) -> dict[str, dict[str, list[tuple[float, float, float]]]]:
    """stage -> split -> [(step, accuracy, loss)]: a training stage's evaluations along its optimiser steps."""
    curves: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        curves[row["stage"]][row["split"]].append((row["step"], row["accuracy"], row["loss"]))
    return curves


def plot_run(folder: Path) -> list[Path]:
    """``plots/<stage>.png`` (accuracy and loss against step, train and test) per training stage."""
    folder = Path(folder)
    rows = read_metrics(folder)
    written = []
    plt = _pyplot()
    for stage, splits in _curves(rows).items():
        if all(p[0] == 0 for points in splits.values() for p in points):
            continue  # an evaluate stage: its numbers are in summary.json
        fig, (acc, loss) = plt.subplots(1, 2, figsize=(9, 3.5))
        for split, points in sorted(splits.items()):
            steps = [p[0] for p in points]
            acc.plot(steps, [p[1] for p in points], marker=".", label=split)
            loss.plot(steps, [p[2] for p in points], marker=".", label=split)
        acc.set(title=f"{stage}: accuracy", xlabel="step", ylim=(-0.02, 1.02))
        loss.set(title=f"{stage}: loss", xlabel="step", yscale=_loss_scale(loss))
        acc.legend()
        fig.tight_layout()
        path = folder / "plots" / f"{stage}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written + plot_groups(folder, rows)


def plot_groups(folder: Path, rows: list[dict[str, Any]] | None = None) -> list[Path]:
    """``plots/<stage>-by-kind.png``: per kind of question, accuracy and selection accuracy against step.

    Drawn for training stages whose evaluation records carry ``groups``
    (tasks with kinds of question, e.g. ``mixed`` and ``composed``): how each
    kind is answered, and whether the model ran the kind's own programs.
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
        if all(r["step"] == 0 for r in records):
            continue  # an evaluate stage
        split = "test" if any(r["split"] == "test" for r in records) else records[0]["split"]
        records = [r for r in records if r["split"] == split]
        kinds = list(dict.fromkeys(k for r in records for k in r["groups"]))
        fig, (acc, sel) = plt.subplots(1, 2, figsize=(11, 4))
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
        sel.set(title=f"{stage}: the kind's programs chosen", xlabel="step", ylim=(-0.02, 1.02))
        acc.legend(fontsize="x-small")
        fig.tight_layout()
        path = folder / "plots" / f"{stage}-by-kind.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def plot_comparison(folder: Path, variants: list[str], split: str = "test") -> Path | None:
    """``plots/comparison.png``: each variant's training curves side by side, as in the paper's Fig. 3."""
    folder = Path(folder)
    plt = _pyplot()
    fig, (acc, loss) = plt.subplots(1, 2, figsize=(9, 3.5))
    drew = False
    for variant in variants:
        for stage, splits in _curves(read_metrics(folder / variant)).items():
            points = splits.get(split, [])
            if not points or all(p[0] == 0 for p in points):
                continue
            label = f"{variant}" if stage.endswith("train") else f"{variant}: {stage}"
            acc.plot([p[0] for p in points], [p[1] for p in points], marker=".", label=label)
            loss.plot([p[0] for p in points], [p[2] for p in points], marker=".", label=label)
            drew = True
    if not drew:
        plt.close(fig)
        return None
    acc.set(title=f"{split} accuracy", xlabel="step", ylim=(-0.02, 1.02))
    loss.set(title=f"{split} loss", xlabel="step", yscale=_loss_scale(loss))
    acc.legend(fontsize="small")
    fig.tight_layout()
    path = folder / "plots" / "comparison.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _loss_scale(axes) -> str:
    """Log scale, unless some loss is not positive (a perfect fit reaches 0, which log cannot show)."""
    values = [y for line in axes.get_lines() for y in line.get_ydata()]
    return "log" if values and min(values) > 0 else "linear"
