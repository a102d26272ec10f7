"""Answer heads: the computer's result -> a distribution over answers, and the loss.

Only answers are supervised (paper §3.4): the loss is the cross-entropy of the
true answer under the distribution the computer produced, ``-log P(answer)``.
For a unit encoding that is ``-log p[answer]``; for a binary one the bits are
independent, so it is the sum of the bits' binary cross-entropies, which is
the same ``-log P(answer)`` under the product formula of appendix B.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import torch
from torch import nn

from ..encodings import NumberEncoding

#: added inside logarithms: probability mixtures can hold exact zeros
EPS = 1e-9


@attrs.define
class Output:
    """What a model's ``forward(batch)`` returns.

    ``loss``: scalar, the mean over the batch of ``-log P(answer)``;
    ``logits``: log-probabilities of each answer position — ``(batch, length, base)``
    for unit numbers, bit log-odds ``(batch, length, bits)`` for binary ones;
    ``correct``: ``(batch,)`` bool, every number of the answer right;
    ``prediction``: ``(batch, length)`` int64, the most likely answer;
    ``selection_correct``: ``(batch,)`` bool or ``None``, whether a model
    choosing programs ran the task's own (reported, never trained on).
    """

    loss: torch.Tensor
    logits: torch.Tensor
    correct: torch.Tensor
    prediction: torch.Tensor
    selection_correct: torch.Tensor | None = None


def answer_output(probs: torch.Tensor, answer: torch.Tensor, encoding: NumberEncoding, *,
                  log_q: torch.Tensor | None = None, samples: int = 1) -> Output:
    """Score ``probs`` ``(batch, length, *encoding.shape)`` against ``answer`` ``(batch, length)``.

    ``log_q`` ``(batch,)``: the log-probability of choices each example drew
    (a route, a pointer), differentiable in the weights that chose it. The
    loss then also carries their score-function (REINFORCE) gradient,
    ``mean((nll - b) * grad log_q)`` with ``b`` the mean ``nll`` of the
    *other* examples (a leave-one-out baseline, so the estimate of
    ``grad E[nll]`` stays unbiased); the loss's value is unchanged.

    ``samples > 1``: ``probs`` holds ``samples`` draws per question, one after
    another (``(batch * samples, ...)``; ``answer`` is per question). The
    baseline of a draw is then the mean ``nll`` of the *same question's*
    other draws, which takes out how hard each question is; ``correct`` and
    ``prediction`` are the first draw's.
    """
    nll, logits = answer_nll(probs, answer.repeat_interleave(samples, 0), encoding)
    prediction = encoding.decode(probs.detach())  # (batch, length)
    return _output(nll, logits, prediction, answer, encoding, log_q, samples)


def _output(nll: torch.Tensor, logits: torch.Tensor, prediction: torch.Tensor, answer: torch.Tensor,
            encoding: NumberEncoding, log_q: torch.Tensor | None, samples: int = 1) -> Output:
    """The loss ``mean(nll)``, plus the score-function term of ``log_q`` (see :func:`answer_output`)."""
    loss = nll.mean()
    if log_q is not None:
        drawn = nll.detach().view(-1, samples) if samples > 1 else nll.detach().view(1, -1)  # (groups, draws)
        n = drawn.shape[1]
        baseline = (drawn.sum(1, keepdim=True) - drawn) / (n - 1) if n > 1 else torch.zeros_like(drawn)
        surrogate = ((drawn - baseline).flatten() * log_q).mean()
        loss = loss + surrogate - surrogate.detach()
    if samples > 1:  # report the first draw of each question
        prediction, logits = prediction[::samples], logits[::samples]
    correct = (prediction == answer.to(prediction.device).remainder(encoding.modulus)).all(-1)
    return Output(loss=loss, logits=logits, correct=correct, prediction=prediction)


def mixture_output(candidates: torch.Tensor, weights: torch.Tensor, answer: torch.Tensor,
                   encoding: NumberEncoding, *, log_q: torch.Tensor | None = None, samples: int = 1) -> Output:
    """Score an answer read from one of several places, chosen by ``weights``.

    ``candidates`` ``(batch, places, length, *shape)``: the answer as each
    place holds it; ``weights`` ``(batch, places)``. The answer's probability
    is the mixture over *whole* answers, ``P = sum_c w_c P_c(answer)`` (not a
    mixture per number, under which a split choice could score answers no
    single place gives), so ``nll = -logsumexp_c(log w_c - nll_c)``. The
    prediction is the most likely place's answer; ``logits`` are that place's.
    ``log_q`` and ``samples``: as for :func:`answer_output`.
    """
    places = candidates.shape[1]
    answers = answer.repeat_interleave(samples, 0)
    per = [answer_nll(candidates[:, c], answers, encoding) for c in range(places)]
    nll_c = torch.stack([n for n, _ in per], 1)  # (batch, places)
    nll = -torch.logsumexp(torch.log(weights.clamp_min(EPS)) - nll_c, dim=1)
    best = weights.detach().argmax(1)  # (batch,)
    rows = torch.arange(candidates.shape[0], device=candidates.device)
    logits = torch.stack([lg for _, lg in per], 1)[rows, best]
    prediction = encoding.decode(candidates.detach()[rows, best])
    return _output(nll, logits, prediction, answer, encoding, log_q, samples)


def marginal_candidates(candidates: torch.Tensor, weights: torch.Tensor, chain_weight: torch.Tensor,
                        chains: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each question's answers over the chains it ran, for :func:`mixture_output`'s marginal over whole answers.

    ``candidates`` ``(batch * chains, places, length, *shape)`` and
    ``weights`` ``(batch * chains, places)``: a :class:`ChosenReadout`'s (or
    one place of weight 1), the ``chains`` rows of a question one after
    another; ``chain_weight`` ``(batch * chains,)``: each chain's probability.
    Returns ``(batch, chains * places, length, *shape)`` and the weights
    ``pi(chain) * w(place)`` ``(batch, chains * places)``, so that
    ``P(answer) = sum_c pi(c) sum_place w(place) P_{c, place}(answer)``.
    """
    rows, places = weights.shape
    if rows % chains or chain_weight.shape != (rows,):
        raise ValueError(f"{rows} rows of candidates and {tuple(chain_weight.shape)} chain weights do not make "
                         f"groups of {chains} chains per question")
    batch = rows // chains
    mixed = (weights * chain_weight.unsqueeze(1).to(weights.dtype)).reshape(batch, chains * places)
    return candidates.reshape(batch, chains * places, *candidates.shape[2:]), mixed


