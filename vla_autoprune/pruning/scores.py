"""Text -> visual attention, recomputed from a decoder layer's own projections.

Pruners rank visual tokens by how much the text queries attend to them. The layers themselves keep
running SDPA (or FlashAttention), which never materialises attention probabilities, so the engine
recomputes only the block it needs, ``T`` text rows x all columns, from the layer's input:
``input_layernorm`` -> ``q_proj``/``k_proj`` (-> per-head norms) -> rotary with the (cos, sin) the
layer is given -> GQA repeat -> ``scaling`` -> the layer's mask -> fp32 softmax over ALL columns,
then keeps the visual columns. Probabilities are NOT renormalised over the visual columns: the share
of attention that goes to vision is part of AutoPrune's signal. This equals eager attention's
``output_attentions`` rows (tested to ~1e-6).

When the layer's own ``q_proj`` and ``k_proj`` outputs are at hand (the engine captures them with
hooks while the layer runs), they are used as they are instead of being recomputed: the text rows'
queries are then the very ones the layer attended with (a matmul over the text rows alone can
differ from them in the last bit, as CPU BLAS picks other kernels for few rows). This recomputation is extra
work beyond the decoder's own; :func:`attention_macs` counts it so the record can report it apart
from the decoder FLOPs (as if nothing were reused, which keeps the count independent of hooks).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from vla_autoprune import compat
from vla_autoprune.indexing import gather_rows


def _row_mask(attention_mask: torch.Tensor, rows: torch.Tensor, num_keys: int) -> torch.Tensor:
    """bool ``[B, 1, T, N]``: which keys each query row may attend to under the layer's 4D mask."""
    allowed = compat.mask_to_bool(attention_mask)
    if allowed.shape[1] != 1:  # a per-head mask: gather each head's rows
        b, t = rows.shape
        allowed = allowed.expand(b, -1, -1, -1)
        return allowed.gather(2, rows.view(b, 1, t, 1).expand(-1, allowed.shape[1], -1, allowed.shape[-1]))
    return gather_rows(allowed[:, 0], rows).unsqueeze(1)


