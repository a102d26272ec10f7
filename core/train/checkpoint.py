"""Checkpoints: one safetensors file, written atomically, read without pickle.

A checkpoint holds tensors under prefixes (``model/``, ``optimizer/``,
``rng/``) and a JSON document (trainer state, optimiser hyper-parameters)
in the safetensors header. Nothing is ever unpickled: a file that is not
safetensors (``torch.save`` output, a pickle) is refused, since loading a
pickle can run arbitrary code.

Writes go to a temporary file in the same folder, are flushed to disk, and
then replace the old file with :func:`os.replace`, so a write that fails
half-way (full disk, a kill, an exception) leaves the previous checkpoint
whole.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from ..errors import DiffcompError

FORMAT = "diffcomp.checkpoint"
VERSION = 1
_METADATA_KEY = "diffcomp"


class CheckpointError(DiffcompError, ValueError):
    """A checkpoint cannot be written or read, or does not fit the model it is loaded into."""


@attrs.frozen
class Checkpoint:
    """What :func:`read_checkpoint` found: the tensors by name and the JSON document."""

    path: Path
    tensors: dict[str, torch.Tensor]
    document: dict[str, Any]

    def group(self, prefix: str) -> dict[str, torch.Tensor]:
        """The tensors under ``prefix/``, with the prefix removed."""
        start = prefix.rstrip("/") + "/"
        return {k[len(start):]: v for k, v in self.tensors.items() if k.startswith(start)}


# -- files ------------------------------------------------------------------------


def write_checkpoint(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor],
                     document: Mapping[str, Any]) -> Path:
    """Write ``tensors`` and the JSON ``document`` to ``path`` atomically; returns the path.

    On any failure the temporary file is removed, the file at ``path`` (if
    any) is untouched, and a :class:`CheckpointError` says so.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        header = json.dumps({"format": FORMAT, "version": VERSION, **document}, allow_nan=True)
        save_file(_plain(tensors), tmp, metadata={_METADATA_KEY: header})
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        _remove(tmp)
        if isinstance(exc, Exception):
            kept = f"; the previous checkpoint at {path} is intact" if path.exists() else ""
            raise CheckpointError(f"could not write checkpoint {path}: {type(exc).__name__}: {exc}{kept}") from exc
        raise
    _fsync_dir(path.parent)
    return path


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint written by :func:`write_checkpoint`; never unpickles anything."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    _check_safetensors(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            header = (f.metadata() or {}).get(_METADATA_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint: {exc}") from exc
    if header is None:
        raise CheckpointError(f"{path} is a safetensors file but not a diffcomp checkpoint "
                              f"(its metadata has no {_METADATA_KEY!r} entry)")
    document = json.loads(header)
    if document.get("format") != FORMAT or document.get("version") != VERSION:
        raise CheckpointError(f"{path}: unsupported checkpoint format {document.get('format')!r} "
                              f"version {document.get('version')!r}; this diffcomp reads {FORMAT!r} "
                              f"version {VERSION}")
    return Checkpoint(path, tensors, document)


def _check_safetensors(path: Path) -> None:
    """Refuse anything that is not a safetensors file, naming pickles for what they are."""
    with open(path, "rb") as f:
        head = f.read(9)  # a safetensors file: 8-byte little-endian header length, then the JSON header
    if len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] + 8 <= path.stat().st_size:
        return
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":  # torch.save's zip, or a pickle protocol mark
        raise CheckpointError(f"{path} is a pickle-based file (torch.save or pickle); diffcomp loads "
                              "checkpoints only from safetensors, since unpickling can run arbitrary code")
    raise CheckpointError(f"{path} is not a safetensors file (truncated or another format)")


def _plain(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors that share no memory (safetensors refuses aliases, e.g. tied weights)."""
    out, seen = {}, set()
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"checkpoint entry {name!r} is a {type(t).__name__}, not a tensor")
        t = t.detach().to("cpu").contiguous()
        key = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else None
        if key is not None and (key in seen or t.untyped_storage().nbytes() != t.numel() * t.element_size()):
            t = t.clone()
        elif key is not None:
            seen.add(key)
        out[name] = t
    return out


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (where the platform allows opening folders)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# -- the model ------------------------------------------------------------------------


def model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's ``state_dict`` (parameters and buffers) as plain tensors."""
    state = model.state_dict()
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"model state entry {name!r} is a {type(value).__name__}; a checkpointed "
                                  "model's state_dict must hold tensors only")
    return dict(state)


