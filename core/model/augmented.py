"""The augmented language model (paper §3.4, Fig. 1).

A backbone reads the tokenized question; a parser turns its hidden states into
the computer's inputs (one-hot classifications of operands, registers and
memory, and a program or op selection); the computer runs; an answer head
reads the result. ``forward(batch) -> Output`` with ``loss`` the cross-entropy
of the answer alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..alu import ALU
from ..encodings import NumberEncoding
from .computer import Computer
from .heads import Output, Readout, answer_output
from .parsers import decide as decide_parse
from .tasks import Task
from .tokenizers import encode_texts


class ComputerModel(nn.Module):
    """What every model around a computer shares: the swap, and checking a task fits.

    Subclasses set ``self.computer`` and implement :meth:`answer_distribution`.
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
        if keep_encoding:
            new = swap(old, name, **options)
        else:
            native = build_alu(name, ops=old.ops, **options).encoding
            self.check_encoding_change(native)
            new = swap(old, name, encoding=native, **options)
        device = next((p.device for p in self.parameters()), torch.device("cpu"))
        self.computer.replace_alu(new.to(device))
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


def _modulus_options(encoding: NumberEncoding) -> str:
    if encoding.kind == "binary":
        return f"bits={encoding.options['bits']}"
    if encoding.kind == "unit":
        return f"base={encoding.options['base']}"
    return str(dict(encoding.options))


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
        probs = self.answer_distribution(batch)
        log_q = getattr(self.parser, "log_q", None) if self.training else None  # what the parser drew, if any
        return answer_output(probs, batch["answer"], self.encoding, log_q=log_q)

    def evaluation_outputs(self, batch: dict[str, torch.Tensor]) -> dict[str, Output]:
        """``{"decided": Output, "soft": Output}`` (see :meth:`ComputerModel.evaluation_outputs`), the question
        read by the backbone once."""
        features = self.read(batch)
        outputs = {}
        for mode, decide in (("decided", True), ("soft", False)):
            parsed = self.parse(features, decide=decide)
            outputs[mode] = answer_output(self.compute(parsed, decide=decide), batch["answer"], self.encoding)
        return outputs

    def answer_distribution(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        decide = self.decide_at_eval and not self.training
        return self.compute(self.parse(self.read(batch), decide=decide), decide=decide)

    def compute(self, parsed: dict[str, torch.Tensor], *, decide: bool = False) -> torch.Tensor:
        """The answer distribution from the parser's output; ``decide``: run the computer on its decisions."""
        if decide:
            targets = {t.name: t for t in self.parser.targets}
            parsed = {name: decide_parse(p, targets[name], self.encoding) for name, p in parsed.items()}
        return self.head(self.computer(parsed))

    def read(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The backbone's reading of ``batch["text"]``: states ``(batch, seq, hidden)``, the mask ``(batch, seq)``,
        and the token embeddings for a parser that reads them (else ``None``)."""
        device = next(self.backbone.parameters()).device
        ids, mask = self.tokenizer.from_bytes(batch["text"])
        ids, mask = ids.to(device), mask.to(device)
        hidden = self.backbone(ids, mask)  # (batch, seq, hidden)
        embeddings = self.backbone.embed(ids) if getattr(self.parser, "reads_embeddings", False) else None
        return hidden, mask, embeddings

    def parse(self, features: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None], *,
              decide: bool = False) -> dict[str, torch.Tensor]:
        """The parser's distributions ``{target: (batch, count, *shape)}`` from :meth:`read`'s features;
        ``decide``: in evaluation, choices the parser draws in training take their most likely value."""
        hidden, mask, embeddings = features
        saved = getattr(self.parser, "decide_choices", True)
        self.parser.decide_choices = decide
        try:
            if embeddings is not None:  # a parser whose values read the tokens themselves
                return self.parser(hidden, mask, embeddings=embeddings)
            return self.parser(hidden, mask)
        finally:
            self.parser.decide_choices = saved

    def check_task(self, task: Task) -> None:
        if not task.text:
            raise ValueError(f"task {task.name!r} has no text (it is a one-hot task); a language model needs "
                             "questions in words: use the task without the one-hot option, or backbone 'minimal'")
        super().check_task(task)
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
        if isinstance(self.head, Readout) and self.head.length != task.answer_length:
            self.head.length = task.answer_length
        machine = getattr(self.computer, "machine", None)
        if task.uses_machine and machine is not None and task.max_steps > machine.max_steps:
            machine.max_steps = task.max_steps

    @torch.no_grad()
    def ask(self, questions: Sequence[str], answer_length: int | None = None) -> list[list[int]]:
        """The model's answers to questions in words: one list of ints per question."""
        batch = {"text": encode_texts(questions, max(len(q.encode("utf-8")) for q in questions))}
        prediction = self.encoding.decode(self.answer_distribution(batch))
        return prediction.tolist() if answer_length is None else prediction[:, :answer_length].tolist()
