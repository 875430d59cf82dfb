"""Checks of a saved model folder before transformers loads it, so that bad files give one-line errors.

transformers reports a truncated ``model.safetensors`` as a long ``SafetensorError`` traceback that
never names the file, and a broken ``config.json`` as a ``JSONDecodeError``; these checks read only
the config and the safetensors headers (no weights) and raise :class:`ModelLoadError` naming the
file and the fix instead.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from transformers import AutoProcessor
from transformers.utils import CONFIG_NAME, SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, WEIGHTS_NAME

from vla_autoprune.errors import ModelLoadError

#: The usual fix for a damaged file of a user's model folder.
RESAVE = "re-download it or re-save the model with save_pretrained"


def read_config(folder: Path, fix: str = RESAVE) -> dict[str, Any]:
    """The parsed ``config.json`` of a saved model ``folder``; ``fix`` is the advice on a damaged file."""
    config_file = folder / CONFIG_NAME
    if not config_file.is_file():
        raise ModelLoadError(
            f"{config_file} not found, so {folder} is not a saved model; pass a folder written by "
            f"save_pretrained (config.json + {SAFE_WEIGHTS_NAME})"
        )
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelLoadError(f"{config_file} is not valid JSON ({err}); {fix}") from err
    if not isinstance(config, dict):
        raise ModelLoadError(f"{config_file} holds a {type(config).__name__}, not a JSON object; {fix}")
    return config


def weight_files(folder: Path, fix: str = RESAVE) -> list[Path]:
    """The safetensors files of ``folder`` (one file or the shards of an index); [] for a ``.bin`` model."""
    index = folder / SAFE_WEIGHTS_INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as err:
            raise ModelLoadError(f"{index} is not a valid safetensors index ({err!r}); {fix}") from err
        missing = [name for name in shards if not (folder / name).is_file()]
        if missing:
            raise ModelLoadError(f"{index} lists shards missing from {folder}: {missing}; {fix}")
        return [folder / name for name in shards]
    if (folder / SAFE_WEIGHTS_NAME).is_file():
        return [folder / SAFE_WEIGHTS_NAME]
    if (folder / WEIGHTS_NAME).is_file():
        return []  # a legacy pickle checkpoint: transformers checks it while loading
    raise ModelLoadError(f"{folder} has no weights ({SAFE_WEIGHTS_NAME} not found); {fix}")


def check_weights(folder: Path, fix: str = RESAVE) -> None:
    """Raise a one-line :class:`ModelLoadError` unless every safetensors file's header is intact.

    Opening a safetensors file reads its header and checks it against the file size, which is what
    a truncated download or copy breaks; no tensor is read.
    """
    for path in weight_files(folder, fix):
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except (SafetensorError, OSError) as err:
            raise ModelLoadError(f"{path} is truncated or corrupt ({err}); {fix}") from err


def check_model_folder(folder: Path, fix: str = RESAVE) -> dict[str, Any]:
    """:func:`read_config` and :func:`check_weights`; returns the parsed config."""
    config = read_config(folder, fix)
    check_weights(folder, fix)
    return config


def load_processor(folder: Path) -> Any:
    """The processor (tokenizer + image processor) saved in ``folder``, or a one-line ``ModelLoadError``."""
    try:
        return AutoProcessor.from_pretrained(folder)
    except OSError as err:  # transformers' "Can't load ... make sure ... contains ..." for missing files
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ModelLoadError(
            f"{folder} has no loadable processor ({reason}); save it next to the model with "
            "processor.save_pretrained(folder)"
        ) from err
