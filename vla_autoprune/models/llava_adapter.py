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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import LlavaForConditionalGeneration

from vla_autoprune.data.schema import COMMANDS, EGO_STATE_FIELDS
from vla_autoprune.errors import ModelLoadError
from vla_autoprune.models.base import DecoderInputs, DrivingModel
from vla_autoprune.models.driving_vla import patch_grid, sub_config, vision_saliency_hook
from vla_autoprune.models.layout import build_layout
from vla_autoprune.models.model_folder import check_model_folder, load_processor
from vla_autoprune.models.prompt import COMMAND_PHRASES
from vla_autoprune.models.waypoint_text import ParseStats, parse_waypoint_batch

logger = logging.getLogger(__name__)

LLAVA_MODEL_TYPE = "llava"

#: Enough tokens for six pairs like "(-12.34, 5.67)" even with a character-level tokenizer
#: (6 * 16 characters + separators ~ 110); generation stops earlier at EOS.
DEFAULT_MAX_NEW_TOKENS = 128

PROMPT_TASK = (
    "Predict the next 6 waypoints (x forward, y left, metres, 0.5 s apart) as [(x1, y1), ..., (x6, y6)]."
)


class NotALlavaFolderError(ModelLoadError):
    """The folder does not hold a saved ``LlavaForConditionalGeneration`` (+ processor)."""


@dataclass(frozen=True)
class WaypointGeneration:
    """Result of one greedy generation: ``waypoints`` float32 ``[B, 6, 2]`` (NaN where
    malformed), ``ok`` bool ``[B]`` and the generated ``texts``."""

    waypoints: torch.Tensor
    ok: torch.Tensor
    texts: list[str]


def llava_prompt(cameras: list[str], command: int, speed: float) -> str:
    """LLaVA-1.5 prompt text for one sample (one ``<image>`` placeholder per camera)."""
    images = "".join(f"{camera}: <image>\n" for camera in cameras)
    phrase = COMMAND_PHRASES[COMMANDS[command]]
    return f"USER: {images}Command: {phrase}. Speed: {speed:.1f} m/s. {PROMPT_TASK}\nASSISTANT:"


class LlavaDrivingAdapter(DrivingModel):
    """Wraps an unmodified ``LlavaForConditionalGeneration`` and its processor as a driving model.

    ``decode`` counts malformed answers in :attr:`parse_stats` (its one deliberate side effect:
    the :class:`DrivingModel` contract returns only waypoints); use :meth:`generate_waypoints`
    for the per-sample flags and texts.
    """

    def __init__(
        self,
        llava: LlavaForConditionalGeneration,
        processor: Any,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    ) -> None:
        super().__init__()
        strategy = llava.config.vision_feature_select_strategy
        if strategy != "default" and not hasattr(llava.model.vision_tower, "head"):
            raise ModelLoadError(
                f"vision_feature_select_strategy={strategy!r} keeps the [CLS] token, which has no patch index; "
                "use 'default' (LLaVA-1.5)"
            )
        self.llava = llava
        self.processor = processor
        self.max_new_tokens = max_new_tokens
        self.parse_stats = ParseStats()

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ) -> LlavaDrivingAdapter:
        """Load the LLaVA model and its processor saved together in ``folder``.

        Raises a one-line :class:`~vla_autoprune.errors.ModelLoadError` for a missing or broken
        ``config.json``, truncated weights, a missing processor or a non-LLaVA folder.
        """
        folder = Path(folder)
        model_type = check_model_folder(folder).get("model_type")
        if model_type != LLAVA_MODEL_TYPE:
            raise NotALlavaFolderError(
                f"{folder} holds model_type={model_type!r}, not 'llava'; load it with load()"
            )
        processor = load_processor(folder)
        llava = LlavaForConditionalGeneration.from_pretrained(folder, dtype=dtype)
        module: nn.Module = llava  # PreTrainedModel.to's wrapper confuses type checkers
        module.to(device).eval()
        return cls(llava, processor)

    @property
    def decoder(self) -> nn.Module:
        """The unmodified ``LlavaForConditionalGeneration`` (its LM layers: ``get_decoder().layers``)."""
        return self.llava

    @property
    def device(self) -> torch.device:
        """Device of the wrapped model."""
        return self.llava.device

    # ------------------------------------------------------------------ prepare

    def prepare(self, batch: dict[str, Any]) -> DecoderInputs:
        """Tokenize the prompts, encode the ``C`` camera images and merge them into ``inputs_embeds``."""
        images = batch["images"]
        b, c = images.shape[:2]
        cameras = list(batch["cameras"])
        speeds = batch["ego_state"][:, EGO_STATE_FIELDS.index("speed")].float().cpu()
        prompts = [
            llava_prompt(cameras, int(cmd), float(speed))
            for cmd, speed in zip(batch["command"].cpu(), speeds, strict=True)
        ]
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

    # ------------------------------------------------------------------ decode

    @torch.no_grad()
    def generate_waypoints(self, inputs: DecoderInputs) -> WaypointGeneration:
        """Greedy ``generate()`` on ``inputs``; parse each answer strictly."""
        tokenizer = self.processor.tokenizer
        kwargs: dict[str, Any] = {}
        if inputs.position_ids is not None:
            kwargs["position_ids"] = inputs.position_ids
        new_tokens = self.llava.generate(
            inputs_embeds=inputs.inputs_embeds,
            attention_mask=inputs.attention_mask,
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=tokenizer.pad_token_id,
            **kwargs,
        )
        texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        waypoints, ok = parse_waypoint_batch(texts)
        bad = [t for t, good in zip(texts, ok.tolist(), strict=True) if not good]
        if bad:
            logger.warning("%d/%d malformed waypoint answers, e.g. %r", len(bad), len(texts), bad[0][:80])
        return WaypointGeneration(waypoints=waypoints, ok=ok, texts=texts)

    def decode(self, inputs: DecoderInputs) -> torch.Tensor:
        """Waypoints float32 ``[B, 6, 2]``; NaN rows for malformed answers, counted in ``parse_stats``."""
        result = self.generate_waypoints(inputs)
        self.parse_stats.update(result.ok)
        return result.waypoints