def marginal_output(head: nn.Module, outputs: dict[str, torch.Tensor], answer: torch.Tensor,
                    encoding: NumberEncoding, *, chains: int, log_q: torch.Tensor | None = None,
                    argument_loss: float = 0.0, decided_argument_loss: float = 0.0) -> Output:
    """Score a computer's ``selection = "marginal"`` outputs (see :class:`~diffcomp.model.computer.MachineComputer`).

    ``outputs`` hold ``chains`` rows per question and their weights
    (``weight``); ``head`` reads each row (a :class:`ChosenReadout`: each of
    its places). The loss is the marginal over whole answers
    (:func:`mixture_output` of :func:`marginal_candidates`), plus, when the
    computer also ran chains on the decided parse (output ``decided``, in
    training), :func:`right_choice_loss` over those (over ``searched`` where
    the computer also tried every value of the argument: its rows carry
    the probability of choosing them), and ``argument_loss`` times the same
    loss over the searched rows' ``argument_weight`` (the argument's own
    loss, over the chains that read it; see the computer's class doc), and
    ``decided_argument_loss`` times it over their ``decided_weight`` (the
    choice's loss with the argument at its decided value).
    Where the exact runs carry ``credit`` weights (``pi(c)^b`` per chain, the
    computer's ``credit_power`` ``b`` below 1), the choice's loss keeps its value but
    takes the gradient of ``-(1/b) log sum_{c right} (pi(c) w(place))^b``:
    each right chain's share of the credit is its probability to the power
    ``b``, renormalised (see the computer's class doc).
    """
    out = mixture_output(*chain_candidates(head, outputs, chains), answer, encoding, log_q=log_q)
    exact = outputs.get("searched", outputs.get("decided"))  # the runs the choice learns from
    if exact is not None:
        places = _place_candidates(head, exact)  # read once: the argument's loss weighs the same answers
        choice = right_choice_loss(*marginal_candidates(*places, exact["weight"], exact["chains"]), answer, encoding)
        if "credit" in exact:  # the value -log P(right), the gradient the shared credit's
            credit_power = exact["credit_power"]
            candidates, place_weight = places
            shared = right_choice_loss(*marginal_candidates(candidates, place_weight.clamp_min(EPS) ** credit_power,
                                                            exact["credit"], exact["chains"]), answer, encoding)
            choice = choice.detach() + (shared - shared.detach()) / credit_power
        out.loss = out.loss + choice
        if argument_loss and "argument_weight" in exact:
            own = marginal_candidates(*places, exact["argument_weight"], exact["chains"])
            out.loss = out.loss + argument_loss * right_choice_loss(*own, answer, encoding)
        if decided_argument_loss and "decided_weight" in exact:
            at_decided = marginal_candidates(*places, exact["decided_weight"], exact["chains"])
            out.loss = out.loss + decided_argument_loss * right_choice_loss(*at_decided, answer, encoding)
    return out


