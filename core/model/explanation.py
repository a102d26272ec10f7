"""What a model did with one question (:class:`Explanation`), without torch: what either engine returns."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import attrs


@attrs.frozen
class Explanation:
    """What the model did with one question (``str(explanation)`` prints it; ``as_dict()`` for JSON).

    ``parse``: per machine input (``registers``, ``memory``, ``operands``),
    the decided values and each one's probability under the parser;
    ``choices``: per choice (``program``, ``op``), ``(name, probability)``
    from the most likely down; ``steps``/``halted``: the machine's steps and
    final halting mass (``None`` without a machine); ``answer_probability``:
    the probability of the answer given under the computer's output
    distribution; ``decided``: whether the computer ran on the decided parse
    (the model's answer) or on the parser's distributions (a soft run).
    """

    question: str
    answer: Any
    answer_numbers: list[int]
    answer_probability: float
    parse: dict[str, dict[str, list]]
    choices: dict[str, list[tuple[str, float]]]
    steps: int | None
    halted: float | None
    decided: bool
    answer_format: str
    record: Any = None

    def as_dict(self) -> dict[str, Any]:
        return {"question": self.question, "answer": self.answer, "answer_numbers": self.answer_numbers,
                "answer_probability": self.answer_probability, "parse": self.parse,
                "choices": {k: [{"name": n, "probability": p} for n, p in v] for k, v in self.choices.items()},
                "steps": self.steps, "halted": self.halted, "decided": self.decided}

    def __str__(self) -> str:
        lines = [f"question: {self.question}", f"answer:   {self.answer!r}  (probability {self.answer_probability:.4g})"]
        for name, entry in self.parse.items():
            values = entry["values"]
            last = max((k for k, v in enumerate(values) if v != 0), default=-1)
            shown = " ".join(_show(v, name, self.answer_format) for v in values[:last + 2])
            if len(values) > last + 2:
                shown += f" (and {len(values) - last - 2} more 0)"
            lines.append(f"{name + ':':<9} {shown}  (least certain: {min(entry['probability']):.4g})")
        for name, options in self.choices.items():
            lines.append(f"{name + ':':<9} " + ", ".join(f"{n} (probability {p:.4g})" for n, p in options[:4]))
        if self.steps is not None:
            lines.append(f"machine:  {self.steps} steps, halted {self.halted:.4g}"
                         f"{'' if self.decided else ' (soft run on the parser distributions)'}")
        return "\n".join(lines)


def _show(value: int, target: str, fmt: str) -> str:
    """A memory cell as its character when the answer is text (``·`` for 0, the terminator)."""
    if target == "memory" and fmt == "text":
        return "·" if value == 0 else (chr(value) if 32 < value < 127 else str(value))
    return str(value)


def chain_names(programs: Sequence[str], steps: int, target: str) -> list[str] | None:
    """The class names of a ``program`` choice (the programs) or a ``chain`` choice (``"a, then b"`` for each of
    the ``len(programs) ** steps`` chains, in the computer's order); ``None`` for another target."""
    if target == "program":
        return list(programs)
    if target == "chain":
        return [", then ".join(c) for c in itertools.product(programs, repeat=steps)]
    return None
