"""Running a recipe: one folder per run, stages in order, resumable.

A run folder holds ``recipe.json`` (the resolved recipe), ``metrics.jsonl``
(one JSON object per evaluation), ``checkpoints/`` (safetensors, written
atomically by the trainer), ``plots/`` (PNG), ``model/`` (the trained model in Hugging Face's layout, written by
the last stage; ``diffcomp.load`` and ``diffcomp ask`` read it) and ``summary.json``; a recipe
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
MODEL_FOLDER = "model"  # the trained model, as save_pretrained writes it (diffcomp.load reads it)
#: an evaluate stage's ``split`` naming several
EVALUATE_SPLITS = {"both": ("train", "test"), "all": ("train", "validation", "test")}


class ClaimNotMetError(DiffcompError, RuntimeError):
    """An evaluate stage ended below the accuracy its recipe claims (``min_accuracy``)."""


class RunFolderError(DiffcompError, ValueError):
    """The run folder cannot be used: ``--out`` names a file, holds another run, or has nothing to resume."""


def check_recipe(recipe: Recipe) -> None:
    """Everything a run can know before it trains, checked without training: a :class:`RecipeError` if not.

    :func:`~diffcomp.recipe.validate` checks each key; this builds what the
    run builds (the task, the model for it, each stage's task, training
    settings and device, each swap's ALU) and walks the stages in order, so a
    run never fails on something validation could have seen: a computer whose
    numbers do not fit the task, a swap to an ALU that cannot be built, a
    device that is not there. A pretrained backbone's weights are not loaded
    (its config and tokenizer are). Every variant is checked.
    """
    if recipe.variants:
        for variant in recipe.variants:
            check_recipe(recipe.variant(variant["name"]))
        return
    from .model.build import build_model, build_task
    from .recipe import train_config
    from .train.distributed import resolve_device

    data, source = recipe.data, recipe.source

    def blame(where: str, exc: object) -> RecipeError:
        return RecipeError(f"{source}: {where}: {exc}")

    try:
        task = build_task(data["task"]["name"], _options(data["task"]), seed=data["seed"])
        model = build_model(data["model"], data["computer"], task, load_weights=False)
    except RecipeError as exc:
        raise RecipeError(f"{source}: {exc}") from None
    except (ValueError, TypeError, LookupError, OSError) as exc:
        raise blame("[task], [model] and [computer] do not fit together", exc) from None
    except (MemoryError, RuntimeError) as exc:  # e.g. a hidden_size whose weights cannot be allocated
        if not isinstance(exc, MemoryError) and "allocate" not in str(exc):
            raise
        raise blame("[model] and [computer]", f"the model is too big to build here ({str(exc).splitlines()[0]}); "
                    "make it smaller (hidden_size, layers, base, cells)") from None
    for i, stage in enumerate(recipe.stages):
        at = f"stages[{i}] ({stage['name']!r}, {stage['kind']})"
        try:
            if stage["kind"] == "swap":
                _swap(model, stage)
            else:
                _stage_task(model, task, data, stage)
            if stage["kind"] == "train":
                resolve_device(train_config(stage, data["seed"]).device)
                _set_computer_options(model, data, _set_computer_options(model, data, stage["computer"]))
        except (ValueError, TypeError, LookupError) as exc:  # (a RecipeError is a ValueError)
            raise blame(at, exc) from None


def _set_computer_options(model, data: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """Apply a train stage's ``computer`` options; returns the values they replaced. The baseline without a
    computer (``kind = "none"``) ignores them, as it ignores the ``[computer]`` table's."""
    if not changes or data["computer"].get("kind") == "none":
        return {}
    return model.computer.set_stage_options(**changes)


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def check_folder(recipe: Recipe, out: Path, resume: bool) -> None:
    """A :class:`RunFolderError` unless ``out`` can take this run; writes nothing.

    A new run needs a new or empty folder; ``resume`` needs the folder that
    holds this run, its records readable (``recipe.json``, ``state.json``, and
    those of every variant begun).
    """
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"--out {out} is a file, not a folder; name a new or empty folder for the run")
    existing = out / RECIPE_FILE
    if existing.exists():
        if read_json(existing, "the run's resolved recipe") != json.loads(recipe.to_json()):
            raise RunFolderError(f"output folder {out} already holds a different run (its {RECIPE_FILE} differs "
                                 "from this recipe); choose another --out")
        if not resume:
            raise RunFolderError(f"output folder {out} already holds this run; pass --resume to continue it, "
                                 "or choose another --out")
        read_state(out)  # a resume must be able to read where the run stopped
        for variant in recipe.variants:
            sub = out / variant["name"]
            if sub.exists():
                check_folder(recipe.variant(variant["name"]), sub, resume=(sub / RECIPE_FILE).exists())
    elif resume:
        what = "does not exist" if not out.exists() else (
            "is empty" if not any(out.iterdir()) else f"holds no diffcomp run (no {RECIPE_FILE})")
        raise RunFolderError(f"nothing to resume: --out {out} {what}; --resume continues the run in the folder that "
                             "holds it (leave --resume out to start a new run)")
    elif out.exists() and any(out.iterdir()):
        raise RunFolderError(f"output folder {out} is not empty and holds no diffcomp run; choose another --out")


