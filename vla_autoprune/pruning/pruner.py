"""The pruner extension point and what a pruner sees at a decoder layer.

A pruner is a dataclass whose fields are its hyperparameters (validated in ``__post_init__``). The
engine (:mod:`vla_autoprune.pruning.engine`) owns hooks, gathers, masks and the KV cache; a pruner
only answers small questions, in the spirit of kvpress' presses:

- :meth:`Pruner.schedule`: how many visual tokens each layer hands on (per sample);
- :meth:`Pruner.score`: how important each visual token is at a pruning layer (default: text ->
  visual attention averaged over heads and text rows);
- optionally :meth:`Pruner.preselect` (drop tokens before the decoder, from the vision tower's
  saliency or the visual embeddings), :meth:`Pruner.premerge` (replace the embeddings of the
  pre-selected tokens, e.g. by merged ones), :meth:`Pruner.split` and :meth:`Pruner.merge` (recycle dropped tokens by merging).

``budget`` is the mean number of visual tokens processed per decoder layer, over all layers and
counting layer 0 ("actual" accounting, :mod:`vla_autoprune.pruning.budget`), so every pruner can
be held to the same number. A pruner is made available by name with
:func:`vla_autoprune.pruning.registry.register_pruner`.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from vla_autoprune.errors import NotRunnableError
from vla_autoprune.models.base import DecoderInputs
from vla_autoprune.pruning.budget import check_reachable, min_budget, validate_budget
from vla_autoprune.pruning.cameras import camera_ratios, check_per_camera
from vla_autoprune.pruning.options import Accounting, PositionIds, check_choice
from vla_autoprune.pruning.scores import attention_macs, attention_macs_host, text_visual_attention


@dataclass
class SlotIndex:
    """Where the visual and text tokens sit among a layer's ``K`` slots (see :class:`LayerView`)."""

    visual_slots: torch.Tensor
    visual_valid: torch.Tensor
    visual_index: torch.Tensor
    text_slots: torch.Tensor
    text_valid: torch.Tensor


