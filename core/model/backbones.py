"""Transformer backbones (paper §3.4, §4.2): a LLaMA from a config, or a local causal LM.

A :class:`Backbone` maps token ids to the hidden states that feed the parser.
The paper reads ``z`` after all layers but the last; the layers after the one
the parser reads cannot change the answer, so they are dropped rather than
run (``parser_layer`` counts decoder layers from 1).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..errors import is_fraction


class Backbone(nn.Module):
    """Embeddings and the first ``parser_layer`` decoder layers of a transformer.

    ``forward(input_ids, attention_mask) -> (batch, seq, hidden_size)``.
    """

    def __init__(self, model: nn.Module, parser_layer: int | None = None) -> None:
        super().__init__()
        config = model.config
        total = int(config.num_hidden_layers)
        layer = total - 1 if parser_layer is None else parser_layer
        if total == 1 and parser_layer is None:
            layer = 1  # one layer: there is no "all but the last"
        if isinstance(layer, bool) or not isinstance(layer, int) or not 1 <= layer <= total:
            raise ValueError(f"parser_layer must be an integer from 1 to {total} (the backbone's decoder "
                             f"layers), got {parser_layer!r}")
        layers = _decoder_layers(model)
        if layer < total:
            if layers is None:
                raise ValueError(f"cannot find the decoder layers of {type(model).__name__} to stop after "
                                 f"layer {layer}; use parser_layer={total}")
            name, module_list = layers
            setattr(model, name, nn.ModuleList(list(module_list)[:layer]))
            config.num_hidden_layers = layer
        self.model = model
        self.parser_layer = layer
        self.hidden_size = int(config.hidden_size)
        self.vocab_size = int(model.get_input_embeddings().num_embeddings)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return out.last_hidden_state  # (batch, seq, hidden) after the final norm

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The token embeddings, before any layer: ``(batch, seq, hidden)``."""
        return self.model.get_input_embeddings()(input_ids)

    def extra_repr(self) -> str:
        return f"parser_layer={self.parser_layer}, hidden_size={self.hidden_size}, vocab_size={self.vocab_size}"


def _decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    for name in ("layers", "h", "blocks"):
        value = getattr(model, name, None)
        if isinstance(value, nn.ModuleList):
            return name, value
    return None


def llama(vocab_size: int, *, hidden_size: int = 128, layers: int = 4, heads: int = 4, kv_heads: int = 2,
          intermediate_size: int | None = None, max_positions: int = 512, parser_layer: int | None = None,
          seed: int | None = None, attention_dropout: float = 0.0) -> Backbone:
    """A LLaMA built from a config and trained from scratch; the defaults are the paper's minimal LLaMA.

    ``intermediate_size`` defaults to ``4 * hidden_size``. ``attention_dropout`` drops attention weights in
    training only (transformers' option of that name); in evaluation the forward is unchanged.
    """
    from transformers import LlamaConfig, LlamaModel

    for what, value in (("hidden_size", hidden_size), ("layers", layers), ("heads", heads),
                        ("kv_heads", kv_heads), ("vocab_size", vocab_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"llama backbone: {what} must be a positive integer, got {value!r}")
    if hidden_size % heads or heads % kv_heads:
        raise ValueError(f"llama backbone: hidden_size ({hidden_size}) must be a multiple of heads ({heads}), "
                         f"and heads a multiple of kv_heads ({kv_heads})")
    if not is_fraction(attention_dropout):
        raise ValueError(f"llama backbone: attention_dropout must be a number in [0, 1), got {attention_dropout!r}")
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads,
                         intermediate_size=intermediate_size or 4 * hidden_size,
                         max_position_embeddings=max_positions, pad_token_id=0, bos_token_id=1,
                         eos_token_id=None, tie_word_embeddings=False, attention_dropout=float(attention_dropout))
    if seed is None:
        model = LlamaModel(config)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = LlamaModel(config)
    return Backbone(model, parser_layer)


def llama_from_config(config: dict, *, native: bool = True) -> Backbone:
    """The LLaMA a transformers ``LlamaConfig`` dict describes (e.g. a saved model's), untrained.

    ``native`` builds :class:`diffcomp.model.llama.Llama` (the same forward and weights, without importing
    transformers) when it reproduces the config; otherwise transformers' ``LlamaModel``. The config's
    ``num_hidden_layers`` are all kept: they are the layers up to the one the parser reads.
    """
    from .llama import Llama, supported

    if native and supported(config):
        return Backbone(Llama(config), int(config["num_hidden_layers"]))
    from transformers import LlamaConfig, LlamaModel

    model = LlamaModel(LlamaConfig(**{k: v for k, v in config.items() if k != "transformers_version"}))
    return Backbone(model, int(config["num_hidden_layers"]))


def pretrained(path: str | os.PathLike, *, parser_layer: int | None = None,
               dtype: torch.dtype = torch.float32, load_weights: bool = True) -> Backbone:
    """Any causal LM saved in a local folder (``save_pretrained``), e.g. a LLaMA 3.2 1B checkpoint.

    The language-model head is not kept: the parser reads hidden states.
    ``load_weights=False`` builds the model from its config on the meta device
    (no weights read, no memory taken): its shapes, for checking a recipe.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(os.path.expanduser(str(path)))
    if not folder.is_dir():
        raise ValueError(f"pretrained backbone: {str(path)!r} is not a folder; expected a local folder "
                         "holding a causal language model (config.json and weights, as save_pretrained writes)")
    try:
        config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ValueError(f"pretrained backbone: {str(folder)!r} holds no model config (config.json): {exc}") from None
    try:
        if not load_weights:
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        else:
            model = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True, dtype=dtype)
    except ValueError as exc:
        raise ValueError(f"pretrained backbone: {str(folder)!r} holds a {config.model_type!r} model, which is "
                         f"not a causal language model (expected e.g. LlamaForCausalLM): {exc}") from None
    except OSError as exc:
        raise ValueError(f"pretrained backbone: cannot load the weights in {str(folder)!r}: {exc}") from None
    base = model.get_decoder() if hasattr(model, "get_decoder") else model.base_model
    if not hasattr(base, "config"):
        base.config = model.config
    return Backbone(base, parser_layer)
