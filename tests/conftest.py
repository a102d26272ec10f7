"""Shared test set-up: fast, CPU, seeded."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(int(os.environ.get("DIFFCOMP_TEST_THREADS", "2")))


@pytest.fixture
def generator() -> torch.Generator:
    """A seeded generator: randomised tests are reproducible."""
    return torch.Generator().manual_seed(1234)
