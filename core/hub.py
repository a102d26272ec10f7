"""``diffcomp.load``: a trained model from a run folder or a saved model folder.

- A saved model folder (``save_pretrained`` output, or the ``model/`` folder
  a run writes at its end) is rebuilt from its ``config.json`` alone.
- A run folder (``recipe.json``, ``state.json``, ``checkpoints/``): with no
  ``stage``, its ``model/`` folder when the run wrote one, else the model the
  recipe builds with the weights of the last training stage that finished and
  the swaps that followed it; ``stage="NAME"`` loads the weights that stage
  ended with (``"NAME-best"``: the best evaluation's, with ``keep_best``),
  after the swaps that came before it.

The model comes back in eval mode, on the CPU or ``device``. Nothing is
unpickled: weights are read from safetensors only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .model.saved import CONFIG_FILE, PretrainedError


def load(path: str | os.PathLike, *, stage: str | None = None, device: Any = None) -> Any:
    """The trained model in ``path`` (a run folder or a saved model folder), in eval mode."""
    from .run import MODEL_FOLDER, RECIPE_FILE

    folder = Path(os.path.expanduser(str(path)))
    if not folder.is_dir():
        raise PretrainedError(f"{folder}: no such folder; expected a run folder (diffcomp run writes one) or a "
                              "saved model folder (save_pretrained writes one)")
    if (folder / RECIPE_FILE).is_file():
        if stage is None and (folder / MODEL_FOLDER / CONFIG_FILE).is_file():
            return _load_saved(folder / MODEL_FOLDER, device)
        return load_run(folder, stage=stage, device=device)
    if stage is not None:
        raise PretrainedError(f"{folder} is a saved model, which has no stages; stage={stage!r} applies to run folders")
    return _load_saved(folder, device)


def _load_saved(folder: Path, device: Any) -> Any:
    from .model.pretrained import load_folder

    return load_folder(folder, device=device)


def load_run(folder: Path, *, stage: str | None = None, device: Any = None) -> Any:
    """The model of the run in ``folder``, rebuilt from its recipe, with a stage's weights (see :func:`load`)."""
    from .model.build import build_model, build_task
    from .run import RECIPE_FILE, _alu_options, _options, read_state
    from .train.checkpoint import CheckpointError, load_model_tensors, read_checkpoint

    recipe_path = folder / RECIPE_FILE
    try:
        data = json.loads(recipe_path.read_text(encoding="utf-8"))
        stages = data["stages"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise PretrainedError(f"{recipe_path} is not a resolved diffcomp recipe: {exc}") from None
    if data.get("variants"):
        names = ", ".join(str(folder / v["name"]) for v in data["variants"])
        raise PretrainedError(f"{folder} holds a run with variants, each in its own folder; load one of: {names}")
    completed = read_state(folder)["completed"]
    trained = [s["name"] for s in stages if s["kind"] == "train"]
    if stage is None:
        finished = [name for name in trained if name in completed]
        if not finished:
            raise PretrainedError(f"{folder}: no training stage has finished yet (stages: {', '.join(trained)}); "
                                  "pass stage=NAME to load the last checkpoint of a stage in progress")
        chosen, weights = finished[-1], folder / "checkpoints" / f"{finished[-1]}.safetensors"
    else:
        chosen = stage[: -len("-best")] if stage.endswith("-best") and stage not in trained else stage
        if chosen not in trained:
            raise PretrainedError(f"{folder}: the recipe has no training stage {stage!r}; its training stages: "
                                  f"{', '.join(trained)} (add -best for a stage's best evaluation, with keep_best)")
        weights = folder / "checkpoints" / f"{stage}.safetensors"
    if not weights.is_file():
        raise PretrainedError(f"{weights}: no such checkpoint (stage {stage or chosen!r} wrote none yet)")
    try:
        task = build_task(data["task"]["name"], _options(data["task"]), seed=data["seed"])
        model = build_model(data["model"], data["computer"], task)
    except (ValueError, LookupError) as exc:
        raise PretrainedError(f"{recipe_path}: cannot rebuild the model it describes: {exc}") from None
    reached = False
    for s in stages:
        if s["name"] == chosen:
            reached = True
            try:
                load_model_tensors(model, read_checkpoint(weights).group("model"), source=weights)
            except CheckpointError as exc:
                raise PretrainedError(str(exc)) from None
            if stage is not None:
                break
        elif s["kind"] == "swap" and (not reached or s["name"] in completed):
            model.swap_alu(s["alu"], keep_encoding=s["encoding"] == "model", **_alu_options(s))
    if not getattr(model, "swaps", None):  # (a swapped model answers the tasks of the stages after its swap)
        model.adapt_to_task(task)
    if device is not None:
        model.to(device)
    return model.eval()
