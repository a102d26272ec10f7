"""The LLaMA forward pass in NumPy, for answering without torch.

The same computation as :class:`diffcomp.model.llama.Llama` (and so as
transformers' ``LlamaModel``) in float32, on the same weights, read by their
state_dict names: token embeddings, then per decoder layer RMSNorm, attention
with rotary positions over grouped query heads (causal, padding keys masked),
a residual, RMSNorm, the SwiGLU MLP, a residual; the final RMSNorm. The tests
check it against the torch model on saved models.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return weight * (x / np.sqrt((x * x).mean(-1, keepdims=True) + eps))


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1 + np.exp(-x))


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def rotate_half(x: np.ndarray) -> np.ndarray:
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


class Llama:
    """``Llama(settings, weights, prefix)(ids, mask) -> (batch, seq, hidden)`` hidden states after the final norm.

    ``settings``: a :class:`diffcomp.model.llama.LlamaSettings`-like object (the saved backbone config's
    sizes); ``weights``: name -> float32 array; ``prefix``: where the backbone's names start
    (``"backbone.model."``).
    """

    def __init__(self, settings: Any, weights: Mapping[str, np.ndarray], prefix: str = "") -> None:
        self.s, self.w, self.prefix = settings, weights, prefix
        d = settings.head_dim
        self.inv_freq = 1.0 / (np.float32(settings.rope_theta) ** (np.arange(0, d, 2, dtype=np.float32) / d))

    def __getitem__(self, name: str) -> np.ndarray:
        return self.w[self.prefix + name]

    def embed(self, ids: np.ndarray) -> np.ndarray:
        return self["embed_tokens.weight"][ids]  # (batch, seq, hidden)

    def __call__(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        s = self.s
        x = self.embed(ids)
        n = ids.shape[1]
        freqs = np.arange(n, dtype=np.float32)[:, None] * self.inv_freq[None, :]  # (seq, head_dim / 2)
        emb = np.concatenate([freqs, freqs], axis=-1)
        cos, sin = np.cos(emb), np.sin(emb)  # (seq, head_dim)
        allowed = np.tril(np.ones((n, n), dtype=bool))[None, None] & mask.astype(bool)[:, None, None, :]
        for i in range(s.num_hidden_layers):
            x = x + self.attention(i, rms_norm(x, self[f"layers.{i}.input_layernorm.weight"], s.rms_norm_eps),
                                   cos, sin, allowed)
            h = rms_norm(x, self[f"layers.{i}.post_attention_layernorm.weight"], s.rms_norm_eps)
            mlp = f"layers.{i}.mlp."
            x = x + (silu(h @ self[mlp + "gate_proj.weight"].T) * (h @ self[mlp + "up_proj.weight"].T)) @ \
                self[mlp + "down_proj.weight"].T
        return rms_norm(x, self["norm.weight"], s.rms_norm_eps)

    def attention(self, i: int, x: np.ndarray, cos: np.ndarray, sin: np.ndarray, allowed: np.ndarray) -> np.ndarray:
        s, a = self.s, f"layers.{i}.self_attn."
        b, n, _ = x.shape

        def heads(name: str, count: int) -> np.ndarray:  # (batch, heads, seq, head_dim)
            return (x @ self[a + name].T).reshape(b, n, count, s.head_dim).transpose(0, 2, 1, 3)

        q, k, v = heads("q_proj.weight", s.num_attention_heads), *(heads(f"{p}_proj.weight", s.num_key_value_heads)
                                                                   for p in "kv")
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        group = s.num_attention_heads // s.num_key_value_heads
        k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
        scores = (q @ k.transpose(0, 1, 3, 2)) / np.float32(np.sqrt(s.head_dim))  # (batch, heads, seq, seq)
        scores = np.where(allowed, scores, np.finfo(np.float32).min)
        out = softmax(scores) @ v  # (batch, heads, seq, head_dim)
        return out.transpose(0, 2, 1, 3).reshape(b, n, -1) @ self[a + "o_proj.weight"].T

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of every weight this forward reads, by its name (without the prefix)."""
        s = self.s
        hidden, q, kv = s.hidden_size, s.num_attention_heads * s.head_dim, s.num_key_value_heads * s.head_dim
        out = {"embed_tokens.weight": (s.vocab_size, hidden), "norm.weight": (hidden,)}
        for i in range(s.num_hidden_layers):
            p = f"layers.{i}."
            out.update({p + "input_layernorm.weight": (hidden,), p + "post_attention_layernorm.weight": (hidden,),
                        p + "self_attn.q_proj.weight": (q, hidden), p + "self_attn.k_proj.weight": (kv, hidden),
                        p + "self_attn.v_proj.weight": (kv, hidden), p + "self_attn.o_proj.weight": (hidden, q),
                        p + "mlp.gate_proj.weight": (s.intermediate_size, hidden),
                        p + "mlp.up_proj.weight": (s.intermediate_size, hidden),
                        p + "mlp.down_proj.weight": (hidden, s.intermediate_size)})
        return out
