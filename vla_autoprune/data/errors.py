"""Error types of the data layer.

Every error carries a one-line message that names the problem and the fix. All of them derive
from :class:`NuScenesDataError`, so callers can catch the whole family, and from the project's
:class:`~vla_autoprune.errors.UserError` kind (``ConfigError``, ``DataError`` or
``DataNotFoundError``, themselves :class:`ValueError` / :class:`FileNotFoundError`), so entry points
report them as one line without a traceback.
"""

from __future__ import annotations

from vla_autoprune.errors import ConfigError, DataError, DataNotFoundError, UserError

#: How torch's ``ExceptionWrapper.reraise`` starts the message of an error re-raised from a
#: DataLoader worker: ``Caught <Name> in DataLoader worker process 0.\nOriginal Traceback ...``.
_WRAPPED_PREFIX = "Caught "
_WRAPPED_TRACEBACK = "\nOriginal Traceback (most recent call last):\n"


class NuScenesDataError(UserError):
    """Base class of every data-layer error (never raised directly)."""

    def __init__(self, message: str) -> None:
        # One line by contract: a multi-line message would break log greps and CLI output.
        super().__init__(" ".join(_unwrap_worker_message(message, type(self)).split()))


def _unwrap_worker_message(message: str, kind: type[BaseException]) -> str:
    """The original one-line message of an error torch re-raised from a DataLoader worker.

    torch rebuilds the worker's exception as ``kind(msg)`` where ``msg`` is ``Caught <Name> in
    DataLoader worker process N.`` plus the whole worker traceback, whose last ``<module>.<Name>:``
    line holds the original message; any other message is returned as it is.
    """
    if not message.startswith(f"{_WRAPPED_PREFIX}{kind.__name__} ") or _WRAPPED_TRACEBACK not in message:
        return message
    heads = (f"{kind.__module__}.{kind.__qualname__}: ", f"{kind.__qualname__}: ")
    for line in reversed(message.splitlines()):
        for head in heads:
            if line.startswith(head):
                return line[len(head) :]
    return message


class DatarootNotFoundError(NuScenesDataError, DataNotFoundError):
    """The dataroot directory does not exist."""


class VersionNotFoundError(NuScenesDataError, DataNotFoundError):
    """The dataroot has no ``<version>`` table folder (wrong dataroot or version)."""


class UnknownVersionError(NuScenesDataError, DataError):
    """The version is neither a nuScenes release nor a folder with a ``splits.json``."""


class UnknownSplitError(NuScenesDataError, DataError):
    """The split name is not defined for this version."""


class EmptySplitError(NuScenesDataError, DataError):
    """The split names no scene (or no sample) present in the loaded tables."""


class UnknownCameraError(NuScenesDataError, ConfigError):
    """A requested camera channel is not a camera sensor of this version."""


class MissingCameraError(NuScenesDataError, DataError):
    """A keyframe sample has no sample_data record for a requested channel."""


class ImageNotFoundError(NuScenesDataError, DataNotFoundError):
    """A camera sample_data record points at a JPEG that is not on disk."""


class CorruptImageError(NuScenesDataError, DataError):
    """A camera JPEG cannot be fully decoded (truncated, corrupt, or of the wrong size)."""


class NuScenesFormatError(NuScenesDataError, DataError):
    """The tables are inconsistent (what nuscenes-devkit would report as a bare assertion)."""


class DatasetConfigError(NuScenesDataError, ConfigError):
    """A dataset constructor argument is invalid."""


class CollateError(NuScenesDataError, DataError):
    """Items passed to :func:`~vla_autoprune.data.collate.collate` cannot form one batch."""
