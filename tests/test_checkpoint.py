"""Checkpoints: safetensors only, atomic writes, exact round trips of model, optimiser and RNG states."""

from __future__ import annotations

import os
import pickle
import random

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from diffcomp.train import (CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint,
                            write_checkpoint)
from diffcomp.train.checkpoint import load_optimizer_tensors, optimizer_tensors
from diffcomp.train.rng import rng_tensors, seed_everything, set_rng_tensors


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 3))


def train_steps(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = torch.randn(16, 4, generator=g), torch.randint(0, 3, (16,), generator=g)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


def test_model_and_optimizer_round_trip_exactly(tmp_path):
    model = make_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.95), weight_decay=0.1)
    train_steps(model, optimizer, 3, seed=1)
    path = save_checkpoint(tmp_path / "c.safetensors", model, optimizer, {"note": "three steps"})

    copy = make_model(seed=5)
    copy_opt = torch.optim.AdamW(copy.parameters(), lr=1.0)
    ckpt = load_checkpoint(path, copy, copy_opt)
    assert ckpt.document["note"] == "three steps"
    assert copy_opt.param_groups[0]["betas"] == (0.8, 0.95)  # a tuple again, as AdamW made it
    assert copy_opt.state_dict()["param_groups"] == optimizer.state_dict()["param_groups"]
    # both continue identically: moments and step counts came back bit for bit
    train_steps(model, optimizer, 2, seed=2)
    train_steps(copy, copy_opt, 2, seed=2)
    for a, b in zip(model.state_dict().values(), copy.state_dict().values()):
        assert torch.equal(a, b)


def test_optimizer_state_is_tensors_plus_json():
    model = make_model()
    optimizer = torch.optim.AdamW(model.parameters())
    train_steps(model, optimizer, 1, seed=0)
    tensors, document = optimizer_tensors(optimizer)
    assert set(tensors) == {f"{i}/{k}" for i in range(6) for k in ("step", "exp_avg", "exp_avg_sq")}
    assert document["type"] == "AdamW" and document["param_groups"][0]["params"] == list(range(6))
    with pytest.raises(CheckpointError, match="holds AdamW state, not SGD"):
        load_optimizer_tensors(torch.optim.SGD(model.parameters(), lr=0.1), tensors, document)


def test_tied_weights_are_saved(tmp_path):
    model = make_model()
    model[2].bias = nn.Parameter(torch.ones(3))
    model.register_buffer("alias", model[0].weight.data)  # shares memory with a parameter
    model.register_buffer("view", model[0].weight.data[1:3])  # a view into part of it
    path = save_checkpoint(tmp_path / "tied.safetensors", model)
    loaded = read_checkpoint(path).group("model")
    assert torch.equal(loaded["alias"], model[0].weight) and torch.equal(loaded["view"], model[0].weight[1:3])


def test_a_failed_replace_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "c.safetensors", make_model(seed=0), document={"round": 1})

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(CheckpointError, match="No space left on device; the previous checkpoint .* is intact"):
        save_checkpoint(path, make_model(seed=1), document={"round": 2})
    monkeypatch.undo()
    ckpt = load_checkpoint(path, make_model(seed=2))
    assert ckpt.document["round"] == 1
    assert torch.equal(ckpt.group("model")["0.weight"], make_model(seed=0)[0].weight)
    assert os.listdir(tmp_path) == ["c.safetensors"]  # the temporary file is gone


def test_a_write_that_fails_half_way_leaves_the_previous_checkpoint(tmp_path):
    path = write_checkpoint(tmp_path / "c.safetensors", {"w": torch.arange(4.0)}, {"round": 1})
    with pytest.raises(CheckpointError, match="could not write checkpoint"):
        write_checkpoint(path, {"w": torch.zeros(4), "bad": "not a tensor"}, {"round": 2})
    with pytest.raises(CheckpointError, match="could not write checkpoint"):
        write_checkpoint(path, {"w": torch.zeros(4)}, {"round": 2, "opaque": object()})
    ckpt = read_checkpoint(path)
    assert ckpt.document["round"] == 1 and torch.equal(ckpt.tensors["w"], torch.arange(4.0))
    assert os.listdir(tmp_path) == ["c.safetensors"]


def test_pickle_files_are_refused_without_being_unpickled(tmp_path, monkeypatch):
    model = make_model()
    torch.save(model.state_dict(), tmp_path / "zip.pt")
    with open(tmp_path / "plain.pkl", "wb") as f:
        pickle.dump({"w": [1, 2, 3]}, f, protocol=4)

    def no_unpickling(*args, **kwargs):
        raise AssertionError("a checkpoint load tried to unpickle")

    monkeypatch.setattr(pickle, "load", no_unpickling)
    monkeypatch.setattr(pickle, "loads", no_unpickling)
    monkeypatch.setattr(torch, "load", no_unpickling)
    for name in ("zip.pt", "plain.pkl"):
        with pytest.raises(CheckpointError, match="pickle-based file .* only from safetensors"):
            load_checkpoint(tmp_path / name, model)


def test_other_unreadable_files_are_refused(tmp_path):
    good = save_checkpoint(tmp_path / "good.safetensors", make_model())
    (tmp_path / "cut.safetensors").write_bytes(good.read_bytes()[:100])
    (tmp_path / "text.safetensors").write_text("hello world, not a checkpoint")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(CheckpointError, match="truncated or another format"):
        read_checkpoint(tmp_path / "cut.safetensors")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        read_checkpoint(tmp_path / "text.safetensors")
    with pytest.raises(CheckpointError, match="not a diffcomp checkpoint"):
        read_checkpoint(tmp_path / "foreign.safetensors")
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        read_checkpoint(tmp_path / "missing.safetensors")


def test_loading_into_a_different_model_names_the_mismatch(tmp_path):
    path = save_checkpoint(tmp_path / "c.safetensors", make_model())
    other = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 5))
    with pytest.raises(CheckpointError, match=r"shapes differ for 2.bias \(3,\) vs \(5,\)"):
        load_checkpoint(path, other)
    with pytest.raises(CheckpointError, match=r"missing \['3.bias', '3.weight'\]"):
        load_checkpoint(path, nn.Sequential(*make_model(), nn.Linear(3, 3)))
    with pytest.raises(CheckpointError, match="holds no optimiser state"):
        load_checkpoint(path, make_model(), torch.optim.AdamW(make_model().parameters()))


def test_rng_states_round_trip(tmp_path):
    seed_everything(123)
    random.gauss(0, 1)  # leaves a cached Gaussian in Python's generator
    np.random.normal()  # and in numpy's
    state = rng_tensors()
    write_checkpoint(tmp_path / "rng.safetensors", {f"rng/{k}": v for k, v in state.items()}, {})
    draws = (torch.rand(5), np.random.normal(size=5), [random.gauss(0, 1) for _ in range(5)])
    seed_everything(999)
    set_rng_tensors(read_checkpoint(tmp_path / "rng.safetensors").group("rng"))
    again = (torch.rand(5), np.random.normal(size=5), [random.gauss(0, 1) for _ in range(5)])
    assert torch.equal(draws[0], again[0])
    assert np.array_equal(draws[1], again[1])
    assert draws[2] == again[2]
