"""FastV: drop visual tokens once, after an early layer, by the attention they receive.

Based on Chen et al., "An Image is Worth 1/2 Tokens After Layer 2: Plug-and-Play Inference
Acceleration for Large Vision-Language Models" (ECCV 2024, https://arxiv.org/abs/2403.06764).

Simplifications: the paper fixes K = 2 and a keep ratio; here the ratio follows from the budget
(``K`` layers see all ``V`` tokens, the others ``n``, with ``K * V + (L - K) * n`` within the
budget), and ``K`` is lowered when even ``n = 1`` would not fit. Tokens are ranked by text -> visual
attention averaged over heads and text rows at layer ``K - 1`` (the reference code uses the last
token's row only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from vla_autoprune.errors import ConfigError
from vla_autoprune.pruning.budget import token_layers
from vla_autoprune.pruning.pruner import LayerView, Pruner
from vla_autoprune.pruning.registry import register_pruner
from vla_autoprune.pruning.stages import fit_stages, stage_schedule

# FastV's K: layers 0 and 1 see every visual token (the paper's setting for LLaVA-1.5).
FASTV_LAYER = 2


@register_pruner
@dataclass
class FastVPruner(Pruner):
    """Keep the top visual tokens from layer ``layer`` on.

    Attributes:
        layer: ``K``, the first layer that sees the reduced set (``>= 1``; lowered if the budget
            needs it).
    """

    name = "fastv"
    layer: int = FASTV_LAYER

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.layer < 1:
            raise ConfigError(f"{self.name}: layer={self.layer} must be >= 1 (layer 0 sees every token)")

    def plan(self, num_layers: int, num_visual: int) -> tuple[int, int]:
        """``(K, n)``: the first reduced layer and the count it sees."""
        budget = self.target(num_visual)
        start = min(self.layer, num_layers - 1)
        while start > 1 and start * num_visual + (num_layers - start) > token_layers(budget, num_layers):
            start -= 1
        (count,) = fit_stages(
            budget, num_layers, num_visual, [start], lambda t: [max(1, math.floor(t * num_visual))]
        )
        return start, count

    def schedule(self, view: LayerView) -> torch.Tensor:
        """``V`` until layer ``K - 1`` hands on ``n``; static, computed once per forward."""
        if view.schedule is not None:
            return view.schedule
        start, count = self.plan(view.num_layers, view.num_visual)
        return stage_schedule(view.batch_size, view.num_layers, view.num_visual, [start], [count])
