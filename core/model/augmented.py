"""The augmented language model (paper §3.4, Fig. 1).

A backbone reads the tokenized question; a parser turns its hidden states into
the computer's inputs (one-hot classifications of operands, registers and
memory, and a program or op selection); the computer runs; an answer head
reads the result. ``forward(batch) -> Output`` with ``loss`` the cross-entropy
of the answer alone.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..alu import ALU
from ..encodings import NumberEncoding
from .computer import Computer
from .heads import (ChosenReadout, Output, Readout, answer_output, marginal_output, mixture_output,
                    right_chains)
from .parsers import decide as decide_parse
from .pretrained import PretrainedMixin
from .tasks import Task


class ComputerModel(PretrainedMixin, nn.Module):
    """What every model around a computer shares: the swap, checking a task fits, saving and loading.

    Subclasses set ``self.computer`` and implement :meth:`answer_distribution`.
    ``save_pretrained(dir)`` and ``from_pretrained(dir)`` (Hugging Face's
    layout, :mod:`diffcomp.model.pretrained`) work for a model built by
    :func:`~diffcomp.model.build_model`.
    """

    computer: Computer

    def answer_distribution(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(batch, answer_length, *encoding.shape)`` probabilities."""
        raise NotImplementedError

    @property
    def encoding(self) -> NumberEncoding:
        return self.computer.encoding

    def forward(self, batch: dict[str, torch.Tensor]) -> Output:
        return answer_output(self.answer_distribution(batch), batch["answer"], self.encoding)

    # -- asking -------------------------------------------------------------------------

    def ask(self, questions: str | Sequence[str]) -> Any:
        """The model's answers, as the user would write them (a sorted string, a number): a list for a list of
        questions, one answer for one question (a string).

        See :func:`diffcomp.model.answers.ask`; ``explain(question)`` says how each was reached.
        """
        from .answers import ask

        return ask(self, questions)

    def explain(self, question: str, *, decide: bool | None = None, record: bool = False):
        """What happened on ``question``: parse, programs, machine steps, answer probability.

        See :func:`diffcomp.model.answers.explain`.
        """
        from .answers import explain

        return explain(self, question, decide=decide, record=record)

    def evaluation_outputs(self, batch: dict[str, torch.Tensor]) -> dict[str, Output]:
        """Both evaluations of ``batch`` (in eval mode): ``{"decided": Output, "soft": Output}``.

        *decided*: the computer runs on the model's most likely choices (as
        ``decide_at_eval`` makes ``forward`` do); *soft*: on the
        distributions, as in training, the answer being the most likely value
        of the final distribution. What the trainer logs as ``accuracy`` and
        ``soft_accuracy``, whatever ``decide_at_eval`` says.
        """
        saved = getattr(self, "decide_at_eval", True)
        try:
            outputs = {}
            for mode, decide in (("decided", True), ("soft", False)):
                self.decide_at_eval = decide
                outputs[mode] = self(batch)
            return outputs
        finally:
            self.decide_at_eval = saved

    # -- the swap (paper §4.1) -------------------------------------------------------

    def swap_alu(self, name: str, keep_encoding: bool = True, **options: Any) -> ALU:
        """Replace the computer's ALU by the registered ALU ``name`` (same ops), via :func:`diffcomp.swap`.

        ``keep_encoding=True`` keeps the model's encoding (the new ALU runs
        behind converters); ``False`` adopts the new ALU's own encoding, which
        only a model whose layers do not depend on the encoding's size (the
        minimal network) can do. Returns the ALU now in use.
        """
        from ..alu import alu as build_alu
        from ..swap import swap

        old = self.computer.alu
        if old is None:
            raise ValueError("this model has no computer ([computer] kind = 'none'), so it has no ALU to swap")
        if keep_encoding:
            new = swap(old, name, **options)
        else:
            native = build_alu(name, ops=old.ops, **options).encoding
            self.check_encoding_change(native)
            new = swap(old, name, encoding=native, **options)
        device = next((p.device for p in self.parameters()), torch.device("cpu"))
        self.computer.replace_alu(new.to(device))
        self.swaps = [*getattr(self, "swaps", []), {"alu": name, "keep_encoding": keep_encoding, **options}]
        return new

    def check_encoding_change(self, encoding: NumberEncoding) -> None:
        """``ValueError`` unless the model can speak ``encoding`` after a swap."""
        if encoding.shape != self.encoding.shape:
            raise ValueError(f"{type(self).__name__} classifies numbers in {self.encoding}, so its weights "
                             f"cannot drive {encoding}; swap with keep_encoding=True (the recipe's "
                             "encoding = 'model') to run the new ALU behind converters")

    # -- tasks ---------------------------------------------------------------------

    def check_task(self, task: Task) -> None:
        """``ValueError`` naming what is missing if this model cannot answer ``task``."""
        if self.computer.alu is None:  # no computer: the parser answers, as many numbers as it was built for
            length = getattr(self.computer, "length", task.answer_length)
            if task.answer_length > length:
                raise ValueError(f"task {task.name!r} has answers of {task.answer_length} numbers; this model "
                                 f"(no computer) classifies {length}: build it for the longest answer (the task's "
                                 "width)")
            return
        check_ops(task, self.computer.alu)
        if task.modulus != self.encoding.modulus:
            raise ValueError(f"task {task.name!r} has numbers and answers modulo {task.modulus}, but the computer's "
                             f"{self.encoding} holds numbers modulo {self.encoding.modulus}; build the task with "
                             f"{_modulus_options(self.encoding)} or the computer to match")

    def adapt_to_task(self, task: Task) -> None:
        """Check that ``task`` (e.g. the same task with bigger numbers) fits; used before evaluating on it."""
        self.check_task(task)


