"""What a pruned forward processed: :class:`PruningRecord`, filled from the slots each layer ran on.

The engine (:mod:`vla_autoprune.pruning.engine`) keeps, for every decoder layer, the token slots it
ran on (:class:`vla_autoprune.pruning.slots.Slots`); after the last layer, :func:`fill_kept` works
out on the host which original visual tokens each layer kept and which merged token holds which
(numpy, :mod:`vla_autoprune.pruning.kept_tokens`), and :func:`finish_record` moves the counts to the
host and adds the FLOPs once the ``prune`` block ends.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from vla_autoprune.devices import to_host
from vla_autoprune.models.base import DecoderInputs
from vla_autoprune.pruning.cameras import camera_counts
from vla_autoprune.pruning.flops import decoder_flops_from_config
from vla_autoprune.pruning.kept_tokens import MemberTracker, MergeEvent, packed_kept
from vla_autoprune.pruning.slots import Slots

logger = logging.getLogger(__name__)

#: Record fields that may still be on the model's device when the ``prune`` block ends.
_DEVICE_COUNTS = ("visual_tokens", "merged_tokens", "tokens", "seq_len", "schedule", "scoring_flops")


@dataclass
class PruningRecord:
    """What a pruned forward actually processed (the last prefill inside the ``prune`` block).

    Attributes:
        inputs: the decoder inputs to run (shorter than the given ones after pre-selection).
        num_layers: ``L``.
        num_visual: ``V``, visual tokens of the inputs given to :func:`prune`.
        accounting: the budget accounting the pruner used (``actual`` or ``reference``).
        position_ids: ``original`` or ``contiguous``, the position ids survivors were given.
        preselected: int64 ``[B, n0]`` visual indices kept before the decoder, or None.
        visual_tokens: int64 ``[B, L]``, valid visual tokens (merged ones included) entering each layer.
        merged_tokens: int64 ``[B, L]``, how many of those were made by merging.
        tokens: int64 ``[B, L]``, valid non-padding tokens entering each layer (per-sample cost).
        seq_len: int64 ``[L]``, sequence length each layer ran on (padding and fillers included).
        kept_visual: per layer, int64 ``[B, Kv]`` indices (into the given inputs' ``V`` visual
            tokens, ascending, -1 padded) of the original visual tokens entering the layer.
        merged_into: per layer, int64 ``[B, V]``: the merged token (numbered ``0..`` in sequence
            order among the layer's merged tokens) that holds original visual token ``v``, -1 for
            none; filled when the pruner's merges name their members (:class:`Merge` ``members``).
        schedule: int64 ``[B, L]``, the pruner's last schedule (counts handed on), or None.
        stats: per-sample numbers the pruner reported, name -> ``[B]`` (AutoPrune: ``mi``, the
            mutual information, and ``k``, the logistic slope).
        flops: int64 ``[B]``, decoder-layer MACs per sample from ``tokens`` (flops.py, the
            ``gqa`` count; the paper's "FLOPs").
        scoring_flops: int64 ``[B]``, MACs of the extra work spent choosing tokens (re-scored
            attention rows, rater selection), kept apart from ``flops``.
        camera_tokens: int64 ``[B, L, C]``, original visual tokens of each camera entering each
            layer (merged tokens not counted).
    """

    inputs: DecoderInputs
    num_layers: int
    num_visual: int
    accounting: str
    position_ids: str = "original"
    preselected: torch.Tensor | None = None
    visual_tokens: torch.Tensor | None = None
    merged_tokens: torch.Tensor | None = None
    tokens: torch.Tensor | None = None
    seq_len: torch.Tensor | None = None
    kept_visual: list[torch.Tensor | None] = field(default_factory=list)
    merged_into: list[torch.Tensor | None] = field(default_factory=list)
    schedule: torch.Tensor | None = None
    stats: dict[str, torch.Tensor] = field(default_factory=dict)
    flops: torch.Tensor | None = None
    scoring_flops: torch.Tensor | None = None
    camera_tokens: torch.Tensor | None = None

    def mean_visual_tokens(self) -> torch.Tensor:
        """float ``[B]``: visual tokens per layer, averaged over the ``L`` layers (the budget measure)."""
        if self.visual_tokens is None:
            raise RuntimeError("nothing recorded yet: run the decoder inside the prune() block")
        return self.visual_tokens.double().mean(dim=1)


def fill_kept(
    rec: PruningRecord,
    layers: list[Slots],
    visual: torch.Tensor,
    visual_origin: torch.Tensor,
    given_cameras: torch.Tensor,
) -> None:
    """The record's ``kept_visual``, ``merged_tokens``, ``merged_into`` and ``camera_tokens``, on the host.

    ``layers``: the slots each layer ran on; ``visual`` bool ``[B, N]``: which run-input tokens are
    visual; ``visual_origin`` int64 ``[B, N]``: each one's index among the given inputs' ``V``;
    ``given_cameras`` int64 ``[B, V]``: their cameras. Worked out once per distinct set of slots from
    the slots and the merges that made them (:mod:`vla_autoprune.pruning.kept_tokens`), after the
    last layer: no op in the hooks.
    """
    distinct = list({id(s): s for s in layers}.values())  # each set of slots once, in layer order
    tensors = [visual, visual_origin, given_cameras]
    for slots in distinct:
        tensors += [slots.src, slots.valid, slots.merged]
        if slots.joined is not None:
            tensors += list(slots.joined[1:])  # visual_slots, members, representative
    arrays = iter([t.numpy() for t in to_host(tensors)])  # one copy off a device, not ~50
    visual_np, origin, cameras = next(arrays), next(arrays), next(arrays)
    count_cameras = int(cameras.max()) + 1 if cameras.size else 0
    b, n = visual_np.shape
    tracker: MemberTracker | None = None
    # per distinct set of slots: its src, valid and merged flags on the host
    host: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    done: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]] = {}
    for slots in distinct:
        own = next(arrays), next(arrays), next(arrays)
        if slots.joined is not None:
            parent = slots.joined[0]
            parent_src, _, parent_merged = host[id(parent)]  # the parent ran on an earlier layer
            vs, members, representative = next(arrays), next(arrays), next(arrays)
            event = MergeEvent(
                slot_src=np.take_along_axis(parent_src, vs, axis=1),
                slot_merged=np.take_along_axis(parent_merged, vs, axis=1),
                members=members,
                representative=representative,
            )
            tracker = tracker or MemberTracker(b, rec.num_visual, n)
            tracker.join(event, origin)
        host[id(slots)] = own
        kept, count = packed_kept(*own, visual_np, origin)
        into = None if tracker is None else torch.from_numpy(tracker.merged_into(*own, visual_np))
        per_camera = torch.from_numpy(camera_counts(kept, cameras, count_cameras))
        done[id(slots)] = (torch.from_numpy(kept), torch.from_numpy(count), into, per_camera)
    per_layer = [done[id(s)] for s in layers]
    rec.kept_visual = [kept for kept, _, _, _ in per_layer]
    rec.merged_tokens = torch.stack([count for _, count, _, _ in per_layer], 1)
    rec.merged_into = [into for _, _, into, _ in per_layer]
    rec.camera_tokens = torch.stack([per_camera for _, _, _, per_camera in per_layer], 1)


def finish_record(record: PruningRecord, config: Any) -> None:
    """Move the counts to the host and add FLOPs (once, after the block)."""
    if record.tokens is None or record.seq_len is None:
        logger.warning("prune(): the decoder did not run inside the block; the record is empty")
        return
    names = [n for n in _DEVICE_COUNTS if getattr(record, n) is not None]
    stats = list(record.stats)
    moved = to_host([getattr(record, n) for n in names] + [record.stats[k] for k in stats])  # one copy
    for name, value in zip(names, moved, strict=False):
        setattr(record, name, value)
    record.stats = dict(zip(stats, moved[len(names) :], strict=True))
    record.flops = decoder_flops_from_config(record.tokens, config)
