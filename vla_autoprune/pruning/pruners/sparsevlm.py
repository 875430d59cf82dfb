"""SparseVLM: text-guided progressive sparsification with token recycling.

Based on Zhang et al., "SparseVLM: Visual Token Sparsification for Efficient Vision-Language
Model Inference" (ICML 2025, https://arxiv.org/abs/2410.04417).

At a few layers (the paper's ``pruning_loc [2, 6, 15]`` of 32, as fractions of depth: the layers
after them see fewer tokens), "raters" (text tokens relevant to vision) score the visual tokens
by their attention, averaged over heads and raters; the lowest are dropped, and the best-scored
30% of the dropped ones are recycled into ``int(m / 10) + 1`` tokens by DPC-kNN merging, placed
right after the kept ones. Two variants (``mode``):

- ``faithful``: the official rule (Gumpest/SparseVLMs, version 1.0 there):
  raters are chosen **once, from the input embeddings** (``modelling_sparse_llama.py`` lines
  199-204: ``softmax`` over text of ``V T^T``, mean over visual tokens, raters strictly above the
  mean); at a pruning layer its own attention (fp32 softmax over all columns) is averaged over
  heads and raters and the top ``min(count, v - 1)`` visual tokens are kept (``score.py`` lines
  23-45), ``count`` from the fixed table for ``retain`` (``score.py`` lines 10-20; 192: 300, 200,
  110 of 576); the recycling pool and cluster count follow lines 280-290, DPC-kNN with ``k`` = the
  cluster count (``utils.py`` line 188); survivors and merged tokens are renumbered contiguously
  (lines 302, 314), this pruner's default ``position_ids``.
  Departures: the table is scaled to ``V`` visual tokens (``int(count * V / 576)``, at least 1);
  a row without raters (all equal) uses every text row; DPC-kNN breaks density ties by index
  instead of random noise (:mod:`vla_autoprune.pruning.merging`); the budget is not used
  (``retain`` picks the table).
- ``matched`` (budget-matched): raters re-chosen at every pruning layer from that layer's
  attention (text rows attending to vision at least as much as average); counts (kept + merged) a
  geometric pyramid whose ratio is solved to meet the budget; DPC-kNN with ``k = 5``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from vla_autoprune.errors import ConfigError
from vla_autoprune.pruning.options import (
    Mode,
    PositionIds,
    check_choice,
    no_budget_when_faithful,
    variant_label,
)
from vla_autoprune.pruning.pruner import LayerView, Merge
from vla_autoprune.pruning.recycling import recycle_count, recycle_dropped, split_handed_on
from vla_autoprune.pruning.registry import register_pruner
from vla_autoprune.pruning.stages import StagedPruner, stage_schedule

# First layers that see fewer tokens, as depth fractions: after layers 2, 6, 15 of 32 (the paper's).
SPARSEVLM_STAGES = (3 / 32, 7 / 32, 16 / 32)
# The official kept counts per pruning layer (score.py, version 1.0), for LLaVA-1.5's 576 tokens.
SPARSEVLM_TABLE_VISUAL = 576
SPARSEVLM_TABLES: dict[int, tuple[int, ...]] = {
    192: (300, 200, 110),
    128: (303, 110, 36),
    96: (238, 48, 26),
    64: (66, 30, 17),
}
SPARSEVLM_RETAIN = 192  # the paper's headline setting


@dataclass(frozen=True)
class FaithfulPlan:
    """Per pruning stage: tokens kept by score and merged tokens added (both ``len(stages)``)."""

    kept: tuple[int, ...]
    merged: tuple[int, ...]

    @property
    def handed_on(self) -> list[int]:
        """Visual tokens each reduced stage sees."""
        return [k + m for k, m in zip(self.kept, self.merged, strict=True)]


def input_raters(view: LayerView) -> torch.Tensor:
    """bool ``[B, T]`` aligned with ``view.text_slots``: the raters picked from the input embeddings.

    ``softmax`` over valid text of ``visual @ text^T`` (``[B, V, T]``), mean over the visual
    tokens, raters strictly above the row's mean; a row with none uses all its valid text rows.
    """
    inputs = view.inputs
    embeds = inputs.inputs_embeds.float()
    text_pos, text_ok = _row_positions(inputs.layout.text_mask.bool())
    visual = embeds.gather(1, inputs.layout.visual_positions().unsqueeze(-1).expand(-1, -1, embeds.shape[-1]))
    text = embeds.gather(1, text_pos.unsqueeze(-1).expand(-1, -1, embeds.shape[-1]))
    logits = (visual @ text.transpose(1, 2)).masked_fill(~text_ok.unsqueeze(1), -math.inf)  # [B, V, T]
    relevance = logits.softmax(dim=-1).mean(dim=1)  # [B, T]
    count = text_ok.sum(dim=1, keepdim=True).clamp(min=1)
    mean = torch.where(text_ok, relevance, 0.0).sum(dim=1, keepdim=True) / count
    raters = text_ok & (relevance > mean)
    raters = torch.where(raters.any(dim=1, keepdim=True), raters, text_ok)
    view.add_scoring_macs(text_ok.sum(1) * inputs.layout.num_visual * embeds.shape[-1])
    width = view.text_slots.shape[1]
    return _fit(raters, width)


def _row_positions(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of True per row, in order, and which entries are real: int64/bool ``[B, M]``."""
    counts = mask.sum(dim=1)
    width = max(int(counts.max()), 1)
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :width]
    return order, torch.arange(width, device=mask.device) < counts.unsqueeze(1)


