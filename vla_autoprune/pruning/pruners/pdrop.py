"""PyramidDrop: drop visual tokens at the end of each stage, geometrically.

Based on Xing et al., "PyramidDrop: Accelerating Your Large Vision-Language Models via Pyramid
Visual Redundancy Reduction" (CVPR 2025, https://arxiv.org/abs/2410.17247).

The decoder is split into stages (by default at 1/4, 1/2 and 3/4 of its depth, the paper's layers
8, 16, 24 of 32); stage ``s`` sees ``V * lambda**s`` visual tokens, ranked at the last layer of the
previous stage by the attention of the last instruction token (the last text query), averaged over
heads. The paper fixes ``lambda = 0.5``; here ``lambda`` is solved so that the stage counts meet the
budget (or taken from ``ratio`` when no budget is given).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from vla_autoprune.errors import ConfigError
from vla_autoprune.pruning.options import PositionIds
from vla_autoprune.pruning.pruner import LayerView
from vla_autoprune.pruning.registry import register_pruner
from vla_autoprune.pruning.stages import StagedPruner

# Stage boundaries as fractions of depth: layers 8, 16, 24 of LLaVA-1.5's 32 (the paper's setup).
PDROP_STAGES = (0.25, 0.5, 0.75)


@register_pruner
@dataclass
class PDropPruner(StagedPruner):
    """Pyramid of geometric visual-token drops at stage boundaries.

    Attributes:
        stages: first layer of each reduced stage, as fractions of depth (rounded to layers in
            ``[1, L-1]``).
        ratio: fixed ``lambda`` in (0, 1] when no budget is given (the paper's 0.5); with a budget
            ``lambda`` is solved and ``ratio`` must be None.
    """

    name = "pdrop"
    position_ids: PositionIds = "contiguous"  # the official code renumbers survivors
    stages: Sequence[float] = PDROP_STAGES
    ratio: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.ratio is not None and self.budget is not None:
            raise ConfigError(f"{self.name}: give a budget or a ratio, not both (the budget sets the ratio)")
        if self.ratio is not None and not 0 < self.ratio <= 1:
            raise ConfigError(f"{self.name}: ratio={self.ratio} must be in (0, 1]")

    def counts(self, num_layers: int, num_visual: int) -> list[int]:
        """Visual tokens each reduced stage sees."""
        return self.stage_counts(num_layers, num_visual, self.ratio)

    def schedule(self, view: LayerView) -> torch.Tensor:
        """Static pyramid, computed once per forward."""
        return self.static_schedule(view, self.counts(view.num_layers, view.num_visual))

    def score(self, view: LayerView) -> torch.Tensor:
        """Attention of the last text query (the last instruction token), mean over heads, ``[B, Kv]``."""
        attn = view.attention().mean(dim=1)  # [B, T, Kv]
        last = (view.text_valid.long().sum(dim=1) - 1).clamp(min=0)
        return attn.gather(1, last.view(-1, 1, 1).expand(-1, 1, attn.shape[-1])).squeeze(1)
