"""DART: keep pivot tokens and the visual tokens least like them, at an early decoder layer.

Based on Wen et al., "Stop Looking for Important Tokens in Multimodal Language Models:
Duplication Matters More" (https://arxiv.org/abs/2502.11494), official code ZichenWen1/DART
(``get_retained_image_token`` in its patched ``modeling_llama.py``; that repository could not be
read here, so this follows the paper and its defaults as the repository's run scripts and ports
reproduce them: ``pruned_layer=2``, ``pivot_image_token=4``, ``pivot_text_token=4``).

The rule, after layer ``K - 1`` ran (paper default ``K = 2``), for ``n`` visual tokens kept:

1. pivots: the ``pivot_image`` visual tokens and the ``pivot_text`` text tokens whose keys at
   layer ``K - 1`` (post-rotary, all heads) have the largest L1 norm;
2. duplicates: for each pivot in turn, the candidate visual tokens (not yet kept, not pivots) least
   cosine-similar to the pivot, by the hidden states entering layer ``K``, are kept; the rest are
   duplicates of what is kept and are dropped.

Layers ``0..K-1`` see all ``V`` tokens and the others ``n``, with ``n`` solved for the budget as
FastV's ``matched`` variant does (``K`` lowered if needed). Survivors keep their position ids
(the official code gathers ``position_ids``), the default.

Departures: the official per-pivot count is ``int(V (1 - R) / (pivots))`` for every pivot, so the
kept total drifts from the target by up to a pivot's share; here the ``n - pivot_image`` tokens are
shared out exactly (the first pivots, in sequence order, take one more) so the budget holds;
pivots are visited in sequence order (the official code iterates a Python set); the "query"
tokens are the layout's text tokens (every real token after the visual block); the hidden states
are compared as the layer hands them on (a port applies the final norm first, whose per-channel
weights can change the cosine ranking). Scoring MACs: ``k_proj`` over every token is recorded;
the cosine similarities (``V`` per pivot) are not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from vla_autoprune import compat
from vla_autoprune.errors import ConfigError
from vla_autoprune.pruning.pruner import LayerView
from vla_autoprune.pruning.pruners.fastv import FastVPruner
from vla_autoprune.pruning.registry import register_pruner

PIVOT_IMAGE = 4  # the official pivot_image_token
PIVOT_TEXT = 4  # the official pivot_text_token


def pivot_duplicates(
    hidden: torch.Tensor,
    key_norm: torch.Tensor,
    visual: torch.Tensor,
    text: torch.Tensor,
    count: int,
    pivot_image: int,
    pivot_text: int,
) -> torch.Tensor:
    """int64 ``[count]`` (or fewer): DART's kept visual rows for one sample.

    Args:
        hidden: float ``[N, D]``, hidden states entering layer ``K``.
        key_norm: float ``[N]``, L1 norm of each token's keys at layer ``K - 1``.
        visual: int64 ``[V]``, rows of the (valid) visual tokens.
        text: int64 ``[T]``, rows of the (valid) text tokens.
        count: visual tokens to keep.
        pivot_image, pivot_text: pivots taken from the visual and the text tokens.
    """
    image_pivots = visual[key_norm[visual].topk(min(pivot_image, count, visual.numel())).indices]
    text_pivots = text[key_norm[text].topk(min(pivot_text, text.numel())).indices]
    pivots = torch.cat([image_pivots, text_pivots]).sort().values
    kept = [image_pivots]
    left = count - image_pivots.numel()
    candidates = visual[~torch.isin(visual, image_pivots)]
    unit = F.normalize(hidden.float(), dim=-1)
    for j, pivot in enumerate(pivots.tolist()):
        take = left // pivots.numel() + (1 if j < left % pivots.numel() else 0)
        if take == 0 or candidates.numel() == 0:
            continue
        similarity = unit[candidates] @ unit[pivot]
        chosen = torch.argsort(similarity, stable=True)[:take]  # least similar first
        kept.append(candidates[chosen])
        candidates = candidates[~torch.isin(torch.arange(candidates.numel(), device=chosen.device), chosen)]
    return torch.cat(kept)


@register_pruner
@dataclass
class DARTPruner(FastVPruner):
    """FastV's budget-matched schedule, with DART's pivot / duplication selection.

    Attributes:
        layer: ``K``, the first layer that sees the reduced set (paper: 2).
        pivot_image: visual pivots (paper: 4).
        pivot_text: text pivots (paper: 4).
    """

    name = "dart"
    pivot_image: int = PIVOT_IMAGE
    pivot_text: int = PIVOT_TEXT

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode != "matched":
            raise ConfigError(f"{self.name}: mode={self.mode!r} is FastV's; dart is held to the budget only")
        if self.pivot_image < 0 or self.pivot_text < 0 or self.pivot_image + self.pivot_text == 0:
            raise ConfigError(
                f"{self.name}: pivot_image={self.pivot_image}, pivot_text={self.pivot_text} must be >= 0 "
                "with at least one pivot"
            )

    @property
    def label(self) -> str:
        """``dart``: one variant only."""
        return self.name

    def text_ranked_from(self, num_layers: int, num_visual: int) -> int | None:
        """None: key norms and hidden-state similarity, not the text's attention."""
        return None

    def score(self, view: LayerView) -> torch.Tensor:
        """float ``[B, Kv]``: 1 for the visual slots DART keeps, 0 for the others."""
        b = view.batch_size
        cos, sin = view.position_embeddings
        _, keys = compat.queries_keys(view.layer, view.hidden, cos, sin, view.text_slots[:, :1])
        key_norm = keys.float().abs().sum(dim=(1, 3))  # [B, N]: L1 over all heads and channels
        if view.tokens is not None:
            attn: Any = view.layer.self_attn  # transformers modules expose the projections as attributes
            view.add_scoring_macs(view.tokens * attn.k_proj.in_features * attn.k_proj.out_features)
        count = torch.minimum(
            torch.full((b,), self.plan(view.num_layers, view.num_visual)[1]), view.alive().cpu()
        )
        scores = torch.zeros(view.visual_slots.shape, dtype=torch.float32, device=view.hidden.device)
        for row in range(b):
            visual = view.visual_slots[row, view.visual_valid[row]]
            text = view.text_slots[row, view.text_valid[row]]
            kept = pivot_duplicates(
                view.output[row],
                key_norm[row],
                visual,
                text,
                int(count[row]),
                self.pivot_image,
                self.pivot_text,
            )
            scores[row] = torch.isin(view.visual_slots[row], kept).float()
        return scores
