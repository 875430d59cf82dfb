"""Everything this project knows about the internals of transformers decoders (checked on 5.24).

The pruning engine never copies or patches transformers code. It hooks unmodified decoder layers
and needs a handful of facts about them, all kept here so that a transformers upgrade touches one
file:

- where the decoder layers and the rotary embedding module live;
- the keyword names a decoder layer receives (``attention_mask``, ``position_embeddings``,
  ``position_ids``, ``cache``) and what its forward returns;
- how a layer's attention turns hidden states into queries and keys (``input_layernorm``,
  ``q_proj``/``k_proj``, optional per-head ``q_norm``/``k_norm``, rotary, GQA repeat, ``scaling``);
- how attention masks are encoded (4D bool under SDPA, 4D additive float under eager);
- how long a layer's KV cache is;
- the v5 model-building helpers the project's own models use (``SubConfigSpec`` for nested
  sub-config defaults, the ``initialization`` module for weight init);
- how to hide ``from_pretrained``'s "Loading weights" progress bar for a while (``without_loading_bar``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from transformers import initialization as weight_init
from transformers.configuration_utils import SubConfigSpec
from transformers.utils import logging as hf_logging

from vla_autoprune.errors import ModelLoadError

__all__ = ["SubConfigSpec", "weight_init"]  # re-exported for the models (plus the functions below)

# Keyword names a decoder layer receives from the model loop (transformers 5.x).
KW_MASK = "attention_mask"
KW_POS_EMB = "position_embeddings"
KW_POS_IDS = "position_ids"
KW_CACHE = "cache"
# transformers < 5.40 still accepts (deprecated) ``past_key_values``.
KW_CACHE_OLD = "past_key_values"

# Attribute paths, tried in order, from a causal LM (or its inner model) to its decoder layers.
_LAYER_PATHS = ("model.layers", "layers", "model.language_model.layers", "language_model.layers")
_ROTARY_PATHS = ("model.rotary_emb", "rotary_emb", "model.language_model.rotary_emb")


class UnsupportedDecoderError(ModelLoadError):
    """The decoder does not have the structure the pruning engine hooks into."""


def _resolve(root: nn.Module, path: str) -> Any:
    obj: Any = root
    for name in path.split("."):
        obj = getattr(obj, name, None)
        if obj is None:
            return None
    return obj


def decoder_layers(decoder: nn.Module) -> nn.ModuleList:
    """The decoder layers of a transformers causal LM (or its inner base model)."""
    for path in _LAYER_PATHS:
        layers = _resolve(decoder, path)
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            return layers
    raise UnsupportedDecoderError(
        f"cannot find decoder layers on {type(decoder).__name__} (tried {', '.join(_LAYER_PATHS)}); "
        "pass the transformers causal LM (e.g. LlamaForCausalLM), not a wrapper"
    )


def rotary_embedding(decoder: nn.Module) -> nn.Module:
    """The module mapping ``(hidden [B, N, D], position_ids [B, N]) -> (cos, sin)``."""
    for path in _ROTARY_PATHS:
        module = _resolve(decoder, path)
        if isinstance(module, nn.Module):
            return module
    raise UnsupportedDecoderError(
        f"cannot find the rotary embedding on {type(decoder).__name__} (tried {', '.join(_ROTARY_PATHS)}); "
        "position_ids='contiguous' needs it, use position_ids='original'"
    )


def decoder_config(decoder: nn.Module) -> Any:
    """The (text) config of the decoder: hidden_size, intermediate_size, head counts."""
    config = getattr(decoder, "config", None)
    if config is None:
        raise UnsupportedDecoderError(f"{type(decoder).__name__} has no .config; pass a transformers model")
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def check_layer(layer: nn.Module, index: int) -> None:
    """Raise if ``layer`` lacks what the score computation and the hooks rely on."""
    attn = getattr(layer, "self_attn", None)
    missing = [
        name
        for name, owner in (("input_layernorm", layer), ("q_proj", attn), ("k_proj", attn), ("scaling", attn))
        if owner is None or not hasattr(owner, name)
    ]
    if missing:
        raise UnsupportedDecoderError(
            f"decoder layer {index} ({type(layer).__name__}) lacks {', '.join(missing)}; "
            "only Llama-style decoders (Llama, Qwen2, Qwen3, Mistral) are supported"
        )


def check_window(layer: nn.Module, index: int, length: int) -> None:
    """Raise if a sliding-window layer's window is shorter than a ``length``-token prefill.

    The engine rebuilds prefill masks as plain causal ones, which equals the sliding-window mask
    only while the whole sequence fits in the window.
    """
    window = getattr(getattr(layer, "self_attn", None), "sliding_window", None)
    if window is not None and length > int(window):
        raise UnsupportedDecoderError(
            f"decoder layer {index} uses a {window}-token sliding window but the prefill has {length} "
            "tokens, which the pruning engine does not support; disable sliding windows in the config"
        )


# ----------------------------------------------------------------------------------------------
# What a layer receives and returns.


def layer_hidden(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    """The ``hidden_states`` a decoder layer is called with, float ``[B, N, D]``."""
    return args[0] if args else kwargs["hidden_states"]


def layer_cache(kwargs: dict[str, Any]) -> Any:
    """The KV cache a decoder layer was given (``None`` when the model runs without one)."""
    cache = kwargs.get(KW_CACHE)
    return cache if cache is not None else kwargs.get(KW_CACHE_OLD)


def output_hidden(output: Any) -> torch.Tensor:
    """The hidden states a decoder layer returned (5.x: a tensor; older: first tuple element)."""
    return output[0] if isinstance(output, tuple) else output


def with_output_hidden(output: Any, hidden: torch.Tensor) -> Any:
    """The layer output with its hidden states replaced."""
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


def cache_length(cache: Any, layer_idx: int) -> int:
    """Tokens already in ``layer_idx``'s KV cache (0 = this forward is a prefill)."""
    if cache is None:
        return 0
    return int(cache.get_seq_length(layer_idx))


