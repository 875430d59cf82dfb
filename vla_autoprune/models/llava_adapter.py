"""A language-output VLA: an unmodified ``LlavaForConditionalGeneration`` asked for waypoints in text.

Prompt (LLaVA-1.5 conversation format, one ``<image>`` per camera, expanded by the processor
into that image's patch tokens)::

    USER: CAM_FRONT: <image>
    CAM_FRONT_RIGHT: <image>
    ...
    Command: go straight. Speed: 5.3 m/s. Predict the next 6 waypoints ... as [(x1, y1), ..., (x6, y6)].
    ASSISTANT:

:meth:`LlavaDrivingAdapter.prepare` merges the projected image features into the text
embeddings itself (as ``LlavaModel.forward`` does), so the pruning engine sees one
``inputs_embeds`` sequence; :meth:`LlavaDrivingAdapter.decode` runs greedy ``generate()`` on it
and parses the answer strictly (:mod:`vla_autoprune.models.waypoint_text`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import LlavaForConditionalGeneration

from vla_autoprune.errors import ModelLoadError
from vla_autoprune.models.base import DecoderInputs
from vla_autoprune.models.chat_adapter import (
    DEFAULT_MAX_NEW_TOKENS,
    PROMPT_TASK,
    ChatDrivingAdapter,
    WaypointGeneration,
    batch_instructions,
    instruction_text,
)
from vla_autoprune.models.driving_vla import patch_grid, sub_config, vision_saliency_hook
from vla_autoprune.models.layout import build_layout
from vla_autoprune.models.model_folder import (
    check_model_folder,
    check_tokenizer,
    load_processor,
    resolve_model_path,
    wrong_family_fix,
)

__all__ = [
    "DEFAULT_MAX_NEW_TOKENS",
    "PROMPT_TASK",
    "LlavaDrivingAdapter",
    "WaypointGeneration",
    "llava_prompt",
]

LLAVA_MODEL_TYPE = "llava"

logger = logging.getLogger(__name__)


class NotALlavaFolderError(ModelLoadError):
    """The folder does not hold a saved ``LlavaForConditionalGeneration`` (+ processor)."""


def llava_prompt(cameras: list[str], command: int, speed: float) -> str:
    """LLaVA-1.5 prompt text for one sample (one ``<image>`` placeholder per camera)."""
    return _conversation(cameras, instruction_text(command, speed))


def _conversation(cameras: list[str], instruction: str) -> str:
    images = "".join(f"{camera}: <image>\n" for camera in cameras)
    return f"USER: {images}{instruction}\nASSISTANT:"


class LlavaDrivingAdapter(ChatDrivingAdapter):
    """Wraps an unmodified ``LlavaForConditionalGeneration`` and its processor as a driving model."""

    def __init__(
        self,
        llava: LlavaForConditionalGeneration,
        processor: Any,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    ) -> None:
        super().__init__(max_new_tokens)
        strategy = llava.config.vision_feature_select_strategy
        if strategy != "default" and not hasattr(llava.model.vision_tower, "head"):
            raise ModelLoadError(
                f"vision_feature_select_strategy={strategy!r} keeps the [CLS] token, which has no patch index; "
                "use 'default' (LLaVA-1.5)"
            )
        self.llava = llava
        self.processor = processor

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ) -> LlavaDrivingAdapter:
        """Load the LLaVA model and its processor saved together in ``folder``.

        Raises a one-line :class:`~vla_autoprune.errors.ModelLoadError` for a missing or broken
        ``config.json``, truncated weights, a missing processor or a non-LLaVA folder.
        """
        folder = cls.check_folder(folder)
        logger.info("loading %s model from %s (%s, %s)", LLAVA_MODEL_TYPE, folder, device, dtype)
        processor = load_processor(folder)
        llava = LlavaForConditionalGeneration.from_pretrained(folder, dtype=dtype)
        module: nn.Module = llava  # PreTrainedModel.to's wrapper confuses type checkers
        module.to(device).eval()
        return cls(llava, processor)

    @staticmethod
    def check_folder(folder: str | Path) -> Path:
        """What :meth:`from_pretrained` checks before it reads any weight (``config.json``, the model
        type, the safetensors headers, the tokenizer file); returns the resolved folder."""
        resolved = resolve_model_path(folder)
        model_type = check_model_folder(resolved).get("model_type")
        if model_type != LLAVA_MODEL_TYPE:
            raise NotALlavaFolderError(
                f"{resolved} holds model_type={model_type!r}, not 'llava'; "
                f"{wrong_family_fix(folder, model_type)}"
            )
        check_tokenizer(resolved)
        return resolved

    @property
    def decoder(self) -> nn.Module:
        """The unmodified ``LlavaForConditionalGeneration`` (its LM layers: ``get_decoder().layers``)."""
        return self.llava

    @property
    def tokenizer(self) -> Any:
        """The processor's tokenizer."""
        return self.processor.tokenizer

    # ------------------------------------------------------------------ prepare

    def prepare(self, batch: dict[str, Any]) -> DecoderInputs:
        """Tokenize the prompts, encode the ``C`` camera images and merge them into ``inputs_embeds``."""
        images = batch["images"]
        b, c = images.shape[:2]
        prompts = [_conversation(list(batch["cameras"]), text) for text in batch_instructions(batch)]
        encoded = self.processor(
            text=prompts,
            images=list(images.flatten(0, 1).cpu()),
            return_tensors="pt",
            padding=True,
            padding_side="left",
        )
        input_ids = encoded["input_ids"].to(self.device)
        attention_mask = encoded["attention_mask"].to(self.device).long()
        grid = patch_grid(sub_config(self.llava.config, "vision_config"))
        layout = build_layout(input_ids == self.llava.config.image_token_id, attention_mask, c, grid)
        features, saliency = self._image_features(encoded["pixel_values"])
        if features.shape[1] != grid[0] * grid[1]:
            raise ModelLoadError(
                f"the vision tower gives {features.shape[1]} features per image but its {grid} patch grid "
                "has a different count; use vision_feature_select_strategy='default' for towers with [CLS]"
            )
        embeds = self.llava.get_input_embeddings()(input_ids)
        embeds = embeds.masked_scatter(layout.visual_mask.unsqueeze(-1), features.to(embeds.dtype))
        return DecoderInputs(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=(attention_mask.cumsum(-1) - 1).clamp(min=0),
            layout=layout,
            vision_saliency=saliency.reshape(b, layout.num_visual) if saliency is not None else None,
            sample_ids=tuple(batch["sample_token"]) if "sample_token" in batch else None,
        )

    def _image_features(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Projected features ``[N_images, P, D]`` and saliency ``[N_images, P]`` of the selected layer."""
        config = self.llava.config
        tower = self.llava.model.vision_tower
        with vision_saliency_hook(tower, clip_layer=self._saliency_layer()) as saliency:
            out = self.llava.model.get_image_features(
                pixel_values=pixel_values.to(self.device, self.llava.dtype),
                vision_feature_layer=config.vision_feature_layer,
                vision_feature_select_strategy=config.vision_feature_select_strategy,
            )
        features = torch.stack(list(out.pooler_output))
        sal = saliency.value
        if sal is not None and sal.shape[1] != features.shape[1]:  # e.g. "full" keeps [CLS]
            sal = None
        return features, sal

    def _saliency_layer(self) -> int | None:
        """Encoder layer whose output is the selected feature layer ``hidden_states[i]`` (None: embeddings)."""
        layer = self.llava.config.vision_feature_layer
        layer = layer[-1] if isinstance(layer, list) else layer
        num_layers = sub_config(self.llava.config, "vision_config").num_hidden_layers
        index = layer - 1 if layer >= 0 else num_layers + 1 + layer - 1
        return index if index >= 0 else None
