"""VisPruner: [CLS]-important tokens plus diverse ones left after removing duplicates, before the decoder.

Based on Zhang et al., "Beyond Text-Visual Attention: Exploiting Visual Cues for Effective Token
Pruning in VLMs" (ICCV 2025), official code
Theia-4869/VisPruner ``llava/model/llava_arch.py`` lines 141-186 (``encode_images``); the default
``important_ratio = 0.5`` is its eval scripts' (``llava/eval/model_vqa_loader.py`` line 152).

The rule, for ``n = floor(budget)`` kept tokens (every decoder layer sees them):

1. important: the top ``int(n * important_ratio)`` tokens by vision-tower [CLS] attention
   (``DecoderInputs.vision_saliency``); the others, in descending attention, are the residual;
2. diverse: while the residual holds more than ``n - important`` tokens, split it alternately
   into ``a`` (even positions) and ``b`` (odd positions), score each ``a`` token by its highest
   cosine similarity to any ``b`` token, and remove the ``r = min(8, excess)`` most similar ``a``
   tokens; the residual becomes the rest of ``a`` (most similar first) followed by ``b``.

Survivors are renumbered contiguously (the official code rebuilds the prompt).

Departures: similarities use the decoder-input embeddings (after the projector), the official
code the vision tower's features before it; when ``b`` is empty (one residual token left) the
excess is taken from the end of the residual, and at most ``len(a)`` tokens go per round (the
official loop assumes an even residual); several cameras form one pool (``per_camera=none``), or
each camera's share is chosen within that camera (``per_camera``; the official code runs per image).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vla_autoprune.errors import ConfigError
from vla_autoprune.models.base import DecoderInputs
from vla_autoprune.pruning.pruners.divprune import PreDecoderPruner, visual_embeddings
from vla_autoprune.pruning.pruners.fastervlm import MissingSaliencyError
from vla_autoprune.pruning.registry import register_pruner

# Residual tokens removed per matching round (the official loop's ``min(8, R - T_div)``).
DUPLICATES_PER_ROUND = 8
# Share of the kept tokens chosen by [CLS] attention (``--important_ratio``, default 0.5 upstream).
IMPORTANT_RATIO = 0.5


def remove_duplicates(unit: torch.Tensor, residual: torch.Tensor, keep: int) -> torch.Tensor:
    """int64 ``[keep]``: the residual (int64 ``[R]`` rows of ``unit`` ``[M, D]``, unit norm) after removing duplicates.

    Each round removes the ``min(8, R - keep)`` even-position tokens most similar to an odd one.
    """
    while residual.numel() > keep:
        excess = min(DUPLICATES_PER_ROUND, residual.numel() - keep)
        a, b = residual[::2], residual[1::2]
        if b.numel() == 0:
            return residual[:keep]
        best = (unit[a] @ unit[b].T).max(dim=1).values  # [|a|]: each a's closest b
        order = torch.argsort(best, descending=True, stable=True)
        residual = torch.cat([a[order[min(excess, a.numel()) :]], b])
    return residual


@register_pruner
@dataclass
class VisPrunerPruner(PreDecoderPruner):
    """Important tokens by [CLS] attention, the rest of the count from de-duplicated ones.

    Attributes:
        important_ratio: share of the kept tokens chosen by [CLS] attention, in ``[0, 1]``.
    """

    name = "vispruner"
    important_ratio: float = IMPORTANT_RATIO

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.important_ratio <= 1:
            raise ConfigError(f"{self.name}: important_ratio={self.important_ratio} must be in [0, 1]")

    def select(self, inputs: DecoderInputs, row: int, tokens: torch.Tensor, k: int) -> torch.Tensor:
        """Important (top attention) then diverse positions in ``tokens``."""
        if inputs.vision_saliency is None:
            raise MissingSaliencyError(
                f"{self.name} ranks visual tokens by inputs.vision_saliency [B, V], which the model did "
                "not provide; use a model that computes it or pruner=divprune"
            )
        saliency = inputs.vision_saliency[row, tokens].float()
        order = torch.argsort(saliency, descending=True, stable=True)
        important = int(k * self.important_ratio)
        unit = F.normalize(visual_embeddings(inputs)[row, tokens].float(), dim=-1)
        diverse = remove_duplicates(unit, order[important:], k - important)
        return torch.cat([order[:important], diverse])
