"""Shared test set-up: fast, CPU, seeded; one torch thread (small ops are slower with more)."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(int(os.environ.get("DIFFCOMP_TEST_THREADS", "1")))


@pytest.fixture
def generator() -> torch.Generator:
    """A seeded generator: randomised tests are reproducible."""
    return torch.Generator().manual_seed(1234)