def check_ops(task: Task, alu: ALU) -> None:
    """``ValueError`` naming the ops ``task`` needs that ``alu`` lacks."""
    missing = [op for op in task.ops if op not in alu.ops]
    if missing:
        raise ValueError(f"task {task.name!r} needs the op(s) {', '.join(missing)}, which the "
                         f"{alu.name} ALU lacks; its ops: {', '.join(alu.ops)}")


def _same_chain(chosen: torch.Tensor, chain: torch.Tensor, programs: Sequence[str], task_programs: Sequence[str],
                places: Sequence[str] | None = None, alike=None) -> torch.Tensor:
    """``(batch,)`` bool: the programs run (``identity`` left out) are the task's chain, in order, or (given each
    question's answer ``places`` and ``alike(first, second, place)``, the computer's
    :meth:`~diffcomp.model.computer.MachineComputer.answers_alike`) a chain that leaves the same answer there
    on every input it is tried on: ``(insertion_sort, max)`` for a question that ``max`` answers in ``r0``.

    ``chosen`` indexes the model's ``programs``; ``chain`` the task's ``task_programs``.
    """
    def names(rows: torch.Tensor, table: Sequence[str]) -> list[tuple[str, ...]]:
        return [tuple(n for n in (table[i] for i in row) if n != "identity") for row in rows.tolist()]

    ours, theirs = names(chosen, programs), names(chain, task_programs)
    same = [a == b for a, b in zip(ours, theirs)]
    if places is not None and alike is not None:
        same = [s or bool(alike(a, b, place)) for s, a, b, place in zip(same, ours, theirs, places)]
    return torch.tensor(same, device=chosen.device)


def _modulus_options(encoding: NumberEncoding) -> str:
    return ", ".join(f"{key}={value!r}" for key, value in encoding.options.items())  # e.g. base=128, bits=32


