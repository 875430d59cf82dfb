"""A Qwen2.5-VL driving VLA (e.g. Impromptu-VLA): an unmodified ``Qwen2_5_VLForConditionalGeneration``
asked for waypoints in text.

Prompt (Qwen chat format; each camera image is ``<|vision_start|>`` + its ``<|image_pad|>`` tokens
+ ``<|vision_end|>``, one pad per merged patch as ``image_grid_thw`` says)::

    <|im_start|>system
    You are a helpful driving assistant.<|im_end|>
    <|im_start|>user
    CAM_FRONT: <|vision_start|><|image_pad|>...<|vision_end|>
    ...
    Command: go straight. Speed: 5.3 m/s. Predict the next 6 waypoints ... as [(x1, y1), ..., (x6, y6)].<|im_end|>
    <|im_start|>assistant

``prompt_template`` changes it: ``{images}`` (the camera lines above) and ``{instruction}`` (the
command line) are filled in.

The adapter loads the image processor and the tokenizer (not ``AutoProcessor``: it needs
torchvision for the video processor) and expands the image tokens itself. :meth:`prepare` merges
the vision tower's merged patch features into ``inputs_embeds`` and computes the M-RoPE position
ids ``[3, B, N]`` with the model's own ``get_rope_index``; :meth:`generate_waypoints` passes them
to ``generate()``, which continues them (and keeps ``rope_deltas`` in step) while decoding.

:class:`QwenVLDrivingAdapter` is also the base of the Qwen3-VL adapter
(:mod:`~vla_autoprune.models.qwen3_adapter`): a subclass names its ``model_type`` and transformers
class; a vision tower that returns ``deepstack_features`` gets them carried in
``DecoderInputs.deepstack`` (added back while decoding, :mod:`~vla_autoprune.models.deepstack`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar, Self

import torch
from torch import nn
from transformers import (
    AutoImageProcessor,
    AutoTokenizer,
    Qwen2_5_VLForConditionalGeneration,
    Qwen3VLForConditionalGeneration,
)

from vla_autoprune import compat_qwen
from vla_autoprune.errors import ModelLoadError
from vla_autoprune.models.base import DecoderInputs
from vla_autoprune.models.chat_adapter import (
    DEFAULT_MAX_NEW_TOKENS,
    ChatDrivingAdapter,
    WaypointGeneration,
    batch_instructions,
    check_max_new_tokens,
)
from vla_autoprune.models.deepstack import deepstack_hooks
from vla_autoprune.models.layout import build_layout
from vla_autoprune.models.model_folder import (
    check_model_folder,
    check_tokenizer,
    resolve_model_path,
    wrong_family_fix,
)
from vla_autoprune.models.qwen_saliency import qwen_vision_saliency

logger = logging.getLogger(__name__)

DEFAULT_SYSTEM = "You are a helpful driving assistant."
DEFAULT_PROMPT_TEMPLATE = (
    f"{compat_qwen.IM_START}system\n{DEFAULT_SYSTEM}{compat_qwen.IM_END}\n"
    f"{compat_qwen.IM_START}user\n{{images}}{{instruction}}{compat_qwen.IM_END}\n"
    f"{compat_qwen.IM_START}assistant\n"
)


#: The transformers Qwen-VL classes the adapters wrap (unmodified).
QwenVLModel = Qwen2_5_VLForConditionalGeneration | Qwen3VLForConditionalGeneration


class NotAQwenFolderError(ModelLoadError):
    """The folder does not hold a saved model of the adapter's ``model_type``."""


def check_prompt_template(prompt_template: object) -> str:
    """``prompt_template``, or a one-line :class:`ModelLoadError` unless it is a string with both fields."""
    if not isinstance(prompt_template, str):
        raise ModelLoadError(
            f"prompt_template must be a string with {{images}} and {{instruction}}, not "
            f"{type(prompt_template).__name__}; set it in a model config of your own (README, Qwen2.5-VL)"
        )
    missing = [f for f in ("{images}", "{instruction}") if f not in prompt_template]
    if missing:
        raise ModelLoadError(f"prompt_template lacks {missing}; keep both {{images}} and {{instruction}}")
    return prompt_template


def camera_lines(cameras: list[str], tokens_per_image: int) -> str:
    """One line per camera: its name, then its expanded image tokens."""
    image = compat_qwen.VISION_START + compat_qwen.IMAGE_PAD * tokens_per_image + compat_qwen.VISION_END
    return "".join(f"{camera}: {image}\n" for camera in cameras)


