"""nuScenes data layer: the batch contract (``schema``), the dataset, collation and errors.

``NuScenesDrivingDataset`` is imported on first use: the batch contract, collation and errors (what
models and the pruning engine need) do not pull in nuscenes-devkit and its OpenCV, matplotlib and
scikit-learn, so a machine without the data stack (a GPU box running the benchmarks' random-weight
shapes) can still import them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vla_autoprune.data.collate import collate
from vla_autoprune.data.errors import (
    CollateError,
    CorruptImageError,
    DatarootNotFoundError,
    DatasetConfigError,
    EmptySplitError,
    ImageNotFoundError,
    MissingCameraError,
    NuScenesDataError,
    NuScenesFormatError,
    UnknownCameraError,
    UnknownSplitError,
    UnknownVersionError,
    VersionNotFoundError,
)
from vla_autoprune.data.schema import (
    BATCH_KEYS,
    CAMERAS,
    CATEGORIES,
    COMMANDS,
    KEYFRAME_DT_S,
    NUM_FUTURE_STEPS,
    NUM_PAST_STEPS,
)

if TYPE_CHECKING:
    from vla_autoprune.data.nuscenes_dataset import NuScenesDrivingDataset

__all__ = [
    "BATCH_KEYS",
    "CAMERAS",
    "CATEGORIES",
    "COMMANDS",
    "KEYFRAME_DT_S",
    "NUM_FUTURE_STEPS",
    "NUM_PAST_STEPS",
    "CollateError",
    "CorruptImageError",
    "DatarootNotFoundError",
    "DatasetConfigError",
    "EmptySplitError",
    "ImageNotFoundError",
    "MissingCameraError",
    "NuScenesDataError",
    "NuScenesDrivingDataset",
    "NuScenesFormatError",
    "UnknownCameraError",
    "UnknownSplitError",
    "UnknownVersionError",
    "VersionNotFoundError",
    "collate",
]


def __getattr__(name: str) -> Any:
    """``NuScenesDrivingDataset``, imported (with nuscenes-devkit) when first asked for."""
    if name == "NuScenesDrivingDataset":
        from vla_autoprune.data.nuscenes_dataset import NuScenesDrivingDataset

        return NuScenesDrivingDataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
