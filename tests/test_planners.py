"""Reference planners: hand-worked trajectories and the ground-truth sanity check."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
import torch

from planners import ConstantVelocityPlanner, GroundTruthPlanner, Planner, l2_at
from vla_autoprune.data.schema import EGO_STATE_FIELDS
from vla_autoprune.errors import DataError


def ego_state(speed: float, yaw_rate: float, batch: int = 1) -> dict[str, torch.Tensor]:
    """A batch holding only ``ego_state``, its columns filled by name (accel 1.5 m/s^2, ignored)."""
    values = {"speed": speed, "accel": 1.5, "yaw_rate": yaw_rate}
    row = [values[name] for name in EGO_STATE_FIELDS]
    return {"ego_state": torch.tensor([row] * batch, dtype=torch.float32)}


def test_ground_truth_planner_has_zero_l2() -> None:
    gt = torch.randn(3, 6, 2, dtype=torch.float64)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[2, 4:] = False
    planned = GroundTruthPlanner()({"gt_trajectory": gt, "gt_mask": mask})
    assert planned.dtype == torch.float32 and planned.shape == (3, 6, 2)
    for convention in ("stp3", "uniad"):
        assert l2_at(planned, gt.float(), mask, convention) == {"1s": 0.0, "2s": 0.0, "3s": 0.0}


def test_ground_truth_planner_names_missing_key() -> None:
    with pytest.raises(KeyError, match="gt_trajectory"):
        GroundTruthPlanner().plan({})


def test_constant_velocity_straight() -> None:
    planned = ConstantVelocityPlanner()(ego_state(4.0, 0.0, batch=2))
    expected = [[2.0 * (k + 1), 0.0] for k in range(6)]  # 4 m/s for 0.5 s steps
    np.testing.assert_allclose(planned[1].numpy(), expected)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_constant_velocity_turns_on_a_circle(sign: float) -> None:
    # v = pi m/s, w = pi / 6 rad/s: radius 6 m, a quarter circle after 3 s.
    planned = ConstantVelocityPlanner()(ego_state(math.pi, sign * math.pi / 6))[0].numpy()
    quarter_turn = math.pi / 4
    at_1_5s = [6 * math.sin(quarter_turn), sign * 6 * (1 - math.cos(quarter_turn))]
    np.testing.assert_allclose(planned[2], at_1_5s, atol=1e-5)
    np.testing.assert_allclose(planned[5], [6.0, sign * 6.0], atol=1e-5)


def test_constant_velocity_tiny_yaw_rate_and_no_yaw_rate() -> None:
    straight = ConstantVelocityPlanner()(ego_state(4.0, 0.0))
    tiny = ConstantVelocityPlanner()(ego_state(4.0, 1e-12))
    ignored = ConstantVelocityPlanner(use_yaw_rate=False)(ego_state(4.0, 0.5))
    assert torch.isfinite(tiny).all()
    torch.testing.assert_close(tiny, straight)
    torch.testing.assert_close(ignored, straight)


@pytest.mark.parametrize("columns", [2, 4])
def test_constant_velocity_rejects_bad_ego_state(columns: int) -> None:
    with pytest.raises(DataError, match=r"ego_state has shape .*speed.*yaw_rate"):
        ConstantVelocityPlanner().plan({"ego_state": torch.zeros(2, columns)})


class _ShortPlanner(Planner):
    name = "short"

    def plan(self, batch: Mapping[str, Any]) -> torch.Tensor:
        return torch.zeros(1, 5, 2)


def test_planner_contract() -> None:
    with pytest.raises(TypeError):
        Planner()  # type: ignore[abstract]
    planner = _ShortPlanner()
    planner.setup()  # the default setup needs nothing
    with pytest.raises(ValueError, match=r"short planned .*\[B, 6, 2\]"):
        planner({})
