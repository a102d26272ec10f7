"""Running a recipe: one folder per run, stages in order, resumable.

A run folder holds ``recipe.json`` (the resolved recipe), ``metrics.jsonl``
(one JSON object per evaluation), ``checkpoints/`` (safetensors, written
atomically by the trainer), ``plots/`` (PNG) and ``summary.json``; a recipe
with ``[[variants]]`` gets one such folder per variant plus a comparison plot.
``state.json`` records the completed stages so that ``--resume`` continues a
killed run where it stopped: completed swaps are replayed (they hold no
weights), the weights of the last finished training stage are loaded, and an
unfinished training stage resumes from its own checkpoint.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from .errors import DiffcompError, RecipeError
from .recipe import Recipe

RECIPE_FILE = "recipe.json"
STATE_FILE = "state.json"
#: an evaluate stage's ``split`` naming several
EVALUATE_SPLITS = {"both": ("train", "test"), "all": ("train", "validation", "test")}


class ClaimNotMetError(DiffcompError, RuntimeError):
    """An evaluate stage ended below the accuracy its recipe claims (``min_accuracy``)."""


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def prepare_folder(recipe: Recipe, out: Path, resume: bool) -> None:
    """Refuse a folder that holds another run (or this run, unless resuming); then claim it."""
    existing = out / RECIPE_FILE
    if existing.exists():
        previous = existing.read_text(encoding="utf-8")
        if json.loads(previous) != json.loads(recipe.to_json()):
            raise RecipeError(f"output folder {out} already holds a different run (its {RECIPE_FILE} differs from "
                              f"this recipe); choose another --out{'' if resume else ''}")
        if not resume:
            raise RecipeError(f"output folder {out} already holds this run; pass --resume to continue it, "
                              "or choose another --out")
    elif out.exists() and any(out.iterdir()):
        raise RecipeError(f"output folder {out} is not empty and holds no diffcomp run; choose another --out")
    if is_main_process():
        out.mkdir(parents=True, exist_ok=True)
        if not existing.exists():
            write_atomic(existing, recipe.to_json())


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_state(out: Path) -> dict[str, Any]:
    path = out / STATE_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {"completed": [], "results": {}}


def run_recipe(recipe: Recipe, out: Path, *, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run every stage (of every variant) into ``out``; returns the summary."""
    out = Path(out)
    prepare_folder(recipe, out, resume)
    if recipe.variants:
        summaries = {}
        for variant in recipe.variants:
            sub = recipe.variant(variant["name"])
            summaries[variant["name"]] = run_recipe(sub, out / variant["name"], resume=resume, progress=progress)
        summary = {"recipe": recipe.name, "variants": summaries}
        if is_main_process():
            from .plots import plot_comparison

            plot_comparison(out, [v["name"] for v in recipe.variants])
            write_atomic(out / "summary.json", json.dumps(summary, indent=2))
        return summary
    return _run_stages(recipe, out, resume=resume, progress=progress)


def _run_stages(recipe: Recipe, out: Path, *, resume: bool, progress: bool) -> dict[str, Any]:
    from .model.build import build_model, build_task
    from .recipe import train_config
    from .train import Trainer

    data = recipe.data
    started = time.time()
    state = read_state(out) if resume else {"completed": [], "results": {}}
    task = build_task(data["task"]["name"], _options(data["task"]), seed=data["seed"])
    model = build_model(data["model"], data["computer"], task)
    for stage in recipe.stages:
        name, kind = stage["name"], stage["kind"]
        done = name in state["completed"]
        if kind == "swap":  # holds no weights: replayed on resume
            model.swap_alu(stage["alu"], keep_encoding=stage["encoding"] == "model", **_alu_options(stage))
        elif kind == "train":  # on resume a finished stage only loads its final weights
            trainer = Trainer(model, _stage_task(model, task, data, stage),
                              train_config(stage, data["seed"], progress=progress), out_dir=out, stage=name)
            changed = model.parser.set_stage_options(**stage["parser_options"]) if stage["parser_options"] else {}
            try:
                state["results"][name] = trainer.fit(resume=resume)
            finally:  # later stages parse as the recipe's [model] says
                if changed:
                    model.parser.set_stage_options(**changed)
        elif not done:
            state["results"][name] = _evaluate(model, task, data, stage, out)
        if not done:
            state["completed"].append(name)
            if is_main_process():
                write_atomic(out / STATE_FILE, json.dumps(state, indent=2))
    summary = {"recipe": recipe.name, "stages": state["results"], "seconds": round(time.time() - started, 1)}
    if is_main_process():
        from .plots import plot_run

        plot_run(out)
        write_atomic(out / "summary.json", json.dumps(summary, indent=2))
    _check_claims(recipe, state["results"])
    return summary


def _options(table: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in table.items() if k != "name"}


def _alu_options(stage: dict[str, Any]) -> dict[str, Any]:
    from .recipe import SWAP_FIELDS

    return {k: v for k, v in stage.items() if k not in SWAP_FIELDS}


def _evaluate(model, task, data: dict[str, Any], stage: dict[str, Any], out: Path) -> dict[str, Any]:
    from .train import TrainConfig, Trainer

    task = _stage_task(model, task, data, stage)
    trainer = Trainer(model, task, TrainConfig(seed=data["seed"], progress=False), out_dir=out, stage=stage["name"])
    trainer.metrics.drop_stage(stage["name"])  # a run killed after logging it, before recording it done
    splits = EVALUATE_SPLITS.get(stage["split"], (stage["split"],))
    results = {split: trainer.evaluate(split, log=True) for split in splits}
    return results


def _stage_task(model, task, data: dict[str, Any], stage: dict[str, Any]):
    """The task a stage works on (the recipe's, with the stage's ``task`` options), the model adapted to it."""
    from .model.build import build_task

    if stage.get("task"):
        task = build_task(data["task"]["name"], {**_options(data["task"]), **stage["task"]}, seed=data["seed"])
    model.adapt_to_task(task)
    return task


def _check_claims(recipe: Recipe, results: dict[str, Any]) -> None:
    for stage in recipe.stages:
        floor = stage.get("min_accuracy", -1.0)
        if stage["kind"] != "evaluate" or floor < 0:
            continue
        for split, metrics in results.get(stage["name"], {}).items():
            if metrics["accuracy"] < floor:
                raise ClaimNotMetError(f"stage {stage['name']!r} reached accuracy {metrics['accuracy']:.4f} on {split}, "
                                    f"below the recipe's min_accuracy {floor}")
