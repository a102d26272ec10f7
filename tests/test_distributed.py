"""Running under torchrun: sharding, gradient averaging, gathered evaluation, rank 0 alone writing.

Run as a script (by torchrun), this file is the worker of the two-process test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffcomp.train import Distributed, Trainer, read_checkpoint, read_metrics
from diffcomp.train import distributed as dist_module
from diffcomp.train.distributed import resolve_device, setup
from test_trainer import ToyTask, config, toy_model

HERE = Path(__file__).resolve().parent
SETTINGS = dict(epochs=2, batch_size=32, lr=1e-2, seed=3, checkpoint_every_steps=7)


def test_single_process_by_default(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    here = setup("cpu")
    assert (here.rank, here.world_size, here.enabled, here.is_main) == (0, 1, False, True)
    assert here.device == torch.device("cpu")
    t = torch.arange(3.0)
    assert here.all_reduce_sum(t) is t and torch.equal(here.all_gather(t)[0], t)
    model = torch.nn.Linear(2, 2)
    assert here.wrap(model) is model
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")


def test_batch_size_must_split_evenly_over_processes(tmp_path, monkeypatch):
    monkeypatch.setattr(dist_module, "setup", lambda device: Distributed(rank=0, world_size=3))
    with pytest.raises(ValueError, match="batch_size 32 must be divisible by the number of processes .3."):
        Trainer(toy_model(), ToyTask(), config(batch_size=32), out_dir=tmp_path)


@pytest.mark.slow
def test_two_processes_under_torchrun_match_one(tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    done = subprocess.run([*torchrun, str(Path(__file__).resolve()), str(out), json.dumps(SETTINGS)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # each rank's summary in a file of its own (two processes printing to one pipe can interleave lines)
    summaries = {rank: json.loads((tmp_path / f"summary-{rank}.json").read_text()) for rank in (0, 1)}

    # the same run in one process: each optimiser step sees the same 32 examples (rank r takes
    # every other one of them), so the weights agree up to the order of floating-point sums
    torch.set_num_threads(1)
    reference = Trainer(toy_model(dropout=0.0, noise=0.0), ToyTask(), config(**SETTINGS),
                        out_dir=tmp_path / "one").fit()

    assert sorted(summaries) == [0, 1]
    assert summaries[0]["test"] == summaries[1]["test"]  # evaluation gathered the counts of both ranks
    assert summaries[0]["test"]["examples"] == 96 and summaries[0]["steps"] == reference["steps"] == 28
    for split in ("train", "validation", "test"):
        assert summaries[0][split]["accuracy"] == pytest.approx(reference[split]["accuracy"], abs=2 / 96)
        assert summaries[0][split]["loss"] == pytest.approx(reference[split]["loss"], rel=1e-3)
    assert reference["test"]["accuracy"] >= 0.6  # it learned (chance 0.25; seeds 0-5 reach 0.84-0.88), in both set-ups

    # rank 0 alone wrote: one checkpoint, one record per evaluation (not two), no temporary files
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == [
        "checkpoints", "checkpoints/train.safetensors", "metrics.jsonl"]
    assert [(r["epoch"], r["split"]) for r in read_metrics(out)] == [
        (e, split) for e in (1, 2) for split in ("train", "validation", "test")]
    ckpt = read_checkpoint(out / "checkpoints" / "train.safetensors")
    assert ckpt.document["world_size"] == 2
    assert not torch.equal(ckpt.tensors["rng/0/torch"], ckpt.tensors["rng/1/torch"])  # each rank's own RNG
    weights = ckpt.group("model")
    mine = read_checkpoint(tmp_path / "one" / "checkpoints" / "train.safetensors").group("model")
    for name in mine:
        torch.testing.assert_close(weights[name], mine[name], rtol=1e-4, atol=1e-5)


def _worker(out_dir: str, settings: str) -> None:
    torch.set_num_threads(1)
    summary = Trainer(toy_model(dropout=0.0, noise=0.0), ToyTask(), config(**json.loads(settings)),
                      out_dir=out_dir).fit()
    rank = int(os.environ["RANK"])
    (Path(out_dir).parent / f"summary-{rank}.json").write_text(json.dumps(summary))  # beside the run folder


if __name__ == "__main__":
    _worker(*sys.argv[1:])
