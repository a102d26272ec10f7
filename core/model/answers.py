"""Asking a trained model, and seeing how it answered.

``ask(model, questions)`` returns the answers as the user would write them:
a sorted string for a sort question, a number for arithmetic (the task's
``answer_format``, kept in the model's config). ``explain(model, question)``
returns an :class:`Explanation`: the decided parse (memory cells and
registers as characters or numbers, each with its probability), the
programs or ops the model selected with their probabilities, the machine's
steps and halting mass, and the answer's probability; with ``record=True`` it
also keeps the machine's run step by step (:class:`~diffcomp.machine.plot.RunRecord`)
for :func:`~diffcomp.machine.plot.plot_run`.

A question may be longer than any the model trained on (a 16-character sort
after 1-3 characters): before answering, a model whose parser's memory cells
share their weights (the span parser) grows its memory to hold the question,
and its machine's step limit grows with it (see :func:`fit_to`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .heads import answer_nll
from .explanation import Explanation, _show, chain_names  # noqa: F401 (re-exported)
from .saved import TaskShape, grown_sizes, render_answer

#: questions answered per forward pass
BATCH = 64


def task_shape(model: Any) -> TaskShape | None:
    built = getattr(model, "build_config", None)
    return None if built is None else TaskShape.of(built["task"])


def answer_format(model: Any) -> str:
    shape = task_shape(model)
    if shape is not None:
        return shape.answer_format
    return "number" if getattr(model.head, "length", 1) == 1 else "numbers"


def _check_text_model(model: Any) -> None:
    if not hasattr(model, "parse"):
        raise ValueError(f"a {type(model).__name__} reads numbers, not questions in words, so it cannot be asked; "
                         "call it on a batch of numbers (model(batch)), or ask a language model (backbone 'llama')")


def fit_to(model: Any, tokens: int) -> None:
    """Make room for questions of up to ``tokens`` tokens, where the answer may be read from memory: text read
    from memory, or a learned readout with memory among its places (a library's).

    Memory grows to ``tokens + 1`` cells (the string and its terminator) when
    the parser can write that many (the span parser can; others keep their
    size); the readout then reads every cell, and the step limit grows with
    the square of the memory (the library's sorts take quadratic time). A
    model never shrinks here.
    """
    from .heads import ChosenReadout

    computer, head = model.computer, model.head
    machine = getattr(computer, "machine", None)
    chosen = isinstance(head, ChosenReadout) and "memory" in head.places
    if machine is None or not chosen and (answer_format(model) != "text" or
                                          getattr(head, "source", None) != "memory"):
        return
    grown = grown_sizes(computer.cells, machine.max_steps, tokens)
    if grown is not None:
        try:
            model.parser.resize("memory", grown[0])
        except ValueError:
            pass  # a parser with weights per cell: the model reads what it can
        else:
            computer.resize_memory(grown[0])
            machine.max_steps = grown[1]
    head.length = computer.cells - (0 if chosen else head.start)


def _texts(questions: Sequence[str]) -> torch.Tensor:
    from .tokenizers import encode_texts

    return encode_texts(questions, max(1, max(len(q.encode("utf-8")) for q in questions)))


def _prepare(model: Any, questions: Sequence[str]) -> torch.Tensor:
    _check_text_model(model)
    if isinstance(questions, str) or not all(isinstance(q, str) for q in questions):
        raise ValueError(f"questions must be strings, got {questions!r}")
    text = _texts(questions)
    _, mask = model.tokenizer.from_bytes(text)
    fit_to(model, int(mask.sum(1).max()))
    return text


@torch.no_grad()
def ask(model: Any, questions: str | Sequence[str]) -> Any:
    """The answers to ``questions`` (one answer for one string, a list for a list), as the user writes them."""
    single = isinstance(questions, str)
    questions = [questions] if single else list(questions)
    if not questions:
        return []
    fmt = answer_format(model)
    answers: list[Any] = []
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(questions), BATCH):
            chunk = questions[i:i + BATCH]
            text = _prepare(model, chunk)
            outputs = model.computer_outputs({"text": text})
            probs = model.head(outputs)  # (batch, length, *shape)
            places = read_places(model.head, outputs, len(chunk))
            answers.extend(render_answer(row, fmt, place) for row, place in zip(model.encoding.to_ints(probs), places))
    finally:
        model.train(was_training)
    return answers[0] if single else answers


def read_places(head: Any, outputs: dict[str, torch.Tensor], count: int) -> list[str | None]:
    """Where ``head`` read each of the ``count`` answers of ``outputs``: a learned readout's most likely place,
    else ``None``."""
    from .heads import ChosenReadout

    if not isinstance(head, ChosenReadout):
        return [None] * count
    return [head.places[i] for i in outputs["readout"].argmax(1).tolist()]


def confidence(x: torch.Tensor, encoding: Any) -> torch.Tensor:
    """The probability of each number's most likely value: ``(..., *encoding.shape)`` -> ``(...)``."""
    if encoding.kind == "binary":
        return torch.maximum(x, 1 - x).clamp(0, 1).prod(-1)
    return x.max(-1).values


@torch.no_grad()
def explain(model: Any, question: str, *, decide: bool | None = None, record: bool = False) -> Explanation:
    """How ``model`` answers ``question``; ``decide=False`` runs the computer on the parser's distributions."""
    if not isinstance(question, str):
        raise ValueError(f"explain() takes one question (a string), got {type(question).__name__}")
    decide = getattr(model, "decide_at_eval", True) if decide is None else decide
    was_training = model.training
    model.eval()
    try:
        text = _prepare(model, [question])
        parsed = model.parse(model.read({"text": text}), decide=decide)
        inputs = model.decide(parsed) if decide else parsed
        encoding, computer = model.encoding, model.computer
        recorder = None
        steps = halted = None
        if getattr(computer, "machine", None) is not None and getattr(computer, "steps", 1) == 1:
            from ..machine.plot import Recorder

            recorder = Recorder(computer.machine, value_format=answer_format(model), keep=record)
            state = computer.run(inputs, trace=recorder)
            recorder.finish(state)
            outputs = computer.outputs_of(state.registers, state.memory, inputs)
            steps, halted = int(state.steps[0]), float(state.halted[0])
        else:  # an ALU, or a chain of programs (no one program's run to follow)
            outputs = computer(inputs)
        probs = model.head(outputs)  # (1, length, *shape)
        prediction = encoding.decode(probs)
        nll, _ = answer_nll(probs, prediction, encoding)
    finally:
        model.train(was_training)
    fmt = answer_format(model)
    numbers = encoding.to_ints(probs[0])
    parse, choices = {}, {}
    for target in model.parser.targets:
        p = parsed[target.name][0]  # (count, *shape)
        if target.classes is None:
            parse[target.name] = {"values": encoding.to_ints(p),
                                  "probability": [round(float(c), 6) for c in confidence(p, encoding)]}
        else:  # one choice, or one per chain step ("program 1", "program 2", ...)
            names = _choice_names(computer, target)
            for k, step in enumerate(p):
                key = target.name if len(p) == 1 else f"{target.name} {k + 1}"
                choices[key] = [(names[i], round(float(step[i]), 6)) for i in step.argsort(descending=True).tolist()]
    return Explanation(question=question, answer=render_answer(numbers, fmt, read_places(model.head, outputs, 1)[0]),
                       answer_numbers=numbers,
                       answer_probability=float(torch.exp(-nll[0])), parse=parse, choices=choices, steps=steps,
                       halted=halted, decided=decide, answer_format=fmt,
                       record=recorder.record() if (record and recorder is not None) else None)


def _choice_names(computer: Any, target: Any) -> list[str]:
    if target.name in ("program", "chain") and hasattr(computer, "programs"):
        return chain_names(computer.programs, computer.steps, target.name)
    if target.name == "op":
        return list(computer.alu.ops)
    if target.name == "readout" and getattr(computer, "readouts", ()):
        return list(computer.readouts)
    return [str(k) for k in range(target.classes)]
