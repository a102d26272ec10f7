"""Sharing a trained model: ``save_pretrained`` and ``from_pretrained`` in Hugging Face's layout.

A saved model is a folder::

    config.json         how to rebuild it: the [model] and [computer] tables it was built from, the
                        task's shape (ops, cells, where the answer lives, how to write it), the library
                        with each program's assembly text, the ALU swaps since, its sizes now, the
                        backbone's transformers config, and the diffcomp version that wrote it
    model.safetensors   the weights (the model's state_dict); never a pickle
    tokenizer files     for a tokenizer loaded from files (the byte and word tokenizers need none)
    README.md           a model card (huggingface_hub writes it)

The machinery (a local folder or a Hub repository, the model card,
``push_to_hub``) is ``huggingface_hub.ModelHubMixin``'s; what is diffcomp's
own is :func:`model_config` (a built model -> ``config.json``) and
:func:`build_from_config` (back). Rebuilding needs no recipe, no run folder and
no task plug-in, and the programs are assembled from the saved text, so a
colleague's library plug-ins need not match. Anything wrong with a folder (an
unknown plug-in, a program that does not assemble, weights of the wrong
shape) is one :class:`PretrainedError` naming the file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import ModelHubMixin

from .saved import (ANSWER_FORMATS, CONFIG_FILE, FORMAT, FORMAT_VERSION, WEIGHTS_FILE,  # noqa: F401 (re-exported)
                    PretrainedError, TaskShape, _jsonable, answer_format, assemble_library, read_config,
                    render_answer)

# -- a model <-> config.json -------------------------------------------------------------------------


def model_config(model: Any) -> dict[str, Any]:
    """``config.json`` for a model built by :func:`~diffcomp.model.build_model` (and trained, swapped, grown)."""
    from .. import __version__
    from ..machine import disassemble

    built = getattr(model, "build_config", None)
    if built is None:
        raise PretrainedError(f"this {type(model).__name__} was not built by diffcomp.model.build_model (or loaded), "
                              "so nothing says how to rebuild it; build it from [model] and [computer] tables")
    if built["model"].get("backbone") == "pretrained":
        raise PretrainedError("save_pretrained does not yet save a model on a 'pretrained' backbone (a causal LM "
                              "loaded from a folder); share its run folder, or build the backbone from a config")
    config: dict[str, Any] = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "diffcomp_version": __version__,
        "architecture": type(model).__name__,
        "recipe": {"model": _jsonable(built["model"]), "computer": _jsonable(built["computer"])},
        "task": TaskShape.of(built["task"]).as_dict(),
        "swaps": _jsonable(list(getattr(model, "swaps", []))),
    }
    computer = model.computer
    machine = getattr(computer, "machine", None)
    if machine is not None:
        config["library"] = {p.name: p.source if p.source is not None else disassemble(p)
                             for p in machine.image.programs}
        config["sizes"] = {"cells": int(computer.cells), "max_steps": int(machine.max_steps)}
    head = getattr(model, "head", None)
    if getattr(head, "length", None) is not None and type(model).__name__ == "AugmentedModel":
        config.setdefault("sizes", {})["answer_length"] = int(head.length)
    backbone = getattr(model, "backbone", None)
    if backbone is not None and hasattr(getattr(backbone, "model", None), "config"):
        config["backbone_config"] = backbone.model.config.to_dict()
    interface = _interface(model, config)
    if interface is not None:
        config["interface"] = interface
    return config


#: the built-in parsers' options as they are now (a stage may have changed some): option -> attribute
PARSER_STATE = {"pool": "pool", "key_size": "key_size", "positions": "positions", "values": "values",
                "keys": "key_source", "lookback": "lookback", "choices": "choices", "start": "start",
                "end_keys": "end_key_source", "spans": "spans", "pointers": "pointer_mode",
                "shared_values": "shared_values", "outside_spans": "outside_spans",
                "choice_queries": "choice_queries", "step_heads": "step_heads", "ngram": "ngram",
                "shared_keys": "shared_keys", "outside_floor": "outside_floor",
                "outside_delimiters": "outside_delimiters", "blank_spans": "blank_spans",
                "choice_bag": "choice_bag", "blind_choices": "blind_choices", "choice_dropout": "choice_dropout",
                "argument_spread": "argument_spread", "argument_scale": "argument_scale",
                "argument_cap": "argument_cap", "outside_first": "outside_first"}


def _interface(model: Any, config: dict[str, Any]) -> dict[str, Any] | None:
    """What answering needs beyond the recipe, for an engine that does not build the model
    (:mod:`diffcomp.inference`): the computer's encoding and whether its machine runs decided inputs exactly,
    its registers, programs and chain, the parser's targets, where the answer is read, and the plug-ins these
    were built with (an engine answers only when the recipe still names them). ``None`` without a machine."""
    from ..machine import exact
    from .heads import ChosenReadout, Readout

    computer, parser, head = model.computer, getattr(model, "parser", None), getattr(model, "head", None)
    machine = getattr(computer, "machine", None)
    if machine is None or parser is None or not isinstance(head, (Readout, ChosenReadout)):
        return None
    swaps = config["swaps"]
    recipe = config["recipe"]
    return {
        "names": {"alu": swaps[-1]["alu"] if swaps else recipe["computer"].get("alu"),
                  "parser": recipe["model"].get("parser"), "tokenizer": recipe["model"].get("tokenizer")},
        "tokenizer": getattr(model.tokenizer, "name", None),  # what the recipe's (e.g. 'auto') resolved to
        "encoding": {"kind": computer.encoding.kind, "modulus": int(computer.encoding.modulus)},
        "exact": bool(exact.supports(machine)),
        "decided": bool(getattr(model, "decide_at_eval", True)),
        "registers": int(machine.n_registers), "entry_points": list(machine.entry_points),
        "steps": int(computer.steps), "arguments": None if computer.arguments is None else list(computer.arguments),
        "targets": [[t.name, int(t.count), t.classes] for t in parser.targets],
        "parser_options": {option: _jsonable(getattr(parser, attribute)) for option, attribute in PARSER_STATE.items()
                           if hasattr(parser, attribute)},
        "readout": ({"source": head.source, "start": int(head.start)} if isinstance(head, Readout)
                    else {"places": list(head.places)}),
    }


def build_from_config(config: Mapping[str, Any], folder: str | os.PathLike | None = None, *,
                      source: object = CONFIG_FILE) -> Any:
    """The model ``config`` describes, with fresh weights (load them after); ``folder`` holds tokenizer files."""
    from ..errors import UnknownNameError
    from .build import build_model

    if config.get("format") != FORMAT:
        raise PretrainedError(f"{source} is not a diffcomp model config (its 'format' is {config.get('format')!r}, "
                              f"expected {FORMAT!r}); a saved diffcomp model is what save_pretrained writes")
    if config.get("format_version") != FORMAT_VERSION:
        raise PretrainedError(f"{source}: format_version {config.get('format_version')!r} is not one this diffcomp "
                              f"reads ({FORMAT_VERSION}); it was written by diffcomp "
                              f"{config.get('diffcomp_version', '(unknown)')}")
    for key in ("recipe", "task"):
        if not isinstance(config.get(key), dict):
            raise PretrainedError(f"{source}: missing the {key!r} entry")
    task = TaskShape.from_dict(config["task"], source)
    m = dict(config["recipe"].get("model", {}))
    computer = dict(config["recipe"].get("computer", {}))
    if folder is not None and m.get("tokenizer") == ".":  # the tokenizer's files are in the folder
        m["tokenizer"] = str(folder)
    try:
        programs = assemble_library(config.get("library") or {}, source)
        model = build_model(m, computer, task, programs=programs,
                            backbone_config=config.get("backbone_config") if m.get("backbone") == "llama" else None)
        for swap in config.get("swaps", []):
            swap = dict(swap)
            model.swap_alu(swap.pop("alu"), keep_encoding=swap.pop("keep_encoding", True), **swap)
    except PretrainedError:
        raise
    except (UnknownNameError, ValueError, TypeError, KeyError) as exc:
        raise PretrainedError(f"{source}: cannot rebuild the model it describes: {exc}") from None
    sizes = config.get("sizes", {})
    if sizes:
        resize(model, cells=sizes.get("cells"), answer_length=sizes.get("answer_length"),
               max_steps=sizes.get("max_steps"), source=source)
    return model


def resize(model: Any, *, cells: int | None = None, answer_length: int | None = None,
           max_steps: int | None = None, source: object = "") -> None:
    """Give a machine model ``cells`` memory cells, a readout of ``answer_length`` and ``max_steps`` steps."""
    computer = model.computer
    if cells is not None and getattr(computer, "cells", None) not in (None, cells):
        try:
            model.parser.resize("memory", cells)
        except ValueError as exc:
            raise PretrainedError(f"{source}: the model has {computer.cells} memory cells, the config says {cells}: "
                                  f"{exc}") from None
        computer.resize_memory(cells)
    if answer_length is not None and hasattr(getattr(model, "head", None), "length"):
        model.head.length = answer_length
    if max_steps is not None and getattr(computer, "machine", None) is not None:
        computer.machine.max_steps = max_steps


# -- weights -----------------------------------------------------------------------------------------


def save_weights(model: Any, path: Path) -> None:
    from safetensors.torch import save_file

    from ..train.checkpoint import _plain, model_tensors

    save_file(_plain(model_tensors(model)), str(path), metadata={"format": "pt"})


def load_weights(model: Any, path: Path) -> None:
    """Load ``model.safetensors`` strictly: every key and every shape must match; never unpickles."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from ..train.checkpoint import CheckpointError, _check_safetensors, load_model_tensors

    if not path.is_file():
        raise PretrainedError(f"{path}: no such file; a saved model folder holds {WEIGHTS_FILE} beside {CONFIG_FILE}")
    try:
        _check_safetensors(path)
        tensors = load_file(str(path))
        load_model_tensors(model, tensors, source=path)
    except CheckpointError as exc:
        raise PretrainedError(str(exc)) from None
    except (SafetensorError, OSError) as exc:
        raise PretrainedError(f"{path} is not a readable safetensors file: {exc}") from None


