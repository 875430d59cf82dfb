"""Which original visual tokens each layer ran on, worked out on the host after the forward.

The engine's hooks keep, for every set of token slots a layer ran on, the slots' ``src`` (index into
the run inputs' sequence; a merged token has its representative's), ``valid`` and ``merged`` flags,
and, for every merge that named its members, which visual slots joined which merged token. From
those, once the prefill is over, this module derives the record's ``kept_visual``,
``merged_tokens`` and ``merged_into`` in numpy: a few microseconds per operation, where the same
bookkeeping as torch ops inside the hooks cost several hundred dispatched ops per prefill (issue 14).

All arrays are numpy, int64 or bool, one row per sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class MergeEvent:
    """A merge that named its members (:class:`vla_autoprune.pruning.pruner.Merge`), on the host.

    ``slot_src`` / ``slot_merged`` ``[B, Kv]``: the ``src`` and merged flag of the layer's visual
    slots; ``members`` ``[B, Kv]``: the new merged token each slot joined (-1: none);
    ``representative`` ``[B, R]``: the visual slot whose ``src`` each new merged token takes.
    """

    slot_src: np.ndarray
    slot_merged: np.ndarray
    members: np.ndarray
    representative: np.ndarray


def _rows(b: int) -> np.ndarray:
    return np.arange(b)[:, None]


def packed_kept(
    src: np.ndarray, valid: np.ndarray, merged: np.ndarray, visual: np.ndarray, origin: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The original visual tokens among a layer's slots, and its valid merged tokens per row.

    Args:
        src, valid, merged: ``[B, K]``, the slots.
        visual: bool ``[B, N]``, which run-input positions are visual.
        origin: ``[B, N]``, each run-input position's index among the given inputs' ``V`` visual
            tokens (meaningful at visual positions).

    Returns:
        ``(kept [B, Kv] ascending in sequence order, -1 padded; merged_count [B])``.
    """
    rows = _rows(src.shape[0])
    live = visual[rows, src] & valid
    original = live & ~merged
    counts = original.sum(axis=1)
    width = int(counts.max()) if original.size else 0
    order = np.argsort(~original, axis=1, kind="stable")[:, :width]  # original slots first, in order
    kept = origin[rows, src[rows, order]]
    kept[np.arange(width)[None, :] >= counts[:, None]] = -1
    return kept, (live & merged).sum(axis=1)


class MemberTracker:
    """Which merged slot holds each of the ``V`` original visual tokens, replayed merge by merge.

    ``owner`` ``[B, V + 1]``: the ``src`` of the merged slot holding original token ``v`` (-1: none;
    the last column is a spare target for masked writes). Merged slots are named by ``src`` (their
    representative's), which is unique among a layer's valid merged slots: a representative was
    dropped when its merge was made, so at most a filler (never valid, never merged again) shares it.
    """

    def __init__(self, batch: int, num_visual: int, seq_len: int) -> None:
        self.num_visual = num_visual
        self.seq_len = seq_len  # N: run-input positions; column N is the spare
        self.owner = np.full((batch, num_visual + 1), -1, dtype=np.int64)

    def join(self, event: MergeEvent, origin: np.ndarray) -> None:
        """Apply one merge: its members' tokens now belong to the new merged tokens.

        ``origin`` ``[B, N]``: as in :func:`packed_kept`. Tokens held by a merged slot that joined
        the merge move with it; original tokens that joined are owned directly.
        """
        b, n, v = self.owner.shape[0], self.seq_len, self.num_visual
        rows = _rows(b)
        joined = event.members >= 0
        rep_src = event.slot_src[rows, event.representative]
        target = np.where(joined, rep_src[rows, np.maximum(event.members, 0)], -1)
        remap = np.full((b, n + 1), -1, dtype=np.int64)
        remap[rows, np.where(joined & event.slot_merged, event.slot_src, n)] = target
        remap[:, n] = -1
        moved = remap[rows, np.maximum(self.owner, 0)]
        self.owner = np.where((self.owner >= 0) & (moved >= 0), moved, self.owner)
        fresh = joined & ~event.slot_merged
        column = np.where(fresh, origin[rows, event.slot_src], v)
        self.owner[rows, column] = np.where(fresh, target, -1)
        self.owner[:, v] = -1

    def merged_into(
        self, src: np.ndarray, valid: np.ndarray, merged: np.ndarray, visual: np.ndarray
    ) -> np.ndarray:
        """int64 ``[B, V]``: rank (in slot order) of the live merged slot holding each original token, -1 for none."""
        b, n = src.shape[0], self.seq_len
        rows = _rows(b)
        live_merged = visual[rows, src] & valid & merged
        rank = np.full((b, n + 1), -1, dtype=np.int64)
        rank[rows, np.where(live_merged, src, n)] = np.cumsum(live_merged, axis=1) - 1
        rank[:, n] = -1
        held = self.owner[:, : self.num_visual]
        return np.where(held >= 0, rank[rows, np.maximum(held, 0)], -1)
