"""A Qwen3-VL driving VLA: an unmodified ``Qwen3VLForConditionalGeneration`` asked for waypoints in text.

Everything but the model class is the Qwen2.5-VL adapter's (:mod:`~vla_autoprune.models.qwen_adapter`):
the same chat prompt (one ``<|vision_start|><|image_pad|>...<|vision_end|>`` block per camera,
introduced by its name, then command and speed), the token layout from ``image_grid_thw`` and the
spatial merge, and M-RoPE ids ``[3, B, N]`` from the model's own ``get_rope_index`` (Qwen3-VL
interleaves the (t, h, w) frequencies inside its rotary module; layers still get one cos/sin row
per token, so survivors keep their original rotation).

What differs is "deepstack": the vision tower also returns features of intermediate blocks, which
the text model adds to the outputs of its first decoder layers at the visual tokens. The adapter
keeps them out of the model call and carries them in ``DecoderInputs.deepstack``; its ``decode``
adds them with hooks (:mod:`~vla_autoprune.models.deepstack`) and, inside ``prune()``, the engine
adds them at the surviving visual tokens only.
"""

from __future__ import annotations

from typing import ClassVar

from transformers import Qwen3VLForConditionalGeneration

from vla_autoprune import compat_qwen
from vla_autoprune.models.qwen_adapter import QwenVLDrivingAdapter, QwenVLModel


class Qwen3VLDrivingAdapter(QwenVLDrivingAdapter):
    """Wraps an unmodified ``Qwen3VLForConditionalGeneration``, its image processor and tokenizer."""

    model_type: ClassVar[str] = compat_qwen.QWEN3_VL_MODEL_TYPE
    model_class: ClassVar[type[QwenVLModel]] = Qwen3VLForConditionalGeneration
