"""The pruner extension point and what a pruner sees at a decoder layer.

A pruner is a dataclass whose fields are its hyperparameters (validated in ``__post_init__``). The
engine (:mod:`vla_autoprune.pruning.engine`) owns hooks, gathers, masks and the KV cache; a pruner
only answers small questions, in the spirit of kvpress' presses:

- :meth:`Pruner.schedule`: how many visual tokens each layer hands on (per sample);
- :meth:`Pruner.score`: how important each visual token is at a pruning layer (default: text ->
  visual attention averaged over heads and text rows);
- optionally :meth:`Pruner.preselect` (drop tokens before the decoder, from the vision tower's
  saliency), :meth:`Pruner.split` and :meth:`Pruner.merge` (recycle dropped tokens by merging).

``budget`` is the mean number of visual tokens processed per decoder layer, over all layers and
counting layer 0 ("actual" accounting), so every pruner can be held to the same number.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from vla_autoprune.models.base import DecoderInputs
from vla_autoprune.pruning.merging import dpc_knn_merge
from vla_autoprune.pruning.scores import text_visual_attention

POSITION_MODES = ("original", "contiguous")
# Bisection steps for the scalar that sets a static schedule: 2**-60 is below any count's resolution.
_BISECT_STEPS = 60
# Recycling (SparseVLM, AutoPrune): the best-scored 30% of the dropped tokens are merged.
RECYCLE_POOL_FRACTION = 0.3
# Slack when comparing a budget with reachable bounds computed in floating point.
_BUDGET_SLACK = 1e-9


class BudgetError(ValueError):
    """The requested budget cannot be met by this pruner on this decoder."""


@dataclass
class LayerView:
    """What a pruner sees after a decoder layer ran during a prefill (one batch, ``K`` slots).

    Attributes:
        layer_idx: index ``l`` of the layer that just ran.
        num_layers: ``L``.
        num_visual: visual tokens entering the decoder (after any pre-selection).
        layer: the decoder layer module.
        hidden: float ``[B, K, D]``, the layer's input hidden states.
        output: float ``[B, K, D]``, the layer's output hidden states.
        position_embeddings: ``(cos, sin)`` ``[B, K, rd]`` the layer was given.
        attention_mask: the 4D mask the layer was given, or None (plain causal).
        visual_slots: int64 ``[B, Kv]``, sequence indices of the visual slots, ascending (camera
            markers may sit between them).
        visual_valid: bool ``[B, Kv]``; False for ragged-batch fillers (already dropped tokens).
        visual_index: int64 ``[B, Kv]``, index of each visual slot among the decoder's input visual
            tokens (merged tokens: their representative's).
        text_slots: int64 ``[B, T]``, sequence indices of the text queries.
        text_valid: bool ``[B, T]``; False for padding entries (samples have different T).
        inputs: the decoder inputs this forward runs on.
        schedule: the schedule the pruner returned at the previous layer (None at the first call).
        scratch: per-forward scratch space for the pruner (reset at every prefill).
        stats: per-forward numbers the pruner reports (copied into the record, e.g. MI and k).
    """

    layer_idx: int
    num_layers: int
    num_visual: int
    layer: nn.Module
    hidden: torch.Tensor
    output: torch.Tensor
    position_embeddings: tuple[torch.Tensor, torch.Tensor]
    attention_mask: torch.Tensor | None
    visual_slots: torch.Tensor
    visual_valid: torch.Tensor
    visual_index: torch.Tensor
    text_slots: torch.Tensor
    text_valid: torch.Tensor
    inputs: DecoderInputs
    schedule: torch.Tensor | None
    scratch: dict[str, Any]
    stats: dict[str, torch.Tensor]
    _attention: torch.Tensor | None = field(default=None, repr=False)

    @property
    def batch_size(self) -> int:
        """``B``."""
        return int(self.hidden.shape[0])

    def alive(self) -> torch.Tensor:
        """int64 ``[B]``: valid visual tokens entering this layer."""
        return self.visual_valid.sum(dim=1)

    def attention(self) -> torch.Tensor:
        """float32 ``[B, H, T, Kv]``: text -> visual attention at this layer (computed once)."""
        if self._attention is None:
            self._attention = text_visual_attention(
                self.layer,
                self.hidden,
                self.position_embeddings,
                self.attention_mask,
                self.text_slots,
                self.visual_slots,
            )
        return self._attention

    def text_attention(self) -> torch.Tensor:
        """float32 ``[B, Kv]``: attention to each visual token, mean over heads and valid text rows."""
        per_row = self.attention().mean(dim=1)  # [B, T, Kv]
        valid = self.text_valid.unsqueeze(-1)
        total = torch.where(valid, per_row, torch.zeros_like(per_row)).sum(1)  # where: padded rows are junk
        return total / valid.sum(1).clamp(min=1)


@dataclass
class Merge:
    """Tokens made by merging dropped ones, placed right after the kept visual tokens.

    Attributes:
        hidden: float ``[B, R, D]``, the merged hidden states.
        representative: int64 ``[B, R]``, index into the layer's visual slots of the token whose
            position id (and record identity) each merged token takes.
        valid: bool ``[B, R]``; rows may carry fewer merged tokens than ``R``.
    """

    hidden: torch.Tensor
    representative: torch.Tensor
    valid: torch.Tensor


@dataclass
class Pruner(abc.ABC):
    """Base class of visual-token pruners (dataclass fields are the hyperparameters).

    Attributes:
        budget: mean visual tokens processed per decoder layer (over all ``L`` layers, layer 0
            included). None keeps every token.
        position_ids: ``original`` (survivors keep their position ids) or ``contiguous`` (survivors
            are renumbered in sequence order, as LLaVA-based reference code does).
    """

    name: ClassVar[str] = "base"

    budget: float | None = None
    position_ids: str = "original"
    # Which token accounting the budget uses; only AutoPrune offers the reference's alternative.
    accounting: str = field(default="actual", init=False)

    def __post_init__(self) -> None:
        if self.budget is not None and not (math.isfinite(self.budget) and self.budget > 0):
            raise BudgetError(f"{self.name}: budget must be a positive number of tokens, got {self.budget}")
        if self.position_ids not in POSITION_MODES:
            raise ValueError(
                f"{self.name}: position_ids={self.position_ids!r} is unknown; use one of {POSITION_MODES}"
            )

    # -- setup and validation --------------------------------------------------------------------

    def setup(self, decoder: nn.Module) -> None:  # noqa: B027 - optional hook, no-op by default
        """Model-dependent setup, called by the engine before hooks are installed."""

    def reachable(self, num_layers: int, num_visual: int) -> tuple[float, float]:
        """``(lo, hi)`` budgets this pruner can meet: layer 0 always sees all ``V`` tokens."""
        return (num_visual + (num_layers - 1)) / num_layers, float(num_visual)

    def check_budget(self, num_layers: int, num_visual: int) -> None:
        """Raise :class:`BudgetError` (one line, naming the reachable range) if the budget is out of reach."""
        if self.budget is None:
            return
        lo, hi = self.reachable(num_layers, num_visual)
        if not lo - _BUDGET_SLACK <= self.budget <= hi + _BUDGET_SLACK:
            raise BudgetError(
                f"{self.name}: budget {self.budget:g} is not reachable with {num_layers} layers and "
                f"{num_visual} visual tokens; choose a budget in [{lo:.4g}, {hi:.4g}]"
            )

    def target(self, num_visual: int) -> float:
        """The budget in tokens (``V`` when no budget is set)."""
        return float(num_visual) if self.budget is None else float(self.budget)

    # -- extension points ------------------------------------------------------------------------

    def preselect(self, inputs: DecoderInputs, num_layers: int) -> torch.Tensor | None:
        """Visual tokens to keep before the decoder: int64 ``[B, n0]`` indices into ``0..V-1``, or None."""
        return None

    @abc.abstractmethod
    def schedule(self, view: LayerView) -> torch.Tensor:
        """int64 ``[B, L]``: visual tokens each layer hands on (entry ``l``: after layer ``l`` ran).

        Called after every prefill layer but the last; ``view.schedule`` is the previous answer, so
        static schedules are computed once and adaptive ones may change at a later layer.
        """

    def score(self, view: LayerView) -> torch.Tensor:
        """float ``[B, Kv]``: importance of each visual slot at ``view.layer_idx`` (higher = keep)."""
        return view.text_attention()

    def split(self, view: LayerView, hand_on: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Split the count a layer hands on (int64 ``[B]``) into ``(kept, merged)`` tokens, each ``[B]``."""
        return hand_on, torch.zeros_like(hand_on)

    def merge(
        self, view: LayerView, scores: torch.Tensor, dropped: torch.Tensor, clusters: torch.Tensor
    ) -> Merge | None:
        """Merge some ``dropped`` visual slots (bool ``[B, Kv]``) into ``clusters`` [B] tokens."""
        return None


# ------------------------------------------------------------------------------------------------
# Static schedules shared by the baseline pruners.


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
    """Per-stage counts meeting the budget: the largest ``t`` in [0, 1] whose total fits ``B * L``.

    ``counts_at(t)`` must be non-decreasing in ``t`` with ``counts_at(1) == [V, ...]``. The total
    counts layer 0 (and every layer before ``starts[0]``) at ``V``. The result never exceeds the
    budget and falls short of it by less than one token per layer on average (a step of ``t``
    moves one stage count by one token, i.e. fewer than ``L`` token-layers).
    """
    target = budget * num_layers

    def total(t: float) -> int:
        counts = counts_at(t)
        processed = [num_visual] * num_layers
        for start, count in zip(starts, counts, strict=True):
            processed[start:] = [count] * (num_layers - start)
        return sum(processed)

    if total(1.0) <= target + _BUDGET_SLACK:
        return counts_at(1.0)
    lo, hi = 0.0, 1.0
    for _ in range(_BISECT_STEPS):
        mid = (lo + hi) / 2
        if total(mid) <= target + _BUDGET_SLACK:
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
            raise ValueError(f"{self.name}: stages={self.stages} must be increasing fractions in (0, 1)")

    def starts(self, num_layers: int) -> list[int]:
        """First layer of each reduced stage."""
        return spread_layers(num_layers, self.stages)

    def reachable(self, num_layers: int, num_visual: int) -> tuple[float, float]:
        """Layers before the first reduced stage see ``V``, the rest at least one token."""
        first = self.starts(num_layers)[0]
        return (first * num_visual + num_layers - first) / num_layers, float(num_visual)

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


# ------------------------------------------------------------------------------------------------
# Recycling shared by SparseVLM and AutoPrune.


def recycle_dropped(
    view: LayerView,
    scores: torch.Tensor,
    dropped: torch.Tensor,
    clusters: torch.Tensor,
    pool_fraction: float = RECYCLE_POOL_FRACTION,
) -> Merge:
    """Merge the best-scored dropped tokens into ``clusters`` [B] tokens by DPC-kNN.

    The pool is the top ``int(pool_fraction * d) + 1`` of the ``d`` dropped tokens of a row (the
    reference's rule); merging runs on the layer's output hidden states. Each merged token takes the
    position of its best-scored member.

    Args:
        view: the layer view (``output`` ``[B, K, D]``, ``visual_slots`` ``[B, Kv]``).
        scores: float ``[B, Kv]`` visual-token scores at this layer.
        dropped: bool ``[B, Kv]`` visual slots dropped at this layer.
        clusters: int64 ``[B]`` merged tokens wanted per row.
    """
    b, kv = dropped.shape
    d = dropped.sum(dim=1)
    pool_size = torch.minimum(torch.floor(d.double() * pool_fraction).long() + 1, d)
    ranked = torch.where(dropped, scores.float(), float("-inf"))
    order = torch.argsort(ranked, dim=1, descending=True, stable=True)
    width = max(int(pool_size.max()), 1)
    pool = order[:, :width]  # [B, M] indices into the visual block
    pool_ok = torch.arange(width, device=pool.device) < pool_size.unsqueeze(1)
    pool_slots = view.visual_slots.gather(1, pool)
    pool_hidden = view.output.gather(1, pool_slots.unsqueeze(-1).expand(-1, -1, view.output.shape[-1]))
    merged, assign = dpc_knn_merge(pool_hidden, clusters.clamp(max=pool_size), valid=pool_ok)
    c = merged.shape[1]
    member = assign.unsqueeze(-1) == torch.arange(c, device=assign.device)  # [B, M, C]
    pool_scores = ranked.gather(1, pool).unsqueeze(-1).expand(-1, -1, c)
    best = torch.where(member, pool_scores, float("-inf")).argmax(dim=1)  # [B, C] index into pool
    valid = torch.arange(c, device=pool.device) < torch.minimum(clusters, pool_size).unsqueeze(1)
    return Merge(hidden=merged, representative=pool.gather(1, best), valid=valid & member.any(1))
