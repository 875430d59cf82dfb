"""Random pruning: FastV's schedule with random scores (a lower bound for any scoring rule)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vla_autoprune.pruning.pruner import LayerView
from vla_autoprune.pruning.pruners.fastv import FastVPruner
from vla_autoprune.pruning.registry import register_pruner


@register_pruner
@dataclass
class RandomPruner(FastVPruner):
    """Drop visual tokens uniformly at random, once, with FastV's budget-derived schedule.

    Attributes:
        seed: seed of the ``torch.Generator`` drawn from at every prefill (same input, same choice).
    """

    name = "random"
    seed: int = 0

    def score(self, view: LayerView) -> torch.Tensor:
        """Uniform random scores, float ``[B, Kv]``, from a generator seeded at each forward."""
        generator = view.scratch.get("generator")
        if generator is None:
            generator = torch.Generator().manual_seed(self.seed)
            view.scratch["generator"] = generator
        scores = torch.rand(view.visual_slots.shape, generator=generator)
        return scores.to(view.hidden.device)
