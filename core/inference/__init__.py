"""Answering a trained model, and which engine answers: the torch model, or NumPy alone.

Importing torch takes longer than answering a question with a small saved
model, so decided questions to a saved model are answered without it where
they can be (:class:`~diffcomp.inference.model.NumpyModel`: the backbone, the
parser's decisions and the exact machine on integers, in NumPy), with the
same answers as the torch model gives. :func:`load` is the one place that
chooses:

- ``engine="numpy"``: the NumPy engine, or an error saying why it cannot
  answer this model;
- ``engine="torch"``: :func:`diffcomp.load`, the model itself;
- ``engine="auto"`` (the default): NumPy where it answers this model (a
  saved model folder, or a run folder's ``model/``, of a configuration it
  reads, asked for the last stage on the CPU), else torch.

Soft runs, plots and gradients need the torch model, and so do
explanations of a chain of programs or a learned readout; the command line
asks for it then (``explain=True``: the model must explain).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import DiffcompError

ENGINES = ("auto", "numpy", "torch")


class EngineError(DiffcompError, ValueError):
    """The engine asked for cannot answer this model."""


def load(path: str | os.PathLike, *, engine: str = "auto", stage: str | None = None, device: Any = None,
         explain: bool = False) -> tuple[Any, str, str | None]:
    """``(model, engine, why)``: the model in ``path`` loaded by ``engine``, the engine that loaded it, and, when
    ``"auto"`` chose torch, why NumPy did not answer. Both models have ``ask(questions)`` and
    ``explain(question)``; ``explain=True`` asks for a model that can explain this one's decided runs."""
    if engine not in ENGINES:
        raise EngineError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    why = None
    if engine != "torch":
        try:
            return _numpy(path, stage, device, explain), "numpy", None
        except EngineError as exc:
            if engine == "numpy":
                raise
            why = str(exc)
        except DiffcompError:  # a folder the NumPy engine finds broken: the torch model's load says what is wrong
            if engine == "numpy":
                raise
            why = "the NumPy engine could not read the folder"
    from ..hub import load as load_torch

    return load_torch(path, stage=stage, device=device), "torch", why


def _numpy(path: str | os.PathLike, stage: str | None, device: Any, explain: bool):
    from ..model.saved import CONFIG_FILE
    from .model import NumpyModel, Unsupported

    if stage is not None:
        raise EngineError("the NumPy engine reads a run's saved model (its last stage); a stage's checkpoint is "
                          "read by the torch model (engine 'torch')")
    if device is not None and str(device) != "cpu":
        raise EngineError(f"the NumPy engine runs on the CPU; device {device!r} needs the torch model")
    folder = Path(os.path.expanduser(str(path)))
    if (folder / "model" / CONFIG_FILE).is_file():  # a run folder that wrote its model
        folder = folder / "model"
    elif not (folder / CONFIG_FILE).is_file() or (folder / "recipe.json").is_file():
        raise EngineError(f"{folder} is not a saved model folder (config.json and model.safetensors, as "
                          "save_pretrained or a finished run writes); the torch model reads run folders")
    try:
        model = NumpyModel(folder)
    except Unsupported as exc:
        raise EngineError(str(exc)) from None
    if explain and model.explains is not None:
        raise EngineError(f"{folder}: the NumPy engine cannot explain this model: {model.explains}")
    return model


__all__ = ["ENGINES", "EngineError", "load"]
