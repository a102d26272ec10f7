"""Tasks: data sets generated deterministically from a seed, split into train, validation and test.

Every task yields three splits of distinct examples, 70/15/15 by default
(``validation_fraction`` and ``test_fraction`` set the last two). Training
reads ``train``; every decision a stage makes from an evaluation (stopping
early, keeping its best weights) reads ``validation``; ``test`` is measured
and reported, never used to decide anything. (The paper splits 70/30 into
train and test, §4.3; the validation split is carved out of its test share.)

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

SPLITS = ("train", "validation", "test")
#: the default shares of the validation and test splits (the rest trains)
VALIDATION_FRACTION = TEST_FRACTION = 0.15


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
    :meth:`generate`, which returns the three splits (:meth:`split` cuts
    them from one array of distinct examples); :meth:`dataset` caches each.
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
    #: per group of questions (``groups``, where a task reports kinds of question one by one), where its answer is
    #: read among the machine's places (``"memory"``, ``"r0"``): a model's choice then counts as the task's
    #: programs where it leaves the same answer there (empty: only the task's own chain counts)
    group_places: tuple[str, ...] = ()
    #: how an answer is written for the user (``model.ask``): ``"number"``, ``"numbers"`` or ``"text"`` (character
    #: codes up to the first 0); ``None``: one number if ``answer_length`` is 1, else the list
    answer_format: str | None = None

    def __init__(self, seed: int, *, validation_fraction: float = VALIDATION_FRACTION,
                 test_fraction: float = TEST_FRACTION) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"task {self.name!r}: seed must be an integer, got {seed!r}")
        self.seed = seed
        check_fractions(self.name, validation_fraction, test_fraction)
        self.validation_fraction, self.test_fraction = float(validation_fraction), float(test_fraction)
        self._splits: dict[str, TaskDataset] | None = None

    @abc.abstractmethod
    def generate(self) -> dict[str, dict[str, torch.Tensor]]:
        """The three splits, ``{"train": tensors, "validation": tensors, "test": tensors}``, of distinct
        examples, deterministic from :attr:`seed`."""

    def split_sizes(self, n: int) -> tuple[int, int, int]:
        """``(train, validation, test)`` sizes of ``n`` examples, by this task's fractions."""
        return split_counts(n, self.validation_fraction, self.test_fraction)

    def split(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
        """Cut stacked tensors of distinct examples (in random order) into the three splits, in that order."""
        n = len(next(iter(tensors.values())))
        train, validation, _ = self.split_sizes(n)
        bounds = {"train": (0, train), "validation": (train, train + validation), "test": (train + validation, n)}
        return {split: {k: v[lo:hi] for k, v in tensors.items()} for split, (lo, hi) in bounds.items()}

    def dataset(self, split: str) -> TaskDataset:
        """The items of ``split``: ``"train"``, ``"validation"`` or ``"test"``."""
        if split not in SPLITS:
            raise ValueError(f"task {self.name!r}: split must be one of {', '.join(map(repr, SPLITS))}, "
                             f"got {split!r}")
        if self._splits is None:
            generated = self.generate()
            if sorted(generated) != sorted(SPLITS):
                raise ValueError(f"task {self.name!r}: generate() returned the splits {sorted(generated)}; a task "
                                 f"yields {', '.join(SPLITS)} (Task.split cuts them from one array of examples)")
            self._splits = {key: TaskDataset(value) for key, value in generated.items()}
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


def check_fractions(name: str | None, validation_fraction: float, test_fraction: float) -> None:
    """``ValueError`` unless both fractions lie in (0, 1) and leave some examples to train on."""
    at = f"task {name!r}: " if name else ""
    for what, value in (("validation_fraction", validation_fraction), ("test_fraction", test_fraction)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
            raise ValueError(f"{at}{what} must be a number strictly between 0 and 1 (default "
                             f"{VALIDATION_FRACTION if what.startswith('v') else TEST_FRACTION}), got {value!r}")
    if validation_fraction + test_fraction >= 1.0:
        raise ValueError(f"{at}validation_fraction + test_fraction must be below 1 so that some examples "
                         f"remain to train on, got {validation_fraction} + {test_fraction}")


def split_counts(n: int, validation_fraction: float = VALIDATION_FRACTION,
                 test_fraction: float = TEST_FRACTION) -> tuple[int, int, int]:
    """``(train, validation, test)`` sizes of ``n`` examples: 70/15/15 by default, at least one each from 3 on."""
    check_fractions(None, validation_fraction, test_fraction)
    if n < 3:
        raise ValueError(f"three splits need at least 3 examples, got {n}")
    validation = min(max(1, round(n * validation_fraction)), n - 2)
    test = min(max(1, round(n * test_fraction)), n - 1 - validation)
    return n - validation - test, validation, test


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