def attention_macs(layer: nn.Module, rows: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """int64 ``[B]``: MACs of recomputing ``rows`` [B] query rows over ``keys`` [B] keys at ``layer``.

    ``q_proj`` on the rows, ``k_proj`` on every key and ``Q K^T`` (norms, rotary and softmax are not
    counted, as in :mod:`vla_autoprune.pruning.flops`).
    """
    hidden, query_width, kv_width = _projection_widths(layer)
    rows, keys = rows.long(), keys.long().to(rows.device)
    return rows * hidden * query_width + keys * hidden * kv_width + rows * keys * query_width


def attention_macs_host(layer: nn.Module, rows: list[int], keys: list[int]) -> list[int]:
    """:func:`attention_macs` on host ints (the same integers, no tensor op): one entry per row."""
    hidden, query_width, kv_width = _projection_widths(layer)
    return [
        r * hidden * query_width + k * hidden * kv_width + r * k * query_width
        for r, k in zip(rows, keys, strict=True)
    ]


def _projection_widths(layer: nn.Module) -> tuple[int, int, int]:
    """``(hidden, query width, key width)`` of the layer's ``q_proj`` and ``k_proj``."""
    attn: Any = layer.self_attn  # transformers modules expose the projections as attributes
    return int(attn.q_proj.in_features), int(attn.q_proj.out_features), int(attn.k_proj.out_features)


def text_visual_attention(
    layer: nn.Module,
    hidden: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    attention_mask: torch.Tensor | None,
    text_rows: torch.Tensor,
    visual_cols: torch.Tensor,
    projected: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Attention probabilities of text queries over visual keys at one layer.

    Args:
        layer: the decoder layer (unmodified transformers module).
        hidden: float ``[B, N, D]``, the hidden states the layer receives.
        position_embeddings: ``(cos, sin)``, each ``[1 or B, N, rd]``, as the layer receives them.
        attention_mask: the layer's 4D mask ``[1 or B, 1, N, N]`` (bool or additive), or None for
            plain causal attention.
        text_rows: int64 ``[B, T]``, sequence indices of the text queries (pad with any valid row).
        visual_cols: int64 ``[B, V]``, sequence indices of the visual keys.
        projected: ``(query_proj, key_proj)``, the layer's own ``q_proj`` output ``[B, N, H * hd]``
            and ``k_proj`` output ``[B, N, Hkv * hd]`` from its forward; None recomputes them.

    Returns:
        float32 ``[B, H, T, V]``: softmax over all ``N`` columns, restricted to the visual columns.
    """
    b, n, _ = hidden.shape
    cos, sin = (x.expand(b, -1, -1) for x in position_embeddings)
    if projected is None:
        q, k = compat.queries_keys(layer, hidden, cos, sin, text_rows)
    else:
        q, k = _queries_keys(layer, *projected, cos, sin, text_rows)
    logits = torch.matmul(q.float(), k.float().transpose(-1, -2))
    logits.mul_(compat.attention_scaling(layer))  # in place: the same values, one [B, H, T, N] less
    # Each row may also see itself: a padding row (fully masked) then gives zeros, not NaN; real
    # rows always see themselves already (so plain causal attention needs no diagonal added).
    keys = torch.arange(n, device=hidden.device).view(1, 1, 1, -1)
    if attention_mask is None:
        blocked = keys > text_rows.view(b, 1, -1, 1)
    else:
        blocked = ~(_row_mask(attention_mask, text_rows, n) | (keys == text_rows.view(b, 1, -1, 1)))
    # Adding 0 / -inf ([B, 1, T, N], shared by the heads) instead of a broadcast masked_fill: the
    # same softmax input (finite + 0 is itself, up to the sign of a zero, which exp ignores), ~7x faster.
    logits.add_(
        torch.zeros(blocked.shape, dtype=logits.dtype, device=logits.device).masked_fill_(blocked, -math.inf)
    )
    probs = logits.softmax(dim=-1)  # [B, H, T, N]
    if b == 1:  # one row of columns: select them from the 2D [H * T, N] view (~2.5x faster than 4D)
        h, t = probs.shape[1:3]
        return probs.view(h * t, n).index_select(1, visual_cols[0]).view(b, h, t, -1)
    cols = visual_cols.view(b, 1, 1, -1).expand(-1, probs.shape[1], probs.shape[2], -1)
    return probs.gather(-1, cols)


def _queries_keys(
    layer: nn.Module,
    query_proj: torch.Tensor,
    key_proj: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    query_rows: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`compat.queries_keys` from the layer's own ``q_proj`` and ``k_proj`` outputs.

    ``query_proj`` ``[B, N, H * hd]``, ``key_proj`` ``[B, N, Hkv * hd]``, ``cos``/``sin``
    ``[B, N, rd]``, ``query_rows`` int64 ``[B, T]`` -> ``q`` ``[B, H, T, hd]``, ``k`` ``[B, H, N, hd]``.
    """
    attn: Any = layer.self_attn
    head_dim = int(attn.head_dim)
    q = compat.split_heads(gather_rows(query_proj, query_rows), head_dim, getattr(attn, "q_norm", None))
    k = compat.split_heads(key_proj, head_dim, getattr(attn, "k_norm", None))
    q = compat.apply_rotary(q, gather_rows(cos, query_rows), gather_rows(sin, query_rows))
    k = compat.apply_rotary(k, cos, sin)
    groups = q.shape[1] // k.shape[1]
    if groups == 1:  # no GQA: repeat_interleave would only copy
        return q, k
    return q, k.repeat_interleave(groups, dim=1)  # GQA: KV head j serves query heads j*g .. j*g+g-1
