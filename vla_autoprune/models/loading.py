"""``load``: a driving model by bundled name or from a saved folder."""

from __future__ import annotations

import json
import logging
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from vla_autoprune.models.base import DrivingModel
from vla_autoprune.models.driving_vla import DrivingVLA, DrivingVLAConfig
from vla_autoprune.models.llava_adapter import LLAVA_MODEL_TYPE, LlavaDrivingAdapter

logger = logging.getLogger(__name__)

#: Models shipped in ``vla_autoprune/assets/<name>``.
BUNDLED_MODELS: tuple[str, ...] = ("tiny-drive-vla",)
DEFAULT_MODEL = "tiny-drive-vla"


class UnknownModelError(ValueError):
    """Neither a bundled model name nor a folder holding a saved model."""


def resolve_model_path(name_or_path: str | Path) -> Path:
    """Folder of a bundled model name, or ``name_or_path`` itself when it is a folder."""
    if str(name_or_path) in BUNDLED_MODELS:
        return Path(str(resources.files("vla_autoprune").joinpath("assets", str(name_or_path))))
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    raise UnknownModelError(
        f"unknown model {str(name_or_path)!r}: bundled models are {list(BUNDLED_MODELS)}; "
        "a folder saved with save_pretrained also works"
    )


def load(
    name_or_path: str | Path = DEFAULT_MODEL,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> DrivingModel:
    """Load a driving model in eval mode: a bundled name or a saved DrivingVLA / LLaVA folder.

    The folder's ``config.json`` ``model_type`` picks the class (``driving_vla`` or ``llava``).
    """
    folder = resolve_model_path(name_or_path)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} not found; pass a folder saved with save_pretrained")
    model_type = json.loads(config_file.read_text()).get("model_type")
    logger.info("loading %s model from %s (%s, %s)", model_type, folder, device, dtype)
    if model_type == DrivingVLAConfig.model_type:
        model = DrivingVLA.from_pretrained(folder, dtype=dtype)
        module: nn.Module = model  # PreTrainedModel.to's wrapper confuses type checkers
        module.to(device).eval()
        return model
    if model_type == LLAVA_MODEL_TYPE:
        return LlavaDrivingAdapter.from_pretrained(folder, device=device, dtype=dtype)
    raise UnknownModelError(
        f"{config_file} has model_type={model_type!r}; load() supports "
        f"{[DrivingVLAConfig.model_type, LLAVA_MODEL_TYPE]}"
    )