@dataclass
class LayerView:
    """What a pruner sees after a decoder layer ran during a prefill (one batch, ``K`` slots).

    The slot fields (``visual_slots`` .. ``text_valid``) are computed on first use: a layer whose
    schedule keeps every token never pays for them.

    Attributes:
        layer_idx: index ``l`` of the layer that just ran.
        num_layers: ``L``.
        num_visual: visual tokens entering the decoder (after any pre-selection).
        layer: the decoder layer module.
        hidden: float ``[B, K, D]``, the layer's input hidden states.
        output: float ``[B, K, D]``, the layer's output hidden states.
        position_embeddings: ``(cos, sin)`` ``[B, K, rd]`` the layer was given.
        attention_mask: the 4D mask the layer was given, or None (plain causal).
        slot_index: the :class:`SlotIndex` of the fields below, or a function that computes it.
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
        next_layer: the decoder layer that runs next (PDrop scores with its projections).
        tokens: int64 ``[B]``, real tokens entering this layer (the keys a score row sees), or None.
        scoring_macs: int64 ``[B]``, the record's running count of scoring MACs (added to in
            place by :meth:`attention_at` and :meth:`add_scoring_macs`), or None.
        projected: ``(query_proj, key_proj)``: this layer's own ``q_proj`` output ``[B, K, H * hd]``
            and ``k_proj`` output ``[B, K, Hkv * hd]`` from its forward (scoring reuses them), or None.
        text_full: known on the host: every row has all ``T`` text slots (``text_valid`` is all
            True), so reductions over text rows need no masking.
        merge_host: set by the engine before :meth:`Pruner.merge`: each row's dropped valid visual
            tokens and wanted merged tokens, as host ints (merging sizes its tensors without a sync).
        alive_host: :meth:`alive` as host ints (what each row's layer processed), or None.
        tokens_host, text_host: ``tokens`` and each row's valid text rows as host ints, or None;
            with ``scoring_host`` (per-row MACs the engine adds to the record), :meth:`attention`
            counts its scoring MACs on the host, with no tensor op.
        who: the pruner's label, for error messages.
    """

    layer_idx: int
    num_layers: int
    num_visual: int
    layer: nn.Module
    hidden: torch.Tensor
    output: torch.Tensor
    position_embeddings: tuple[torch.Tensor, torch.Tensor]
    attention_mask: torch.Tensor | None
    slot_index: SlotIndex | Callable[[], SlotIndex]
    inputs: DecoderInputs
    schedule: torch.Tensor | None
    scratch: dict[str, Any]
    stats: dict[str, torch.Tensor]
    next_layer: nn.Module | None = None
    tokens: torch.Tensor | None = None
    scoring_macs: torch.Tensor | None = None
    projected: tuple[torch.Tensor, torch.Tensor] | None = None
    text_full: bool = False
    merge_host: tuple[list[int], list[int]] | None = None
    alive_host: list[int] | None = None
    tokens_host: list[int] | None = None
    text_host: list[int] | None = None
    scoring_host: list[int] | None = None
    who: str = "pruner"
    _attention: torch.Tensor | None = field(default=None, repr=False)

    @property
    def batch_size(self) -> int:
        """``B``."""
        return int(self.hidden.shape[0])

    def _slots(self) -> SlotIndex:
        if not isinstance(self.slot_index, SlotIndex):
            self.slot_index = self.slot_index()
        return self.slot_index

    @property
    def visual_slots(self) -> torch.Tensor:
        """int64 ``[B, Kv]`` (class docstring)."""
        return self._slots().visual_slots

    @property
    def visual_valid(self) -> torch.Tensor:
        """bool ``[B, Kv]`` (class docstring)."""
        return self._slots().visual_valid

    @property
    def visual_index(self) -> torch.Tensor:
        """int64 ``[B, Kv]`` (class docstring)."""
        return self._slots().visual_index

    @property
    def text_slots(self) -> torch.Tensor:
        """int64 ``[B, T]`` (class docstring)."""
        return self._slots().text_slots

    @property
    def text_valid(self) -> torch.Tensor:
        """bool ``[B, T]`` (class docstring)."""
        return self._slots().text_valid

    def text_valid_or_none(self) -> torch.Tensor | None:
        """``text_valid``, or None when every text slot is valid (``text_full``): nothing to mask."""
        return None if self.text_full else self.text_valid

    @property
    def text_blind(self) -> bool:
        """True at a layer where the text cannot attend to the visual tokens (before a deep-fusion
        model's ``vision_from_layer``): text -> visual attention is zero there."""
        return self.layer_idx < self.inputs.text_sees_visual_from

    def alive(self) -> torch.Tensor:
        """int64 ``[B]``: valid visual tokens entering this layer."""
        return self.visual_valid.sum(dim=1)

    def alive_counts(self) -> list[int]:
        """:meth:`alive` as host ints: the engine's ``alive_host`` (no tensor op), else one sync."""
        return list(self.alive_host) if self.alive_host is not None else self.alive().tolist()

    def attention(self) -> torch.Tensor:
        """float32 ``[B, H, T, Kv]``: text -> visual attention at this layer (computed once)."""
        if self._attention is None:
            self._attention = self._attention_rows(self.text_slots, self.text_valid, self.text_host)
        return self._attention

    def attention_at(
        self,
        rows: torch.Tensor,
        rows_valid: torch.Tensor,
        layer: nn.Module | None = None,
        hidden: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """float32 ``[B, H, R, Kv]``: attention of query slots ``rows`` (int64 ``[B, R]``) over the visual slots.

        By default this layer's projections on its input; PDrop passes ``layer=view.next_layer``
        and ``hidden=view.output``. Counts its MACs (``rows_valid`` bool ``[B, R]``) as scoring work.
        """
        return self._attention_rows(rows, rows_valid, None, layer, hidden)

    def _attention_rows(
        self,
        rows: torch.Tensor,
        rows_valid: torch.Tensor,
        rows_host: list[int] | None,
        layer: nn.Module | None = None,
        hidden: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """:meth:`attention_at`; ``rows_host``: each row's valid query rows on the host, if known.

        Raises NotRunnableError (a ConfigError) at a :attr:`text_blind` layer (the scores would all
        be 0 and a top-k would keep the first tokens): the scores use the layer's own mask.
        """
        if self.text_blind:
            first = self.inputs.text_sees_visual_from
            raise NotRunnableError(
                f"{self.who}: ranks visual tokens by the text's attention at decoder layer {self.layer_idx}, "
                f"but this model's text reads the cameras only from layer {first} on (vision_from_layer="
                f"{first}), so every score would be 0; use a budget or setting that prunes after layer "
                f"{first} or later, or a pruner that ranks without text attention (random, fastervlm)"
            )
        own = layer is None and hidden is None  # this layer on its input: reuse its projections
        layer = self.layer if layer is None else layer
        hidden = self.hidden if hidden is None else hidden
        attn = text_visual_attention(
            layer,
            hidden,
            self.position_embeddings,
            self.attention_mask,
            rows,
            self.visual_slots,
            self.projected if own else None,
        )
        if rows_host is not None and self.tokens_host is not None and self.scoring_host is not None:
            macs = attention_macs_host(layer, rows_host, self.tokens_host)
            self.scoring_host[:] = [total + m for total, m in zip(self.scoring_host, macs, strict=True)]
        elif self.tokens is not None:
            self.add_scoring_macs(attention_macs(layer, rows_valid.sum(dim=1), self.tokens))
        return attn

    def add_scoring_macs(self, macs: torch.Tensor) -> None:
        """Add int64 ``[B]`` MACs of selection work to the record (kept apart from the decoder's)."""
        if self.scoring_macs is not None:
            self.scoring_macs += macs.to(self.scoring_macs.device, torch.long)

    def last_text_slot(self, skip: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``skip``-th valid text slot from the end, per row: (int64 ``[B, 1]``, valid bool ``[B, 1]``).

        ``skip=0`` is the sequence's last real token (text runs to the end of the prompt).
        """
        count = self.text_valid.long().sum(dim=1, keepdim=True)
        index = (count - 1 - skip).clamp(min=0)
        return self.text_slots.gather(1, index), count > skip

    def text_attention(self) -> torch.Tensor:
        """float32 ``[B, Kv]``: attention to each visual token, mean over heads and valid text rows."""
        per_row = self.attention().mean(dim=1)  # [B, T, Kv]
        valid = self.text_valid.unsqueeze(-1)
        if self.text_full:  # no padded rows: the where below would select every row
            return per_row.sum(1) / valid.sum(1).clamp(min=1)
        total = torch.where(valid, per_row, torch.zeros_like(per_row)).sum(1)  # where: padded rows are junk
        return total / valid.sum(1).clamp(min=1)


def keep_all_schedule(view: LayerView) -> torch.Tensor:
    """int64 ``[B, L]``: every layer hands on all ``V`` visual tokens (the previous answer, if any).

    Reusing the answer spares the engine a new tensor and its copy to the host at every layer.
    """
    if view.schedule is not None:
        return view.schedule
    return torch.full((view.batch_size, view.num_layers), view.num_visual, dtype=torch.long)


@dataclass
class Merge:
    """Tokens made by merging dropped ones, placed right after the kept visual tokens.

    Attributes:
        hidden: float ``[B, R, D]``, the merged hidden states.
        representative: int64 ``[B, R]``, index into the layer's visual slots of the token whose
            position id (and record identity) each merged token takes.
        valid: bool ``[B, R]``; rows may carry fewer merged tokens than ``R``.
        members: int64 ``[B, Kv]``, the merged token (``0..R-1``) each visual slot went into, -1
            for none; None when the pruner does not say (the record then has no merge members).
        count_host: each row's valid merged tokens as host ints, when they are its first ones
            (``valid[b]`` is ``count_host[b]`` Trues, then Falses): the engine then sizes the layer's
            output without waiting for the device. None: the engine reads ``valid`` (one host sync).
    """

    hidden: torch.Tensor
    representative: torch.Tensor
    valid: torch.Tensor
    members: torch.Tensor | None = None
    count_host: list[int] | None = None


@dataclass
class Pruner(abc.ABC):
    """Base class of visual-token pruners (dataclass fields are the hyperparameters).

    Attributes:
        budget: mean visual tokens processed per decoder layer (over all ``L`` layers, layer 0
            included). None keeps every token.
        position_ids: ``original`` (survivors keep their position ids) or ``contiguous`` (survivors
            are renumbered in sequence order, as LLaVA-based reference code does).
        per_camera: ``none`` (cameras compete), ``uniform`` or ``C`` ratios: each camera's share of
            the kept visual tokens (:mod:`vla_autoprune.pruning.cameras`).
    """

    name: ClassVar[str] = "base"

    budget: float | None = None
    position_ids: PositionIds = "original"
    per_camera: str | Sequence[float] = "none"
    # Which token accounting the budget uses; only AutoPrune offers the reference's alternative.
    accounting: Accounting = field(default="actual", init=False)

    def __post_init__(self) -> None:
        validate_budget(self.budget, self.name)
        check_choice("position_ids", self.position_ids, PositionIds, self.name)
        self.per_camera = check_per_camera(self.per_camera, self.name)

    @property
    def label(self) -> str:
        """The name reports show: the registry name, plus the variant where there is one (``pdrop[faithful]``)."""
        return self.name

    # -- setup and validation --------------------------------------------------------------------

    def setup(self, decoder: nn.Module) -> None:  # noqa: B027 - optional hook, no-op by default
        """Model-dependent setup, called by the engine before hooks are installed."""

    def calibrate(self, calibration: Mapping[str, Any] | None, model: str = "") -> None:  # noqa: B027
        """Adopt constants measured for the model this pruner will run on (optional hook, no-op).

        ``calibration`` is this pruner's entry of the model folder's ``pruning_calibration.json``
        (:func:`~vla_autoprune.pruning.calibration.read_calibration`), or None when it has none;
        ``model`` names the model for messages. Called before the run's identity is written, so
        what a pruner adopts is part of it.
        """

    def reachable(self, num_layers: int, num_visual: int) -> tuple[float, float]:
        """``(lo, hi)`` budgets this pruner can meet: layer 0 always sees all ``V`` tokens."""
        return min_budget(num_layers, num_visual), float(num_visual)

    def budget_hint(self) -> str:
        """Text appended to the out-of-range message, e.g. an option that reaches further."""
        return ""

    def check_budget(self, num_layers: int, num_visual: int) -> None:
        """Raise :class:`~vla_autoprune.pruning.budget.BudgetError` if the budget is out of reach.

        One line, naming the reachable range; the pipeline calls this before loading any data.
        """
        if self.budget is None:
            return
        reachable = self.reachable(num_layers, num_visual)
        check_reachable(self.budget, reachable, num_layers, num_visual, self.name, self.budget_hint())

    def text_ranked_from(self, num_layers: int, num_visual: int) -> int | None:
        """The first decoder layer at which this configuration ranks visual tokens by the text's
        attention, or None if it never needs to (pre-flight for deep-fusion models, whose text
        cannot attend to the cameras in the first layers; :attr:`LayerView.text_blind`)."""
        return None

    def blind_text_layer(self, num_layers: int, num_visual: int, text_from: int) -> int | None:
        """The layer at which this configuration would rank by text attention before ``text_from``
        (the first layer whose text sees the cameras, where every such score is 0), or None."""
        ranked = self.text_ranked_from(num_layers, num_visual)
        return ranked if ranked is not None and ranked < text_from else None

    def lowest_budget_seeing(self, num_layers: int, num_visual: int, text_from: int) -> float | None:
        """The smallest budget (a multiple of ``1 / L``) at which this pruner ranks nowhere before
        ``text_from`` (:meth:`blind_text_layer`), or None if none does; pruners lower their first
        pruning layer only as the budget shrinks, so the answer is bisected."""
        if self.budget is None:
            return None

        def sees(steps: int) -> bool:
            at = dataclasses.replace(self, budget=steps / num_layers)
            return at.blind_text_layer(num_layers, num_visual, text_from) is None

        lo, hi = 1, num_visual * num_layers  # budgets 1 / L .. V
        if not sees(hi):
            return None
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if sees(mid) else (mid + 1, hi)
        return lo / num_layers

    def camera_ratios(self, num_cameras: int) -> list[float] | None:
        """Each camera's share of the kept tokens (None: one ranking over all cameras)."""
        return camera_ratios(self.per_camera, num_cameras, self.name)

    def target(self, num_visual: int) -> float:
        """The budget in tokens (``V`` when no budget is set)."""
        return float(num_visual) if self.budget is None else float(self.budget)

    # -- extension points ------------------------------------------------------------------------

    def preselect(self, inputs: DecoderInputs, num_layers: int) -> torch.Tensor | None:
        """Visual tokens to keep before the decoder: int64 ``[B, n0]`` indices into ``0..V-1``, or None."""
        return None

    def premerge(self, inputs: DecoderInputs, kept: torch.Tensor) -> torch.Tensor | None:
        """New embeddings for the pre-selected visual tokens, or None to keep their own.

        ``kept`` is :meth:`preselect`'s answer sorted ascending, int64 ``[B, n0]``; the result is
        float ``[B, n0, D]`` in that order (VisionZip writes its merged contextual tokens here).
        """
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

    def split(self, view: LayerView, hand_on: list[int]) -> tuple[list[int], list[int]]:
        """Split the count each row hands on into ``(kept, merged)`` tokens, host ints per row.

        On the host so that the engine sizes the layer's output without a device sync; what a row
        processed is ``view.alive_host``.
        """
        return list(hand_on), [0] * len(hand_on)

    def merge(
        self, view: LayerView, scores: torch.Tensor, dropped: torch.Tensor, clusters: torch.Tensor
    ) -> Merge | None:
        """Merge some ``dropped`` visual slots (bool ``[B, Kv]``) into ``clusters`` [B] tokens."""
        return None
