"""Decoder FLOPs from the number of tokens each layer processed.

Units: multiply-accumulates (MACs), which is what the AutoPrune reference (and the paper's
"FLOPs") counts. ``torch.utils.flop_counter.FlopCounterMode`` counts 2 FLOPs per MAC (a multiply
and an add), so its count for a decoder layer is ``2 * decoder_flops(..., formula="gqa")``
(checked exactly on a Llama layer with eager attention in tests/test_flops.py; under SDPA on CPU
FlopCounterMode has no formula for the CPU attention kernel and misses the ``n^2`` term).

What ``n`` is: the TOTAL sequence length a layer processes (prompt, text and visual tokens alike),
not its visual tokens: projections and MLP are linear in ``n`` and attention is quadratic in the
whole sequence. The engine passes, per layer, non-visual tokens + the visual tokens the layer
processed. Attention's ``n^2`` term counts the full square (no causal halving), as the reference
and FlopCounterMode both do; norms, rotary, softmax and residual adds are not counted (nor does
FlopCounterMode count them).

Per layer, hidden ``d``, MLP width ``m``, ``h`` heads, ``kv`` key/value heads, head dim ``hd``
(``d / h`` unless given):

- ``"reference"``: ``4 n d^2 + 2 n^2 d + 3 n d m`` (the authors' count; exact when ``kv == h``).
- ``"gqa"``: ``2 n d (h hd)`` (q, o) ``+ 2 n d (kv hd)`` (k, v) ``+ 2 n^2 (h hd)`` (scores, values)
  ``+ 3 n d m`` (gate, up, down); with ``hd = d / h``: ``2nd^2 + 2nd(d kv / h) + 2n^2 d + 3ndm``.

A non-gated MLP (up, down) counts ``2 n d m`` instead of ``3 n d m``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from vla_autoprune.errors import ConfigError

Formula = Literal["reference", "gqa"]
FORMULAS: tuple[str, ...] = ("reference", "gqa")

GATED_MLP_MATMULS = 3  # gate, up and down projections (SwiGLU, Llama/Qwen/Mistral)
PLAIN_MLP_MATMULS = 2  # up and down projections
REFERENCE_PROJECTIONS = 4  # q, k, v, o, each d x d in the reference count
ATTENTION_MATMULS = 2  # Q K^T and attention @ V


class FlopsError(ConfigError):
    """Invalid FLOPs arguments or an unreadable model config."""


def decoder_flops_per_layer(
    tokens_per_layer: Tensor,
    hidden: int,
    intermediate: int,
    num_heads: int,
    num_kv_heads: int,
    gated_mlp: bool = True,
    formula: Formula = "reference",
    head_dim: int | None = None,
) -> Tensor:
    """MACs of each decoder layer, ``[..., L] -> [..., L]``.

    Args:
        tokens_per_layer: ``[..., L]`` total sequence length each layer processed.
        hidden, intermediate: ``d`` and MLP width ``m``.
        num_heads, num_kv_heads: attention and key/value heads (GQA when fewer kv heads).
        gated_mlp: three MLP matmuls (gated) or two.
        formula: ``"reference"`` or ``"gqa"`` (module docstring).
        head_dim: per-head width; ``hidden // num_heads`` when None.

    Returns:
        int64 for integer token counts (exact), float64 otherwise.
    """
    head_dim = _head_dim(hidden, num_heads, head_dim)
    if formula not in FORMULAS:
        raise FlopsError(f"formula={formula!r} is unknown; use one of {FORMULAS}")
    n = tokens_per_layer.to(torch.float64 if tokens_per_layer.is_floating_point() else torch.int64)
    mlp = (GATED_MLP_MATMULS if gated_mlp else PLAIN_MLP_MATMULS) * n * hidden * intermediate
    if formula == "reference":
        projections = REFERENCE_PROJECTIONS * n * hidden * hidden
        attention = ATTENTION_MATMULS * n * n * hidden
    else:
        query_width, kv_width = num_heads * head_dim, num_kv_heads * head_dim
        projections = 2 * n * hidden * query_width + 2 * n * hidden * kv_width  # (q, o), (k, v)
        attention = ATTENTION_MATMULS * n * n * query_width
    return projections + attention + mlp


def decoder_flops(
    tokens_per_layer: Tensor,
    hidden: int,
    intermediate: int,
    num_heads: int,
    num_kv_heads: int,
    gated_mlp: bool = True,
    formula: Formula = "reference",
    head_dim: int | None = None,
) -> Tensor:
    """MACs of the whole decoder, ``[..., L] -> [...]`` (see ``decoder_flops_per_layer``)."""
    per_layer = decoder_flops_per_layer(
        tokens_per_layer, hidden, intermediate, num_heads, num_kv_heads, gated_mlp, formula, head_dim
    )
    return per_layer.sum(dim=-1)


def decoder_flops_from_config(
    tokens_per_layer: Tensor, config: Any, formula: Formula = "gqa", gated_mlp: bool = True
) -> Tensor:
    """``decoder_flops`` with sizes read from a transformers config, ``[..., L] -> [...]``.

    Reads ``hidden_size``, ``intermediate_size``, ``num_attention_heads``,
    ``num_key_value_heads`` (defaults to the head count) and ``head_dim`` (optional) from the
    config's text config (``get_text_config()``, so a VLM config works too). Defaults to the exact
    ``"gqa"`` count; pass ``formula="reference"`` to reproduce the authors' numbers.
    """
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = _config_int(text, "hidden_size")
    num_heads = _config_int(text, "num_attention_heads")
    num_kv_heads = getattr(text, "num_key_value_heads", None) or num_heads
    head_dim = getattr(text, "head_dim", None)
    return decoder_flops(
        tokens_per_layer,
        hidden,
        _config_int(text, "intermediate_size"),
        num_heads,
        int(num_kv_heads),
        gated_mlp,
        formula,
        int(head_dim) if head_dim else None,
    )


def _head_dim(hidden: int, num_heads: int, head_dim: int | None) -> int:
    if head_dim is not None:
        return head_dim
    if num_heads < 1 or hidden % num_heads:
        raise FlopsError(
            f"hidden={hidden} is not divisible by num_heads={num_heads}; pass head_dim explicitly"
        )
    return hidden // num_heads


def _config_int(config: Any, name: str) -> int:
    value = getattr(config, name, None)
    if value is None:
        raise FlopsError(
            f"config {type(config).__name__} has no {name!r}; pass the sizes to decoder_flops directly"
        )
    return int(value)
