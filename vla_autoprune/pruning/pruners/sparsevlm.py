"""SparseVLM: text-guided progressive sparsification with token recycling.

Based on Zhang et al., "SparseVLM: Visual Token Sparsification for Efficient Vision-Language
Model Inference" (ICML 2025, https://arxiv.org/abs/2410.04417).

At a few layers (by default the ones after the paper's layers 2, 6 and 15 of 32, as fractions of
depth), the text tokens most relevant to vision ("raters": those whose attention to the visual
tokens is at least the mean over text tokens) score the visual tokens by their mean attention
(over heads and raters); the lowest are dropped, and the best-scored 30% of the dropped ones are
recycled into about a tenth as many tokens by DPC-kNN merging, placed after the kept ones.

Simplification: the paper sets how many tokens to drop from the rank of the attention matrix;
here the counts follow a geometric pyramid whose ratio is solved to meet the budget (merged
tokens count against it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from vla_autoprune.pruning.options import PositionIds
from vla_autoprune.pruning.pruner import LayerView, Merge
from vla_autoprune.pruning.recycling import recycle_dropped, split_handed_on
from vla_autoprune.pruning.registry import register_pruner
from vla_autoprune.pruning.stages import StagedPruner

# First layers that see fewer tokens, as depth fractions: after layers 2, 6, 15 of 32 (the paper's).
SPARSEVLM_STAGES = (3 / 32, 7 / 32, 16 / 32)


@register_pruner
@dataclass
class SparseVLMPruner(StagedPruner):
    """Rater-guided progressive pruning with recycling.

    Attributes:
        stages: first layer of each reduced stage, as fractions of depth.
        recycle: merge part of the dropped tokens back in (counts against the budget).
    """

    name = "sparsevlm"
    position_ids: PositionIds = "contiguous"  # the official code renumbers survivors
    stages: Sequence[float] = SPARSEVLM_STAGES
    recycle: bool = True

    def schedule(self, view: LayerView) -> torch.Tensor:
        """Geometric counts (kept + merged) fitted to the budget, computed once per forward."""
        return self.static_schedule(view, self.stage_counts(view.num_layers, view.num_visual))

    def score(self, view: LayerView) -> torch.Tensor:
        """Mean attention from the raters (text rows attending to vision at least as much as average)."""
        attn = view.attention().mean(dim=1)  # [B, T, Kv]
        valid = view.text_valid
        to_vision = torch.where(valid, attn.sum(dim=-1), 0.0)  # [B, T]; where: padded rows are junk
        mean = to_vision.sum(1, keepdim=True) / valid.sum(1, keepdim=True).clamp(min=1)
        raters = (valid & (to_vision >= mean)).unsqueeze(-1)
        total = torch.where(raters, attn, torch.zeros_like(attn)).sum(1)
        return total / raters.sum(1).clamp(min=1)

    def split(self, view: LayerView, hand_on: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Kept and merged tokens (the reference's recycling rule) summing to ``hand_on``."""
        return split_handed_on(view.alive(), hand_on, self.recycle)

    def merge(
        self, view: LayerView, scores: torch.Tensor, dropped: torch.Tensor, clusters: torch.Tensor
    ) -> Merge | None:
        """DPC-kNN merge of the best-scored dropped tokens."""
        return recycle_dropped(view, scores, dropped, clusters) if self.recycle else None