def _fit(flags: torch.Tensor, width: int) -> torch.Tensor:
    """``flags`` [B, M] cut or False-padded to ``[B, width]``."""
    if flags.shape[1] >= width:
        return flags[:, :width]
    return torch.cat([flags, flags.new_zeros(flags.shape[0], width - flags.shape[1])], dim=1)


@register_pruner
@dataclass
class SparseVLMPruner(StagedPruner):
    """Rater-guided progressive pruning with recycling.

    Attributes:
        stages: first layer of each reduced stage, as fractions of depth.
        recycle: merge part of the dropped tokens back in (counts against the budget).
        mode: ``matched`` (budget-matched, the default) or ``faithful`` (the official rule).
        retain: the official table used in ``faithful`` mode (64, 96, 128 or 192 of 576).
    """

    name = "sparsevlm"
    position_ids: PositionIds = "contiguous"  # the official code renumbers survivors
    stages: Sequence[float] = SPARSEVLM_STAGES
    recycle: bool = True
    mode: Mode = "matched"
    retain: int = SPARSEVLM_RETAIN

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("mode", self.mode, Mode, self.name)
        no_budget_when_faithful(self.name, self.mode, self.budget, f"retain={self.retain}")
        if self.retain not in SPARSEVLM_TABLES:
            raise ConfigError(
                f"{self.name}: retain={self.retain} has no official table; use one of {sorted(SPARSEVLM_TABLES)}"
            )
        if self.mode == "faithful" and len(self.stages) != len(SPARSEVLM_TABLES[self.retain]):
            raise ConfigError(
                f"{self.name}: mode=faithful has {len(SPARSEVLM_TABLES[self.retain])} table counts, "
                f"one per stage, but stages={tuple(self.stages)}; keep the default stages"
            )

    @property
    def label(self) -> str:
        """``sparsevlm[matched]`` or ``sparsevlm[faithful]``."""
        return variant_label(self.name, self.mode)

    def faithful_plan(self, num_layers: int, num_visual: int) -> FaithfulPlan:
        """Kept and merged tokens per stage: the scaled table, ``min(count, v - 1)``, then recycling."""
        current, kept, merged = num_visual, [], []
        for count in SPARSEVLM_TABLES[self.retain][: len(self.starts(num_layers))]:
            scaled = max(1, count * num_visual // SPARSEVLM_TABLE_VISUAL)
            keep = max(1, min(scaled, current - 1))
            extra = recycle_count(current - keep) if self.recycle else 0
            kept.append(keep)
            merged.append(extra)
            current = keep + extra
        return FaithfulPlan(tuple(kept), tuple(merged))

    def text_ranked_from(self, num_layers: int, num_visual: int) -> int | None:
        """The layer before the first reduced stage (its raters rank the tokens)."""
        return self.starts(num_layers)[0] - 1

    def schedule(self, view: LayerView) -> torch.Tensor:
        """Static counts (kept + merged) per stage, computed once per forward."""
        if self.mode != "faithful":
            return self.static_schedule(view, self.stage_counts(view.num_layers, view.num_visual))
        if view.schedule is not None:
            return view.schedule
        plan = self.faithful_plan(view.num_layers, view.num_visual)
        starts = self.starts(view.num_layers)
        return stage_schedule(view.batch_size, view.num_layers, view.num_visual, starts, plan.handed_on)

    def score(self, view: LayerView) -> torch.Tensor:
        """float ``[B, Kv]``: mean attention (over heads) from the raters (module docstring)."""
        attn = view.attention().mean(dim=1)  # [B, T, Kv]
        if self.mode == "faithful":
            raters = view.scratch.get("raters")
            if raters is None:
                raters = view.scratch["raters"] = input_raters(view)
            raters = raters & view.text_valid
        else:
            valid = view.text_valid
            to_vision = torch.where(valid, attn.sum(dim=-1), 0.0)  # [B, T]; where: padded rows are junk
            mean = to_vision.sum(1, keepdim=True) / valid.sum(1, keepdim=True).clamp(min=1)
            raters = valid & (to_vision >= mean)
        total = torch.where(raters.unsqueeze(-1), attn, torch.zeros_like(attn)).sum(1)
        return total / raters.unsqueeze(-1).sum(1).clamp(min=1)

    def split(self, view: LayerView, hand_on: list[int]) -> tuple[list[int], list[int]]:
        """Kept and merged tokens summing to ``hand_on``: the plan's (faithful) or the reference's split rule."""
        if self.mode != "faithful":
            return split_handed_on(view.alive_counts(), hand_on, self.recycle)
        stage = self.starts(view.num_layers).index(view.layer_idx + 1)
        keep = self.faithful_plan(view.num_layers, view.num_visual).kept[stage]
        kept = [min(keep, n) for n in hand_on]
        return kept, [n - k for n, k in zip(hand_on, kept, strict=True)]

    def merge(
        self, view: LayerView, scores: torch.Tensor, dropped: torch.Tensor, clusters: torch.Tensor
    ) -> Merge | None:
        """DPC-kNN merge of the best-scored dropped tokens (``k`` = cluster count when faithful)."""
        if not self.recycle:
            return None
        if self.mode == "faithful":
            return recycle_dropped(view, scores, dropped, clusters, neighbours=None)
        return recycle_dropped(view, scores, dropped, clusters)
