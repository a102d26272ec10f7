"""The paper's minimal network (§4.1): one-hot numbers in, one layer before the computer, one after.

Nothing in it depends on the size of the encoding, so the same trained
weights drive a base-128 table or a 32-bit circuit after a swap:

- *before*: each number the computer needs (an operand, a register, a memory
  cell) is a learned softmax mixture over the question's number slots and a
  constant zero, applied to the numbers encoded in the computer's encoding
  (the network "learns the correct permutation"); the op is chosen by a
  learned layer over the question's op one-hot, the program by learned
  logits;
- *after*: each answer number is a learned mixture over the computer's
  outputs and the input slots (:class:`~diffcomp.model.heads.MixtureHead`).

Every softmax reads ``sharpness * weights``: the same optimiser steps move
the logits ``sharpness`` times further, so the routing becomes nearly one-hot
within a few epochs.

How the routes train is ``routing``:

- ``"mix"`` (the paper's): the computer reads each route's softmax mixture of
  the sources, and the routes learn by backpropagation through it. The
  computer treats its inputs as independent distributions, so a mixture can
  score answers no single routing gives: with ``r0 = b`` and ``r1`` split
  evenly between ``a`` and ``b``, a depth-3 Fibonacci run puts half its mass
  on the right answer ``a + 2b`` through the cross terms ``(a + b) + b`` and
  ``2b + a``, and that half is a stationary point where training stops
  (Table 1's traps).
- ``"sample"``: in training, each example draws its routes from the routing
  softmaxes, the computer runs on those exact numbers, and the routing
  weights learn by the score-function (REINFORCE) estimator with a
  leave-one-out baseline, an unbiased gradient of the expected loss
  ``E_routes[-log P(answer | routes)]``, which no mixture can game. The op
  and program choices and the head still mix and learn by backpropagation.
  The loss reported is the sampled routes' cross-entropy.

In evaluation (``model.eval()``) the network acts on its
decisions: each mixture becomes its most likely choice
(``decide_at_eval``). That matters after a swap: a 32-bit circuit multiplies
every bit's doubt through its carry chains, so a mixture that is right at
99.99% per slot can still flip a product.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .augmented import ComputerModel
from .computer import Computer
from .heads import MixtureHead, Output, answer_output, choose
from .tasks import Task

#: how the routes train: a softmax mixture (backpropagation) or a sample per example (score function)
ROUTINGS = ("mix", "sample")


class MinimalNetwork(ComputerModel):
    """``forward(batch)`` reads ``batch["numbers"]`` ``(batch, slots)`` and ``batch["op"]`` ``(batch,)``."""

    def __init__(self, computer: Computer, *, slots: int, answer_length: int, task_ops: Sequence[str] = (),
                 seed: int = 0, sharpness: float = 10.0, decide_at_eval: bool = True, routing: str = "mix") -> None:
        super().__init__()
        if routing not in ROUTINGS:
            raise ValueError(f"the minimal network: routing must be one of {', '.join(map(repr, ROUTINGS))}, "
                             f"got {routing!r}")
        self.routing = routing
        self.computer = computer
        self.decide_at_eval = decide_at_eval
        self.slots, self.answer_length, self.task_ops = slots, answer_length, tuple(task_ops)
        self.sharpness = sharpness
        g = torch.Generator().manual_seed(seed)
        scale = 0.1 / sharpness  # initial logits of about +-0.1: nearly uniform, symmetry broken
        sources = slots + 1  # the question's numbers and a constant zero
        self.routes = nn.ParameterDict()
        self.choices = nn.ParameterDict()
        for t in computer.targets():
            if t.classes is None:
                self.routes[t.name] = nn.Parameter(scale * torch.randn(t.count, sources, generator=g))
            elif t.name == "op":  # op scores from the op one-hot: (alu ops, task ops)
                self.choices[t.name] = nn.Parameter(scale * torch.randn(t.classes, len(self.task_ops), generator=g))
            else:
                self.choices[t.name] = nn.Parameter(scale * torch.randn(t.count, t.classes, generator=g))
        outputs = sum(count for _, count in computer.outputs())
        self.head = MixtureHead(outputs + sources, answer_length, generator=g, sharpness=sharpness)
        self._op_columns: list[int] = list(range(len(self.task_ops)))

    def forward(self, batch: dict[str, torch.Tensor]) -> Output:
        probs, log_q = self._answer(batch, sample=self.training and self.routing == "sample")
        return answer_output(probs, batch["answer"], self.encoding, log_q=log_q)

    def answer_distribution(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._answer(batch, sample=self.training and self.routing == "sample")[0]

    def _answer(self, batch: dict[str, torch.Tensor], *, sample: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The answer distribution, and with ``sample`` each example's ``log q(routes)`` ``(batch,)``."""
        encoding = self.encoding
        device = self.head.weights.device
        numbers = batch["numbers"].to(device)  # (batch, slots)
        if numbers.shape[1] != self.slots:
            raise ValueError(f"the minimal network was built for {self.slots} number slots, got {numbers.shape[1]}")
        x = encoding.encode(numbers, device=device)  # (batch, slots, *shape)
        zero = encoding.encode(torch.zeros_like(numbers[:, :1]), device=device)  # (batch, 1, *shape)
        sources = torch.cat([x, zero], dim=1)  # (batch, slots + 1, *shape)
        hard = self.decide_at_eval and not self.training  # evaluate the trained network's decisions
        inputs, log_q = {}, None
        for name, route in self.routes.items():
            if sample:
                weights, log_p = _sample(self.sharpness * route, numbers.shape[0])  # (batch, count, sources)
                log_q = log_p if log_q is None else log_q + log_p
                inputs[name] = torch.einsum("bcs,bs...->bc...", weights, sources)
            else:
                inputs[name] = torch.einsum("cs,bs...->bc...", choose(self.sharpness * route, hard), sources)
        for name, scores in self.choices.items():
            scores = self.sharpness * scores
            if name == "op":
                columns = torch.as_tensor(self._op_columns, device=device)[batch["op"].to(device)]
                inputs[name] = choose(scores[:, columns].T, hard).unsqueeze(1)  # (batch, 1, alu ops)
            else:
                inputs[name] = choose(scores, hard).expand(numbers.shape[0], *scores.shape)  # (batch, count, classes)
        outputs = self.computer(inputs)
        candidates = torch.cat([outputs[name] for name, _ in self.computer.outputs()] + [sources], dim=1)
        return self.head(candidates, hard=hard), log_q

    def check_encoding_change(self, encoding) -> None:
        """Any encoding: the network routes encoded numbers without looking inside them."""

    def check_task(self, task: Task) -> None:
        super().check_task(task)
        if task.slots != self.slots:
            raise ValueError(f"task {task.name!r} has {task.slots} number slots; this minimal network routes "
                             f"{self.slots}")
        if task.answer_length != self.answer_length:
            raise ValueError(f"task {task.name!r} answers with {task.answer_length} numbers; this minimal network's "
                             f"head reads {self.answer_length}")
        unknown = [op for op in task.ops if op not in self.task_ops]
        if unknown:
            raise ValueError(f"task {task.name!r} asks for op(s) {', '.join(unknown)} that this network never "
                             f"learned to select; it learned {', '.join(self.task_ops)}")

    def adapt_to_task(self, task: Task) -> None:
        self.check_task(task)
        self._op_columns = [self.task_ops.index(op) for op in task.ops]


def _sample(logits: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One draw per example from ``softmax(logits)`` ``(count, sources)``: one-hot ``(batch, count, sources)``,
    and the draws' summed log-probabilities ``(batch,)`` (differentiable in ``logits``)."""
    log_p = logits.log_softmax(-1)  # (count, sources)
    drawn = torch.multinomial(log_p.detach().exp(), batch, replacement=True).T  # (batch, count)
    weights = torch.nn.functional.one_hot(drawn, logits.shape[-1]).to(logits.dtype)
    return weights, (weights * log_p).sum((-1, -2))
