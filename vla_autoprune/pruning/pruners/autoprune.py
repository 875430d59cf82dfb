"""AutoPrune: a per-sample pruning curve from the complexity of the text -> vision attention.

Based on "AutoPrune: Each Complexity Deserves a Pruning Policy" (NeurIPS 2025,
https://arxiv.org/abs/2509.23931), as specified in docs/AUTOPRUNE.md; the math lives in
:mod:`vla_autoprune.pruning.autoprune_math`, this class wires it into the engine:

1. stage 0 (``stage0``): ``"reference"`` keeps ``v0`` tokens right after layer 0, ranked by the
   vision encoder's saliency plus ``0.3 * MI_0 * (mean layer-0 text attention)`` (``MI_0``: layer-0
   mutual information summed over heads, divided by ``T``); ``"before"`` selects ``v0`` tokens
   before the decoder by saliency alone; ``"none"`` skips it.
2. at the reference layer (layer 1, or layer 0 without stage 0) the mutual information of the
   text -> visual attention over the survivors gives the slope ``k = max(k0 - gamma MI, 0)`` and a
   logistic retention schedule solved for the budget, per sample. ``k0`` and ``gamma`` default to
   the model's calibration (:meth:`AutoPrunePruner.calibrate`, the model folder's
   ``pruning_calibration.json``), else the paper's 0.4 and 0.2.
3. every later layer keeps its top tokens by text attention (mean over heads and text rows) and
   recycles part of the dropped ones by DPC-kNN merging (``recycle``).

Simplifications: without ``inputs.vision_saliency`` stage 0 ranks by the text term alone; merging is
deterministic (the reference adds noise to the density). On a deep-fusion model whose text reads the
cameras only from layer 1, stage 0 ranks by saliency alone (the text term is 0 there).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from vla_autoprune.errors import ConfigError
from vla_autoprune.models.base import DecoderInputs
from vla_autoprune.pruning import autoprune_math as ap
from vla_autoprune.pruning.budget import stage0_count
from vla_autoprune.pruning.options import Accounting, HeadReduce, Stage0, check_choice
from vla_autoprune.pruning.pruner import LayerView, Merge, Pruner, keep_all_schedule
from vla_autoprune.pruning.pruners.fastervlm import top_saliency
from vla_autoprune.pruning.recycling import recycle_dropped, split_handed_on
from vla_autoprune.pruning.registry import register_pruner

logger = logging.getLogger(__name__)

# The reference's weight of the layer-0 text attention in the stage-0 ranking.
STAGE0_TEXT_WEIGHT = 0.3


@register_pruner
@dataclass
class AutoPrunePruner(Pruner):
    """Complexity-adaptive logistic pruning (AutoPrune).

    Attributes:
        head_reduce: MI over heads: ``sum`` (reference) or ``mean``.
        k0, gamma: slope ``k = max(k0 - gamma * MI, 0)``. None (both): the model's calibration
            when :meth:`calibrate` gets one, else the paper's 0.4 and 0.2 (:meth:`slope_constants`).
        x0: curve centre; None: 14.9 (``reference`` accounting) or ``0.4656 L`` (``actual``).
        accounting: ``actual`` (budget counts every layer's tokens, layer 0 at its input size) or
            ``reference`` (the authors' schedule and count, to reproduce their numbers).
        stage0: ``reference`` | ``none`` | ``before`` (see the module docstring).
        recycle: merge part of the dropped tokens back in (counts against the budget).
    """

    name = "autoprune"
    accounting: Accounting = "actual"
    head_reduce: HeadReduce = "sum"
    k0: float | None = None
    gamma: float | None = None
    x0: float | None = None
    stage0: Stage0 = "reference"
    recycle: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        ap.check_options(self.accounting, self.stage0, self.recycle, self.name)
        check_choice("head_reduce", self.head_reduce, HeadReduce, self.name)
        if (self.k0 is not None and self.k0 < 0) or (self.gamma is not None and self.gamma < 0):
            raise ConfigError(f"{self.name}: k0={self.k0} and gamma={self.gamma} must be >= 0")

    # -- slope constants -----------------------------------------------------------------------

    def slope_constants(self) -> tuple[float, float]:
        """``(k0, gamma)`` in use: the set (or calibrated) ones, the paper's for those left None."""
        k0 = ap.DEFAULT_K0 if self.k0 is None else self.k0
        return k0, ap.DEFAULT_GAMMA if self.gamma is None else self.gamma

    def calibrate(self, calibration: Mapping[str, Any] | None, model: str = "") -> None:
        """Adopt the model's ``k0`` and ``gamma`` (``calibration``: ``head_reduce``, ``k0``, ``gamma``,
        as ``python -m data_tools.calibrate_autoprune`` writes them) when neither is set.

        A calibration measured with another ``head_reduce`` does not apply (a warning says so).
        """
        if calibration is None or self.k0 is not None or self.gamma is not None:
            return
        where = f"{model or 'the model'}'s pruning_calibration.json"
        try:
            head_reduce, k0, gamma = (
                calibration["head_reduce"],
                float(calibration["k0"]),
                float(calibration["gamma"]),
            )
        except (KeyError, TypeError, ValueError):
            raise ConfigError(
                f"{where}: its autoprune entry needs head_reduce, k0 and gamma; rewrite it with "
                "python -m data_tools.calibrate_autoprune"
            ) from None
        if not (k0 >= 0 and gamma >= 0):
            raise ConfigError(f"{where}: k0={k0} and gamma={gamma} must be >= 0; recalibrate")
        if head_reduce != self.head_reduce:
            logger.warning(
                "%s: %s was measured with head_reduce=%s, this run uses %s: the paper's k0 and gamma apply",
                self.name,
                where,
                head_reduce,
                self.head_reduce,
            )
            return
        self.k0, self.gamma = k0, gamma
        logger.info("%s: slope k = max(%.4g - %.4g MI, 0), calibrated for %s", self.name, k0, gamma, model)

    # -- budget --------------------------------------------------------------------------------

    def reachable(self, num_layers: int, num_visual: int) -> tuple[float, float]:
        """The range :func:`autoprune.reachable_budget` gives for this accounting and stage 0."""
        return ap.reachable_budget(num_layers, num_visual, self.accounting, self.stage0)

    def budget_hint(self) -> str:
        """Below the in-decoder floor, a pre-decoder stage 0 still reaches."""
        return "" if self.stage0 == "before" else " (or stage0='before', which reaches down to 1)"

    def preselect(self, inputs: DecoderInputs, num_layers: int) -> torch.Tensor | None:
        """With ``stage0="before"``: the top ``v0`` tokens by vision saliency."""
        if self.stage0 != "before" or self.budget is None:
            return None
        num_visual = inputs.layout.num_visual
        # layer 0 processes the v0 survivors, every later layer at least one token
        count = stage0_count(self.target(num_visual), num_layers, num_visual, first_layer=0)
        if count >= num_visual:
            return None
        ratios = self.camera_ratios(int(inputs.layout.camera_index.max()) + 1)
        return top_saliency(inputs, count, f"{self.name}(stage0='before')", ratios)

    # -- schedule --------------------------------------------------------------------------------

    def text_ranked_from(self, num_layers: int, num_visual: int) -> int | None:
        """The reference layer (MI; stage 0 at layer 0 falls back to saliency when the text is blind)."""
        return None if self.budget is None else self.reference_layer()

    def reference_layer(self) -> int:
        """Where MI is measured: right after stage 0 (layer 1), or layer 0 without stage 0."""
        return 0 if self.stage0 == "none" else 1

    def _retention(self, k: torch.Tensor, view: LayerView) -> torch.Tensor:
        # After a pre-decoder selection, the decoder's v0 tokens play the role of V with an in-decoder
        # stage 0 that keeps them all (unless the budget is so tight that layer 0 must drop more).
        stage0: Stage0 = "none" if self.stage0 == "none" else "reference"
        return ap.retention_schedule(
            k.double(),
            self.target(view.num_visual),
            view.num_layers,
            view.num_visual,
            accounting=self.accounting,
            x0=self.x0,
            stage0=stage0,
            recycle=self.recycle,
        )

    def schedule(self, view: LayerView) -> torch.Tensor:
        """Stage 0 count first, then the per-sample logistic schedule from MI at the reference layer."""
        if self.budget is None:
            return keep_all_schedule(view)
        ref = self.reference_layer()
        if view.layer_idx < ref:
            # Only entry 0 (stage 0's v0) is used before the reference layer. It does not depend on
            # k, so no curve is solved here; the other entries hold v0 until layer 1 replaces them.
            target = self.target(view.num_visual)
            v0 = stage0_count(target, view.num_layers, view.num_visual, first_layer=1)
            return torch.full((view.batch_size, view.num_layers), v0, dtype=torch.long)
        if view.layer_idx > ref and view.schedule is not None:
            return view.schedule
        mi = ap.mutual_information(view.attention(), self.head_reduce, text_valid=view.text_valid_or_none())
        k = ap.slope(mi, *self.slope_constants())
        view.stats["mi"] = mi.detach()
        view.stats["k"] = k.detach()
        return self._retention(k, view)

    def score(self, view: LayerView) -> torch.Tensor:
        """Text attention; at the in-decoder stage 0 (layer 0) the reference's saliency mix.

        On a deep-fusion model whose text cannot see the cameras at layer 0 (``view.text_blind``),
        stage 0 ranks by the vision tower's saliency alone: the text term would be 0.
        """
        stage0_layer = view.layer_idx == 0 and self.stage0 != "none"
        if stage0_layer and view.text_blind and view.inputs.vision_saliency is not None:
            return view.inputs.vision_saliency.float().gather(1, view.visual_index)
        text = view.text_attention()
        if not stage0_layer:
            return text
        mi0 = ap.mutual_information(view.attention(), "sum_over_T", text_valid=view.text_valid_or_none())
        stage0 = STAGE0_TEXT_WEIGHT * mi0.unsqueeze(1) * text
        saliency = view.inputs.vision_saliency
        if saliency is None:
            return stage0
        return saliency.float().gather(1, view.visual_index) + stage0

    # -- recycling -------------------------------------------------------------------------------

    def split(self, view: LayerView, hand_on: list[int]) -> tuple[list[int], list[int]]:
        """Kept and merged tokens (the reference's recycling rule) summing to ``hand_on``.

        Stage 0 (after layer 0) keeps without recycling, as the reference does.
        """
        stage0 = view.layer_idx == 0 and self.stage0 != "none"
        return split_handed_on(view.alive_counts(), hand_on, self.recycle and not stage0)

    def merge(
        self, view: LayerView, scores: torch.Tensor, dropped: torch.Tensor, clusters: torch.Tensor
    ) -> Merge | None:
        """DPC-kNN merge of the best-scored dropped tokens."""
        return recycle_dropped(view, scores, dropped, clusters) if self.recycle else None
