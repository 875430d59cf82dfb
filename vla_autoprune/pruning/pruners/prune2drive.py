"""Prune2Drive-style: farthest point sampling on cosine distance, per camera, with per-view ratios.

Based on Xiong et al., "Prune2Drive: A Plug-and-Play Framework for Accelerating Vision-Language
Models in Autonomous Driving" (CVPR 2026, https://arxiv.org/abs/2508.13305), official repository
MinhaoXiong/Prune2Drive (its stored snapshot holds the README only, so this follows the paper).

The rule: each camera view keeps its own share of the ``n = floor(budget)`` visual tokens, chosen
by token-wise farthest point sampling (T-FPS) on the cosine distance between that view's visual
embeddings (decoder-input embeddings, after the projector); every decoder layer sees the ``n``.
The shares are ``per_camera``: ``uniform`` (the default) or one ratio per view, e.g. more for the
front camera; survivors are renumbered contiguously.

Departures (it is "-style"): the paper's view ratios are keep fractions of each view found by a
search on the downstream task; here the ratios are given, and turned into shares of the same
budget as every pruner (proportional to the ratios; views have equal token counts); FPS starts
from each view's first token (top-left patch), the usual FPS convention, as the paper does not say.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from vla_autoprune.errors import ConfigError
from vla_autoprune.models.base import DecoderInputs
from vla_autoprune.pruning.pruners.divprune import PreDecoderPruner, max_min_subset, visual_embeddings
from vla_autoprune.pruning.registry import register_pruner

FPS_START = 0  # the first token of each view seeds its farthest point sampling


@register_pruner
@dataclass
class Prune2DrivePruner(PreDecoderPruner):
    """Per-camera farthest point sampling; ``per_camera`` gives each view's share (never ``none``)."""

    name = "prune2drive"
    per_camera: str | Sequence[float] = "uniform"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.per_camera == "none":
            raise ConfigError(
                f"{self.name}: per_camera=none would pool the views; Prune2Drive samples each view, "
                "so set per_camera=uniform or one keep ratio per camera"
            )

    def select(self, inputs: DecoderInputs, row: int, tokens: torch.Tensor, k: int) -> torch.Tensor:
        """Farthest point sampling over one view's embeddings, from its first token."""
        return max_min_subset(visual_embeddings(inputs)[row, tokens], k, first=FPS_START)
