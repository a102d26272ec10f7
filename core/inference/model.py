"""A saved model answered with NumPy alone: no torch, no model built.

:class:`NumpyModel` reads a saved model folder (``config.json`` and
``model.safetensors``, through safetensors' NumPy API) and answers decided
questions as :meth:`diffcomp.model.AugmentedModel.ask` does: the tokenizer,
the backbone (:mod:`.llama`), the parser's decided reads (:mod:`.parsers`),
the machine on integers (:func:`diffcomp.machine.exact.run_ints`, the one the
torch machine runs decided inputs on), and the readout. It answers what
:func:`supports` accepts; :mod:`diffcomp.inference` sends anything else to
the torch model.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..model.explanation import Explanation, chain_names
from ..model.saved import (CONFIG_FILE, WEIGHTS_FILE, PretrainedError, TaskShape, assemble_library, grown_sizes,
                           read_config, render_answer)
from . import parsers
from .llama import Llama

#: questions answered per forward pass (as the torch model's ask)
BATCH = 64
#: the tokenizers read here: the built-in ones that need no files
TOKENIZERS = ("byte", "words")


class Unsupported(Exception):
    """The NumPy engine does not answer this model (the message says why); the torch model does."""


def supports(config: dict[str, Any]) -> str | None:
    """Why the NumPy engine cannot answer the model ``config`` describes (``None``: it can)."""
    from ..model.llama_config import supported

    face = config.get("interface")
    recipe = config.get("recipe", {})
    m, c = recipe.get("model", {}), recipe.get("computer", {})
    swaps = config.get("swaps") or []
    if not isinstance(face, dict):
        return "its config.json does not describe the computer's interface (saved by an older diffcomp)"
    names = face.get("names", {})
    current = {"alu": swaps[-1].get("alu") if swaps else c.get("alu"), "parser": m.get("parser"),
               "tokenizer": m.get("tokenizer")}
    if names != current:
        return f"its recipe names {current}, but its interface was recorded for {names}"
    if m.get("backbone") != "llama" or not supported(config.get("backbone_config") or {}):
        return "its backbone is not a plain LLaMA"
    if face.get("tokenizer") not in TOKENIZERS:
        return f"its tokenizer {face.get('tokenizer')!r} is not one of {', '.join(TOKENIZERS)}"
    if names["parser"] not in parsers.PARSERS:
        return f"its parser {names['parser']!r} is not one of {', '.join(parsers.PARSERS)}"
    unread = sorted(set(m.get("parser_options") or {}) - set(face.get("parser_options") or {})
                    - parsers.TRAINING_OPTIONS)
    if unread:
        return f"its parser options {', '.join(unread)} were not recorded with its interface (saved by an older diffcomp)"
    if (m.get("parser_options") or {}).get("blank_spans"):
        return "its parser reads the question a second time with the string blanked (blank_spans)"
    if face["encoding"]["kind"] != "unit":
        return f"its numbers are {face['encoding']['kind']}-encoded (the NumPy engine reads unit-encoded ones)"
    if not face["exact"]:
        return "its machine does not run decided inputs exactly on integers (a trainable program or ALU)"
    if c.get("decision", "chain") != "chain":
        return f"it decides its chain by pooling the chains that answer alike (decision = {c['decision']!r})"
    if not face["decided"]:
        return "it answers on the parser's distributions (decide_at_eval is off)"
    return None


class NumpyModel:
    """``NumpyModel(folder)``: ``ask(questions)`` as the torch model answers them, decided, with NumPy."""

    engine = "numpy"

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = folder = Path(folder)
        config = read_config(folder)
        try:
            why = supports(config)
            if why is None:
                self._read(config)
        except (KeyError, TypeError, IndexError, AttributeError) as exc:  # an entry missing or of the wrong type
            why = f"its config.json does not say what the NumPy engine reads ({type(exc).__name__}: {exc})"
        if why is not None:
            raise Unsupported(f"{folder}: the NumPy engine does not answer this model: {why}")

    def _read(self, config: dict[str, Any]) -> None:
        from ..model.llama_config import LlamaSettings
        from ..model.tokenizers import load_tokenizer

        folder = self.folder
        source = folder / CONFIG_FILE
        self.config, face = config, config["interface"]
        self.task = TaskShape.from_dict(config["task"], source)
        m = config["recipe"]["model"]
        self.parser, self.options = m["parser"], face["parser_options"]
        self.targets = [(name, count, classes) for name, count, classes in face["targets"]]
        self.modulus, self.face = int(face["encoding"]["modulus"]), face
        self.tokenizer = load_tokenizer(face["tokenizer"])
        settings = LlamaSettings.from_dict(config["backbone_config"])
        self.weights = _read_weights(folder / WEIGHTS_FILE)
        self.backbone = Llama(settings, self.weights, "backbone.model.")
        width = {name: classes or self.modulus for name, _, classes in self.targets}
        expected = {**{"backbone.model." + k: v for k, v in self.backbone.shapes().items()},
                    **{"parser." + k: v for k, v in parsers.shapes(self.parser, self.options, self.targets,
                                                                   settings.hidden_size, width).items()}}
        _check_shapes(self.weights, expected, folder / WEIGHTS_FILE)
        self.reader = parsers.Weights(self.weights)
        self.programs = assemble_library(config.get("library") or {}, source)
        sizes = config.get("sizes", {})
        self.cells = int(sizes.get("cells", self.task.cells))
        self.max_steps = int(sizes.get("max_steps", self.task.max_steps))
        #: a memory address beyond the cells: "wrap" or "zero", as the model's machine takes it
        self.addressing = config["recipe"].get("computer", {}).get("addressing", "wrap")
        self.answer_length = int(sizes.get("answer_length", self.task.answer_length))
        self._machine = None

    # -- the machine --------------------------------------------------------------------------------

    def machine(self):
        """The library linked as the torch model's machine links it, as integer arrays (built once)."""
        if self._machine is None:
            from ..machine.exact import Program, alu_ops
            from ..machine.library import Library
            from ..registry import lookup

            library = Library(self.programs.values(), registered=False)
            image = library.link(self.face["entry_points"], modulus=self.modulus, registers=self.face["registers"])
            self._machine = Program(image, [lookup("op", op) for op in alu_ops(image)], self.modulus)
        return self._machine

    def run(self, registers: np.ndarray, memory: np.ndarray, programs: np.ndarray):
        """The chain of ``programs`` ``(batch, steps)`` (indices into the entry points) from the parse: the final
        general registers and memory, and the last program's :class:`~diffcomp.machine.exact.Run`."""
        from ..machine.exact import run_ints

        P = self.machine()
        entries = np.array([P.image.entries[name] for name in self.face["entry_points"]], dtype=np.int64)
        n = self.face["registers"]
        for k in range(programs.shape[1]):
            final = run_ints(P, registers, memory, entries[programs[:, k]], general=n, cells=self.cells,
                             max_steps=self.max_steps, index=np.remainder, addressing=self.addressing)
            registers, memory = final.registers[:, :n], final.memory
        return registers, memory, final

    # -- answering ----------------------------------------------------------------------------------

    def ask(self, questions: str | list[str]) -> Any:
        """The answers to ``questions`` (one answer for one string, a list for a list), as the user writes them."""
        single = isinstance(questions, str)
        questions = [questions] if single else list(questions)
        if not all(isinstance(q, str) for q in questions):
            raise ValueError(f"questions must be strings, got {questions!r}")
        answers: list[Any] = []
        for i in range(0, len(questions), BATCH):
            parsed = self.parse(questions[i:i + BATCH])
            numbers, places = self._answer(parsed)[0].tolist(), self._places(parsed)
            answers.extend(render_answer(row, self.task.answer_format, place) for row, place in zip(numbers, places))
        return answers[0] if single else answers

    def answers(self, questions: list[str]) -> list[list[int]]:
        """Each question's answer as numbers."""
        return self._answer(self.parse(questions))[0].tolist()

    def _places(self, parsed: dict[str, np.ndarray]) -> list[str | None]:
        """Where each answer is read: a learned readout's decided place, else ``None``."""
        places = self.face["readout"].get("places")
        if places is None:
            return [None] * len(parsed["memory"])
        return [places[k] for k in parsed["readout"][:, 0].argmax(-1).tolist()]

    def parse(self, questions: list[str]) -> dict[str, np.ndarray]:
        """The parser's distributions ``{target: (batch, count, width)}`` (memory grown to fit, as ask does)."""
        ids, mask = self.tokenize(questions)
        self.fit_to(int(mask.sum(1).max()))
        return parsers.read(self.parser, self.options, self.targets, self.reader, self.backbone(ids, mask), mask,
                            self.backbone.embed(ids), self.modulus)

    def _answer(self, parsed: dict[str, np.ndarray]):
        """The answers ``(batch, length)`` from the parse's decisions, and the machine's last run."""
        decided = {name: p.argmax(-1) for name, p in parsed.items()}  # (batch, count)
        batch, n = len(decided["memory"]), self.face["registers"]
        registers = np.zeros((batch, n), dtype=np.int64)
        if "registers" in decided:  # every register, or the arguments only (the others start at 0)
            where = self.face["arguments"]
            registers[:, list(range(decided["registers"].shape[1])) if where is None else where] = decided["registers"]
        if "chain" in decided:  # one choice over whole chains: its programs, the first step the most significant
            n, steps = len(self.face["entry_points"]), self.face["steps"]
            programs = np.stack(np.unravel_index(decided["chain"][:, 0], (n,) * steps), 1)
        else:
            programs = decided["program"]
        registers, memory, final = self.run(registers, decided["memory"], programs)
        readout = self.face["readout"]
        if "places" in readout:  # the place the parser chose: memory, or a register then zeros
            out = np.zeros((batch, self.answer_length), dtype=np.int64)
            for row, name in enumerate(self._places(parsed)):
                if name == "memory":
                    out[row] = memory[row, : self.answer_length]
                else:
                    out[row, 0] = registers[row, int(name[1:])]
            return out, final
        found = memory if readout["source"] == "memory" else registers
        start = readout["start"]
        if found.shape[1] < start + self.answer_length:
            raise ValueError(f"the answer needs {readout['source']}[{start}:{start + self.answer_length}], but the "
                             f"computer has only {found.shape[1]} {readout['source']}")
        return found[:, start: start + self.answer_length], final

    @property
    def explains(self) -> str | None:
        """Why :meth:`explain` cannot say what this model did (``None``: it can), as the torch model's cannot."""
        if self.face["steps"] != 1:
            return f"this computer chains {self.face['steps']} programs; an explanation follows one program"
        if "places" in self.face["readout"]:
            return "its answer is read from a place the model chooses (a learned readout)"
        return None

    def explain(self, question: str, *, decide: bool | None = None, record: bool = False) -> Explanation:
        """What happened on ``question``, decided: the parse, the program chosen, the machine's steps; as the
        torch model's ``explain(question)``. A soft run (``decide=False``) and a recorded one (``record``, for
        a plot) need the torch model."""
        if decide is False or record:
            raise ValueError("the NumPy engine runs decided and records nothing: a soft run or a plot needs the "
                             "torch model")
        if not isinstance(question, str):
            raise ValueError(f"explain() takes one question (a string), got {type(question).__name__}")
        if self.explains is not None:
            raise ValueError(f"the NumPy engine cannot explain this model: {self.explains}")
        parsed = self.parse([question])
        answer, final = self._answer(parsed)
        numbers = answer[0].tolist()
        parse, choices = {}, {}
        for name, _, classes in self.targets:
            p = parsed[name][0]  # (count, width)
            if classes is None:
                parse[name] = {"values": p.argmax(-1).tolist(), "probability": [round(float(c), 6) for c in p.max(-1)]}
            else:
                names = chain_names(self.face["entry_points"], self.face["steps"], name) or [
                    str(k) for k in range(classes)]
                choices[name] = [(names[k], round(float(p[0, k]), 6)) for k in np.argsort(-p[0], kind="stable")]
        fmt = self.task.answer_format
        # a decided run's output is exact: every number of the answer has probability 1
        return Explanation(question=question, answer=render_answer(numbers, fmt), answer_numbers=numbers,
                           answer_probability=1.0, parse=parse, choices=choices, steps=int(final.steps[0]),
                           halted=float(final.halted[0]), decided=True, answer_format=fmt)

    def fit_to(self, tokens: int) -> None:
        """Room for questions of ``tokens`` tokens, as :func:`diffcomp.model.answers.fit_to` makes it."""
        readout = self.face["readout"]
        chosen = "memory" in readout.get("places", ())
        if not chosen and (self.task.answer_format != "text" or readout.get("source") != "memory"):
            return
        grown = grown_sizes(self.cells, self.max_steps, tokens)
        if grown is not None and self.parser == "span" and "memory" in self.options.get("spans", ()):
            self.cells, self.max_steps = grown
            self.targets = [(name, self.cells if name == "memory" else count, classes)
                            for name, count, classes in self.targets]
        self.answer_length = self.cells - (0 if chosen else readout["start"])

    def tokenize(self, questions: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, mask)``, ``(batch, seq)`` int64, right-padded."""
        rows = []
        for q in questions:
            if "\0" in q:
                raise ValueError(f"question {q!r} contains a NUL byte, which pads questions")
            rows.append(self.tokenizer.tokenize(q))
        width = max(len(r) for r in rows)
        ids = np.full((len(rows), width), self.tokenizer.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, row in enumerate(rows):
            ids[i, : len(row)], mask[i, : len(row)] = row, 1
        return ids, mask

    def hidden_states(self, questions: list[str]) -> np.ndarray:
        """The backbone's states ``(batch, seq, hidden)`` (what the parser reads)."""
        ids, mask = self.tokenize(questions)
        return self.backbone(ids, mask)

    def __repr__(self) -> str:
        return f"NumpyModel({str(self.folder)!r})"


def _read_weights(path: Path) -> dict[str, np.ndarray]:
    """The tensors of ``model.safetensors`` as float32 arrays; never unpickles."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    if not path.is_file():
        raise PretrainedError(f"{path}: no such file; a saved model folder holds {WEIGHTS_FILE} beside {CONFIG_FILE}")
    try:
        return {k: v.astype(np.float32, copy=False) for k, v in load_file(str(path)).items()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise PretrainedError(f"{path} is not a readable safetensors file: {exc}") from None


def _check_shapes(weights: dict[str, np.ndarray], expected: dict[str, tuple[int, ...]], path: Path) -> None:
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong = [f"{k} {tuple(weights[k].shape)} (expected {v})" for k, v in expected.items()
             if k in weights and tuple(weights[k].shape) != tuple(v)]
    if missing or unexpected or wrong:
        parts = [f"missing {', '.join(missing)}" if missing else "",
                 f"unexpected {', '.join(unexpected)}" if unexpected else "",
                 f"shapes differ: {'; '.join(wrong)}" if wrong else ""]
        raise PretrainedError(f"{path} does not fit this model: {'; '.join(p for p in parts if p)}")
