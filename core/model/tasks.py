"""Tasks: data sets generated deterministically from a seed, split 70/30 (paper §4.3).

A :class:`Task` says what the computer needs (ops, programs, how many
registers and cells, where the answer lives) and yields items of fixed shape,
so the default collate stacks them:

- ``numbers``: ``(slots,)`` int64, the question's numbers (what the one-hot
  minimal network of §4.1 reads, encoded by the model in its computer's
  encoding, so the same data serves a table and a circuit);
- ``text``: ``(max_bytes,)`` uint8, the question in UTF-8, zero-padded (text
  tasks only; the model tokenizes, so one data set serves every tokenizer);
- ``op``: ``()`` int64, the index of the op in :attr:`Task.ops` (arithmetic);
- ``answer``: ``(answer_length,)`` int64, the answer's numbers.

Concrete tasks are plug-ins (``register_tasks``); build one with
``diffcomp.model.build_task(name, options, seed)``.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch.utils.data import Dataset

SPLITS = ("train", "test")


class TaskDataset(Dataset):
    """Items of a split, held as stacked tensors: ``tensors[key]`` is ``(len, ...)``."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]) -> None:
        lengths = {len(v) for v in tensors.values()}
        if len(lengths) != 1:
            raise ValueError(f"task tensors must share their first dimension, got {{k: len}} = "
                             f"{ {k: len(v) for k, v in tensors.items()} }")
        self.tensors = dict(tensors)
        self.length = lengths.pop()

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {key: value[index] for key, value in self.tensors.items()}


class Task(abc.ABC):
    """A data set and what a computer needs to answer it.

    Subclasses set the attributes below in ``__init__`` and implement
    :meth:`generate`; :meth:`dataset` caches each split.
    """

    name: ClassVar[str]
    #: numbers lie in ``[0, modulus)`` and answers are taken modulo it
    modulus: int
    #: how many numbers a question holds (the width of ``numbers``)
    slots: int
    #: how many numbers an answer holds
    answer_length: int
    #: whether items carry ``text`` (a question in words) or only ``numbers``
    text: bool
    #: ALU ops the task needs (arithmetic), in the order ``op`` indexes them
    ops: tuple[str, ...] = ()
    #: library programs the task needs; empty for one-step arithmetic on an ALU
    programs: tuple[str, ...] = ()
    #: machine size and where the answer is read: ``("register", i)`` or ``("memory", 0)``
    registers: int = 0
    cells: int = 0
    max_steps: int = 0
    answer_from: tuple[str, int] = ("result", 0)
    #: how an answer is written for the user (``model.ask``): ``"number"``, ``"numbers"`` or ``"text"`` (character
    #: codes up to the first 0); ``None``: one number if ``answer_length`` is 1, else the list
    answer_format: str | None = None

    def __init__(self, seed: int) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"task {self.name!r}: seed must be an integer, got {seed!r}")
        self.seed = seed
        self._splits: dict[str, TaskDataset] | None = None

    @abc.abstractmethod
    def generate(self) -> dict[str, dict[str, torch.Tensor]]:
        """Both splits: ``{"train": tensors, "test": tensors}``, deterministic from :attr:`seed`."""

    def dataset(self, split: str) -> TaskDataset:
        """The items of ``split`` (``"train"`` or ``"test"``)."""
        if split not in SPLITS:
            raise ValueError(f"task {self.name!r}: split must be one of {SPLITS}, got {split!r}")
        if self._splits is None:
            self._splits = {key: TaskDataset(value) for key, value in self.generate().items()}
        return self._splits[split]

    @property
    def uses_machine(self) -> bool:
        return bool(self.programs)

    def options(self) -> dict[str, Any]:
        """The options that rebuild this task (for messages and run folders)."""
        return dict(getattr(self, "_options", {}))

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{self.name}({options})" if options else f"{self.name}()"


def generator(seed: int, stream: int = 0) -> torch.Generator:
    """A CPU generator for one purpose of one task: data never depends on the global RNG."""
    return torch.Generator().manual_seed(seed * 1_000_003 + stream)


def split_counts(n: int, test_fraction: float) -> tuple[int, int]:
    """``(train, test)`` sizes: the paper's 70/30 by default."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction!r}")
    test = max(1, round(n * test_fraction)) if n > 1 else 0
    return n - test, test


def check_modulus(name: str, base: int | None, bits: int | None, default_base: int = 128) -> int:
    """The modulus from exactly one of ``base`` (unit numbers) and ``bits`` (binary numbers)."""
    if base is not None and bits is not None:
        raise ValueError(f"task {name!r}: give base (numbers mod base) or bits (numbers mod 2**bits), not both")
    if bits is not None:
        if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 62:
            raise ValueError(f"task {name!r}: bits must be an integer from 1 to 62, got {bits!r}")
        return 1 << bits
    base = default_base if base is None else base
    if isinstance(base, bool) or not isinstance(base, int) or base < 2:
        raise ValueError(f"task {name!r}: base must be an integer of at least 2, got {base!r}")
    return base


def positive(name: str, what: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"task {name!r}: {what} must be an integer of at least {minimum}, got {value!r}")
    return value
