"""nuScenes data layer: the batch contract (``schema``), the dataset, collation and errors."""

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
from vla_autoprune.data.nuscenes_dataset import NuScenesDrivingDataset
from vla_autoprune.data.schema import (
    BATCH_KEYS,
    CAMERAS,
    CATEGORIES,
    COMMANDS,
    KEYFRAME_DT_S,
    NUM_FUTURE_STEPS,
    NUM_PAST_STEPS,
)

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
