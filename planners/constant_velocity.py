"""Constant speed and yaw rate extrapolation (CTRV) from the current ``ego_state``."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from planners.base import Planner, batch_tensor
from vla_autoprune.data.schema import EGO_STATE_FIELDS, KEYFRAME_DT_S, NUM_FUTURE_STEPS
from vla_autoprune.errors import DataError

_SPEED, _YAW_RATE = EGO_STATE_FIELDS.index("speed"), EGO_STATE_FIELDS.index("yaw_rate")


class ConstantVelocityPlanner(Planner):
    """Holds the current speed and yaw rate of ``ego_state`` (acceleration is ignored).

    The ego moves on a circular arc, x(t) = v sin(w t) / w, y(t) = v (1 - cos(w t)) / w, which
    is a straight line along +x when w = 0 or ``use_yaw_rate`` is false (navsim's
    ``ConstantVelocityAgent``). ``past_trajectory`` is not used.
    """

    name = "constant_velocity"

    def __init__(self, use_yaw_rate: bool = True) -> None:
        self.use_yaw_rate = use_yaw_rate

    def plan(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Inherited, see superclass."""
        state = batch_tensor(batch, "ego_state").to(torch.float64)
        if state.ndim != 2 or state.shape[1] != len(EGO_STATE_FIELDS):
            raise DataError(
                f"ego_state has shape {tuple(state.shape)}; expected [B, {len(EGO_STATE_FIELDS)}] "
                f"with columns {list(EGO_STATE_FIELDS)} (vla_autoprune.data.schema)"
            )
        speed = state[:, _SPEED, None]  # [B, 1]
        yaw_rate = state[:, _YAW_RATE, None] if self.use_yaw_rate else torch.zeros_like(speed)
        times = KEYFRAME_DT_S * torch.arange(1, NUM_FUTURE_STEPS + 1, dtype=torch.float64)  # [T]
        turn = yaw_rate * times  # [B, T] heading change
        # sin(a)/w = v t sinc(a) and (1 - cos a)/w = v t sin(a/2) sinc(a/2): stable as w -> 0.
        arc = speed * times
        x = arc * torch.sinc(turn / math.pi)
        y = arc * torch.sin(turn / 2) * torch.sinc(turn / (2 * math.pi))
        return torch.stack([x, y], dim=-1).to(torch.float32)  # [B, T, 2]