def load_model_tensors(model: nn.Module, tensors: Mapping[str, torch.Tensor], *, source: object = "") -> None:
    """Load tensors into ``model`` (strictly: every key must match, and every shape)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    wrong = sorted(k for k in set(own) & set(tensors) if own[k].shape != tensors[k].shape)
    if missing or unexpected or wrong:
        parts = [f"missing {missing[:5]}" if missing else "", f"unexpected {unexpected[:5]}" if unexpected else "",
                 "shapes differ for " + ", ".join(f"{k} {tuple(tensors[k].shape)} vs {tuple(own[k].shape)}"
                                                  for k in wrong[:5]) if wrong else ""]
        raise CheckpointError(f"checkpoint {source} does not fit this model: "
                              + "; ".join(p for p in parts if p))
    model.load_state_dict(dict(tensors), strict=True)


# -- the optimiser ----------------------------------------------------------------------


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Flatten ``optimizer.state_dict()`` into tensors ``{index}/{key}`` and a JSON document.

    Per-parameter state that is not a tensor (rare) and the parameter groups
    (hyper-parameters) go into the document.
    """
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    values: dict[str, dict[str, Any]] = {}
    for index, entries in state["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}/{key}"] = value
            else:
                values.setdefault(str(index), {})[key] = _json_value(value, f"optimizer state {index}/{key}")
    groups = [{k: _json_value(v, f"optimizer group setting {k!r}") for k, v in g.items()}
              for g in state["param_groups"]]
    return tensors, {"type": type(optimizer).__name__, "param_groups": groups, "values": values}


def load_optimizer_tensors(optimizer: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor],
                           document: Mapping[str, Any], *, source: object = "") -> None:
    """Rebuild the state dict from :func:`optimizer_tensors` output and load it."""
    if document.get("type") != type(optimizer).__name__:
        raise CheckpointError(f"checkpoint {source} holds {document.get('type')} state, "
                              f"not {type(optimizer).__name__}")
    current = optimizer.state_dict()["param_groups"]
    groups = document["param_groups"]
    if [len(g["params"]) for g in groups] != [len(g["params"]) for g in current]:
        raise CheckpointError(f"checkpoint {source}: the optimiser's parameter groups do not match "
                              "(a different set of trainable parameters)")
    # JSON has no tuples: give settings back the type they have now (AdamW's betas)
    groups = [{k: tuple(v) if isinstance(now.get(k), tuple) and isinstance(v, list) else v for k, v in g.items()}
              for g, now in zip(groups, current)]
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        index, key = name.split("/", 1)
        state.setdefault(int(index), {})[key] = value
    for index, entries in document.get("values", {}).items():
        state.setdefault(int(index), {}).update(entries)
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def _json_value(value: Any, what: str) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_json_value(v, what) for v in value]
    raise CheckpointError(f"cannot checkpoint {what} of type {type(value).__name__} without pickle")


# -- whole checkpoints ------------------------------------------------------------------


def save_checkpoint(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    document: Mapping[str, Any] | None = None) -> Path:
    """Save a model (and optionally its optimiser) atomically; ``document`` is any JSON-able extra."""
    tensors = {f"model/{k}": v for k, v in model_tensors(model).items()}
    extra = dict(document or {})
    if optimizer is not None:
        opt_tensors, extra["optimizer"] = optimizer_tensors(optimizer)
        tensors.update({f"optimizer/{k}": v for k, v in opt_tensors.items()})
    return write_checkpoint(path, tensors, extra)


def load_checkpoint(path: str | os.PathLike, model: nn.Module | None = None,
                    optimizer: torch.optim.Optimizer | None = None) -> Checkpoint:
    """Read a checkpoint (a trainer's or :func:`save_checkpoint`'s) and load it into ``model``/``optimizer``."""
    ckpt = read_checkpoint(path)
    if model is not None:
        load_model_tensors(model, ckpt.group("model"), source=ckpt.path)
    if optimizer is not None:
        if "optimizer" not in ckpt.document:
            raise CheckpointError(f"{ckpt.path} holds no optimiser state")
        load_optimizer_tensors(optimizer, ckpt.group("optimizer"), ckpt.document["optimizer"], source=ckpt.path)
    return ckpt
