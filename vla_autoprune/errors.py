"""The project's bad-input errors: what a user can fix, reported as one line naming problem and fix.

Entry points (``evaluate``, ``report``, ...) catch :class:`UserError` only and print its message
without a traceback; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input the user can fix; ``str(err)`` is one line naming the problem and the fix."""


class ConfigError(UserError, ValueError):
    """A configuration value is missing, malformed or out of range."""


class NotRunnableError(ConfigError):
    """A valid configuration this model cannot run (an out-of-reach budget, a pruner that would rank
    by attention the model's text does not pay there); a multirun records it and runs the rest."""


class DataError(UserError, ValueError):
    """Dataset content is unusable (corrupt image, missing camera, unknown split, ...)."""


class DataNotFoundError(UserError, FileNotFoundError):
    """A dataroot, table, image, model folder or run folder does not exist."""


class ModelLoadError(UserError, ValueError):
    """A model folder exists but cannot be loaded (truncated weights, unknown architecture, ...)."""
