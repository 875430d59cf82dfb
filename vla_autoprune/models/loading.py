"""``load``: a driving model by bundled name or from a saved folder."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from vla_autoprune import compat, compat_qwen
from vla_autoprune.errors import ModelLoadError
from vla_autoprune.models.base import DrivingModel
from vla_autoprune.models.driving_vla import DrivingVLA, DrivingVLAConfig
from vla_autoprune.models.llava_adapter import LLAVA_MODEL_TYPE, LlavaDrivingAdapter
from vla_autoprune.models.model_folder import (
    BUNDLED_MODELS,
    RESAVE,
    UnknownModelError,
    check_weights,
    read_config,
    resolve_model_path,
)
from vla_autoprune.models.qwen3_adapter import Qwen3VLDrivingAdapter
from vla_autoprune.models.qwen_adapter import QwenVLDrivingAdapter

logger = logging.getLogger(__name__)

__all__ = [
    "BUNDLED_MODELS",
    "DEFAULT_MODEL",
    "REINSTALL",
    "SUPPORTED_MODEL_TYPES",
    "UnknownModelError",
    "UnsupportedModelError",
    "load",
    "model_argument",
    "resolve_model_path",
]

DEFAULT_MODEL = "tiny-drive-vla"
#: ``config.json`` model types :func:`load` has a driving model for.
SUPPORTED_MODEL_TYPES: tuple[str, ...] = (
    DrivingVLAConfig.model_type,
    LLAVA_MODEL_TYPE,
    compat_qwen.QWEN2_5_VL_MODEL_TYPE,
    compat_qwen.QWEN3_VL_MODEL_TYPE,
)


#: The fix for a damaged file of a bundled model.
REINSTALL = "reinstall vla-autoprune (the bundled model's files are damaged)"


class UnsupportedModelError(ModelLoadError):
    """The folder's ``config.json`` names a ``model_type`` ``load`` has no driving model for."""


def model_argument(folder: str | Path) -> str:
    """How a command line names the model in ``folder``: its bundled name if ``folder`` is a bundled
    model's folder (so a recorded command works from any checkout), else the folder itself."""
    path = Path(folder).expanduser().resolve()
    return next((name for name in BUNDLED_MODELS if resolve_model_path(name).resolve() == path), str(folder))


def load(
    name_or_path: str | Path = DEFAULT_MODEL,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> DrivingModel:
    """Load a driving model in eval mode: a bundled name or a saved DrivingVLA / LLaVA / Qwen2.5-VL / Qwen3-VL folder.

    The folder's ``config.json`` ``model_type`` picks the class (``driving_vla``, ``llava`` or
    ``qwen2_5_vl`` or ``qwen3_vl``).
    A missing or broken ``config.json`` or a truncated ``model.safetensors`` raises a one-line
    :class:`~vla_autoprune.errors.ModelLoadError` naming the file, before transformers reads it.
    """
    folder = resolve_model_path(name_or_path)
    fix = REINSTALL if str(name_or_path) in BUNDLED_MODELS else RESAVE
    model_type = read_config(folder, fix).get("model_type")
    if model_type == DrivingVLAConfig.model_type:
        logger.info("loading %s model from %s (%s, %s)", model_type, folder, device, dtype)
        check_weights(folder, fix)
        with compat.without_loading_bar():  # a DrivingVLA loads in milliseconds: the bar is clutter
            model = DrivingVLA.from_pretrained(folder, dtype=dtype)
        module: nn.Module = model  # PreTrainedModel.to's wrapper confuses type checkers
        module.to(device).eval()
        return model
    if model_type == LLAVA_MODEL_TYPE:
        return LlavaDrivingAdapter.from_pretrained(folder, device=device, dtype=dtype)
    if model_type == compat_qwen.QWEN2_5_VL_MODEL_TYPE:
        return QwenVLDrivingAdapter.from_pretrained(folder, device=device, dtype=dtype)
    if model_type == compat_qwen.QWEN3_VL_MODEL_TYPE:
        return Qwen3VLDrivingAdapter.from_pretrained(folder, device=device, dtype=dtype)
    compat_qwen.refuse_qwen3(model_type, folder)
    raise UnsupportedModelError(
        f"{folder / 'config.json'} has model_type={model_type!r}; load() supports "
        f"{list(SUPPORTED_MODEL_TYPES)}: pass a DrivingVLA, LLaVA, Qwen2.5-VL or Qwen3-VL folder"
    )
