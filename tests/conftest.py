"""Shared test set-up: fast, CPU, seeded; one torch thread (small ops are slower with more)."""

from __future__ import annotations

import os

import pytest
import torch

from diffcomp import registry

torch.set_num_threads(int(os.environ.get("DIFFCOMP_TEST_THREADS", "1")))


@pytest.fixture
def generator() -> torch.Generator:
    """A seeded generator: randomised tests are reproducible."""
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def fresh_registry(monkeypatch):
    """The installed plug-ins in a registry of this test's own, so registering here leaks nowhere."""
    fresh = registry.Registry()
    fresh.load_entry_points()
    monkeypatch.setattr(registry, "_default", fresh)
    return fresh