class QwenVLDrivingAdapter(ChatDrivingAdapter):
    """Wraps an unmodified ``Qwen2_5_VLForConditionalGeneration``, its image processor and tokenizer."""

    #: The ``config.json`` model type :meth:`from_pretrained` loads, and the class it loads it with.
    model_type: ClassVar[str] = compat_qwen.QWEN2_5_VL_MODEL_TYPE
    model_class: ClassVar[type[QwenVLModel]] = Qwen2_5_VLForConditionalGeneration

    def __init__(
        self,
        qwen: QwenVLModel,
        image_processor: Any,
        tokenizer: Any,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
    ) -> None:
        super().__init__(max_new_tokens)
        check_prompt_template(prompt_template)
        self.qwen = qwen
        self.image_processor = image_processor
        self._tokenizer = tokenizer
        self.prompt_template = prompt_template

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        prompt_template: str | None = None,
    ) -> Self:
        """Load the model, image processor and tokenizer saved together in a folder.

        Raises a one-line :class:`~vla_autoprune.errors.ModelLoadError` for a missing or broken
        ``config.json``, truncated weights, a missing processor or tokenizer, or another family.
        """
        folder, template = cls.check_folder(name_or_path, max_new_tokens, prompt_template)
        logger.info("loading %s model from %s (%s, %s)", cls.model_type, folder, device, dtype)
        image_processor, tokenizer = _load_processor(folder)
        qwen = cls.model_class.from_pretrained(folder, dtype=dtype)
        module: nn.Module = qwen  # PreTrainedModel.to's wrapper confuses type checkers
        module.to(device).eval()
        return cls(qwen, image_processor, tokenizer, max_new_tokens, template)

    @classmethod
    def check_folder(
        cls,
        name_or_path: str | Path,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        prompt_template: str | None = None,
    ) -> tuple[Path, str]:
        """What :meth:`from_pretrained` checks before it reads any weight (the settings, then
        ``config.json``, the model type, the safetensors headers and the tokenizer file); returns the
        folder and the prompt template. Run before the data load, a bad folder costs nothing."""
        check_max_new_tokens(max_new_tokens)  # settings first: they cost nothing to check
        template = (
            DEFAULT_PROMPT_TEMPLATE if prompt_template is None else check_prompt_template(prompt_template)
        )
        folder = resolve_model_path(name_or_path)
        model_type = check_model_folder(folder).get("model_type")
        compat_qwen.refuse_qwen3(model_type, folder)
        if model_type != cls.model_type:
            raise NotAQwenFolderError(
                f"{folder} holds model_type={model_type!r}, not {cls.model_type!r}; "
                f"{wrong_family_fix(name_or_path, model_type)}"
            )
        check_tokenizer(folder)
        return folder, template

    @property
    def decoder(self) -> nn.Module:
        """The unmodified transformers model (its LM layers: ``model.language_model.layers``)."""
        return self.qwen

    @property
    def tokenizer(self) -> Any:
        """The tokenizer saved with the model."""
        return self._tokenizer

    @property
    def merge_size(self) -> int:
        """Side of the patch blocks the vision tower merges into one decoder token."""
        config: Any = self.qwen.config
        return int(config.vision_config.spatial_merge_size)

    # ------------------------------------------------------------------ prepare

    def prepare(self, batch: dict[str, Any]) -> DecoderInputs:
        """Tokenize the prompts, encode the ``C`` camera images, merge them into ``inputs_embeds``.

        ``position_ids`` are the M-RoPE ids int64 ``[3, B, N]``; ``deepstack`` (Qwen3-VL) the
        per-layer vision features ``[B, V, D]`` in visual-token order, else None.
        """
        images = batch["images"]
        b, c = images.shape[:2]
        encoded = self.image_processor(images=list(images.flatten(0, 1).cpu()), return_tensors="pt")
        grid_thw = encoded["image_grid_thw"]
        grid = compat_qwen.merged_grid(grid_thw, self.merge_size)
        lines = camera_lines(list(batch["cameras"]), grid[0] * grid[1])
        prompts = [
            self.prompt_template.format(images=lines, instruction=text) for text in batch_instructions(batch)
        ]
        tokens = self.tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
        input_ids = tokens["input_ids"].to(self.device)
        attention_mask = tokens["attention_mask"].to(self.device).long()
        config: Any = self.qwen.config
        layout = build_layout(input_ids == config.image_token_id, attention_mask, c, grid)
        features, saliency, deepstack = self.vision_outputs(encoded["pixel_values"], grid_thw)
        embeds = self.qwen.get_input_embeddings()(input_ids)
        embeds = embeds.masked_scatter(layout.visual_mask.unsqueeze(-1), features.to(embeds.dtype))
        position_ids, rope_deltas = compat_qwen.mrope_positions(
            self.qwen, input_ids, grid_thw.to(self.device), attention_mask
        )
        compat_qwen.set_rope_deltas(self.qwen, rope_deltas)
        return DecoderInputs(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            layout=layout,
            vision_saliency=saliency.reshape(b, layout.num_visual),
            sample_ids=tuple(batch["sample_token"]) if "sample_token" in batch else None,
            deepstack=None
            if deepstack is None
            else tuple(f.view(b, layout.num_visual, -1) for f in deepstack),
        )

    def image_features(
        self, pixel_values: torch.Tensor, grid_thw: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Merged patch features ``[I * P, D]`` of ``I`` images (``P`` tokens each), in image order,
        and their vision saliency float32 ``[I, P]`` (:mod:`~vla_autoprune.models.qwen_saliency`)."""
        features, saliency, _ = self.vision_outputs(pixel_values, grid_thw)
        return features, saliency

    def vision_outputs(
        self, pixel_values: torch.Tensor, grid_thw: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """:meth:`image_features` plus the deepstack features (Qwen3-VL), ``[I * P, D]`` per decoder
        layer they are added after, in image order; None for a tower without them (Qwen2.5-VL)."""
        with qwen_vision_saliency(self.qwen.model.visual, grid_thw) as saliency:
            out = self.qwen.model.get_image_features(
                pixel_values.to(self.device, self.qwen.dtype), grid_thw.to(self.device)
            )
        if saliency.value is None:
            raise RuntimeError("the vision tower ran without reaching its last full-attention block")
        per_layer = getattr(out, "deepstack_features", None)
        deepstack = tuple(torch.cat(list(images), dim=0) for images in per_layer) if per_layer else None
        return torch.cat(list(out.pooler_output), dim=0), saliency.value, deepstack

    # ------------------------------------------------------------------ decode

    def generate_waypoints(self, inputs: DecoderInputs) -> WaypointGeneration:
        """Greedy ``generate()``, with ``inputs.deepstack`` (if any) added at the visual tokens."""
        with deepstack_hooks(self.decoder, inputs):
            return super().generate_waypoints(inputs)

    def generate_kwargs(self, inputs: DecoderInputs) -> dict[str, Any]:
        """The M-RoPE ids of ``inputs``; ``rope_deltas`` set to match them (a pruned prompt included).

        ``generate()`` continues explicit ids as ``last + 1`` (the prompt ends in text, so its last
        id is its largest); the stored ``rope_deltas`` give the same ids to a decode step run
        without them (cache length of layer 0 + delta).
        """
        position_ids = inputs.position_ids
        if position_ids is None or position_ids.dim() != 3:
            raise ModelLoadError(
                "Qwen-VL inputs need M-RoPE position_ids [3, B, N]; build them with prepare()"
            )
        compat_qwen.set_rope_deltas(
            self.qwen, compat_qwen.rope_deltas_of(position_ids, inputs.attention_mask)
        )
        return {"position_ids": position_ids}


def _load_processor(folder: Path) -> tuple[Any, Any]:
    """The image processor and tokenizer saved in ``folder`` (checked by ``check_folder``), or a
    one-line ``ModelLoadError``."""
    try:
        image_processor = AutoImageProcessor.from_pretrained(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, KeyError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ModelLoadError(
            f"{folder} has no loadable image processor / tokenizer ({reason}); save them next to the model "
            "with image_processor.save_pretrained(folder) and tokenizer.save_pretrained(folder)"
        ) from err
    missing = [t for t in compat_qwen.SPECIAL_TOKENS if t not in tokenizer.get_vocab()]
    if missing:
        raise ModelLoadError(
            f"the tokenizer in {folder} lacks the Qwen special tokens {missing}; save the model's own"
        )
    return image_processor, tokenizer
