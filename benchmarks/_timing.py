"""Timing and memory helpers for the benchmark scripts.

Benchmarks report ratios against a reference path measured in the same run,
because the machines they run on are shared and noisy: :func:`round_robin`
runs the paths being compared in turn, round after round, so a busy spell
slows all of them alike, and :func:`ratio` takes the median of per-round
ratios. Memory is measured without tracemalloc (which does not see torch's
allocator): the bytes autograd saves for backward (:class:`SavedTensors`) and
the growth of the process's resident set in a fresh child process
(:func:`reset_peak_rss`, :func:`peak_rss`, :func:`run_child`).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence

import torch

MB = 1 << 20


def round_robin(steps: Mapping[str, Callable[[], object]], repeats: int,
                warmup: int = 1) -> dict[str, list[float]]:
    """Wall seconds of every step, run in turn ``repeats`` times after ``warmup`` untimed rounds."""
    times: dict[str, list[float]] = {key: [] for key in steps}
    for round_ in range(warmup + repeats):
        for key, step in steps.items():
            start = time.perf_counter()
            step()
            if round_ >= warmup:
                times[key].append(time.perf_counter() - start)
    return times


def median_ms(times: Sequence[float]) -> float:
    return 1e3 * statistics.median(times)


def ratio(times: Mapping[str, Sequence[float]], numerator: str, denominator: str) -> float:
    """The median over rounds of ``time(numerator) / time(denominator)``."""
    return statistics.median(n / d for n, d in zip(times[numerator], times[denominator]))


class SavedTensors:
    """Counts the bytes autograd saves for backward inside the ``with`` block.

    Each storage is counted once, however many tensors view it; a custom
    ``autograd.Function``'s ``save_for_backward`` is counted too.
    """

    def __init__(self) -> None:
        self.storages: dict[int, int] = {}

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        self.storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    def __enter__(self) -> "SavedTensors":
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)

    @property
    def nbytes(self) -> int:
        return sum(self.storages.values())


def current_rss() -> int:
    """Resident set size of this process now, in bytes (Linux ``/proc``; elsewhere the peak)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return peak_rss()


def reset_peak_rss() -> bool:
    """Start a new high-water mark for :func:`peak_rss` at the current RSS (Linux ≥ 4.0); False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    """The highest resident set size of this process (since :func:`reset_peak_rss`), in bytes."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # never reset
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


def run_child(argv: Sequence[str], timeout: float = 600) -> dict:
    """Run ``python *argv`` in a fresh process and parse the JSON object it prints last."""
    result = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"benchmark child {argv} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])