def prepare_folder(recipe: Recipe, out: Path, resume: bool) -> None:
    """Refuse a folder that cannot take this run (:func:`check_folder`); then claim it."""
    check_folder(recipe, out, resume)
    existing = out / RECIPE_FILE
    if is_main_process():
        try:
            out.mkdir(parents=True, exist_ok=True)
            if not existing.exists():
                write_atomic(existing, recipe.to_json())
        except OSError as exc:
            raise RunFolderError(f"cannot make the run folder {out}: {exc.strerror or exc}; choose another --out") \
                from None


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: Path, what: str) -> Any:
    """A JSON file the run wrote; a :class:`RunFolderError` naming it if it is not readable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunFolderError(f"{path} ({what}) is damaged and cannot be read: {exc}; the run in {path.parent} "
                             "cannot be resumed from it (start a new run with another --out)") from None


def read_state(out: Path) -> dict[str, Any]:
    """Which stages of the run in ``out`` are done, and their results (nothing yet if no stage finished)."""
    path = out / STATE_FILE
    if not path.exists():
        return {"completed": [], "results": {}}
    state = read_json(path, "the stages the run completed")
    if (not isinstance(state, dict) or not isinstance(state.get("completed"), list)
            or not isinstance(state.get("results"), dict)):
        raise RunFolderError(f"{path} (the stages the run completed) is damaged: expected an object with "
                             "'completed' and 'results'; the run cannot be resumed from it")
    return state


def run_recipe(recipe: Recipe, out: Path, *, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Check the recipe (:func:`check_recipe`) and the folder, then run every stage (of every variant) into ``out``.

    Returns the summary. A :class:`RecipeError` or :class:`RunFolderError`
    comes before anything is written.
    """
    out = Path(out)
    check_recipe(recipe)
    check_folder(recipe, out, resume)
    return _run(recipe, out, resume=resume, progress=progress)


def _run(recipe: Recipe, out: Path, *, resume: bool, progress: bool) -> dict[str, Any]:
    prepare_folder(recipe, out, resume)
    if recipe.variants:
        summaries = {}
        for variant in recipe.variants:
            sub = recipe.variant(variant["name"])
            folder = out / variant["name"]  # (on resume, a variant not begun yet starts afresh)
            summaries[variant["name"]] = _run(sub, folder, resume=resume and (folder / RECIPE_FILE).exists(),
                                              progress=progress)
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
    adapts = any(s["kind"] == "train" and s["adapt"] for s in recipe.stages)
    model = build_model(data["model"], {**data["computer"], "trainable_programs": True} if adapts
                        else data["computer"], task)
    for stage in recipe.stages:
        name, kind = stage["name"], stage["kind"]
        done = name in state["completed"]
        if kind == "swap":  # holds no weights: replayed on resume
            _swap(model, stage)
        elif kind == "train":  # on resume a finished stage only loads its final weights
            from .model.adaptive import adapting

            frozen = not (data["computer"]["trainable_programs"] or data["model"]["backbone"] == "program")
            with adapting(model, stage["adapt"], stage["loss"], freeze_others=adapts and frozen):
                trainer = Trainer(model, _stage_task(model, task, data, stage),
                                  train_config(stage, data["seed"], progress=progress), out_dir=out, stage=name)
                changed = model.parser.set_stage_options(**stage["parser_options"]) if stage["parser_options"] else {}
                computer_changed = _set_computer_options(model, data, stage["computer"])
                try:
                    state["results"][name] = trainer.fit(resume=resume)
                finally:  # later stages parse and train as the recipe's [model] and [computer] say
                    if changed:
                        model.parser.set_stage_options(**changed)
                    _set_computer_options(model, data, computer_changed)
        elif kind == "verify" and not done:
            state["results"][name] = _verify(model, task, stage, out)
        elif not done:
            state["results"][name] = _evaluate(model, task, data, stage, out, progress)
        if not done:
            state["completed"].append(name)
            if is_main_process():
                write_atomic(out / STATE_FILE, json.dumps(state, indent=2))
    summary = {"recipe": recipe.name, "stages": state["results"], "seconds": round(time.time() - started, 1)}
    if is_main_process():
        from .plots import plot_run

        save_model(model, out / MODEL_FOLDER)
        plot_run(out)
        write_atomic(out / "summary.json", json.dumps(summary, indent=2))
    _check_claims(recipe, state["results"])
    return summary


