"""PyramidDrop: drop visual tokens at the end of each stage, geometrically.

Based on Xing et al., "PyramidDrop: Accelerating Your Large Vision-Language Models via Pyramid
Visual Redundancy Reduction" (CVPR 2025, https://arxiv.org/abs/2410.17247).

The decoder is split into stages (by default at 1/4, 1/2 and 3/4 of its depth, the paper's
``layer_list [8, 16, 24]`` of 32); stage ``s`` sees ``int(V * lambda**s)`` visual tokens. Two
variants (``mode``):

- ``faithful``: the official rule, Cooperx521/PyramidDrop ``llava/model/modeling_llama_pdrop.py``
  ``pdrop_forward`` lines 1220-1235 and ``pdrop_rank_drop`` lines 1291-1411: after layer
  ``l = rank_layer - 1`` ran, its output goes through layer ``rank_layer``'s ``input_layernorm``
  and ``q_proj``/``k_proj`` (lines 1322-1332; rotary at the current position ids, line 1340;
  causal mask, fp32 softmax over all columns, lines 1395-1397); the query is **the last
  instruction token** (``prompt_total_len - 1``, line 1391),
  the score its attention averaged over heads, the top ``int(V * lambda**s)`` kept (line 1307);
  ``lambda = 0.5`` (the eval scripts' ``image_token_ratio_list [0.5, 0.25, 0.125]``); survivors
  are renumbered contiguously (line 1446), this pruner's default ``position_ids``.
  Departures: the "last instruction token" is the last real token before the model's readout
  queries (DrivingVLA's ``DecoderInputs.readout_tokens`` action queries; none for LLaVA, where it
  is the last prompt token as in the official code); at least one token is kept per stage; the
  budget is not used (``ratio`` sets the counts).
- ``matched`` (budget-matched): ``lambda`` is solved so that the stage counts meet the budget (or
  taken from ``ratio`` when no budget is given), and the score is the attention of the **last text
  row** (the last real token; in the bundled prompt the last action query) at layer ``l`` itself.
  The first stage starts at ``stages[0] * L`` (L/4), so every layer before it sees all ``V``
  tokens; a budget below what that allows moves the first stage earlier (``early_start``), as
  FastV lowers its ``K``, down to layer 1; the later stages stay where they are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from vla_autoprune.errors import ConfigError
from vla_autoprune.pruning.budget import check_reachable, min_budget, token_layers
from vla_autoprune.pruning.options import (
    Mode,
    PositionIds,
    check_choice,
    no_budget_when_faithful,
    variant_label,
)
from vla_autoprune.pruning.pruner import LayerView
from vla_autoprune.pruning.registry import register_pruner
from vla_autoprune.pruning.stages import StagedPruner, fit_stages, stage_schedule

# Stage boundaries as fractions of depth: layers 8, 16, 24 of LLaVA-1.5's 32 (the paper's setup).
PDROP_STAGES = (0.25, 0.5, 0.75)
# The paper's lambda: each stage keeps half of the previous stage's visual tokens.
PDROP_RATIO = 0.5


def readout_queries(view: LayerView) -> int:
    """How many readout tokens (not instruction) end each row's prompt: the model's action queries."""
    return view.inputs.readout_tokens


@register_pruner
@dataclass
class PDropPruner(StagedPruner):
    """Pyramid of geometric visual-token drops at stage boundaries.

    Attributes:
        stages: first layer of each reduced stage, as fractions of depth (rounded to layers in
            ``[1, L-1]``).
        ratio: fixed ``lambda`` in (0, 1]: in ``faithful`` mode (None: the paper's 0.5), or in
            ``matched`` mode when no budget is given; with a budget ``lambda`` is solved.
        mode: ``matched`` (budget-matched, the default) or ``faithful`` (the official rule).
        early_start: ``matched`` mode with a budget: when the budget cannot be met with the first
            stage at ``stages[0] * L``, start it at the latest layer that can (down to layer 1).
    """

    name = "pdrop"
    position_ids: PositionIds = "contiguous"  # the official code renumbers survivors
    stages: Sequence[float] = PDROP_STAGES
    ratio: float | None = None
    mode: Mode = "matched"
    early_start: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("mode", self.mode, Mode, self.name)
        no_budget_when_faithful(self.name, self.mode, self.budget, f"ratio={self.ratio or PDROP_RATIO}")
        if self.ratio is not None and self.budget is not None:
            raise ConfigError(f"{self.name}: give a budget or a ratio, not both (the budget sets the ratio)")
        if self.ratio is not None and not 0 < self.ratio <= 1:
            raise ConfigError(f"{self.name}: ratio={self.ratio} must be in (0, 1]")

    @property
    def label(self) -> str:
        """``pdrop[matched]`` or ``pdrop[faithful]``."""
        return variant_label(self.name, self.mode)

    def _moves_first_stage(self) -> bool:
        return self.mode == "matched" and self.early_start

    def stage_starts(self, num_layers: int, num_visual: int) -> list[int]:
        """First layer of each reduced stage; the first one earlier when the budget needs it."""
        starts = self.starts(num_layers)
        if not self._moves_first_stage() or self.budget is None:
            return starts
        # layers before the first stage see V, the others at least one token: (s V + L - s) <= B L
        room = token_layers(self.budget, num_layers) - num_layers
        latest = max(1, room // max(num_visual - 1, 1))
        return [min(starts[0], latest), *starts[1:]]

    def reachable(self, num_layers: int, num_visual: int) -> tuple[float, float]:
        """From layer ``stages[0] * L`` on, or from layer 1 on when the first stage may move earlier."""
        if self._moves_first_stage():
            return min_budget(num_layers, num_visual, 1), float(num_visual)
        return super().reachable(num_layers, num_visual)

    def check_budget(self, num_layers: int, num_visual: int) -> None:
        """Out of reach: one line naming where the first stage starts and the reachable budgets."""
        if self.budget is None:
            return
        first = self.starts(num_layers)[0]
        if self._moves_first_stage():
            where = (
                f"; its first stage starts at layer {first} (stages[0]={self.stages[0]:g} x L) or earlier, "
                "down to 1; lower budgets need a selection before the decoder (fastervlm, or autoprune "
                "with stage0=before)"
            )
        else:
            lowest = min_budget(num_layers, num_visual, 1)
            where = (
                f"; its first stage starts at layer {first} (stages[0]={self.stages[0]:g} x L), so "
                f"layers 0..{first - 1} see all {num_visual} tokens (early_start=true lets it start "
                f"earlier, reaching down to {lowest:.4g})"
            )
        check_reachable(
            self.budget, self.reachable(num_layers, num_visual), num_layers, num_visual, self.name, where
        )

    def counts(self, num_layers: int, num_visual: int) -> list[int]:
        """Visual tokens each reduced stage sees."""
        if self.mode == "faithful" or self.ratio is not None or self.budget is None:
            ratio = self.ratio if self.ratio is not None or self.mode != "faithful" else PDROP_RATIO
            return self.stage_counts(num_layers, num_visual, ratio)
        starts = self.stage_starts(num_layers, num_visual)

        def geometric(lam: float) -> list[int]:
            return [max(1, math.floor(num_visual * lam ** (s + 1))) for s in range(len(starts))]

        return fit_stages(self.target(num_visual), num_layers, num_visual, starts, geometric)

    def text_ranked_from(self, num_layers: int, num_visual: int) -> int | None:
        """The layer before the first reduced stage (its text rows rank the tokens)."""
        return self.stage_starts(num_layers, num_visual)[0] - 1

    def schedule(self, view: LayerView) -> torch.Tensor:
        """Static pyramid, computed once per forward."""
        if view.schedule is not None:
            return view.schedule
        starts = self.stage_starts(view.num_layers, view.num_visual)
        counts = self.counts(view.num_layers, view.num_visual)
        return stage_schedule(view.batch_size, view.num_layers, view.num_visual, starts, counts)

    def score(self, view: LayerView) -> torch.Tensor:
        """float ``[B, Kv]``: one query row's attention, mean over heads (module docstring)."""
        if self.mode == "faithful":
            if view.next_layer is None:
                raise RuntimeError(f"{self.name}: no layer after layer {view.layer_idx} to score with")
            rows, valid = view.last_text_slot(skip=readout_queries(view))
            attn = view.attention_at(rows, valid, layer=view.next_layer, hidden=view.output)
            return attn.mean(dim=1)[:, 0]  # [B, H, 1, Kv] -> [B, Kv]
        attn = view.attention().mean(dim=1)  # [B, T, Kv]
        last = (view.text_valid.long().sum(dim=1) - 1).clamp(min=0)
        return attn.gather(1, last.view(-1, 1, 1).expand(-1, 1, attn.shape[-1])).squeeze(1)
