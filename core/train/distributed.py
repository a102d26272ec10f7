"""Running under ``torchrun``: process group, device, and the few collectives training needs.

Single-process by default. When ``torchrun`` starts the program (it sets
``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``), :func:`setup` joins the process
group (gloo on CPU, nccl on GPU), each process takes the GPU of its local
rank, and the model is wrapped in ``DistributedDataParallel``. Rank 0 alone
logs and writes files.
"""

from __future__ import annotations

import atexit
import datetime
import os

import attrs
import torch
import torch.distributed as dist
from torch import nn


@attrs.frozen
class Distributed:
    """Where this process stands: its rank among ``world_size`` and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this process logs and writes (rank 0)."""
        return self.rank == 0

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of ``tensor`` over all processes (``tensor`` itself when single-process)."""
        if not self.enabled:
            return tensor
        out = tensor.detach().to(self.device, copy=True)
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out.to(tensor.device)

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """``tensor`` from every rank, in rank order, on the CPU (same shape on every rank)."""
        if not self.enabled:
            return [tensor.detach().cpu()]
        dtype = tensor.dtype
        wide = torch.float64 if dtype.is_floating_point else torch.int64  # every backend reduces these
        local = tensor.detach().to(self.device, wide)
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(parts, local)
        return [p.cpu().to(dtype) for p in parts]

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def wrap(self, model: nn.Module, *, find_unused_parameters: bool = False) -> nn.Module:
        """``model`` in ``DistributedDataParallel`` when running distributed, else ``model``."""
        if not self.enabled:
            return model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids,
                                                   find_unused_parameters=find_unused_parameters)


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``"auto"``: CUDA when present, else CPU; ``"cuda"``: the GPU of ``local_rank``."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' was asked for, but CUDA is not available here; "
                             "use device 'auto' or 'cpu'")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if device == "cpu":
        return torch.device("cpu")
    raise ValueError(f"unknown device {device!r}; valid: 'auto', 'cpu', 'cuda'")


def setup(device: str = "auto") -> Distributed:
    """This process's :class:`Distributed`; joins the process group when started by torchrun.

    A process group the caller already initialised is used as it is.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_available() or (world_size <= 1 and not dist.is_initialized()):
        return Distributed(device=resolve_device(device))
    target = resolve_device(device, local_rank)
    if not dist.is_initialized():
        if target.type == "cuda":
            torch.cuda.set_device(target)
        dist.init_process_group(backend="nccl" if target.type == "cuda" else "gloo")
        atexit.register(_destroy)
    return Distributed(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                       device=target)


def _destroy() -> None:
    """At exit: the ranks leave together, then the group goes while the interpreter is whole.

    A gloo rank that exits while a peer still talks to it can abort ("terminate called without an active
    exception"); so the ranks meet first (gloo's monitored barrier, which gives up after a minute where a
    rank failed and never comes), then destroy the group.
    """
    if not dist.is_initialized():
        return
    if dist.get_backend() == "gloo":
        try:
            dist.monitored_barrier(timeout=datetime.timedelta(seconds=60))
        except RuntimeError:  # a rank failed or left: leave anyway
            pass
    dist.destroy_process_group()
