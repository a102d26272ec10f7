"""The saved-model format, without torch: file names, what ``config.json`` says, errors, answers as written.

What reading a saved model needs before (or without) building it: the
NumPy engine (:mod:`diffcomp.inference`) answers from these alone, and
:mod:`diffcomp.model.pretrained` (the torch model's ``save_pretrained`` and
``from_pretrained``) builds on them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from ..errors import DiffcompError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "diffcomp.model"
FORMAT_VERSION = 1
#: how an answer is written back for the user: one number, a list of numbers, characters, or by the place it
#: was read from (a learned readout: a sequence in memory as characters, a register's number as a number)
ANSWER_FORMATS = ("number", "numbers", "text", "place")


class PretrainedError(DiffcompError, ValueError):
    """A saved model (or run folder) that cannot be loaded: the message names the file and what is wrong."""


@attrs.frozen
class TaskShape:
    """What a model needs to know about its task, without the task's data or plug-in.

    It has the attributes :func:`~diffcomp.model.build_model` reads from a
    :class:`~diffcomp.model.Task`, and ``answer_format``, how an answer is
    written for the user (:data:`ANSWER_FORMATS`).
    """

    name: str
    options: dict[str, Any]
    modulus: int
    slots: int
    answer_length: int
    text: bool
    ops: tuple[str, ...]
    programs: tuple[str, ...]
    registers: int
    cells: int
    max_steps: int
    answer_from: tuple[str, int]
    seed: int
    answer_format: str

    @property
    def uses_machine(self) -> bool:
        return bool(self.programs)

    @classmethod
    def of(cls, task: Any) -> TaskShape:
        if isinstance(task, TaskShape):
            return task
        return cls(name=task.name, options=_jsonable(task.options()), modulus=int(task.modulus),
                   slots=int(task.slots), answer_length=int(task.answer_length), text=bool(task.text),
                   ops=tuple(task.ops), programs=tuple(task.programs), registers=int(task.registers),
                   cells=int(task.cells), max_steps=int(task.max_steps),
                   answer_from=(str(task.answer_from[0]), int(task.answer_from[1])), seed=int(task.seed),
                   answer_format=answer_format(task))

    def as_dict(self) -> dict[str, Any]:
        d = attrs.asdict(self)
        d["ops"], d["programs"], d["answer_from"] = list(self.ops), list(self.programs), list(self.answer_from)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: object = "") -> TaskShape:
        fields = [f.name for f in attrs.fields(cls)]
        missing = [f for f in fields if f not in d]
        if missing:
            raise PretrainedError(f"{source}: the 'task' entry lacks {', '.join(missing)}")
        values = {f: d[f] for f in fields}
        values["ops"], values["programs"] = tuple(values["ops"]), tuple(values["programs"])
        values["answer_from"] = (str(values["answer_from"][0]), int(values["answer_from"][1]))
        if values["answer_format"] not in ANSWER_FORMATS:
            raise PretrainedError(f"{source}: answer_format {values['answer_format']!r} is not one of "
                                  f"{', '.join(ANSWER_FORMATS)}")
        return cls(**values)


def answer_format(task: Any) -> str:
    """How ``task``'s answers are written: its ``answer_format``, else one number or a list of them."""
    fmt = getattr(task, "answer_format", None)
    if fmt is None:
        fmt = "number" if task.answer_length == 1 else "numbers"
    if fmt not in ANSWER_FORMATS:
        raise ValueError(f"task {task.name!r}: answer_format {fmt!r} is not one of {', '.join(ANSWER_FORMATS)}")
    return fmt


def render_answer(numbers: list[int], fmt: str, place: str | None = None) -> int | str | list[int]:
    """An answer's numbers as the user writes it: ``7``, ``[3, 5]``, or ``"abcd"`` (codes up to the first 0).

    ``fmt = "place"`` writes it by ``place``, where a learned readout read it: from ``"memory"`` as text (a
    string left in memory), from a register (``"r0"``) as its number; without a place, as numbers.
    """
    if fmt == "place" and place is not None:
        fmt = "text" if place == "memory" else "number"
    if fmt == "number":
        return int(numbers[0])
    if fmt == "text":
        end = numbers.index(0) if 0 in numbers else len(numbers)
        return "".join(chr(c) for c in numbers[:end])
    return [int(n) for n in numbers]


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=list))


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise PretrainedError(f"{folder} holds no {CONFIG_FILE}: not a saved diffcomp model "
                              "(save_pretrained writes config.json and model.safetensors) nor a run folder")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PretrainedError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise PretrainedError(f"{path} holds a JSON {type(config).__name__}, not an object")
    return config


def assemble_library(texts: Mapping[str, str], source: object) -> dict[str, Any] | None:
    """The saved programs, assembled from their text, calling only one another."""
    if not texts:
        return None
    from ..errors import AssemblyError
    from ..machine import Library
    from ..machine.assembler import assemble

    programs = {}
    for name, text in texts.items():
        try:
            programs[name] = assemble(text, name=name, library=list(texts))
        except AssemblyError as exc:
            raise PretrainedError(f"{source}: program {name!r} does not assemble: {exc}") from None
    Library(programs.values(), registered=False).link()  # every CALL resolves among the saved programs
    return programs


def grown_sizes(cells: int, max_steps: int, tokens: int) -> tuple[int, int] | None:
    """Memory and step limit for questions of ``tokens`` tokens whose text answer is read from memory, or
    ``None`` if ``cells`` already hold them: the string and its terminator, and steps growing with the square
    of the memory (the library's sorts take quadratic time)."""
    if tokens + 1 <= cells:
        return None
    return tokens + 1, max(max_steps, math.ceil(max_steps * ((tokens + 1) / cells) ** 2))