def chain_candidates(head: nn.Module, outputs: dict[str, torch.Tensor], chains: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each question's answers over the ``chains`` it ran and ``head``'s places, and their weights."""
    return marginal_candidates(*_place_candidates(head, outputs), outputs["weight"], chains)


def _place_candidates(head: nn.Module, outputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's answer at each of ``head``'s places, and the places' weights."""
    if isinstance(head, ChosenReadout):
        return head.candidates(outputs)
    candidates = head(outputs).unsqueeze(1)
    return candidates, candidates.new_ones(candidates.shape[:2])


def right_choice_loss(candidates: torch.Tensor, weights: torch.Tensor, answer: torch.Tensor,
                      encoding: NumberEncoding) -> torch.Tensor:
    """``-log`` of the probability of choosing a right answer, ``-log sum_{c right} w_c``, averaged over the batch.

    ``candidates`` ``(batch, choices, length, *shape)``: decided answers
    (one-hot), one per choice (a chain and a readout place, see
    :func:`marginal_candidates`); ``weights`` ``(batch, choices)`` their
    probabilities. A question none of whose candidates is right adds 0 (it
    says nothing about which to choose); a candidate of weight exactly 0
    (padding) is never chosen. Differentiable in ``weights`` only.
    """
    right = right_answers(candidates, answer, encoding) & (weights.detach() > 0)  # (batch, choices)
    log_w = torch.log(weights.clamp_min(EPS)).masked_fill(~right, float("-inf"))
    found = right.any(1)
    log_p = torch.logsumexp(log_w[found], 1) if bool(found.any()) else weights.new_zeros(0)
    return -log_p.sum() / weights.shape[0]


def right_answers(candidates: torch.Tensor, answer: torch.Tensor, encoding: NumberEncoding) -> torch.Tensor:
    """``(batch, choices)`` bool: which decided ``candidates`` ``(batch, choices, length, *shape)`` are ``answer``."""
    predicted = encoding.decode(candidates.detach())  # (batch, choices, length)
    target = answer.to(predicted.device).remainder(encoding.modulus).unsqueeze(1)
    return (predicted == target).all(-1)


def right_chains(head: nn.Module, outputs: dict[str, torch.Tensor], chains: int, *, answer: torch.Tensor,
                 encoding: NumberEncoding) -> torch.Tensor:
    """``(batch, chains)`` bool: which of each question's ``chains`` decided runs (``outputs``, as for
    :func:`chain_candidates`) answer right, read by ``head`` at any of its places (what a computer's
    ``forward(inputs, right)`` asks; see :class:`~diffcomp.model.computer.Computer`)."""
    candidates, _ = chain_candidates(head, outputs, chains)  # (batch, chains * places, length, *shape)
    right = right_answers(candidates, answer, encoding)
    return right.view(right.shape[0], chains, -1).any(-1)


def answer_nll(probs: torch.Tensor, answer: torch.Tensor,
               encoding: NumberEncoding) -> tuple[torch.Tensor, torch.Tensor]:
    """``-log P(answer)`` per example ``(batch,)``, and the answer positions' log-probabilities (``Output.logits``)."""
    answer = answer.to(probs.device)
    logp, logits = encoding.log_likelihood(probs, answer, EPS)  # (batch, length), (batch, length, *shape)
    return -logp.sum(-1), logits


class Readout(nn.Module):
    """A fixed head: the answer is ``length`` numbers of the computer output ``source`` from ``start``."""

    def __init__(self, source: str, start: int = 0, length: int = 1) -> None:
        super().__init__()
        self.source, self.start, self.length = source, start, length

    def forward(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        found = outputs[self.source]  # (batch, count, *shape)
        if found.shape[1] < self.start + self.length:
            raise ValueError(f"the answer needs {self.source}[{self.start}:{self.start + self.length}], but the "
                             f"computer has only {found.shape[1]} {self.source}")
        return found[:, self.start : self.start + self.length]

    def extra_repr(self) -> str:
        return f"{self.source}[{self.start}:{self.start + self.length}]"


class ChosenReadout(nn.Module):
    """The answer is read from one of several places the model chooses among (learned, never told).

    ``places``: ``"memory"`` (``length`` cells from cell 0) or a register
    ``"rK"`` (its number, then zeros up to ``length``). The computer passes
    the parser's choice as output ``readout`` ``(batch, places)``.
    :meth:`candidates` gives every place's answer and the weights (for
    :func:`mixture_output`); ``forward`` the answer at the most likely place.
    """

    def __init__(self, places: Sequence[str], encoding: NumberEncoding, length: int = 1) -> None:
        super().__init__()
        self.encoding = encoding
        for place in places:
            if place != "memory" and not (place.startswith("r") and place[1:].isdigit()):
                raise ValueError(f"a readout place is 'memory' or a general register such as 'r0', got {place!r}")
        if not places:
            raise ValueError("a chosen readout needs at least one place to read from")
        self.places, self.length = tuple(places), length

    def candidates(self, outputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(batch, places, length, *shape)`` answers and ``(batch, places)`` weights."""
        memory, registers = outputs["memory"], outputs["registers"]  # (batch, cells, *shape), (batch, regs, *shape)
        if memory.shape[1] < self.length:
            raise ValueError(f"the answer needs memory[0:{self.length}], but the computer has only "
                             f"{memory.shape[1]} cells")
        zeros = self.encoding.encode(torch.zeros(memory.shape[0], self.length - 1, dtype=torch.long),
                                     dtype=memory.dtype, device=memory.device)  # the zeros after a number
        out = []
        for place in self.places:
            if place == "memory":
                out.append(memory[:, : self.length])
            else:
                number = registers[:, int(place[1:])].unsqueeze(1)  # (batch, 1, *shape)
                out.append(torch.cat([number, zeros], 1))
        return torch.stack(out, 1), outputs["readout"]

    def forward(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        candidates, weights = self.candidates(outputs)
        rows = torch.arange(candidates.shape[0], device=candidates.device)
        return candidates[rows, weights.argmax(1)]

    def extra_repr(self) -> str:
        return f"places={self.places}, length={self.length}"


class MixtureHead(nn.Module):
    """A learned layer after the computer that does not depend on the encoding's size.

    Each answer position is a softmax mixture over candidate numbers (the
    computer's outputs, and whatever else the model offers):
    ``answer_p = sum_s softmax(w_p)_s source_s``. The weights are
    ``(length, sources)``, so the same trained head reads a unit table's result
    or a 32-bit circuit's. The softmax reads ``sharpness * weights``.
    """

    def __init__(self, sources: int, length: int = 1, *, prior: Sequence[int] | None = None,
                 strength: float = 0.0, sharpness: float = 1.0, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.sharpness = sharpness
        weights = 0.1 / sharpness * torch.randn(length, sources, generator=generator)  # (length, sources)
        if prior is not None:  # optionally start near "answer position p reads source prior[p]"
            weights[torch.arange(length), torch.as_tensor(list(prior))] += strength
        self.weights = nn.Parameter(weights)

    def forward(self, candidates: torch.Tensor, hard: bool = False) -> torch.Tensor:
        """``candidates`` ``(batch, sources, *shape)`` -> ``(batch, length, *shape)``.

        ``hard=True`` reads the most likely source only (see :func:`choose`).
        """
        return torch.einsum("ls,bs...->bl...", choose(self.sharpness * self.weights, hard), candidates)


def choose(scores: torch.Tensor, hard: bool = False) -> torch.Tensor:
    """``softmax(scores)`` over the last dimension, or, with ``hard``, its argmax as a one-hot.

    Training needs the mixture (it is what carries gradients); a trained
    network's decision is its most likely choice. Deciding matters after a
    swap: a circuit multiplies every bit's residual doubt through its carry
    chains, so a 99.99%-certain route can still flip a 32-bit product.
    """
    weights = scores.softmax(-1)
    if not hard:
        return weights
    return torch.nn.functional.one_hot(weights.argmax(-1), weights.shape[-1]).to(weights.dtype)
