"""Vision saliency of Qwen2.5-VL's merged image tokens, for pre-decoder pruners (FasterVLM-style).

Qwen2.5-VL's vision tower has no [CLS] token or pooling head to rank patches by. The ranking
used here is the attention each token *receives* in the tower's last full-attention block (every
patch of an image attends to every other): averaged over heads and over the image's query patches,
then summed over the ``merge x merge`` patches that the merger turns into one decoder token. It is
recomputed from the block's own inputs (``qkv`` projection + vision rotary), so any attention
implementation works, and query rows are processed in chunks so that a full-resolution camera
(thousands of patches) does not materialise its whole attention matrix.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from vla_autoprune import compat_qwen
from vla_autoprune.models.driving_vla import CapturedSaliency

#: Query rows per chunk: [heads, 1024, patches] fp32 stays ~100 MB for a 5k-patch image, 16 heads.
_QUERY_CHUNK = 1024


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def received_attention(
    attn: nn.Module, hidden: torch.Tensor, cu_seqlens: torch.Tensor, cos_sin: Any
) -> torch.Tensor:
    """float32 ``[S]``: attention each patch receives within its image, mean over heads and queries.

    Args:
        attn: a Qwen2.5-VL vision attention module (``qkv``, ``num_heads``, ``scaling``).
        hidden: float ``[S, dim]``, its (normed) input, patches of all images packed.
        cu_seqlens: int ``[I + 1]``, image boundaries in ``hidden``.
        cos_sin: the ``(cos, sin)`` ``[S, head_dim]`` vision rotary it is given.
    """
    module: Any = attn
    s = hidden.shape[0]
    q, k, _ = module.qkv(hidden).reshape(s, 3, module.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    cos, sin = (t.unsqueeze(-2).float() for t in cos_sin)
    q = q.float() * cos + _rotate_half(q.float()) * sin  # [S, H, hd]
    k = k.float() * cos + _rotate_half(k.float()) * sin
    out = torch.zeros(s, dtype=torch.float32, device=hidden.device)
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        keys = k[start:end].transpose(0, 1)  # [H, n, hd]
        total = torch.zeros(end - start, dtype=torch.float32, device=hidden.device)
        for row in range(start, end, _QUERY_CHUNK):
            queries = q[row : min(row + _QUERY_CHUNK, end)].transpose(0, 1)  # [H, c, hd]
            probs = torch.softmax(queries @ keys.transpose(1, 2) * float(module.scaling), dim=-1)
            total += probs.sum(dim=(0, 1))
        out[start:end] = total / (module.num_heads * (end - start))
    return out


@contextmanager
def qwen_vision_saliency(visual: nn.Module, grid_thw: torch.Tensor) -> Iterator[CapturedSaliency]:
    """While active, a forward of the vision tower ``visual`` on ``grid_thw`` ``[I, 3]`` records the
    saliency float32 ``[I, P]`` of its merged tokens (``P`` per image, in the merger's output order)."""
    config: Any = visual.config
    attention = compat_qwen.last_full_attention(visual)
    captured = CapturedSaliency()
    merge_unit = int(config.spatial_merge_size) ** 2

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        per_patch = received_attention(module, hidden, kwargs["cu_seqlens"], kwargs["position_embeddings"])
        per_token = per_patch.view(-1, merge_unit).sum(dim=1)  # window order, one row per merged token
        order = torch.argsort(compat_qwen.vision_window_index(config, grid_thw).to(per_token.device))
        captured.value = per_token[order].view(grid_thw.shape[0], -1)

    handle = attention.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield captured
    finally:
        handle.remove()
