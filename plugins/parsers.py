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
    """

    def __init__(self, hidden_size: int, targets: Sequence[Target], encoding: NumberEncoding, *,
                 key_size: int = 64, positions: int = 0) -> None:
        super().__init__(hidden_size, targets, encoding)
        if positions < 0 or key_size < 1:
            raise ValueError(f"attention parser: key_size must be positive and positions non-negative, got "
                             f"key_size={key_size!r}, positions={positions!r}")
        self.key_size, self.positions = key_size, positions
        self.keys = nn.Linear(hidden_size, key_size, bias=False)
        self.queries = nn.ParameterDict({t.name: nn.Parameter(torch.randn(t.count, key_size) / math.sqrt(key_size))
                                         for t in self.targets})  # (count, key)
        self.position_bias = nn.ParameterDict({t.name: nn.Parameter(torch.zeros(t.count, positions))
                                               for t in self.targets} if positions else {})
        self.heads = nn.ModuleDict({t.name: nn.Linear(hidden_size, t.width(encoding)) for t in self.targets})

    def scores(self, hidden: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        keys = self.keys(hidden)  # (batch, seq, key)
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
            out[t.name] = self.heads[t.name](torch.einsum("bcs,bsh->bch", weights, hidden))
        return out


@diffcomp.hookimpl
def register_parsers(register):
    register("pooled", PooledParser)
    register("attention", AttentionParser)
