"""The random-number generators a training step may draw from, as tensors.

torch (CPU and every CUDA device), numpy's global generator and Python's
``random``: captured as plain tensors, so a checkpoint stores them with
safetensors, and restored exactly.
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and Python ``random``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_tensors() -> dict[str, torch.Tensor]:
    """The state of every generator, as tensors named ``torch``, ``cuda``, ``numpy/...``, ``python/...``."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()  # ("MT19937", (624,) uint32, ...)
    version, internal, gauss_next = random.getstate()
    out = {
        "torch": torch.get_rng_state(),  # (5056,) uint8
        "numpy/keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),  # (624,)
        "numpy/extra": torch.tensor([pos, has_gauss, gauss], dtype=torch.float64),
        "python/internal": torch.tensor(internal, dtype=torch.int64),  # (625,)
        "python/extra": torch.tensor([version, math.nan if gauss_next is None else gauss_next],
                                     dtype=torch.float64),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.stack(torch.cuda.get_rng_state_all())  # (devices, state)
    return out


def set_rng_tensors(state: dict[str, torch.Tensor]) -> None:
    """Restore generators from :func:`rng_tensors` output."""
    torch.set_rng_state(state["torch"].to(torch.uint8).cpu())
    pos, has_gauss, gauss = state["numpy/extra"].tolist()
    np.random.set_state(("MT19937", state["numpy/keys"].numpy().astype(np.uint32), int(pos), int(has_gauss), gauss))
    version, gauss_next = state["python/extra"].tolist()
    random.setstate((int(version), tuple(state["python/internal"].tolist()),
                     None if math.isnan(gauss_next) else gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        saved = list(state["cuda"].to(torch.uint8).cpu())
        if len(saved) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(saved)