# -- the mixin ---------------------------------------------------------------------------------------


MODEL_CARD = """---
{{ card_data }}
---

A diffcomp model: a language model that carries a differentiable computer (number encodings, an ALU,
memory, an interpreter and a library of programs), after Saldyt & Kambhampati, *Augmenting Language Models
With Composable Differentiable Libraries*. `config.json` says how it is built; `model.safetensors` holds
the weights.

```python
import diffcomp
model = diffcomp.load("this folder")
model.ask(["Sort the string \\"dcba\\""])
```
"""


class PretrainedMixin(ModelHubMixin, library_name="diffcomp", tags=["diffcomp", "differentiable-computer"],
                      paper_url="https://arxiv.org/abs/2407.04899", model_card_template=MODEL_CARD):
    """``save_pretrained(dir)`` / ``from_pretrained(dir_or_repo)`` for diffcomp's models (huggingface_hub's mixin)."""

    def save_pretrained(self, save_directory: str | os.PathLike, **options: Any) -> Any:
        """Write ``config.json``, ``model.safetensors``, the tokenizer's files and a model card into
        ``save_directory`` (huggingface_hub's ``save_pretrained``: ``push_to_hub=True`` and its options too)."""
        model_config(self)  # a model that cannot be described is refused before anything is written
        return super().save_pretrained(save_directory, **options)

    def _save_pretrained(self, save_directory: Path) -> None:
        config = model_config(self)
        tokenizer = getattr(self, "tokenizer", None)
        inner = getattr(tokenizer, "tokenizer", None)  # a transformers tokenizer: save its files
        if inner is not None and hasattr(inner, "save_pretrained"):
            inner.save_pretrained(str(save_directory))
            config["recipe"]["model"]["tokenizer"] = "."
        save_weights(self, save_directory / WEIGHTS_FILE)
        (save_directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n",
                                                  encoding="utf-8")

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision: str | None = None, cache_dir: Any = None,
                         force_download: bool = False, local_files_only: bool = False, token: Any = None,
                         config: dict[str, Any] | None = None, device: Any = None, **unused: Any) -> Any:
        folder = Path(model_id)
        if not folder.is_dir():  # a Hub repository: fetch the whole folder (config, weights, tokenizer files)
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(repo_id=model_id, revision=revision, cache_dir=cache_dir,
                                            force_download=force_download, local_files_only=local_files_only,
                                            token=token))
        return load_folder(folder, device=device, expect=cls)


def load_folder(folder: str | os.PathLike, *, device: Any = None, expect: type | None = None) -> Any:
    """The model saved in ``folder`` (``save_pretrained`` output), its weights loaded, in eval mode."""
    folder = Path(folder)
    config = read_config(folder)
    model = build_from_config(config, folder, source=folder / CONFIG_FILE)
    if expect is not None and not isinstance(model, expect):
        raise PretrainedError(f"{folder / CONFIG_FILE} holds a {type(model).__name__}, not a {expect.__name__}; "
                              f"load it with {type(model).__name__}.from_pretrained or diffcomp.load")
    load_weights(model, folder / WEIGHTS_FILE)
    if device is not None:
        model.to(device)
    return model.eval()
