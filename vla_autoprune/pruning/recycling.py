"""Recycling (SparseVLM, AutoPrune): part of the dropped tokens come back as merged tokens.

The reference's rule: of the ``d`` tokens a layer drops, the best-scored ``m = int(0.3 d) + 1``
are merged by DPC-kNN (:mod:`vla_autoprune.pruning.merging`) into ``min(m // 10 + 1, m)`` tokens,
placed right after the kept visual tokens. Merged tokens count against the budget.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import overload

import torch
from torch import Tensor

from vla_autoprune.devices import device_ints
from vla_autoprune.indexing import gather_rows
from vla_autoprune.pruning.merging import DEFAULT_NEIGHBOURS, dpc_knn_merge
from vla_autoprune.pruning.pruner import LayerView, Merge

RECYCLE_FRACTION = 0.3  # the top 30% of the dropped tokens are recycled ...
TOKENS_PER_CLUSTER = 10  # ... into about a tenth as many merged tokens
# `split_handed_on` fixed-point steps: each step shrinks the error to about 3% of itself plus one
# token (recycle_count grows ~0.03 per dropped token), so 16 steps are exact far beyond V = 1e9.
SPLIT_ITERATIONS = 16


@overload
def recycle_count(num_dropped: int) -> int: ...


@overload
def recycle_count(num_dropped: Tensor) -> Tensor: ...


def recycle_count(num_dropped: int | Tensor) -> int | Tensor:
    """Merged tokens made from ``d`` dropped ones: ``min(m // 10 + 1, m)``, ``m = int(0.3 d) + 1``.

    Zero when nothing is dropped. The tensor form (int64, ``d >= 0``, any shape) uses float64 for
    ``0.3 d`` so it agrees with the reference's Python floats bit for bit.
    """
    if isinstance(num_dropped, Tensor):
        groups = torch.floor(num_dropped.to(torch.float64) * RECYCLE_FRACTION).to(torch.int64) + 1
        merged = torch.minimum(groups // TOKENS_PER_CLUSTER + 1, groups)
        return torch.where(num_dropped > 0, merged, torch.zeros_like(merged))
    if num_dropped == 0:
        return 0
    recycled = int(RECYCLE_FRACTION * num_dropped) + 1
    return min(recycled // TOKENS_PER_CLUSTER + 1, recycled)


def split_handed_on(
    processed: Sequence[int], handed_on: Sequence[int], recycle: bool = True
) -> tuple[list[int], list[int]]:
    """Split each row's hand-on count into kept visual tokens and merged (recycled) tokens.

    Host ints in, host ints out: the engine sizes a pruning layer's output from them, so the split
    never waits for the device. With recycling, ``keep`` is the largest count with
    ``keep + recycle_count(processed - keep) == handed_on``. When even keeping nothing would recycle
    more than ``handed_on`` tokens, the budget has no room for merging: ``keep = handed_on``,
    ``merged = 0``.

    Args:
        processed: tokens each row's layer processed.
        handed_on: tokens each row hands on, ``1 <= handed_on <= processed``.
        recycle: False gives ``(handed_on, 0)``.

    Returns:
        ``(keep, merged)``, one int per row each, summing to ``handed_on``.
    """
    kept = [_largest_keep(p, n) if recycle else n for p, n in zip(processed, handed_on, strict=True)]
    return kept, [n - k for n, k in zip(handed_on, kept, strict=True)]


def _largest_keep(processed: int, handed_on: int) -> int:
    """``keep`` of :func:`split_handed_on` for one row: the fixed point of ``keep = n - r(P - keep)``.

    Starting from ``n`` the iteration decreases monotonically onto the largest solution, and a
    fixed point stays one, so stopping early equals running all ``SPLIT_ITERATIONS`` steps.
    """
    if recycle_count(processed) > handed_on:  # no room for merging
        return handed_on
    keep = handed_on
    for _ in range(SPLIT_ITERATIONS):
        step = handed_on - recycle_count(processed - keep)
        if step == keep:
            break
        keep = step
    return keep


def recycle_dropped(
    view: LayerView,
    scores: torch.Tensor,
    dropped: torch.Tensor,
    clusters: torch.Tensor,
    pool_fraction: float = RECYCLE_FRACTION,
    neighbours: int | None = DEFAULT_NEIGHBOURS,
) -> Merge:
    """Merge the best-scored dropped tokens into ``clusters`` [B] tokens by DPC-kNN.

    The pool is the top ``int(pool_fraction * d) + 1`` of the ``d`` dropped tokens of a row (the
    reference's rule); merging runs on the layer's output hidden states. Each merged token takes the
    position of its best-scored member.

    Args:
        view: the layer view (``output`` ``[B, K, D]``, ``visual_slots`` ``[B, Kv]``).
        scores: float ``[B, Kv]`` visual-token scores at this layer.
        dropped: bool ``[B, Kv]`` visual slots dropped at this layer.
        clusters: int64 ``[B]`` merged tokens wanted per row.
        pool_fraction: share of the dropped tokens that enter the pool.
        neighbours: DPC-kNN's ``k``; None uses each row's cluster count, as the SparseVLM and
            AutoPrune reference code do (:mod:`vla_autoprune.pruning.merging`).
    """
    b, kv = dropped.shape
    ranked = torch.where(dropped, scores.float(), float("-inf"))
    ranked_sorted, order = torch.sort(ranked, dim=1, descending=True, stable=True)
    max_clusters = None
    count_host = None
    if view.merge_host is None:
        d = dropped.sum(dim=1)
        pool_size = torch.minimum(torch.floor(d.double() * pool_fraction).long() + 1, d)
        width = max(int(pool_size.max()), 1)
    else:  # the same sizes from the engine's host counts (float64 on both sides): no sync
        dropped_host, clusters_host = view.merge_host
        pools = [min(math.floor(n * pool_fraction) + 1, n) for n in dropped_host]
        pool_size = device_ints(pools, dropped.device)
        width = max(max(pools, default=0), 1)
        # each row's valid merged tokens: its first min(clusters, pool) slots (valid below)
        count_host = [min(c, p) for c, p in zip(clusters_host, pools, strict=True)]
        max_clusters = max(count_host, default=0)
    pool = order[:, :width]  # [B, M] indices into the visual block
    pool_ok = torch.arange(width, device=pool.device) < pool_size.unsqueeze(1)
    pool_slots = view.visual_slots.gather(1, pool)
    pool_hidden = gather_rows(view.output, pool_slots)
    wanted = clusters.clamp(max=pool_size)
    k = wanted.clamp(min=1) if neighbours is None else neighbours
    merged, assign = dpc_knn_merge(pool_hidden, wanted, k=k, valid=pool_ok, max_clusters=max_clusters)
    c = merged.shape[1]
    member = assign.unsqueeze(-1) == torch.arange(c, device=assign.device)  # [B, M, C]
    pool_scores = ranked_sorted[:, :width].unsqueeze(-1).expand(-1, -1, c)  # = ranked.gather(1, pool)
    best = torch.where(member, pool_scores, float("-inf")).argmax(dim=1)  # [B, C] index into pool
    # A row's first min(clusters, pool) slots are its clusters, each holding at least its centre
    # (which joins itself): valid is that prefix by construction, as count_host says.
    valid = torch.arange(c, device=pool.device) < torch.minimum(clusters, pool_size).unsqueeze(1)
    joined = pool_ok & (assign >= 0) & valid.gather(1, assign.clamp(min=0))
    members = torch.full((b, kv), -1, dtype=torch.int64, device=pool.device)
    members.scatter_(1, pool, torch.where(joined, assign, -1))  # pool indices are distinct per row
    return Merge(
        hidden=merged,
        representative=pool.gather(1, best),
        valid=valid,
        members=members,
        count_host=count_host,
    )
