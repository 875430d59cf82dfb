"""FastV: drop visual tokens once, after an early layer, by the attention they receive.

Based on Chen et al., "An Image is Worth 1/2 Tokens After Layer 2: Plug-and-Play Inference
Acceleration for Large Vision-Language Models" (ECCV 2024, https://arxiv.org/abs/2403.06764).

Two variants (``mode``):

- ``faithful``: the official rule, pkunlp-icler/FastV ``src/transformers/src/transformers/models/
  llama/modeling_llama.py`` lines 733-760 (the in-place token-drop branch): after layer ``K - 1``
  ran, average its attention over heads, take **the last token's row**, keep the
  ``int((1 - R) * V)`` visual tokens it attends to most; layers ``K..L-1`` see only those. Paper
  defaults ``K = 2``, ``R = 50 %``; survivors keep their original position ids
  (``position_ids = keep_indexs``, line 756), which is this pruner's default.
  Departures: the attention row is recomputed from layer ``K - 1``'s own projections (equal to its
  eager ``output_attentions`` row, not materialised under SDPA); the "last token" is the last real
  token of each row (the official code runs one unpadded sample); ``K`` is lowered to ``L - 1`` on
  a decoder with fewer layers; the budget is not used (``R`` sets the count).
- ``matched`` (budget-matched): the same family held to ``budget``: ``K`` layers see all ``V``
  tokens, the others ``n`` with ``K * V + (L - K) * n`` within the budget (``K`` lowered when even
  ``n = 1`` would not fit), ranked by attention averaged over heads and **all** text rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from vla_autoprune.errors import ConfigError
from vla_autoprune.pruning.budget import token_layers
from vla_autoprune.pruning.options import Mode, check_choice, no_budget_when_faithful, variant_label
from vla_autoprune.pruning.pruner import LayerView, Pruner
from vla_autoprune.pruning.registry import register_pruner
from vla_autoprune.pruning.stages import fit_stages, stage_schedule

# FastV's K: layers 0 and 1 see every visual token (the paper's setting for LLaVA-1.5).
FASTV_LAYER = 2
# FastV's R: half of the visual tokens are dropped (the paper's main setting).
FASTV_DROP_RATIO = 0.5


@register_pruner
@dataclass
class FastVPruner(Pruner):
    """Keep the top visual tokens from layer ``layer`` on.

    Attributes:
        layer: ``K``, the first layer that sees the reduced set (``>= 1``; lowered if the budget
            needs it, or to ``L - 1``).
        mode: ``matched`` (budget-matched, the default) or ``faithful`` (the official rule).
        drop_ratio: ``R``, the share of visual tokens dropped in ``faithful`` mode (paper: 0.5).
    """

    name = "fastv"
    layer: int = FASTV_LAYER
    mode: Mode = "matched"
    drop_ratio: float = FASTV_DROP_RATIO

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.layer < 1:
            raise ConfigError(f"{self.name}: layer={self.layer} must be >= 1 (layer 0 sees every token)")
        check_choice("mode", self.mode, Mode, self.name)
        no_budget_when_faithful(self.name, self.mode, self.budget, f"drop_ratio={self.drop_ratio}")
        if not 0 <= self.drop_ratio < 1:
            raise ConfigError(f"{self.name}: drop_ratio={self.drop_ratio} must be in [0, 1)")

    @property
    def label(self) -> str:
        """``fastv[matched]`` or ``fastv[faithful]``."""
        return variant_label(self.name, self.mode)

    def plan(self, num_layers: int, num_visual: int) -> tuple[int, int]:
        """``(K, n)``: the first reduced layer and the count it sees."""
        start = min(self.layer, num_layers - 1)
        if self.mode == "faithful":
            # ATTENTION_RANK = (1 - R) * V, an int in the official config
            return start, max(1, int((1 - self.drop_ratio) * num_visual))
        budget = self.target(num_visual)
        while start > 1 and start * num_visual + (num_layers - start) > token_layers(budget, num_layers):
            start -= 1
        (count,) = fit_stages(
            budget, num_layers, num_visual, [start], lambda t: [max(1, math.floor(t * num_visual))]
        )
        return start, count

    def text_ranked_from(self, num_layers: int, num_visual: int) -> int | None:
        """Layer ``K - 1``, whose text attention ranks the tokens layer ``K`` keeps."""
        start, count = self.plan(num_layers, num_visual)
        return None if count >= num_visual else start - 1

    def schedule(self, view: LayerView) -> torch.Tensor:
        """``V`` until layer ``K - 1`` hands on ``n``; static, computed once per forward."""
        if view.schedule is not None:
            return view.schedule
        start, count = self.plan(view.num_layers, view.num_visual)
        return stage_schedule(view.batch_size, view.num_layers, view.num_visual, [start], [count])

    def score(self, view: LayerView) -> torch.Tensor:
        """float ``[B, Kv]``: faithful: the last token's row, mean over heads; matched: all text rows."""
        if self.mode != "faithful":
            return view.text_attention()
        rows, valid = view.last_text_slot()
        return view.attention_at(rows, valid).mean(dim=1)[:, 0]  # [B, H, 1, Kv] -> [B, Kv]