class AugmentedModel(ComputerModel):
    """A transformer backbone + parser + computer + answer head, trained from answers alone.

    In evaluation (``model.eval()``) with ``decide_at_eval`` (the default)
    the computer runs on the parser's decisions, each distribution replaced by
    its most likely value (:func:`diffcomp.model.parsers.decide`); training
    runs on the distributions, which carry the gradients. A parser that draws
    some of its choices in training (its ``log_q`` set after a forward, e.g.
    the span parser's ``pointers="sample"``) trains them by the
    score-function gradient (:func:`diffcomp.model.heads.answer_output`).

    ``batch["text"]``: ``(batch, max_bytes)`` uint8 questions (see
    :func:`diffcomp.model.tokenizers.encode_texts`); ``batch["answer"]``:
    ``(batch, answer_length)`` int64.
    """

    def __init__(self, backbone: nn.Module, tokenizer: Any, parser: nn.Module, computer: Computer,
                 head: nn.Module, *, decide_at_eval: bool = True) -> None:
        super().__init__()
        if tokenizer.vocab_size > backbone.vocab_size:
            raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens but the backbone's embedding has "
                             f"{backbone.vocab_size} rows; use a tokenizer with at most {backbone.vocab_size} "
                             "tokens, or a backbone built for this tokenizer")
        self.backbone, self.tokenizer = backbone, tokenizer
        self.parser, self.computer, self.head = parser, computer, head
        self.decide_at_eval = decide_at_eval

    def forward(self, batch: dict[str, torch.Tensor]) -> Output:
        return self._output(batch, self.computer_outputs(batch))

    def _output(self, batch: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor]) -> Output:
        """The loss and correctness of the computer's ``outputs`` against ``batch["answer"]``."""
        samples = getattr(self.computer, "drawn", 1)  # draws per question in this forward
        log_q = None
        if self.training:  # what the parser (per question) and the computer (per draw) drew, if anything
            parser_q, computer_q = getattr(self.parser, "log_q", None), getattr(self.computer, "log_q", None)
            if parser_q is not None:
                log_q = parser_q.repeat_interleave(samples, 0)
            if computer_q is not None:
                log_q = computer_q if log_q is None else log_q + computer_q
        if "weight" in outputs:  # the marginal over each question's chains (selection = "marginal")
            # the chains are one mixture per question, not draws: only what the parser drew scores
            parser_q = getattr(self.parser, "log_q", None) if self.training else None
            out = marginal_output(self.head, outputs, batch["answer"], self.encoding, chains=samples, log_q=parser_q,
                                  argument_loss=getattr(self.computer, "argument_loss", 0.0),
                                  decided_argument_loss=getattr(self.computer, "decided_argument_loss", 0.0))
        elif isinstance(self.head, ChosenReadout):
            candidates, weights = self.head.candidates(outputs)
            out = mixture_output(candidates, weights, batch["answer"], self.encoding, log_q=log_q, samples=samples)
        else:
            out = answer_output(self.head(outputs), batch["answer"], self.encoding, log_q=log_q, samples=samples)
        chosen = getattr(self.computer, "chosen", None)
        entropy = getattr(self.computer, "entropy", None)
        if entropy is not None:  # the computer's bonus for open choices (training only)
            out.loss = out.loss - self.computer.explore * entropy
        task_programs = getattr(self, "task_programs", ())
        if chosen is not None and "chain" in batch and task_programs:  # the task's own programs: reported only
            places = getattr(self, "task_places", ())
            out.selection_correct = _same_chain(chosen, batch["chain"], self.computer.programs, task_programs,
                                                places=[places[g] for g in batch["group"].tolist()]
                                                if places and "group" in batch else None,
                                                alike=getattr(self.computer, "answers_alike", None))
        return out

    def evaluation_outputs(self, batch: dict[str, torch.Tensor]) -> dict[str, Output]:
        """``{"decided": Output, "soft": Output}`` (see :meth:`ComputerModel.evaluation_outputs`), the question
        read by the backbone once."""
        features = self.read(batch)
        outputs = {}
        for mode, decide in (("decided", True), ("soft", False)):
            parsed = self.parse(features, decide=decide)
            outputs[mode] = self._output(batch, self.compute(parsed, decide=decide))
        return outputs

    def answer_distribution(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.computer_outputs(batch))

    def computer_outputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The computer's named outputs for ``batch`` (what the answer head reads); in evaluation with
        ``decide_at_eval``, the computer runs on the parser's decisions."""
        decide = self.decide_at_eval and not self.training
        answer = batch.get("answer") if self.training else None
        return self.compute(self.parse(self.read(batch), decide=decide), decide=decide, answer=answer)

    def compute(self, parsed: dict[str, torch.Tensor], *, decide: bool = False,
                answer: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The computer's named outputs from the parser's; ``decide``: run the computer on its decisions.
        ``answer`` ``(batch, length)`` (training): the computer may ask which of its runs answer it, as
        :attr:`head` reads them (:func:`~diffcomp.model.heads.right_chains`)."""
        right = None if answer is None else functools.partial(right_chains, self.head, answer=answer,
                                                               encoding=self.encoding)
        return self.computer(self.decide(parsed) if decide else parsed, right=right)

    def decide(self, parsed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each parsed distribution replaced by its most likely value (:func:`~diffcomp.model.parsers.decide`)."""
        targets = {t.name: t for t in self.parser.targets}
        decided = {name: decide_parse(p, targets[name], self.encoding) for name, p in parsed.items()}
        pooled = getattr(self.computer, "decide_chain", None)  # a computer may decide its chain otherwise
        return {**decided, **pooled(parsed, decided)} if pooled is not None else decided

    def read(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The backbone's reading of ``batch["text"]``: states ``(batch, seq, hidden)``, the mask ``(batch, seq)``,
        and the token embeddings for a parser that reads them (else ``None``); the token ids as ``.ids``."""
        device = next(self.backbone.parameters()).device
        ids, mask = self.tokenizer.from_bytes(batch["text"])
        return self._read_ids(ids.to(device), mask.to(device))

    def _read_ids(self, ids: torch.Tensor, mask: torch.Tensor) -> "Features":
        hidden = self.backbone(ids, mask)  # (batch, seq, hidden)
        embeddings = self.backbone.embed(ids) if getattr(self.parser, "reads_embeddings", False) else None
        return Features(hidden, mask, embeddings, ids)

    def parse(self, features: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None], *,
              decide: bool = False) -> dict[str, torch.Tensor]:
        """The parser's distributions ``{target: (batch, count, *shape)}`` from :meth:`read`'s features;
        ``decide``: in evaluation, choices the parser draws in training take their most likely value."""
        hidden, mask, embeddings = features
        saved = getattr(self.parser, "decide_choices", True)
        self.parser.decide_choices = decide
        if getattr(self.parser, "rereads", False):
            ids = getattr(features, "ids", None)
            if ids is None:
                raise ValueError("this parser reads the question twice (blank_spans): give parse() what read() "
                                 "returns, which carries the token ids")
            self.parser.reread = functools.partial(self.reread_blanked, ids, mask)
        try:
            if embeddings is not None:  # a parser whose values read the tokens themselves
                return self.parser(hidden, mask, embeddings=embeddings)
            return self.parser(hidden, mask)
        finally:
            self.parser.decide_choices = saved
            self.parser.reread = None

    def reread_blanked(self, ids: torch.Tensor, mask: torch.Tensor, start: torch.Tensor, end: torch.Tensor
                       ) -> "Features":
        """The backbone's reading of the questions ``ids`` ``(batch, seq)`` with tokens ``start .. end - 1``
        (``(batch,)`` positions; none where ``end <= start``) replaced by one placeholder token (``_``): a
        question whose string is a single token, whatever its letters and length."""
        ids2, mask2 = blank_tokens(ids, mask, start, end, self._placeholder, self.tokenizer.pad_id)
        return self._read_ids(ids2, mask2)

    @functools.cached_property
    def _placeholder(self) -> int:
        """The token that stands for a blanked span: the tokenizer's last token of ``"_"`` (found once)."""
        ids, mask = self.tokenizer(["_"])
        return int(ids[0, int(mask[0].sum()) - 1])

    def check_task(self, task: Task) -> None:
        if not task.text:
            raise ValueError(f"task {task.name!r} has no text (it is a one-hot task); a language model needs "
                             "questions in words: use the task without the one-hot option, or backbone 'minimal'")
        super().check_task(task)
        self.task_programs = tuple(task.programs)  # to report whether the model chose the task's chains
        self.task_places = tuple(getattr(task, "group_places", ()))  # and where each group's answer is read
        cells = getattr(self.computer, "cells", None)
        if task.uses_machine and cells is not None and task.cells > cells:
            raise ValueError(f"task {task.name!r} needs {task.cells} memory cells; this model's computer has {cells}: "
                             f"build it with [computer] cells = {task.cells} (room for the longest input any stage "
                             "uses) so the parser writes that many")

    def adapt_to_task(self, task: Task) -> None:
        """Check ``task`` fits, then read its whole answer and give the machine the steps it needs.

        A model answers a task with longer inputs than it trained on, e.g.
        strings of 16 characters after 8 to 12: the readout grows to the new
        answer length, and the machine's step limit rises to the task's (a run
        still stops as soon as every row has halted). A task that needs more
        memory cells than the model has gets them when the parser's cells
        share their weights (the span parser); other parsers need the model
        built with room to spare (``[computer] cells``).
        """
        cells = getattr(self.computer, "cells", None)
        if task.text and task.uses_machine and cells is not None and task.cells > cells:
            self.parser.resize("memory", task.cells)  # ValueError unless the parser's cells share weights
            self.computer.resize_memory(task.cells)
        self.check_task(task)
        if isinstance(self.head, (Readout, ChosenReadout)) and self.head.length != task.answer_length:
            self.head.length = task.answer_length
        machine = getattr(self.computer, "machine", None)
        if task.uses_machine and machine is not None and task.max_steps > machine.max_steps:
            machine.max_steps = task.max_steps


class Features(tuple):
    """What :meth:`AugmentedModel.read` returns: ``(hidden, mask, embeddings)``, with the token ids as ``ids``."""

    ids: torch.Tensor

    def __new__(cls, hidden: torch.Tensor, mask: torch.Tensor, embeddings: torch.Tensor | None,
                ids: torch.Tensor) -> "Features":
        features = super().__new__(cls, (hidden, mask, embeddings))
        features.ids = ids
        return features


def blank_tokens(ids: torch.Tensor, mask: torch.Tensor, start: torch.Tensor, end: torch.Tensor, placeholder: int,
                 pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``ids`` ``(batch, seq)`` (real tokens first, as ``mask`` says) with tokens ``start .. end - 1`` of each row
    replaced by the one token ``placeholder`` (inserted at ``start`` where ``end <= start``); padded with ``pad``
    to the longest row. Returns the new ids and mask."""
    batch, seq = ids.shape
    start = start.clamp(0, seq)
    removed = (end - start).clamp_min(0)
    position = torch.arange(seq, device=ids.device).expand(batch, -1)
    inside = (position >= start[:, None]) & (position < (start + removed)[:, None])
    kept = mask.bool() & ~inside
    moved = torch.where(position < start[:, None], position, position - removed[:, None] + 1)
    length = mask.sum(1) - inside.logical_and(mask.bool()).sum(1) + 1
    width = int(length.max())
    out = torch.full((batch, width), pad, dtype=ids.dtype, device=ids.device)
    rows, cols = kept.nonzero(as_tuple=True)
    out[rows, moved[rows, cols]] = ids[rows, cols]
    out[torch.arange(batch, device=ids.device), start.clamp_max(width - 1)] = placeholder
    return out, (torch.arange(width, device=ids.device) < length[:, None]).to(mask.dtype)
