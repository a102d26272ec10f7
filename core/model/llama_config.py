"""What a LLaMA is, from a transformers ``LlamaConfig`` dict, without torch: the sizes the forward passes read
(:class:`diffcomp.model.llama.Llama` in torch, :class:`diffcomp.inference.llama.Llama` in NumPy) and whether
they reproduce transformers for a config (:func:`supported`)."""

from __future__ import annotations

from typing import Any

import attrs


@attrs.define
class LlamaSettings:
    """What :class:`Llama` reads from a transformers ``LlamaConfig`` dict (``to_dict()`` gives that dict back)."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    source: dict[str, Any]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LlamaSettings:
        heads = int(d["num_attention_heads"])
        rope = d.get("rope_parameters") or {}
        return cls(vocab_size=int(d["vocab_size"]), hidden_size=int(d["hidden_size"]),
                   num_hidden_layers=int(d["num_hidden_layers"]), num_attention_heads=heads,
                   num_key_value_heads=int(d.get("num_key_value_heads") or heads),
                   intermediate_size=int(d["intermediate_size"]),
                   head_dim=int(d.get("head_dim") or d["hidden_size"] // heads),
                   rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
                   rope_theta=float(rope.get("rope_theta", d.get("rope_theta", 10000.0))), source=dict(d))

    def to_dict(self) -> dict[str, Any]:
        return {**self.source, "num_hidden_layers": self.num_hidden_layers}


def supported(config: dict[str, Any]) -> bool:
    """Whether :class:`Llama` computes exactly what transformers does for this ``LlamaConfig`` dict."""
    rope = config.get("rope_parameters") or {}
    return (config.get("model_type") == "llama" and config.get("hidden_act", "silu") == "silu"
            and not config.get("attention_bias") and not config.get("mlp_bias")
            and rope.get("rope_type", "default") == "default" and not config.get("rope_scaling")
            and int(config.get("pretraining_tp", 1)) == 1)
