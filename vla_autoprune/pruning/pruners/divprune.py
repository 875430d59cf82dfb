"""DivPrune: keep a max-min diverse subset of the visual tokens, before the decoder.

Based on Alvar et al., "DivPrune: Diversity-based Visual Token Pruning for Large Multimodal
Models" (CVPR 2025, https://arxiv.org/abs/2503.02175), official code vbdi/divprune
``LLaVA/llava/model/llava_arch.py`` lines 152-172 (``DivPrune``), applied at lines 374-381 to the
decoder-input embeddings of the image span, whose kept indices are then sorted.

The rule: cosine distance ``1 - cos`` between the visual token embeddings (here: the decoder-input
embeddings at the layout's visual positions, i.e. after the projector, as the official code);
the first token is the one whose nearest neighbour is farthest; each next one maximises its
minimum distance to the tokens already chosen (greedy max-min diversity). ``n = floor(budget)``
tokens are kept (the official knob is a ratio of the image tokens), so every decoder layer sees
``n`` (the same accounting as every pruner). Survivors are renumbered contiguously (LLaVA-1.5
passes no position ids, so the shortened prompt is numbered afresh), the default ``position_ids``.

Departures: a chosen token is never chosen again (the official greedy step could re-pick one when
every remaining distance is 0, e.g. duplicated embeddings); ties go to the lower index; several
cameras form one pool (``per_camera=none``) or, with ``per_camera``, each camera's share is chosen
within that camera.

This file also holds :class:`PreDecoderPruner`, the small base the pre-decoder pruners share
(VisionZip, VisPruner, DivPrune, Prune2Drive).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vla_autoprune.models.base import DecoderInputs
from vla_autoprune.pruning.budget import min_budget
from vla_autoprune.pruning.cameras import camera_quotas
from vla_autoprune.pruning.options import PositionIds
from vla_autoprune.pruning.pruner import LayerView, Pruner, keep_all_schedule
from vla_autoprune.pruning.registry import register_pruner

# A group rule: (row b, group token indices int64 [M], count k) -> local indices int64 [k] into the group.
GroupRule = Callable[[int, torch.Tensor, int], torch.Tensor]


def visual_embeddings(inputs: DecoderInputs) -> torch.Tensor:
    """float ``[B, V, D]``: the decoder-input embeddings of the visual tokens, in visual order."""
    at = inputs.layout.visual_positions()
    return inputs.inputs_embeds.gather(1, at.unsqueeze(-1).expand(-1, -1, inputs.inputs_embeds.shape[-1]))


def cosine_distance(x: torch.Tensor) -> torch.Tensor:
    """float32 ``[M, M]``: ``1 - cos`` between the rows of ``x`` ``[M, D]``."""
    unit = F.normalize(x.float(), dim=-1)
    return 1.0 - unit @ unit.T


def max_min_subset(x: torch.Tensor, k: int, first: int | None = None) -> torch.Tensor:
    """int64 ``[k]``: greedy max-min diverse rows of ``x`` ``[M, D]`` under cosine distance, in pick order.

    ``first=None`` starts, as DivPrune does, from the row whose nearest neighbour is farthest;
    an int starts from that row (farthest point sampling). Each next row maximises its minimum
    distance to the rows chosen so far; chosen rows are never chosen again; ties: lowest index.
    """
    m = x.shape[0]
    k = min(k, m)
    if k <= 0:
        return torch.empty(0, dtype=torch.long, device=x.device)
    dist = cosine_distance(x)
    if first is None:
        # distance to the nearest other row (the 2nd smallest: the smallest is the row itself)
        nearest = dist.topk(2, dim=0, largest=False).values[1] if m > 1 else dist[0]
        first = int(nearest.argmax())
    picks = torch.empty(k, dtype=torch.long, device=x.device)
    picks[0] = first
    closest = dist[first].clone()  # [M]: min distance of each row to the chosen ones
    closest[first] = -math.inf  # chosen rows stay at -inf: min(-inf, d) = -inf
    for i in range(1, k):
        nxt = closest.argmax()  # a 0-d tensor: no host sync per pick
        picks[i] = nxt
        closest = torch.minimum(closest, dist[nxt]).index_fill_(0, nxt.view(1), -math.inf)
    return picks


def select_per_group(
    inputs: DecoderInputs, count: int, ratios: list[float] | None, rule: GroupRule
) -> torch.Tensor:
    """int64 ``[B, n]``: visual indices chosen by ``rule`` in one pool, or per camera with ``ratios``.

    With ``ratios`` each camera's share of ``count`` (:func:`~vla_autoprune.pruning.cameras.camera_quotas`)
    is chosen among that camera's tokens. Every row has the same cameras, so ``n`` is the same.
    """
    camera = inputs.layout.camera_index
    rows = []
    for b in range(camera.shape[0]):
        if ratios is None:
            groups = [(torch.arange(camera.shape[1], device=camera.device), count)]
        else:
            members = [torch.nonzero(camera[b] == c).flatten() for c in range(len(ratios))]
            quotas = camera_quotas(count, [int(m.numel()) for m in members], ratios)
            groups = list(zip(members, quotas, strict=True))
        rows.append(torch.cat([idx[rule(b, idx, k)] for idx, k in groups if k > 0]))
    return torch.stack(rows)


@dataclass
class PreDecoderPruner(Pruner):
    """Base of pruners that choose ``n = floor(budget)`` visual tokens once, before the decoder.

    Subclasses implement :meth:`select` (one row, one pool of tokens); every decoder layer then
    sees the same ``n`` tokens, so the mean per layer is ``n`` (at most the budget, short of it by
    less than one token).
    """

    position_ids: PositionIds = "contiguous"  # the official code rebuilds the shortened prompt

    def reachable(self, num_layers: int, num_visual: int) -> tuple[float, float]:
        """Any budget from one token to ``V``: layer 0 sees the selection too."""
        return min_budget(num_layers, num_visual, full_layers=0), float(num_visual)

    def count(self, num_visual: int) -> int:
        """``n``: visual tokens kept, ``floor(budget)`` in ``[1, V]``."""
        return min(max(1, math.floor(self.target(num_visual))), num_visual)

    def preselect(self, inputs: DecoderInputs, num_layers: int) -> torch.Tensor | None:
        """int64 ``[B, n]`` visual indices kept (None when keeping all)."""
        num_visual = inputs.layout.num_visual
        count = self.count(num_visual)
        if count >= num_visual:
            return None
        ratios = self.camera_ratios(int(inputs.layout.camera_index.max()) + 1)
        return select_per_group(inputs, count, ratios, lambda b, idx, k: self.select(inputs, b, idx, k))

    @abc.abstractmethod
    def select(self, inputs: DecoderInputs, row: int, tokens: torch.Tensor, k: int) -> torch.Tensor:
        """int64 ``[k]``: positions in ``tokens`` (int64 ``[M]`` visual indices of row ``row``) to keep."""

    def schedule(self, view: LayerView) -> torch.Tensor:
        """Nothing more is dropped inside the decoder."""
        return keep_all_schedule(view)


@register_pruner
@dataclass
class DivPrunePruner(PreDecoderPruner):
    """Keep the greedy max-min diverse subset of the visual embeddings (cosine distance)."""

    name = "divprune"

    def select(self, inputs: DecoderInputs, row: int, tokens: torch.Tensor, k: int) -> torch.Tensor:
        """DivPrune's greedy max-min subset of this pool's embeddings."""
        return max_min_subset(visual_embeddings(inputs)[row, tokens], k)
