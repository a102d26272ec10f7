"""A LLaMA decoder in plain PyTorch, for answering: the same weights as transformers' ``LlamaModel``.

Importing transformers' LLaMA takes seconds (it pulls in torch's compiler
and distributed stacks); answering one question with a small trained model
takes a fraction of that. :class:`Llama` is the forward pass of
``transformers.LlamaModel`` (eager, no cache: RMSNorm, rotary positions,
grouped-query causal attention, the SwiGLU MLP, the final norm) with the same
module names, so a state_dict moves between the two unchanged, and
:class:`~diffcomp.model.backbones.Backbone` wraps either. Training keeps
transformers' model; ``diffcomp.load`` builds this one when the saved
config is one it reproduces (:func:`supported`). The tests check both give
the same hidden states on the same weights.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .llama_config import LlamaSettings, supported  # noqa: F401 (re-exported)


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, s: LlamaSettings) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = s.num_attention_heads, s.num_key_value_heads, s.head_dim
        self.q_proj = nn.Linear(s.hidden_size, self.heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(s.hidden_size, self.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(s.hidden_size, self.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.heads * self.head_dim, s.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q = self.q_proj(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)  # (batch, heads, seq, head_dim)
        k = self.k_proj(x).view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        group = self.heads // self.kv_heads
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.head_dim)  # (batch, heads, seq, seq)
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        out = scores.softmax(-1, dtype=torch.float32).to(q.dtype) @ v
        return self.o_proj(out.transpose(1, 2).reshape(b, n, self.heads * self.head_dim))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class MLP(nn.Module):
    def __init__(self, s: LlamaSettings) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(s.hidden_size, s.intermediate_size, bias=False)
        self.up_proj = nn.Linear(s.hidden_size, s.intermediate_size, bias=False)
        self.down_proj = nn.Linear(s.intermediate_size, s.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, s: LlamaSettings) -> None:
        super().__init__()
        self.self_attn, self.mlp = Attention(s), MLP(s)
        self.input_layernorm = RMSNorm(s.hidden_size, s.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(s.hidden_size, s.rms_norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class _Output:
    def __init__(self, last_hidden_state: torch.Tensor) -> None:
        self.last_hidden_state = last_hidden_state


class Llama(nn.Module):
    """``forward(input_ids, attention_mask) -> .last_hidden_state`` ``(batch, seq, hidden)``, after the final norm."""

    def __init__(self, config: dict[str, Any] | LlamaSettings) -> None:
        super().__init__()
        s = config if isinstance(config, LlamaSettings) else LlamaSettings.from_dict(config)
        self.config = s
        self.embed_tokens = nn.Embedding(s.vocab_size, s.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(s) for _ in range(s.num_hidden_layers))
        self.norm = RMSNorm(s.hidden_size, s.rms_norm_eps)
        inv_freq = 1.0 / (s.rope_theta ** (torch.arange(0, s.head_dim, 2, dtype=torch.float) / s.head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                use_cache: bool = False) -> _Output:
        x = self.embed_tokens(input_ids)  # (batch, seq, hidden)
        b, n = input_ids.shape
        positions = torch.arange(n, device=x.device, dtype=torch.float)
        freqs = positions[:, None] * self.inv_freq.to(x.device)[None, :]  # (seq, head_dim / 2)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)  # (seq, head_dim), broadcast over batch, heads
        mask = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()[None, None]  # causal
        if attention_mask is not None:  # and no padding among the keys
            mask = mask & attention_mask.bool()[:, None, None, :]
        for layer in self.layers:
            x = layer(x, cos, sin, mask)
        return _Output(self.norm(x))
