"""Checks of a saved model folder before transformers loads it, so that bad files give one-line errors.

transformers reports a truncated ``model.safetensors`` as a long ``SafetensorError`` traceback that
never names the file, a broken ``config.json`` as a ``JSONDecodeError``, a broken ``tokenizer.json``
as a ``KeyError`` or a bare ``Exception``, and builds an empty tokenizer when the folder has none;
these checks read only the config, the tokenizer file and the safetensors headers (no weights) and
raise :class:`ModelLoadError` naming the file and the fix instead. :func:`resolve_model_path` turns
a bundled model name or a folder path into the folder.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from tokenizers import Tokenizer
from transformers import AutoProcessor
from transformers.utils import CONFIG_NAME, SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, WEIGHTS_NAME

from vla_autoprune.errors import DataNotFoundError, ModelLoadError

#: Models shipped in ``vla_autoprune/assets/<name>``.
BUNDLED_MODELS: tuple[str, ...] = ("tiny-drive-vla", "tiny-drive-vla-deep-fusion")

#: The usual fix for a damaged file of a user's model folder.
RESAVE = "re-download it or re-save the model with save_pretrained"

#: Files one of which a saved tokenizer has (fast ``tokenizer.json``, SentencePiece, BPE vocabulary).
TOKENIZER_FILES: tuple[str, ...] = ("tokenizer.json", "tokenizer.model", "vocab.json")


#: The ``model=`` option of ``conf/model`` that loads each ``config.json`` model type: the Qwen-VL
#: configs name their adapter; ``tiny_drive_vla``'s target is ``load()``, which takes any supported folder.
CONFIG_CHOICES: dict[str, str] = {"qwen2_5_vl": "qwen2_5_vl", "qwen3_vl": "qwen3_vl"}
DEFAULT_CONFIG_CHOICE = "tiny_drive_vla"


def wrong_family_fix(name_or_path: str | Path, model_type: Any) -> str:
    """How to load ``name_or_path`` (of ``model_type``) instead: ``load()``, or the ``model=`` option to use."""
    choice = CONFIG_CHOICES.get(str(model_type), DEFAULT_CONFIG_CHOICE)
    return f"load it with load() (on the command line: model={choice} model.name_or_path={name_or_path})"


class UnknownModelError(DataNotFoundError):
    """Neither a bundled model name nor an existing folder."""


def resolve_model_path(name_or_path: str | Path) -> Path:
    """Folder of a bundled model name, or ``name_or_path`` itself when it is a folder.

    Raises :class:`UnknownModelError` naming what is wrong: a path that does not exist, a file
    instead of its folder, or an unknown name.
    """
    if str(name_or_path) in BUNDLED_MODELS:
        return Path(str(resources.files("vla_autoprune").joinpath("assets", str(name_or_path))))
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    bundled = f"bundled models are {list(BUNDLED_MODELS)}"
    if path.is_file():
        raise UnknownModelError(
            f"model {str(name_or_path)!r} is a file, not a model folder; pass the folder that holds "
            f"config.json and the weights (e.g. {path.resolve().parent}) or a bundled name ({bundled})"
        )
    if path.is_absolute() or len(path.parts) > 1 or str(name_or_path).startswith((".", "~")):
        raise UnknownModelError(
            f"unknown model {str(name_or_path)!r}: no such folder ({path.resolve()} does not exist); "
            f"pass an existing folder saved with save_pretrained or a bundled name ({bundled})"
        )
    raise UnknownModelError(
        f"unknown model {str(name_or_path)!r}: {bundled}; a folder saved with save_pretrained also works"
    )


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


def check_tokenizer(folder: Path, fix: str = RESAVE) -> None:
    """Raise a one-line :class:`ModelLoadError` unless ``folder`` holds a readable tokenizer.

    transformers 5 builds an empty tokenizer for a folder without tokenizer files (and a model
    type it knows), so the run would fail later with a misleading message; a ``tokenizer.json``
    that the ``tokenizers`` library cannot read is reported here, not as its bare ``Exception``.
    """
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ModelLoadError(
            f"{folder} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); save the model's tokenizer "
            "next to it with tokenizer.save_pretrained(folder)"
        )
    path = folder / TOKENIZER_FILES[0]
    if path.is_file():
        try:
            Tokenizer.from_file(str(path))
        except Exception as err:  # tokenizers raises a bare Exception for a bad file
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ModelLoadError(f"{path} is not a readable tokenizer ({reason}); {fix}") from err


def load_processor(folder: Path) -> Any:
    """The processor (tokenizer + image processor) saved in ``folder`` (its tokenizer file checked
    by :func:`check_tokenizer` first), or a one-line ``ModelLoadError``."""
    try:
        return AutoProcessor.from_pretrained(folder)
    except (OSError, ValueError, KeyError) as err:  # "Can't load ... make sure ... contains ..."
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ModelLoadError(
            f"{folder} has no loadable processor ({reason}); save it next to the model with "
            "processor.save_pretrained(folder)"
        ) from err
