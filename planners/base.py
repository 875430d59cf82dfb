"""The planner extension point (in the style of navsim's ``AbstractAgent``).

A planner maps a collated batch (keys in :mod:`vla_autoprune.data.schema`) to 6 future
waypoints ``[B, 6, 2]`` in the current ego frame (x forward, y left, metres), which the
metrics in :mod:`planners.metrics` score.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Mapping
from typing import Any

import torch

from vla_autoprune.data.schema import NUM_FUTURE_STEPS

logger = logging.getLogger(__name__)


class Planner(abc.ABC):
    """Batch -> planned waypoints. Subclasses set ``name`` and implement :meth:`plan`."""

    #: Short identifier used in result tables and config names.
    name: str = "planner"

    def check_before_loading(self) -> None:  # noqa: B027 - optional check, no-op by default
        """Raise a one-line error if :meth:`setup` cannot work, reading only small files (a model's
        config, its weights' headers, its tokenizer): runs before the data and the weights load."""

    def setup(self) -> None:
        """Load weights or other state before the first :meth:`plan`; the default needs none."""
        logger.debug("planner %s needs no setup", self.name)

    @abc.abstractmethod
    def plan(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Plan a trajectory for every sample.

        :param batch: collated batch, see :mod:`vla_autoprune.data.schema`.
        :return: float32 ``[B, 6, 2]`` (x, y) waypoints at t = 0.5, 1.0, ..., 3.0 s.
        """

    def validate(self, batch: Mapping[str, Any]) -> None:  # noqa: B027 - optional check, no-op by default
        """Raise a one-line error if this planner cannot run on batches like ``batch``.

        Called once on a one-sample batch before an evaluation starts, so that bad configurations
        (say, an impossible pruning budget) fail before any work is done.
        """

    def plan_with_stats(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        """:meth:`__call__` plus per-sample facts about what ran (tokens, FLOPs, ...), JSON-ready.

        The evaluation loop stores these facts next to each sample's metrics. Planners with nothing
        to report keep this default (empty dicts).
        """
        waypoints = self(batch)
        return waypoints, [{} for _ in range(waypoints.shape[0])]

    def __call__(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """:meth:`plan`, with its output shape and dtype checked."""
        waypoints = self.plan(batch)
        if waypoints.dtype != torch.float32 or waypoints.shape[1:] != (NUM_FUTURE_STEPS, 2):
            raise ValueError(
                f"{self.name} planned {waypoints.dtype} {tuple(waypoints.shape)}; "
                f"plan() must return float32 [B, {NUM_FUTURE_STEPS}, 2]"
            )
        return waypoints


def batch_tensor(batch: Mapping[str, Any], key: str) -> torch.Tensor:
    """``batch[key]`` as a tensor, or a one-line error naming the missing key."""
    if key not in batch:
        raise KeyError(f"batch has no {key!r}; planners need the collated keys of vla_autoprune.data.schema")
    return torch.as_tensor(batch[key])
