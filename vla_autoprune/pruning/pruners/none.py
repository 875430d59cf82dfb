"""The unpruned baseline."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vla_autoprune.pruning.pruner import LayerView, Pruner, keep_all_schedule
from vla_autoprune.pruning.registry import register_pruner


@register_pruner
@dataclass
class NoPruner(Pruner):
    """Keeps every visual token; its budget, if set, must be ``V``."""

    name = "none"

    def reachable(self, num_layers: int, num_visual: int) -> tuple[float, float]:
        """Only ``V``: nothing is dropped."""
        return float(num_visual), float(num_visual)

    def schedule(self, view: LayerView) -> torch.Tensor:
        """Every layer hands on all ``V`` visual tokens."""
        return keep_all_schedule(view)
