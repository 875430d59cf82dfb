"""Error types of the data layer.

Every error carries a one-line message that names the problem and the fix. All of them derive
from :class:`NuScenesDataError`, so callers can catch the whole family, and from the builtin
(:class:`ValueError` or :class:`FileNotFoundError`) that describes the kind of problem.
"""

from __future__ import annotations


class NuScenesDataError(Exception):
    """Base class of every data-layer error (never raised directly)."""

    def __init__(self, message: str) -> None:
        # One line by contract: a multi-line message would break log greps and CLI output.
        super().__init__(" ".join(message.split()))


class DatarootNotFoundError(NuScenesDataError, FileNotFoundError):
    """The dataroot directory does not exist."""


class VersionNotFoundError(NuScenesDataError, FileNotFoundError):
    """The dataroot has no ``<version>`` table folder (wrong dataroot or version)."""


class UnknownVersionError(NuScenesDataError, ValueError):
    """The version is neither a nuScenes release nor a folder with a ``splits.json``."""


class UnknownSplitError(NuScenesDataError, ValueError):
    """The split name is not defined for this version."""


class EmptySplitError(NuScenesDataError, ValueError):
    """The split names no scene (or no sample) present in the loaded tables."""


class UnknownCameraError(NuScenesDataError, ValueError):
    """A requested camera channel is not a camera sensor of this version."""


class MissingCameraError(NuScenesDataError, ValueError):
    """A keyframe sample has no sample_data record for a requested channel."""


class ImageNotFoundError(NuScenesDataError, FileNotFoundError):
    """A camera sample_data record points at a JPEG that is not on disk."""


class CorruptImageError(NuScenesDataError, ValueError):
    """A camera JPEG cannot be fully decoded (truncated, corrupt, or of the wrong size)."""


class NuScenesFormatError(NuScenesDataError, ValueError):
    """The tables are inconsistent (what nuscenes-devkit would report as a bare assertion)."""


class DatasetConfigError(NuScenesDataError, ValueError):
    """A dataset constructor argument is invalid."""


class CollateError(NuScenesDataError, ValueError):
    """Items passed to :func:`~vla_autoprune.data.collate.collate` cannot form one batch."""