# ----------------------------------------------------------------------------------------------
# Attention masks.


def mask_to_bool(mask: torch.Tensor) -> torch.Tensor:
    """A 4D attention mask as bool (True = attend), from SDPA's bool or eager's additive float form."""
    if mask.dtype == torch.bool:
        return mask
    return mask == 0


def bool_to_mask_like(
    allowed: torch.Tensor, template: torch.Tensor | None, dtype: torch.dtype
) -> torch.Tensor:
    """Encode a bool mask the way the model encodes its own (``template``; bool if there is none)."""
    if template is None or template.dtype == torch.bool:
        return allowed
    blocked = torch.finfo(template.dtype).min
    return torch.zeros(allowed.shape, dtype=template.dtype, device=allowed.device).masked_fill(
        ~allowed, blocked
    )


def check_mask(mask: Any, layer_idx: int) -> torch.Tensor | None:
    """Return the layer's mask if it is a 4D tensor or None; raise for other kinds (e.g. flex)."""
    if mask is None or (isinstance(mask, torch.Tensor) and mask.dim() == 4):
        return mask
    raise UnsupportedDecoderError(
        f"decoder layer {layer_idx} got an attention mask of type {type(mask).__name__}; the pruning "
        "engine supports 'sdpa' and 'eager' attention (4D masks), not flex/flash varlen"
    )


# ----------------------------------------------------------------------------------------------
# Queries and keys, recomputed from a layer's own modules.


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rotate_whole(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x * cos + rotate_half(x) * sin`` for full-width RoPE, every tensor in ``x``'s memory layout.

    The same values and output strides as the generic path, without its ``cat`` into a different
    layout than the ``[B, N, H, hd]``-ordered product it is added to (~20% less time on the CPU,
    issue 14).
    """
    half = x.shape[-1] // 2
    rotated = torch.empty_like(x)  # x is dense: the same strides
    rotated[..., :half] = -x[..., half:]
    rotated[..., half:] = x[..., :half]
    return (x * cos).add_(rotated.mul_(sin))


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` [B, H, N, hd] by per-position ``cos``/``sin`` [B, N, rd] (rd <= hd: partial RoPE)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    rot_dim = cos.shape[-1]
    if rot_dim == x.shape[-1] and (x.is_contiguous() or x.transpose(1, 2).is_contiguous()):
        return _rotate_whole(x, cos, sin)
    x_rot, x_pass = x[..., :rot_dim], x[..., rot_dim:]
    rotated = x_rot * cos + _rotate_half(x_rot) * sin
    return torch.cat((rotated, x_pass), dim=-1) if x_pass.shape[-1] else rotated


def split_heads(x: torch.Tensor, head_dim: int, norm: nn.Module | None) -> torch.Tensor:
    """[B, N, H*hd] -> [B, H, N, hd], with the family's per-head norm (Qwen3 q_norm/k_norm) if any."""
    b, n, _ = x.shape
    x = x.view(b, n, -1, head_dim)  # [B, N, H, hd]
    if norm is not None:
        x = norm(x)
    return x.transpose(1, 2)


def queries_keys(
    layer: nn.Module,
    hidden: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    query_rows: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Post-rotary queries for some rows and keys for all rows, as the layer's attention forms them.

    Args:
        layer: a decoder layer (``input_layernorm`` + ``self_attn`` with ``q_proj``/``k_proj``).
        hidden: float ``[B, N, D]``, the layer's input hidden states.
        cos, sin: ``[B, N, rd]``, the rotary embedding the layer is given.
        query_rows: int64 ``[B, T]``, rows (sequence indices) whose queries are wanted.

    Returns:
        ``q`` ``[B, H, T, hd]`` and ``k`` ``[B, H, N, hd]`` (KV heads repeated to H for GQA), both in
        the hidden dtype.
    """
    attn: Any = layer.self_attn  # typed loosely: transformers modules expose these as attributes
    normed = layer.get_submodule("input_layernorm")(hidden)
    rows = query_rows.unsqueeze(-1)
    normed_rows = normed.gather(1, rows.expand(-1, -1, normed.shape[-1]))
    head_dim = int(attn.head_dim)
    q = split_heads(attn.q_proj(normed_rows), head_dim, getattr(attn, "q_norm", None))
    k = split_heads(attn.k_proj(normed), head_dim, getattr(attn, "k_norm", None))
    q = apply_rotary(
        q,
        cos.gather(1, rows.expand(-1, -1, cos.shape[-1])),
        sin.gather(1, rows.expand(-1, -1, sin.shape[-1])),
    )
    k = apply_rotary(k, cos, sin)
    groups = q.shape[1] // k.shape[1]
    return q, k.repeat_interleave(groups, dim=1)  # GQA: KV head j serves query heads j*g .. j*g+g-1


def attention_scaling(layer: nn.Module) -> float:
    """The softmax temperature the layer's attention uses (``head_dim ** -0.5`` for Llama)."""
    attn: Any = layer.self_attn
    return float(attn.scaling)


@contextmanager
def without_loading_bar() -> Iterator[None]:
    """Hide transformers' "Loading weights" progress bar inside the block, restoring the setting after.

    ``from_pretrained`` draws it for every load (5.x, ``core_model_loading``); for the bundled
    models, which load in milliseconds, it is only clutter in each job of a multirun.
    """
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()
