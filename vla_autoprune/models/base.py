"""The driving-model extension point.

A driving model turns a collated batch (see :mod:`vla_autoprune.data.schema`) into predicted
waypoints ``[B, 6, 2]`` (metres, current ego frame). It does so in two explicit steps so that
the pruning engine can sit in between without the model knowing about pruning:

1. :meth:`DrivingModel.prepare` encodes the cameras and builds the decoder input
   (:class:`DecoderInputs`: embeddings, masks, position ids and the :class:`TokenLayout`).
2. :meth:`DrivingModel.decode` runs the (possibly hooked) decoder and turns its output into
   waypoints.

``plan(batch) == decode(prepare(batch))``.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, replace
from typing import Any

import torch

from vla_autoprune.models.layout import TokenLayout


@dataclass(frozen=True)
class DecoderInputs:
    """Everything a decoder forward needs, plus the layout the pruning engine reads.

    Attributes:
        inputs_embeds: float ``[B, N, D]`` decoder input embeddings.
        attention_mask: int64 ``[B, N]`` (1 = real token, 0 = padding).
        position_ids: int64 ``[B, N]``, M-RoPE ``[3, B, N]`` (temporal, height, width; Qwen-VL),
            or None (then the decoder numbers positions itself).
        layout: which positions are visual / text tokens.
        vision_saliency: float ``[B, V]`` or None: per-visual-token saliency from the vision
            tower ([CLS] / pooling-head attention), used by pre-decoder pruners.
        extras: model-specific values ``decode`` reads (DrivingVLA: ``ego_speed``, ``command`` ``[B]``), or None.
        sample_ids: one stable id per row (the batch's ``sample_token``s) or None; per-sample
            seeded pruners (``random``) key on it, so a row's choice does not depend on its batch.
        readout_tokens: how many readout queries (not instruction text) end every row's prompt,
            e.g. DrivingVLA's action queries; pruners whose official query row is "the last
            instruction token" (PDrop) skip them. 0 for chat models (LLaVA).
        deepstack: per-layer additive visual inputs (Qwen3-VL's deepstack features), float
            ``[B, V, D]`` each, in visual-token order, or None: the decoder's layer ``i`` output
            gets ``deepstack[i]`` added at the visual tokens (:mod:`vla_autoprune.models.deepstack`).
            Whoever runs the decoder on these inputs adds them: the adapter's ``decode``, or, inside
            ``prune()``, the engine (its ``record.inputs`` then carry None).
        text_sees_visual_from: the first decoder layer whose non-visual tokens may attend to the
            visual ones: 0 for LLaVA-style decoders; a deep-fusion model's ``vision_from_layer``
            (:mod:`vla_autoprune.models.fusion`). Before it the text's attention to the cameras is
            zero, so no pruner may rank visual tokens by it there.
    """

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor | None
    layout: TokenLayout
    vision_saliency: torch.Tensor | None = None
    extras: dict[str, Any] | None = None
    sample_ids: tuple[str, ...] | None = None
    readout_tokens: int = 0
    deepstack: tuple[torch.Tensor, ...] | None = None
    text_sees_visual_from: int = 0

    def with_(self, **changes: Any) -> DecoderInputs:
        """A copy with some fields replaced."""
        return replace(self, **changes)


class DrivingModel(torch.nn.Module, abc.ABC):
    """A VLA driving model: 6-camera frames + ego state + command -> 6 future waypoints."""

    @property
    @abc.abstractmethod
    def decoder(self) -> torch.nn.Module:
        """The transformers causal LM (unmodified) whose decoder layers the pruning engine hooks."""

    @abc.abstractmethod
    def prepare(self, batch: dict[str, Any]) -> DecoderInputs:
        """Encode a collated batch into decoder inputs and their token layout."""

    @abc.abstractmethod
    def decode(self, inputs: DecoderInputs) -> torch.Tensor:
        """Run the decoder on ``inputs``; return waypoints float32 ``[B, 6, 2]``."""

    def plan(self, batch: dict[str, Any]) -> torch.Tensor:
        """Predict waypoints float32 ``[B, 6, 2]`` (metres, ego frame) for a collated batch."""
        return self.decode(self.prepare(batch))
