"""What a saved driving model looks like to a pruner, read from its config files (no weights).

The evaluation app checks a pruning budget against the decoder depth ``L`` and the visual token
count ``V`` before it loads any weights or data, so an unreachable budget costs nothing; this module
answers those two numbers from the folder's ``config.json`` (and, for Qwen-VL, its
``preprocessor_config.json``), and checks that a Qwen-VL folder's tokenizer is readable, which
would otherwise fail only after the data has loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from transformers import LlavaConfig, PreTrainedConfig, Qwen2_5_VLConfig, Qwen3VLConfig

from vla_autoprune import compat_qwen
from vla_autoprune.errors import DataNotFoundError, ModelLoadError
from vla_autoprune.models.driving_vla import DrivingVLAConfig, patch_grid, sub_config, visual_grid
from vla_autoprune.models.llava_adapter import LLAVA_MODEL_TYPE
from vla_autoprune.models.loading import REINSTALL
from vla_autoprune.models.model_folder import (
    BUNDLED_MODELS,
    RESAVE,
    check_tokenizer,
    read_config,
    resolve_model_path,
)

#: ``(W, H)`` of nuScenes camera images (and of the synthetic data's default): what a Qwen-VL
#: processor resizes when the run keeps images at native size.
NUSCENES_IMAGE_SIZE = (1600, 900)

#: Vision towers whose hidden states start with a [CLS] token before the patch tokens.
_CLS_TOWERS = {"clip_vision_model": True, "siglip_vision_model": False}


@dataclass(frozen=True)
class ModelShape:
    """The token geometry a pruner is checked against.

    Attributes:
        model_type: ``config.json``'s ``model_type`` (``driving_vla`` or ``llava``).
        num_layers: decoder depth ``L``.
        visual_per_camera: visual tokens each camera image contributes to the decoder input.
        text_sees_visual_from: the first layer whose text may attend to the visual tokens (a
            deep-fusion DrivingVLA's ``vision_from_layer``; 0 otherwise).
    """

    model_type: str
    num_layers: int
    visual_per_camera: int
    text_sees_visual_from: int = 0

    def num_visual(self, num_cameras: int) -> int:
        """``V``: visual tokens in the decoder input of a sample with ``num_cameras`` images."""
        return self.visual_per_camera * num_cameras


def describe(name_or_path: str | Path, image_size: tuple[int, int] | None = None) -> ModelShape:
    """Decoder depth and visual tokens per camera of a bundled model name or a saved model folder.

    Reads only ``config.json`` (DrivingVLA or LLaVA folders); Qwen-VL folders also need
    ``preprocessor_config.json`` and the camera ``image_size`` ``(W, H)`` (default: nuScenes'
    native 1600 x 900), since their processor resizes each image dynamically, and a readable
    tokenizer. Raises a one-line :class:`~vla_autoprune.errors.UserError` for a missing or
    unreadable config, and for a Qwen-VL folder without those files (no weights are read).
    """
    folder = resolve_model_path(name_or_path)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise DataNotFoundError(f"{config_file} not found; pass a folder saved with save_pretrained")
    model_type = read_config(folder, REINSTALL if str(name_or_path) in BUNDLED_MODELS else RESAVE).get(
        "model_type"
    )
    if model_type in (compat_qwen.QWEN2_5_VL_MODEL_TYPE, compat_qwen.QWEN3_VL_MODEL_TYPE):
        check_tokenizer(folder)  # a missing tokenizer would otherwise surface only after the data loads
    config: PreTrainedConfig
    text_from = 0
    if model_type == DrivingVLAConfig.model_type:
        config = DrivingVLAConfig.from_pretrained(folder)
        text_from = int(config.vision_from_layer)
        rows, cols = visual_grid(config)
        per_camera = rows * cols  # DrivingVLA drops CLIP's [CLS]: one token per (merged) patch
    elif model_type == LLAVA_MODEL_TYPE:
        config = LlavaConfig.from_pretrained(folder)
        per_camera = _llava_tokens_per_image(config, config_file)
    elif model_type in (compat_qwen.QWEN2_5_VL_MODEL_TYPE, compat_qwen.QWEN3_VL_MODEL_TYPE):
        qwen_config = Qwen2_5_VLConfig if model_type == compat_qwen.QWEN2_5_VL_MODEL_TYPE else Qwen3VLConfig
        config = qwen_config.from_pretrained(folder)
        size = NUSCENES_IMAGE_SIZE if image_size is None else (int(image_size[0]), int(image_size[1]))
        rows, cols = compat_qwen.merged_grid_from_preprocessor(folder, size)
        per_camera = rows * cols
    else:
        compat_qwen.refuse_qwen3(model_type, folder)
        raise ModelLoadError(
            f"{config_file} has model_type={model_type!r}; supported: "
            f"{[DrivingVLAConfig.model_type, LLAVA_MODEL_TYPE, compat_qwen.QWEN2_5_VL_MODEL_TYPE, compat_qwen.QWEN3_VL_MODEL_TYPE]}: "
            "pass a DrivingVLA, LLaVA, Qwen2.5-VL or Qwen3-VL folder"
        )
    num_layers = int(sub_config(config, "text_config").num_hidden_layers)
    return ModelShape(str(model_type), num_layers, per_camera, text_sees_visual_from=text_from)


def _llava_tokens_per_image(config: PreTrainedConfig, config_file: Path) -> int:
    """Image tokens per ``<image>`` of a LLaVA config, as ``LlavaModel.get_image_features`` selects them.

    The vision tower yields one token per patch (plus [CLS] for CLIP); the ``default`` feature
    strategy drops the first token, ``full`` keeps all.
    """
    vision = sub_config(config, "vision_config")
    if vision.model_type not in _CLS_TOWERS:
        raise ModelLoadError(
            f"{config_file}: vision tower {vision.model_type!r} is not supported; "
            f"use one of {sorted(_CLS_TOWERS)}"
        )
    rows, cols = patch_grid(vision)
    tokens = rows * cols + int(_CLS_TOWERS[vision.model_type])
    if config.vision_feature_select_strategy == "default":
        tokens -= 1
    return tokens