def save_model(model, folder: Path) -> None:
    """``model.save_pretrained(folder)``, replacing what is there only once the new folder is whole.

    A model that cannot be saved that way (one on a ``pretrained`` backbone) leaves a warning, not a failed run:
    its checkpoints hold it, and ``diffcomp.load(run_folder)`` rebuilds it from the recipe.
    """
    import shutil
    import warnings

    from .model.pretrained import PretrainedError

    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp)
    except PretrainedError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        warnings.warn(f"the run's {folder.name}/ folder was not written: {exc}", stacklevel=2)
        return
    old = folder.with_name(f".{folder.name}.old")
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def _options(table: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in table.items() if k != "name"}


def _swap(model, stage: dict[str, Any]) -> None:
    model.swap_alu(stage["alu"], keep_encoding=stage["encoding"] == "model", **_alu_options(stage))


def _alu_options(stage: dict[str, Any]) -> dict[str, Any]:
    from .recipe import SWAP_FIELDS

    return {k: v for k, v in stage.items() if k not in SWAP_FIELDS}


def _evaluate(model, task, data: dict[str, Any], stage: dict[str, Any], out: Path, progress: bool) -> dict[str, Any]:
    from .train import TrainConfig, Trainer

    task = _stage_task(model, task, data, stage)
    trainer = Trainer(model, task, TrainConfig(seed=data["seed"], progress=progress, batch_size=stage["batch_size"]),
                      out_dir=out, stage=stage["name"])
    trainer.metrics.drop_stage(stage["name"])  # a run killed after logging it, before recording it done
    splits = EVALUATE_SPLITS.get(stage["split"], (stage["split"],))
    results = {split: trainer.evaluate(split, log=True) for split in splits}
    return results


def _verify(model, task, stage: dict[str, Any], out: Path) -> dict[str, Any]:
    """Run the adapted program hard on a held-out split against the compiled one; write it as ``<stage>.asm``."""
    from .model.adaptive import verify

    model.adapt_to_task(task)
    result = verify(model, task.dataset(stage["split"]))
    if is_main_process():
        adapted, compiled = result["adapted"], result["compiled"]
        header = (f"; {model.program}, adapted to {task!r}\n"
                  f"; verified on {adapted['examples']} {stage['split']} inputs: success {adapted['success']:.4f}, "
                  f"mean steps {adapted['steps']:.2f} (compiled: {compiled['steps']:.2f})\n")
        write_atomic(out / f"{stage['name']}.asm", header + result["program"])
    return {"split": stage["split"], **result, "program_file": f"{stage['name']}.asm"}


def _stage_task(model, task, data: dict[str, Any], stage: dict[str, Any]):
    """The task a stage works on (the recipe's, with the stage's ``task`` options), the model adapted to it."""
    from .model.build import build_task

    if stage.get("task"):
        task = build_task(data["task"]["name"], {**_options(data["task"]), **stage["task"]}, seed=data["seed"])
    model.adapt_to_task(task)
    return task


def _check_claims(recipe: Recipe, results: dict[str, Any]) -> None:
    for stage in recipe.stages:
        if stage["kind"] == "verify" and stage["min_success"] >= 0 and stage["name"] in results:
            success = results[stage["name"]]["adapted"]["success"]
            if success < stage["min_success"]:
                raise ClaimNotMetError(f"stage {stage['name']!r}: the adapted program is right on {success:.4f} of "
                                       f"the {stage['split']} inputs, below the recipe's min_success "
                                       f"{stage['min_success']}")
        floor = stage.get("min_accuracy", -1.0)
        if stage["kind"] != "evaluate" or floor < 0:
            continue
        for split, metrics in results.get(stage["name"], {}).items():
            if metrics["accuracy"] < floor:
                raise ClaimNotMetError(f"stage {stage['name']!r} reached accuracy {metrics['accuracy']:.4f} on {split}, "
                                    f"below the recipe's min_accuracy {floor}")
