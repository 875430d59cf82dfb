"""VisionZip: dominant tokens by vision-encoder attention plus merged contextual tokens, before the decoder.

Based on Yang et al., "VisionZip: Longer is Better but Not Necessary in Vision Language Models"
(CVPR 2025, https://arxiv.org/abs/2412.04467), official code dvlab-research/VisionZip
``visionzip/clip_encoder.py`` lines 41-85 (the CLIP encoder forward it patches).

The rule, for ``n = floor(budget)`` tokens entering the decoder (every layer sees them):

1. dominant: the top ``n - c`` tokens by the vision tower's [CLS] attention
   (``DecoderInputs.vision_saliency``; the official code sums the penultimate layer's heads),
   ``c = int(n * contextual_ratio)``; the paper's 54 + 10 of 64 sets ``contextual_ratio = 10 / 64``;
2. contextual: of the other ``M`` tokens (in sequence order), every ``max(1, M // c)``-th is a
   target (the first ``c``); each remaining token joins the target it is most cosine-similar to,
   and a contextual token is its target plus the mean of the tokens that joined it.

Contextual tokens take their target's place (and position id) in the prompt, through
:meth:`Pruner.premerge`; survivors are renumbered contiguously (the official code rebuilds the
prompt).

Departures: similarities and merged values use the decoder-input embeddings (after the projector);
the official code merges the vision tower's hidden states by its last layer's keys before the
projector, and appends the contextual tokens after the dominant ones instead of at their targets'
places; the record counts contextual tokens as kept (their targets), not as merged. Several cameras
form one pool (``per_camera=none``: dominant tokens compete, merges may cross cameras) or each
camera's share is handled within the camera (``per_camera=uniform`` is the official per-image rule).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vla_autoprune.errors import ConfigError
from vla_autoprune.models.base import DecoderInputs
from vla_autoprune.pruning.pruners.divprune import PreDecoderPruner, select_per_group, visual_embeddings
from vla_autoprune.pruning.pruners.fastervlm import MissingSaliencyError
from vla_autoprune.pruning.registry import register_pruner

# The paper's split: 54 dominant + 10 contextual of 64 tokens (also 108 + 20, 162 + 30).
CONTEXTUAL_RATIO = 10 / 64


def contextual_merge(x: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """VisionZip's contextual tokens from ``x`` ``[M, D]`` (non-dominant tokens, in sequence order).

    Returns:
        ``targets`` int64 ``[c]``: rows of ``x`` that hold the contextual tokens (``c = min(count, M)``);
        ``merged`` float ``[c, D]``: each target plus the mean of the rows that joined it.
    """
    m = x.shape[0]
    count = min(count, m)
    if count <= 0:
        return torch.empty(0, dtype=torch.long, device=x.device), x[:0]
    targets = torch.arange(0, m, max(1, m // count), device=x.device)[:count]
    others = torch.ones(m, dtype=torch.bool, device=x.device)
    others[targets] = False
    rest = x[others].float()
    unit = F.normalize(x.float(), dim=-1)
    join = (unit[others] @ unit[targets].T).argmax(dim=1)  # [M - c]: the most similar target
    sums = torch.zeros(count, x.shape[1], device=x.device).index_add_(0, join, rest)
    joined = torch.bincount(join, minlength=count).clamp(min=1).unsqueeze(1)
    return targets, (x[targets].float() + sums / joined).to(x.dtype)


@register_pruner
@dataclass
class VisionZipPruner(PreDecoderPruner):
    """Dominant tokens by [CLS] attention plus merged contextual tokens.

    Attributes:
        contextual_ratio: share of the kept tokens that are merged contextual ones, in ``[0, 1)``.
    """

    name = "visionzip"
    contextual_ratio: float = CONTEXTUAL_RATIO

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.contextual_ratio < 1:
            raise ConfigError(f"{self.name}: contextual_ratio={self.contextual_ratio} must be in [0, 1)")

    def plan(self, inputs: DecoderInputs) -> tuple[torch.Tensor, dict[tuple[int, int], torch.Tensor]] | None:
        """Kept visual indices int64 ``[B, n]`` and the merged embedding of each (row, target), or None."""
        num_visual = inputs.layout.num_visual
        count = self.count(num_visual)
        if count >= num_visual:
            return None
        embeds = visual_embeddings(inputs)
        merged: dict[tuple[int, int], torch.Tensor] = {}

        def rule(b: int, tokens: torch.Tensor, k: int) -> torch.Tensor:
            local = self.select(inputs, b, tokens, k)
            contextual = int(k * self.contextual_ratio)
            rest = torch.ones(tokens.numel(), dtype=torch.bool, device=tokens.device)
            rest[local] = False
            rest_local = torch.nonzero(rest).flatten()  # non-dominant, in sequence order
            targets, values = contextual_merge(embeds[b, tokens[rest_local]], contextual)
            for t, value in zip(rest_local[targets].tolist(), values, strict=True):
                merged[(b, int(tokens[t]))] = value
            return torch.cat([local, rest_local[targets]])

        ratios = self.camera_ratios(int(inputs.layout.camera_index.max()) + 1)
        return select_per_group(inputs, count, ratios, rule), merged

    def select(self, inputs: DecoderInputs, row: int, tokens: torch.Tensor, k: int) -> torch.Tensor:
        """The dominant positions in ``tokens``: the top ``k - int(k * contextual_ratio)`` by saliency."""
        if inputs.vision_saliency is None:
            raise MissingSaliencyError(
                f"{self.name} ranks visual tokens by inputs.vision_saliency [B, V], which the model did "
                "not provide; use a model that computes it or pruner=divprune"
            )
        dominant = k - int(k * self.contextual_ratio)
        saliency = inputs.vision_saliency[row, tokens].float()
        return torch.argsort(saliency, descending=True, stable=True)[:dominant]

    def preselect(self, inputs: DecoderInputs, num_layers: int) -> torch.Tensor | None:
        """Dominant and target visual indices, int64 ``[B, n]`` (None when keeping all)."""
        plan = self.plan(inputs)
        return None if plan is None else plan[0]

    def premerge(self, inputs: DecoderInputs, kept: torch.Tensor) -> torch.Tensor | None:
        """float ``[B, n, D]``: the kept tokens' embeddings, targets replaced by their contextual tokens."""
        plan = self.plan(inputs)  # deterministic: the same plan preselect returned
        if plan is None:
            return None
        values = visual_embeddings(inputs).gather(
            1, kept.unsqueeze(-1).expand(-1, -1, inputs.inputs_embeds.shape[-1])
        )
        for (b, token), value in plan[1].items():
            values[b, torch.searchsorted(kept[b], token)] = value  # kept rows are ascending
        return values
