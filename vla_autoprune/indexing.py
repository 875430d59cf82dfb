"""Row gathers as copies of whole rows (``index_select``), not element by element.

``x.gather(1, index[..., None].expand(B, K, D))`` reads one index per element; selecting whole
``D``-wide rows of the flattened ``[B * N, D]`` tensor is the same copy, about ten times faster on
the CPU (issue 14). Results equal ``gather``'s bit for bit (no arithmetic) and are contiguous.
"""

from __future__ import annotations

import torch


def gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x`` ``[B or 1, N, ...]`` gathered along dim 1 at ``index`` int64 ``[B, K]`` -> ``[B, K, ...]``.

    A batch-shared ``x`` (``B == 1``, or expanded with stride 0) is indexed once for all rows.
    """
    b, k = index.shape
    tail = x.shape[2:]
    if x.shape[0] == 1 or x.stride(0) == 0:  # one row serves the whole batch
        return x[0].index_select(0, index.reshape(-1)).view(b, k, *tail)
    n = x.shape[1]
    flat = index + torch.arange(b, device=index.device).unsqueeze(1) * n
    return x.reshape(b * n, *tail).index_select(0, flat.reshape(-1)).view(b, k, *tail)


def scatter_rows_(out: torch.Tensor, index: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``out[b, index[b, j]] = rows[b, j]`` in place (``out`` contiguous ``[B, N, ...]``); returns ``out``.

    Repeated indices within a row leave one of the written rows (use them only for a spare slot).
    """
    b, n = out.shape[:2]
    tail = out.shape[2:]
    flat = index + torch.arange(b, device=index.device).unsqueeze(1) * n
    out.view(b * n, *tail).index_copy_(0, flat.reshape(-1), rows.reshape(-1, *tail))
    return out


def true_indices(mask: torch.Tensor, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of True per row, in order: (int64 ``[B, M]``, valid bool ``[B, M]``).

    ``M`` is ``width`` when the caller knows the largest count (no host sync), else the max count.
    """
    counts = mask.sum(dim=1)
    if width is None:
        width = int(counts.max()) if mask.numel() else 0
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :width]
    valid = torch.arange(width, device=mask.device) < counts.unsqueeze(1)
    return order, valid
