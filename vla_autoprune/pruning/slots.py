"""Token slots of a pruned prefill, and how a drop makes the slots the next layer runs on.

A :class:`Slots` says, for each position of the sequence a layer receives, which token of the run
inputs it holds (``src``), whether it is real or a filler padding a ragged row (``valid``) and
whether it is a merged token; what the engine knows on the host about it (live counts, ragged or
not) travels with it so the hooks need no sync. :class:`Dropper` holds what is fixed per forward
(which run-input tokens are visual, text, real; the cameras; the pruner's merge) and builds, after a
pruning layer ran, the new slots and the gather of its output (:meth:`Dropper.drop`): each row's
top-scored visual tokens stay where they were, merged tokens go right after the last visual slot,
everything else keeps its order. :meth:`Dropper.restore` scatters the last layer's output back to
the input positions. The engine (:mod:`vla_autoprune.pruning.engine`) owns the hooks that call them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from vla_autoprune.indexing import gather_rows, scatter_rows_, true_indices
from vla_autoprune.profiling import stage
from vla_autoprune.pruning.cameras import camera_choice, rank_order
from vla_autoprune.pruning.pruner import LayerView, Merge, SlotIndex

# Rows of a ragged batch are padded with dropped tokens; this index marks "no slot" while sorting.
NO_SLOT = torch.iinfo(torch.int64).max


@dataclass
class Slots:
    """The token slots of a batch at one layer.

    ``src`` int64 ``[B, K]``: index into the run inputs' sequence (merged tokens: their
    representative's); ``valid`` bool ``[B, K]`` (False for fillers); ``merged`` bool ``[B, K]``;
    ``identity``: nothing has been dropped (the slots are the input sequence itself). Known on the
    host, so the hooks need no sync for them: ``visual_width``, the visual slots per row (every row
    has as many), ``alive``, each row's valid visual tokens, ``ragged``, whether some slot is a
    filler, and ``has_merged``, whether some slot may be a merged token.
    """

    src: torch.Tensor
    valid: torch.Tensor
    merged: torch.Tensor
    identity: bool
    visual_width: int
    alive: list[int]  # on the host: valid visual tokens per row
    ragged: bool = False
    has_merged: bool = False
    # The merge that made these slots, when it named its members: (the slots it ran on, their
    # visual slots [B, Kv], Merge.members, Merge.representative); replayed on the host afterwards.
    joined: tuple[Slots, torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    # What every layer that runs on these slots gets (computed at the first, reused until a drop).
    tokens: list[int] | None = None  # on the host: valid real tokens per row
    tokens_tensor: torch.Tensor | None = None  # the same as a tensor (LayerView.tokens)
    layer_kwargs: dict[str, Any] | None = None  # position ids, (cos, sin) and mask
    index: SlotIndex | None = None  # where the visual and text tokens sit (on first use, or from the drop)

    @property
    def length(self) -> int:
        return int(self.src.shape[1])


@dataclass
class Block:
    """The visual tokens a pruning layer hands on, ``[B, W]`` each, with their sequence sort keys."""

    src: torch.Tensor
    valid: torch.Tensor
    merged: torch.Tensor
    rows: torch.Tensor  # where each entry's hidden state is: a slot of the layer output, or K + merged index
    keys: torch.Tensor
    merged_hidden: torch.Tensor | None = None  # [B, R, D] in the output's dtype, when some row merges
    merge: Merge | None = None  # the merge, for the record (its members and representatives)


@dataclass(frozen=True)
class DropCounts:
    """What a pruning layer keeps and merges per row: ``kept`` / ``clusters`` int64 ``[B]`` on the
    device, and the same counts on the host (the block's shape and the merge sizes need no sync)."""

    kept: torch.Tensor
    clusters: torch.Tensor
    kept_host: list[int]
    clusters_host: list[int]

    @property
    def merges(self) -> bool:
        """Whether some row merges."""
        return any(c > 0 for c in self.clusters_host)


@dataclass
class Dropper:
    """Builds the slots a pruning layer hands on, from what is fixed for one forward.

    Attributes:
        visual, text, real: bool ``[B, N]``, which tokens of the run inputs are visual, text and
            not padding.
        visual_rank: int64 ``[B, N]``, each token's index among the visual tokens (-1 before the first).
        text_width: the most text tokens of a row; ``text_full``: every row has that many.
        camera: int64 ``[B, V]``, the camera of each visual token of the run inputs.
        camera_ratios: the pruner's per-camera shares of the kept tokens, or None.
        merge: the pruner's :meth:`~vla_autoprune.pruning.pruner.Pruner.merge`.
    """

    visual: torch.Tensor
    text: torch.Tensor
    real: torch.Tensor
    visual_rank: torch.Tensor
    text_width: int
    text_full: bool
    camera: torch.Tensor
    camera_ratios: list[float] | None
    merge: Callable[[LayerView, torch.Tensor, torch.Tensor, torch.Tensor], Merge | None]

    def index(self, slots: Slots) -> SlotIndex:
        """Where the visual and text tokens sit among ``slots`` (computed only when a pruner asks, once)."""
        if slots.index is not None:
            return slots.index
        src = slots.src
        # Every row has visual_width visual slots (check_layout, and each drop keeps rows equal).
        visual_slots, _ = true_indices(self.visual.gather(1, src), slots.visual_width)
        text_slots, text_ok = true_indices(self.text.gather(1, src) & slots.valid, self.text_width)
        slots.index = SlotIndex(
            visual_slots=visual_slots,
            visual_valid=slots.valid.gather(1, visual_slots),
            visual_index=self.visual_rank.gather(1, src.gather(1, visual_slots)),
            text_slots=text_slots,
            text_valid=text_ok,
        )
        return slots.index

    def moved_index(self, old: SlotIndex, perm: torch.Tensor, block: Block, k: int) -> SlotIndex | None:
        """The new slots' :class:`SlotIndex` from the drop's sort ``perm`` ``[B, K + W]`` (no index sorts).

        Block entry ``j`` (sort input ``K + j``) lands at ``inv[K + j]``, ascending in ``j`` (distinct
        keys, ties in entry order), so those are the new visual slots in order; text slots keep their
        order and only move. Padded text entries (rows with fewer text tokens) could point at a dropped
        slot, so with them (not ``text_full``) this returns None and the index is recomputed.
        """
        if not self.text_full:
            return None
        b = perm.shape[0]
        inv = torch.empty_like(perm).scatter_(
            1, perm, torch.arange(perm.shape[1], device=perm.device).expand(b, -1)
        )
        return SlotIndex(
            visual_slots=inv[:, k:].contiguous(),
            visual_valid=block.valid,
            visual_index=self.visual_rank.gather(1, block.src),
            text_slots=inv.gather(1, old.text_slots),
            text_valid=old.text_valid,
        )

    def drop(
        self, view: LayerView, slots: Slots, scores: torch.Tensor, counts: DropCounts
    ) -> tuple[Slots, torch.Tensor]:
        """New slots and hidden states after keeping ``counts.kept`` top-scored visual tokens per row
        and merging ``counts.clusters`` of the dropped ones.

        Kept visual tokens (and a row's fillers) stay where they were, merged tokens go right after
        the last visual slot; non-visual tokens keep their order. ``scores`` float ``[B, Kv]``:
        the visual slots' scores.
        """
        block, alive = self._visual_block(view, slots, scores, counts)
        b, k = slots.src.shape
        visual = self.visual.gather(1, slots.src)
        # Sort keys: 2 * slot index; merged tokens 2 * (last visual slot) + 1; old visual slots last.
        old_keys = torch.where(visual, NO_SLOT, 2 * torch.arange(k, device=visual.device))
        keys = torch.cat([old_keys, block.keys], dim=1)
        length = k - view.visual_slots.shape[1] + block.keys.shape[1]
        perm = torch.argsort(keys, dim=1, stable=True)
        order = perm[:, :length]

        def arrange(old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
            return torch.cat([old, new], dim=1).gather(1, order)

        new_slots = Slots(
            src=arrange(slots.src, block.src),
            valid=arrange(slots.valid, block.valid),
            merged=arrange(slots.merged, block.merged),
            identity=False,
            visual_width=int(block.keys.shape[1]),
            alive=alive,
            ragged=min(alive) < block.keys.shape[1],
            has_merged=slots.has_merged or block.merged_hidden is not None,
        )
        members = None if block.merge is None else block.merge.members
        if block.merge is not None and members is not None:
            new_slots.joined = (slots, view.visual_slots, members, block.merge.representative)
        if slots.index is not None:
            new_slots.index = self.moved_index(slots.index, perm, block, k)
        # One gather of the hidden states: each new slot's row of the output (or of the merged ones).
        rows = arrange(torch.arange(k, device=visual.device).expand(b, k), block.rows)
        source = (
            view.output if block.merged_hidden is None else torch.cat([view.output, block.merged_hidden], 1)
        )
        return new_slots, gather_rows(source, rows)

    def _visual_block(
        self, view: LayerView, slots: Slots, scores: torch.Tensor, counts: DropCounts
    ) -> tuple[Block, list[int]]:
        """The visual tokens handed on: each row's top slots (kept, then fillers), then merged ones.

        Also each row's valid tokens in the block, on the host.
        """
        kept, kept_host = counts.kept, counts.kept_host
        vs, vv = view.visual_slots, view.visual_valid
        b, kv = vs.shape
        # Rank: valid before fillers, then each camera's share (per_camera), then by score.
        preferred = None
        if self.camera_ratios is not None:
            camera = self.camera.gather(1, view.visual_index)
            preferred = camera_choice(scores, vv, camera, kept, self.camera_ratios)
        order = rank_order(scores, vv if slots.ragged else None, preferred)  # not ragged: all valid
        slot_range = torch.arange(kv, device=vs.device)
        rank = torch.empty_like(order).scatter_(1, order, slot_range.expand(b, kv))
        is_kept = rank < kept.unsqueeze(1)
        merge = None
        if counts.merges:  # a range only where a merge runs (a FastV trace shows no merge stage)
            with stage("merge"):
                merge = self.merge(view, scores, vv & ~is_kept, counts.clusters)
        if merge is None:
            return self._kept_block(vs, slots, rank, is_kept, slot_range, max(kept_host)), kept_host
        r = merge.valid.sum(1)
        # a row's block: kept + r real entries, the first r merged ones, each valid or a filler
        if merge.count_host is not None:  # the first r are the valid ones, r known on the host
            entries = alive = [k + m for k, m in zip(kept_host, merge.count_host, strict=True)]
        else:  # one host sync
            first_r = torch.arange(merge.valid.shape[1], device=r.device) < r.unsqueeze(1)
            entries, alive = torch.stack([kept + r, kept + (first_r & merge.valid).sum(1)]).tolist()
        width = max(entries)
        real = (width - r).unsqueeze(1)  # real (kept + filler) entries per row
        chosen = torch.where(rank < real, slot_range, NO_SLOT)
        pos = chosen.sort(dim=1).values[:, :width]  # index into the visual slots, in sequence order
        entry = torch.arange(width, device=vs.device)
        is_real = entry.expand(b, -1) < real
        pos = torch.where(is_real, pos, 0)
        at = vs.gather(1, pos)  # the block's slots (in this layer's sequence)
        m = (entry - real).clamp(min=0, max=merge.hidden.shape[1] - 1)
        rep_src = slots.src.gather(1, vs.gather(1, merge.representative.gather(1, m)))
        block = Block(
            src=torch.where(is_real, slots.src.gather(1, at), rep_src),
            valid=(is_real & is_kept.gather(1, pos)) | (~is_real & merge.valid.gather(1, m)),
            merged=~is_real | slots.merged.gather(1, at),  # merged earlier stay merged
            rows=torch.where(is_real, at, view.output.shape[1] + m),
            keys=torch.where(is_real, 2 * at, 2 * vs[:, -1:] + 1),
            merged_hidden=merge.hidden.to(view.output.dtype),
            merge=merge,
        )
        return block, alive

    @staticmethod
    def _kept_block(
        vs: torch.Tensor,
        slots: Slots,
        rank: torch.Tensor,
        is_kept: torch.Tensor,
        slot_range: torch.Tensor,
        width: int,
    ) -> Block:
        """:meth:`_visual_block` without merged tokens: each row's ``width`` top-ranked visual slots.

        ``vs`` ``[B, Kv]`` visual slots, ``rank`` / ``is_kept`` ``[B, Kv]`` their rank and whether
        they are kept, ``slot_range`` ``0..Kv-1``; every entry is real (a kept token or a filler).
        """
        chosen = torch.where(rank < width, slot_range, NO_SLOT)
        pos = chosen.sort(dim=1).values[:, :width]  # index into the visual slots, in sequence order
        at = vs.gather(1, pos)  # the block's slots (in this layer's sequence)
        return Block(
            src=slots.src.gather(1, at),
            valid=is_kept.gather(1, pos),
            merged=slots.merged.gather(1, at),  # merged earlier stay merged
            rows=at,
            keys=2 * at,
        )

    def restore(self, slots: Slots, hidden: torch.Tensor) -> torch.Tensor:
        """Scatter the last layer's output back to the input length (dropped positions stay zero)."""
        b, _, d = hidden.shape
        n = self.real.shape[1]
        keep = slots.valid & ~slots.merged
        target = torch.where(keep, slots.src, n)  # dropped rows go to a spare column, cut below
        full = scatter_rows_(hidden.new_zeros(b, n + 1, d), target, hidden)
        return full[:, :n]
