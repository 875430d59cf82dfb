"""FasterVLM: keep the visual tokens the vision encoder's [CLS] attends to, before the decoder.

Based on Zhang et al., "[CLS] Attention is All You Need for Training-Free Visual Token Pruning:
Make VLM Inference Faster" (https://arxiv.org/abs/2412.01818).

The ranking is ``DecoderInputs.vision_saliency`` (the model's [CLS] / pooling-head attention over
patches, all cameras together); every decoder layer then sees the same ``floor(budget)`` tokens.
Simplification: one global top-n over all cameras, no per-camera quota.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from vla_autoprune.errors import ConfigError
from vla_autoprune.models.base import DecoderInputs
from vla_autoprune.pruning.budget import min_budget
from vla_autoprune.pruning.options import PositionIds
from vla_autoprune.pruning.pruner import LayerView, Pruner
from vla_autoprune.pruning.registry import register_pruner


class MissingSaliencyError(ConfigError):
    """The model did not provide the vision saliency a pre-decoder pruner needs."""


def top_saliency(inputs: DecoderInputs, count: int, who: str) -> torch.Tensor:
    """int64 ``[B, count]``: the ``count`` visual tokens with the highest vision saliency."""
    if inputs.vision_saliency is None:
        raise MissingSaliencyError(
            f"{who} ranks visual tokens by inputs.vision_saliency [B, V], which the model did not "
            "provide; use a model that computes it or a decoder-side pruner (e.g. fastv)"
        )
    return inputs.vision_saliency.float().topk(count, dim=1).indices


@register_pruner
@dataclass
class FasterVLMPruner(Pruner):
    """Select ``floor(budget)`` visual tokens by vision saliency before the decoder."""

    name = "fastervlm"
    position_ids: PositionIds = "contiguous"  # the official code renumbers survivors

    def reachable(self, num_layers: int, num_visual: int) -> tuple[float, float]:
        """Any budget from one token to ``V``: layer 0 sees the selection too."""
        return min_budget(num_layers, num_visual, full_layers=0), float(num_visual)

    def preselect(self, inputs: DecoderInputs, num_layers: int) -> torch.Tensor | None:
        """The top ``floor(budget)`` visual tokens by saliency (None when keeping all)."""
        num_visual = inputs.layout.num_visual
        count = min(max(1, math.floor(self.target(num_visual))), num_visual)
        if count >= num_visual:
            return None
        return top_saliency(inputs, count, self.name)

    def schedule(self, view: LayerView) -> torch.Tensor:
        """Nothing more is dropped inside the decoder."""
        return torch.full((view.batch_size, view.num_layers), view.num_visual, dtype=torch.long)
