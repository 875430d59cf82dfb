"""Position ids of pruned sequences: survivors keep their ids, or are renumbered without gaps.

Ids are ``[B, N]``, or Qwen-VL's M-RoPE ``[3, B, N]`` (temporal, height, width). Used by the engine
(layers after a drop) and by pre-decoder selection (shortened inputs).
"""

from __future__ import annotations

import torch


def first_real_position(position_ids: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """int64 ``[B, 1]``: the position id of each row's first real (non-padding) token."""
    return position_ids.gather(1, real.long().argmax(dim=1, keepdim=True))


def contiguous_positions(position_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """int64 ``[B, N]``: real tokens renumbered ``p0, p0 + 1, ...`` in order (padding: ``p0``).

    ``p0`` is the row's first real token's id in ``position_ids`` ``[B, N]`` (``attention_mask``
    ``[B, N]``, 1 = real); for prepared inputs it is 0, as for a fresh prompt.
    """
    real = attention_mask.bool()
    return first_real_position(position_ids, real) + (real.long().cumsum(dim=1) - 1).clamp(min=0)


def sequence_positions(position_ids: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor:
    """int64 ``[B or 1, N]``: one sequence id per token, for layers the model gives no position ids.

    Qwen-VL layers get ``position_ids=None`` (their M-RoPE ids ``[3, B, N]`` are already folded
    into cos/sin); their temporal row is the sequence id (text tokens have t = h = w). Else the
    inputs' ``[B, N]`` ids, or ``0..N-1``.
    """
    if position_ids is None:
        return torch.arange(n, device=device).unsqueeze(0)
    return position_ids[0] if position_ids.dim() == 3 else position_ids


def gather_positions(position_ids: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Ids ``[B, N]`` (or M-RoPE ``[3, B, N]``) gathered at sequence positions ``index`` ``[B, K]``."""
    if position_ids.dim() == 3:
        return position_ids.gather(2, index.unsqueeze(0).expand(position_ids.shape[0], -1, -1))
    return position_ids.expand(index.shape[0], -1).gather(1, index)


def renumber(position_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """:func:`contiguous_positions`; for M-RoPE ids ``[3, B, N]`` the same id on all three axes.

    ``contiguous`` under M-RoPE numbers every survivor as a text token is numbered (t = h = w =
    ``p0`` + real survivors before it), so image tokens lose their 2-D (h, w) layout; use
    ``original`` to keep it.
    """
    if position_ids.dim() == 3:
        flat = contiguous_positions(position_ids[0], attention_mask)
        return flat.unsqueeze(0).expand(position_ids.shape[0], -1, -1)
    return contiguous_positions(position_ids, attention_mask)
