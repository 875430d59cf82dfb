"""``load``: a driving model by bundled name or from a saved folder."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from vla_autoprune import compat, compat_qwen
from vla_autoprune.errors import ConfigError, ModelLoadError
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
    "check_factory",
    "check_folder",
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
    folder, fix, model_type = _model_type(name_or_path)
    if model_type == LLAVA_MODEL_TYPE:  # the adapters check their folders themselves
        return LlavaDrivingAdapter.from_pretrained(folder, device=device, dtype=dtype)
    if model_type == compat_qwen.QWEN2_5_VL_MODEL_TYPE:
        return QwenVLDrivingAdapter.from_pretrained(folder, device=device, dtype=dtype)
    if model_type == compat_qwen.QWEN3_VL_MODEL_TYPE:
        return Qwen3VLDrivingAdapter.from_pretrained(folder, device=device, dtype=dtype)
    logger.info("loading %s model from %s (%s, %s)", model_type, folder, device, dtype)
    check_weights(folder, fix)
    with compat.without_loading_bar():  # a DrivingVLA loads in milliseconds: the bar is clutter
        model = DrivingVLA.from_pretrained(folder, dtype=dtype)
    module: nn.Module = model  # PreTrainedModel.to's wrapper confuses type checkers
    module.to(device).eval()
    return model


def _model_type(name_or_path: str | Path) -> tuple[Path, str, str]:
    """The folder, the fix for its damaged files and its model type, one :func:`load` supports."""
    folder = resolve_model_path(name_or_path)
    fix = REINSTALL if str(name_or_path) in BUNDLED_MODELS else RESAVE
    model_type = read_config(folder, fix).get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        compat_qwen.refuse_qwen3(model_type, folder)
        raise UnsupportedModelError(
            f"{folder / 'config.json'} has model_type={model_type!r}; load() supports "
            f"{list(SUPPORTED_MODEL_TYPES)}: pass a DrivingVLA, LLaVA, Qwen2.5-VL or Qwen3-VL folder"
        )
    return folder, fix, str(model_type)


def check_folder(name_or_path: str | Path = DEFAULT_MODEL) -> tuple[Path, str]:
    """What :func:`load` checks before it reads any weight: the folder, its ``config.json`` and
    model type, the safetensors headers and (LLaVA, Qwen) the tokenizer file. Returns the folder
    and its model type; raises the one-line :class:`~vla_autoprune.errors.ModelLoadError` ``load``
    would."""
    folder, fix, model_type = _model_type(name_or_path)
    if model_type == LLAVA_MODEL_TYPE:
        LlavaDrivingAdapter.check_folder(folder)
    elif model_type == compat_qwen.QWEN2_5_VL_MODEL_TYPE:
        QwenVLDrivingAdapter.check_folder(folder)
    elif model_type == compat_qwen.QWEN3_VL_MODEL_TYPE:
        Qwen3VLDrivingAdapter.check_folder(folder)
    else:
        check_weights(folder, fix)
    return folder, model_type


#: The check each loader a ``model`` config may name as its ``_target_`` runs before reading any
#: weight; it takes the loader's arguments but ``device`` and ``dtype``.
_CHECKS: dict[Callable[..., DrivingModel], Callable[..., object]] = {
    load: check_folder,
    LlavaDrivingAdapter.from_pretrained: LlavaDrivingAdapter.check_folder,
    QwenVLDrivingAdapter.from_pretrained: QwenVLDrivingAdapter.check_folder,
    Qwen3VLDrivingAdapter.from_pretrained: Qwen3VLDrivingAdapter.check_folder,
}


def check_factory(factory: Callable[..., DrivingModel], where: str = "model") -> None:
    """Check a model factory (a ``model`` config's partial of a loader) before the data and the
    weights load: its settings against the loader's signature and, for a loader of this package,
    the folder's files as the loader will check them. One-line errors; other callables pass.

    Args:
        factory: what ``VLAPlanner`` calls with ``device=`` and ``dtype=`` to load the model.
        where: the config key the settings come from, named in the error (``model.<setting>``).
    """
    if not isinstance(factory, functools.partial):
        return
    loader = factory.func
    try:
        parameters = inspect.signature(loader).parameters
    except (TypeError, ValueError):
        return
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    unknown = [key for key in factory.keywords if key not in parameters]
    if unknown and not takes_any:
        name = getattr(loader, "__qualname__", str(loader))
        settings = ", ".join(p for p in parameters if p not in ("device", "dtype"))
        raise ConfigError(
            f"{where}.{unknown[0]} is not a setting of {name} (its settings: {settings}); drop that override"
        )
    check = _CHECKS.get(loader)
    if check is not None:
        check(*factory.args, **factory.keywords)
