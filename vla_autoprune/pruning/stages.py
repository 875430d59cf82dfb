"""Static, staged schedules shared by the baseline pruners (FastV, PDrop, SparseVLM).

A staged schedule keeps all ``V`` visual tokens until the first stage, then a fixed count from
each stage's first layer on. The counts are fitted to the budget with :func:`fit_stages`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from vla_autoprune.errors import ConfigError
from vla_autoprune.pruning.budget import min_budget, token_layers
from vla_autoprune.pruning.pruner import LayerView, Pruner

# Bisection steps for the scalar that sets a static schedule: 2**-60 is below any count's resolution.
_BISECT_STEPS = 60


def stage_schedule(
    batch: int, num_layers: int, num_visual: int, starts: Sequence[int], counts: Sequence[int]
) -> torch.Tensor:
    """int64 ``[B, L]``: ``V`` until ``starts[0]``, then ``counts[s]`` from layer ``starts[s]`` on.

    ``starts`` are the first layers that see each reduced count, so layer ``starts[s] - 1`` hands on.
    """
    processed = [num_visual] * num_layers
    for start, count in zip(starts, counts, strict=True):
        for layer in range(start, num_layers):
            processed[layer] = count
    hand_on = processed[1:] + processed[-1:]
    return torch.tensor(hand_on, dtype=torch.long).expand(batch, -1).clone()


def fit_stages(
    budget: float,
    num_layers: int,
    num_visual: int,
    starts: Sequence[int],
    counts_at: Callable[[float], list[int]],
) -> list[int]:
    """Per-stage counts meeting the budget: the largest ``t`` in [0, 1] whose total fits ``floor(B * L)``.

    ``counts_at(t)`` must be non-decreasing in ``t`` with ``counts_at(1) == [V, ...]``. The total
    counts layer 0 (and every layer before ``starts[0]``) at ``V``. The result never exceeds the
    budget and falls short of it by less than one token per layer on average (a step of ``t``
    moves one stage count by one token, i.e. fewer than ``L`` token-layers).
    """
    target = token_layers(budget, num_layers)

    def total(t: float) -> int:
        counts = counts_at(t)
        processed = [num_visual] * num_layers
        for start, count in zip(starts, counts, strict=True):
            processed[start:] = [count] * (num_layers - start)
        return sum(processed)

    if total(1.0) <= target:
        return counts_at(1.0)
    lo, hi = 0.0, 1.0
    for _ in range(_BISECT_STEPS):
        mid = (lo + hi) / 2
        if total(mid) <= target:
            lo = mid
        else:
            hi = mid
    return counts_at(lo)


def spread_layers(num_layers: int, fractions: Sequence[float]) -> list[int]:
    """Distinct layers in ``[1, L-1]`` at the given fractions of depth (rounded, then de-duplicated)."""
    layers: list[int] = []
    for frac in fractions:
        layer = min(max(round(frac * num_layers), 1), num_layers - 1)
        if layers and layer <= layers[-1]:
            layer = layers[-1] + 1
        if layer <= num_layers - 1:
            layers.append(layer)
    return layers


@dataclass
class StagedPruner(Pruner):
    """A pruner that drops at stage boundaries, each reduced stage a geometric step below the last.

    Attributes:
        stages: first layer of each reduced stage, as increasing fractions of depth in (0, 1)
            (rounded to distinct layers in ``[1, L-1]``).
    """

    stages: Sequence[float] = (0.5,)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.stages = tuple(self.stages)
        if (
            not self.stages
            or any(not 0 < f < 1 for f in self.stages)
            or list(self.stages) != sorted(self.stages)
        ):
            raise ConfigError(f"{self.name}: stages={self.stages} must be increasing fractions in (0, 1)")

    def starts(self, num_layers: int) -> list[int]:
        """First layer of each reduced stage."""
        return spread_layers(num_layers, self.stages)

    def reachable(self, num_layers: int, num_visual: int) -> tuple[float, float]:
        """Layers before the first reduced stage see ``V``, the rest at least one token."""
        return min_budget(num_layers, num_visual, self.starts(num_layers)[0]), float(num_visual)

    def stage_counts(self, num_layers: int, num_visual: int, ratio: float | None = None) -> list[int]:
        """Visual tokens of each reduced stage: ``V * ratio**(s+1)``, the ratio fitted to the budget if None."""
        num_stages = len(self.starts(num_layers))

        def geometric(lam: float) -> list[int]:
            return [max(1, math.floor(num_visual * lam ** (s + 1))) for s in range(num_stages)]

        if ratio is not None:
            return geometric(ratio)
        return fit_stages(self.target(num_visual), num_layers, num_visual, self.starts(num_layers), geometric)

    def static_schedule(self, view: LayerView, counts: Sequence[int]) -> torch.Tensor:
        """The stage schedule (int64 ``[B, L]``) of ``counts``, reusing the first answer of a forward."""
        if view.schedule is not None:
            return view.schedule
        return stage_schedule(
            view.batch_size, view.num_layers, view.num_visual, self.starts(view.num_layers), counts
        )
