"""The built-in parsers: ``pooled`` (the paper's) and ``attention`` (one query per output)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

import diffcomp
from diffcomp.encodings import NumberEncoding
from diffcomp.model.parsers import Parser, Target

POOLS = ("last", "mean")
VALUES = ("states", "tokens", "embeddings")


class PooledParser(Parser):
    """The paper's parser (§3.4): one vector ``z`` per question, a linear classifier per target.

    ``pool="last"`` reads the last real token (which sees the whole question
    through causal attention); ``"mean"`` averages the real tokens.
    """

    def __init__(self, hidden_size: int, targets: Sequence[Target], encoding: NumberEncoding, *,
                 pool: str = "last") -> None:
        super().__init__(hidden_size, targets, encoding)
        if pool not in POOLS:
            raise ValueError(f"pooled parser: pool must be one of {POOLS}, got {pool!r}")
        self.pool = pool
        self.heads = nn.ModuleDict({t.name: nn.Linear(hidden_size, t.count * t.width(encoding))
                                    for t in self.targets})

    def scores(self, hidden: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        mask = mask.to(hidden.dtype)
        if self.pool == "last":
            last = mask.sum(1).long() - 1  # (batch,): right padding, so the last real token
            z = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (batch, hidden)
        else:
            z = torch.einsum("bsh,bs->bh", hidden, mask) / mask.sum(1, keepdim=True)
        return {name: head(z) for name, head in self.heads.items()}


class AttentionParser(Parser):
    """Each output (an operand, a register, a memory cell, the op) has a learned query.

    The query attends over the token states (eq.: ``a = softmax(q K^T / sqrt(d))``,
    ``v = a H``) and one classifier per target, shared by its outputs, reads
    ``v``: a cell per character parses without a linear layer as wide as the
    question. ``positions > 0`` adds a learned bias per output and token
    position (up to that many tokens), for inputs laid out by position.

    ``values="states"`` (the default) classifies the attended state
    ``head(a H)``; ``values="tokens"`` classifies every token's own state and
    mixes the distributions, ``p = sum_s a_s softmax(head(h_s))`` (per bit
    for binary numbers), so a number token decides its own value and the
    attention only chooses which token: a question with one token per number
    (the ``words`` tokenizer) parses without composing digits. ``value_scale``
    multiplies the classifiers' initial weights: above 1 the initial
    distributions are already peaked at random values, which breaks the
    symmetry of a uniform parse (under which ``add`` gives an operand no
    gradient) from the first step.
    """

    def __init__(self, hidden_size: int, targets: Sequence[Target], encoding: NumberEncoding, *,
                 key_size: int = 64, positions: int = 0, values: str = "states", value_scale: float = 1.0) -> None:
        super().__init__(hidden_size, targets, encoding)
        if positions < 0 or key_size < 1:
            raise ValueError(f"attention parser: key_size must be positive and positions non-negative, got "
                             f"key_size={key_size!r}, positions={positions!r}")
        if values not in VALUES:
            raise ValueError(f"attention parser: values must be one of {VALUES}, got {values!r}")
        if not value_scale > 0:
            raise ValueError(f"attention parser: value_scale must be positive, got {value_scale!r}")
        self.key_size, self.positions, self.values = key_size, positions, values
        self.reads_embeddings = values == "embeddings"
        self.keys = nn.Linear(hidden_size, key_size, bias=False)
        self.queries = nn.ParameterDict({t.name: nn.Parameter(torch.randn(t.count, key_size) / math.sqrt(key_size))
                                         for t in self.targets})  # (count, key)
        self.position_bias = nn.ParameterDict({t.name: nn.Parameter(torch.zeros(t.count, positions))
                                               for t in self.targets} if positions else {})
        self.heads = nn.ModuleDict({t.name: nn.Linear(hidden_size, t.width(encoding)) for t in self.targets})
        with torch.no_grad():
            for head in self.heads.values():
                head.weight.mul_(value_scale)

    def scores(self, hidden: torch.Tensor, mask: torch.Tensor,
               embeddings: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        keys = self.keys(hidden)  # (batch, seq, key)
        if self.values == "embeddings":  # RMS-normalised, so the classifiers see states of unit scale
            tokens = embeddings * torch.rsqrt(embeddings.pow(2).mean(-1, keepdim=True) + 1e-6)
        blocked = (mask == 0)[:, None, :]  # (batch, 1, seq)
        out = {}
        for t in self.targets:
            logits = torch.einsum("bsk,ck->bcs", keys, self.queries[t.name]) / math.sqrt(self.key_size)
            if self.positions:
                bias = self.position_bias[t.name]
                seq = min(hidden.shape[1], self.positions)
                logits = logits.clone()
                logits[..., :seq] = logits[..., :seq] + bias[:, :seq]
            weights = logits.masked_fill(blocked, float("-inf")).softmax(-1)  # (batch, count, seq)
            if self.values == "states":
                out[t.name] = self.heads[t.name](torch.einsum("bcs,bsh->bch", weights, hidden))
            elif self.values == "tokens":
                out[t.name] = self._mixed_tokens(t, weights, self.heads[t.name](hidden))
            else:
                out[t.name] = self._mixed_tokens(t, weights, self.heads[t.name](tokens))
        return out

    def _mixed_tokens(self, target: Target, weights: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """Scores whose distribution is ``sum_s weights_s dist(scores_s)``: ``(batch, count, width)``."""
        batch, seq = scores.shape[:2]
        shape = target.shape(self.encoding)
        if target.classes is None and self.encoding.kind == "binary":  # a mixture of per-bit probabilities
            p = torch.einsum("bcs,bsw->bcw", weights, scores.sigmoid())
            return torch.logit(p.clamp(1e-7, 1 - 1e-7))
        logp = scores.reshape(batch, seq, -1, shape[-1]).log_softmax(-1).reshape(batch, 1, seq, -1)
        mixed = torch.logsumexp(torch.log(weights.clamp_min(1e-30)).unsqueeze(-1) + logp, dim=2)
        return mixed  # (batch, count, width): log of the mixture, which softmax returns exactly


@diffcomp.hookimpl
def register_parsers(register):
    register("pooled", PooledParser)
    register("attention", AttentionParser)
