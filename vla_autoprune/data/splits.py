"""Where a version's tables live and which scenes a split holds.

Real nuScenes releases use the devkit's hard-coded splits
(:func:`nuscenes.utils.splits.create_splits_scenes`); any other version (e.g. the synthetic
``v1.0-synthetic``) must ship ``<dataroot>/<version>/splits.json`` = ``{split: [scene names]}``,
read through the devkit's custom-split support.
"""

from __future__ import annotations

import json
from pathlib import Path

from nuscenes import NuScenes
from nuscenes.utils.splits import create_splits_scenes, get_scenes_of_custom_split

from vla_autoprune.data.errors import (
    DatarootNotFoundError,
    NuScenesFormatError,
    UnknownSplitError,
    UnknownVersionError,
    VersionNotFoundError,
)

#: Splits of the real releases (names as in ``create_splits_scenes``).
RELEASE_SPLITS: dict[str, tuple[str, ...]] = {
    "v1.0-mini": ("mini_train", "mini_val"),
    "v1.0-trainval": ("train", "val", "train_detect", "train_track"),
    "v1.0-test": ("test",),
}

#: v1.0-mini's splits are called mini_train / mini_val by the devkit; accepting train / val
#: lets the same config (default ``split="val"``) run on mini.
SPLIT_ALIASES: dict[str, dict[str, str]] = {"v1.0-mini": {"train": "mini_train", "val": "mini_val"}}

#: File a non-release version lists its splits in (the devkit's custom-split file name).
CUSTOM_SPLITS_FILE = "splits.json"

#: A table every nuScenes version folder holds; marks a folder as a version when listing them.
MARKER_TABLE = "sample.json"


def check_version_dir(dataroot: str | Path, version: str) -> Path:
    """Fail early unless ``<dataroot>/<version>`` holds a known version; returns that folder.

    :raises DatarootNotFoundError: ``dataroot`` is not a directory.
    :raises VersionNotFoundError: no ``<version>`` folder (lists the versions that are there).
    :raises UnknownVersionError: not a release and no ``splits.json`` in the folder.
    """
    root = Path(dataroot)
    if not root.is_dir():
        raise DatarootNotFoundError(
            f"nuScenes dataroot {root} does not exist or is not a folder; pass the folder that holds "
            "the <version>/ tables and samples/ (or generate one with data_tools.synthetic_nuscenes)."
        )
    table_dir = root / version
    if not table_dir.is_dir():
        found = sorted(p.name for p in root.iterdir() if (p / MARKER_TABLE).is_file())
        raise VersionNotFoundError(
            f"no version folder {table_dir} (versions found in {root}: {found or 'none'}); "
            "pass one of those as version, or the dataroot that contains the folder."
        )
    if version not in RELEASE_SPLITS and not (table_dir / CUSTOM_SPLITS_FILE).is_file():
        raise UnknownVersionError(
            f"unknown version {version!r}: not a nuScenes release ({sorted(RELEASE_SPLITS)}) and "
            f"{table_dir / CUSTOM_SPLITS_FILE} is missing; use a release name or add a splits.json."
        )
    return table_dir


def known_splits(nusc: NuScenes) -> tuple[str, ...]:
    """Split names accepted for the version ``nusc`` has loaded (aliases included)."""
    if nusc.version in RELEASE_SPLITS:
        aliases = tuple(SPLIT_ALIASES.get(nusc.version, {}))
        return RELEASE_SPLITS[nusc.version] + aliases
    return tuple(_read_custom_splits(nusc))


def split_scene_names(nusc: NuScenes, split: str) -> list[str]:
    """Scene names of ``split`` in the split's own order.

    :raises UnknownSplitError: the split is not defined for ``nusc.version``.
    """
    known = known_splits(nusc)
    if split not in known:
        raise UnknownSplitError(
            f"unknown split {split!r} for version {nusc.version}; use one of {list(known)}."
        )
    if nusc.version in RELEASE_SPLITS:
        split = SPLIT_ALIASES.get(nusc.version, {}).get(split, split)
        return list(create_splits_scenes()[split])
    return list(get_scenes_of_custom_split(split, nusc))


def _read_custom_splits(nusc: NuScenes) -> dict[str, list[str]]:
    """``splits.json`` of a non-release version, checked to be ``{name: [scene names]}``."""
    path = Path(nusc.dataroot) / nusc.version / CUSTOM_SPLITS_FILE
    if not path.is_file():
        raise UnknownVersionError(
            f"version {nusc.version} is not a nuScenes release and has no {path}; add a splits.json."
        )
    try:
        splits = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise NuScenesFormatError(f"cannot read {path} ({exc}); rewrite it as valid JSON.") from exc
    if not isinstance(splits, dict) or not all(isinstance(v, list) for v in splits.values()):
        raise NuScenesFormatError(f"{path} must map split names to lists of scene names; rewrite it.")
    return splits
