"""FasterVLM: keep the visual tokens the vision encoder's [CLS] attends to, before the decoder.

Based on Zhang et al., "[CLS] Attention is All You Need for Training-Free Visual Token Pruning:
Make VLM Inference Faster" (https://arxiv.org/abs/2412.01818).

The ranking is ``DecoderInputs.vision_saliency`` (the model's [CLS] / pooling-head attention over
patches, each camera's own); every decoder layer then sees the same selection. Two variants
(``mode``):

- ``faithful``: the official rule, Theia-4869/FasterVLM ``llava/model/llava_arch.py`` lines
  141-157 (``encode_images``): each image's [CLS] attention, averaged over heads, keeps its top
  ``T`` patches (``topk(..., k=visual_token_num)`` per image, line 149), so with ``C`` cameras
  every camera keeps ``T = floor(budget / C)`` (at least 1); the shortened prompt is renumbered
  contiguously (lines 331-352), this pruner's default ``position_ids``.
  Departures: the per-image count comes from the budget (the official knob is the same count,
  set by a reduction ratio); when ``C`` does not divide the budget the mean falls short of it by
  less than one token per camera; the attention layer is the model's choice (``vision_saliency``),
  the official code reads the layer its features come from (``clip_encoder.py`` line 38).
- ``matched`` (budget-matched): one global top ``floor(budget)`` over all cameras together, so
  cameras compete for the budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from vla_autoprune.errors import ConfigError
from vla_autoprune.models.base import DecoderInputs
from vla_autoprune.pruning.budget import min_budget
from vla_autoprune.pruning.cameras import camera_choice, rank_order
from vla_autoprune.pruning.options import Mode, PositionIds, check_choice, variant_label
from vla_autoprune.pruning.pruner import LayerView, Pruner, keep_all_schedule
from vla_autoprune.pruning.registry import register_pruner


class MissingSaliencyError(ConfigError):
    """The model did not provide the vision saliency a pre-decoder pruner needs."""


def _saliency(inputs: DecoderInputs, who: str) -> torch.Tensor:
    if inputs.vision_saliency is None:
        raise MissingSaliencyError(
            f"{who} ranks visual tokens by inputs.vision_saliency [B, V], which the model did not "
            "provide; use a model that computes it or a decoder-side pruner (e.g. fastv)"
        )
    return inputs.vision_saliency.float()


def top_saliency(
    inputs: DecoderInputs, count: int, who: str, ratios: list[float] | None = None
) -> torch.Tensor:
    """int64 ``[B, count]``: the ``count`` visual tokens with the highest vision saliency.

    With camera ``ratios`` (``Pruner.camera_ratios``) each camera first gets its share of ``count``.
    """
    saliency = _saliency(inputs, who)
    if ratios is None:
        return saliency.topk(count, dim=1).indices
    valid = torch.ones_like(saliency, dtype=torch.bool)
    kept = torch.full((saliency.shape[0],), count, dtype=torch.long, device=saliency.device)
    camera = inputs.layout.camera_index.to(saliency.device)
    preferred = camera_choice(saliency, valid, camera, kept, ratios)
    return rank_order(saliency, valid, preferred)[:, :count]


def top_saliency_per_camera(inputs: DecoderInputs, count: int, who: str) -> torch.Tensor:
    """int64 ``[B, C * count]``: each camera's ``count`` visual tokens with the highest saliency.

    Cameras come from ``layout.camera_index`` ``[B, V]``; a camera with fewer tokens keeps all.
    """
    saliency = _saliency(inputs, who)
    camera = inputs.layout.camera_index.to(saliency.device)
    picks = []
    for cam in torch.unique(camera).tolist():
        mine = camera == cam  # [B, V]; every row has the same cameras and tokens per camera
        per_row = int(mine[0].sum())
        ranked = saliency.masked_fill(~mine, -math.inf).topk(min(count, per_row), dim=1).indices
        picks.append(ranked)
    return torch.cat(picks, dim=1)


@register_pruner
@dataclass
class FasterVLMPruner(Pruner):
    """Select visual tokens by vision saliency before the decoder.

    Attributes:
        mode: ``matched`` (budget-matched global top-n, the default) or ``faithful`` (per camera).
    """

    name = "fastervlm"
    position_ids: PositionIds = "contiguous"  # the official code renumbers the shortened prompt
    mode: Mode = "matched"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("mode", self.mode, Mode, self.name)
        if self.mode == "faithful" and self.per_camera != "none":
            raise ConfigError(
                f"{self.name}: mode=faithful already keeps floor(budget / C) per camera; set per_camera=none"
            )

    @property
    def label(self) -> str:
        """``fastervlm[matched]`` or ``fastervlm[faithful]``."""
        return variant_label(self.name, self.mode)

    def reachable(self, num_layers: int, num_visual: int) -> tuple[float, float]:
        """Any budget from one token to ``V``: layer 0 sees the selection too."""
        return min_budget(num_layers, num_visual, full_layers=0), float(num_visual)

    def preselect(self, inputs: DecoderInputs, num_layers: int) -> torch.Tensor | None:
        """The top visual tokens by saliency (None when keeping all)."""
        num_visual = inputs.layout.num_visual
        count = min(max(1, math.floor(self.target(num_visual))), num_visual)
        if count >= num_visual:
            return None
        if self.mode == "faithful":
            cameras = int(torch.unique(inputs.layout.camera_index).numel())
            return top_saliency_per_camera(inputs, max(1, count // cameras), self.name)
        ratios = self.camera_ratios(int(inputs.layout.camera_index.max()) + 1)
        return top_saliency(inputs, count, self.name, ratios)

    def schedule(self, view: LayerView) -> torch.Tensor:
        """Nothing more is dropped inside the decoder."""
        return keep_all_schedule(view)
