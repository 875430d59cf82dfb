"""``pdm_score``: roll out each plan, replay the logged agents, score as navsim's PDM score."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from planners.closed_loop.agents import AgentTracks, interpolate_agents
from planners.closed_loop.areas import SceneGeometry, ego_areas
from planners.closed_loop.config import DEFAULT_CONFIG, PDMConfig, State
from planners.closed_loop.geometry import pad_polylines
from planners.closed_loop.metrics import (
    combine,
    comfort,
    drivable_area_compliance,
    driving_direction_compliance,
    ego_progress,
    no_at_fault_collision,
    time_to_collision,
)
from planners.closed_loop.reference import progress_along, reference_progress
from planners.closed_loop.rollout import PLAN_DT_S, rollout
from vla_autoprune.data.schema import EGO_STATE_FIELDS
from vla_autoprune.errors import DataError

logger = logging.getLogger(__name__)

#: Per-sample outputs of :func:`pdm_score`, in report order.
SCORE_KEYS: tuple[str, ...] = ("pdms", "nc", "dac", "ttc", "ep", "comfort", "ddc")


def _array(x: Any, name: str, dtype: type = np.float64) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x, dtype=dtype)
    except (TypeError, ValueError) as err:
        raise DataError(f"{name} is not numeric ({err}); pass an array or tensor") from err


def _checked_plan(plan: Any, ego_state: Any) -> tuple[np.ndarray, np.ndarray]:
    """float64 plan [B, K, 2] and ego_state [B, 3], or a one-line DataError."""
    plan_np, state_np = _array(plan, "plan"), _array(ego_state, "ego_state")
    if plan_np.ndim != 3 or plan_np.shape[2] != 2:
        raise DataError(f"plan has shape {plan_np.shape}; expected [B, K, 2] waypoints every {PLAN_DT_S} s")
    bad = np.flatnonzero(~np.isfinite(plan_np).all(axis=(1, 2)))
    if bad.size:
        raise DataError(f"plan holds NaN or inf waypoints in samples {bad.tolist()}; fix the planner output")
    expected = (plan_np.shape[0], len(EGO_STATE_FIELDS))
    if state_np.shape != expected or not np.isfinite(state_np).all():
        raise DataError(
            f"ego_state must be finite {list(expected)} with columns {list(EGO_STATE_FIELDS)}, "
            f"got shape {state_np.shape}"
        )
    return plan_np, state_np


def _checked_agents(
    agent_boxes: Any, agent_valid: Any, agent_labels: Any, batch: int, keys: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float64 boxes [B, keys, N, 5] (invalid slots zeroed), bool valid, int64 labels, or a DataError."""
    boxes = _array(agent_boxes, "agent_boxes")
    valid, labels = _array(agent_valid, "agent_valid", bool), _array(agent_labels, "agent_labels", np.int64)
    if boxes.ndim != 4 or boxes.shape[:2] != (batch, keys) or boxes.shape[3] != 5:
        raise DataError(
            f"agent_boxes has shape {boxes.shape}; expected [{batch}, {keys}, N, 5] at t = 0 and every waypoint"
        )
    if valid.shape != boxes.shape[:3] or labels.shape != (batch, boxes.shape[2]):
        raise DataError(
            f"agent_valid {valid.shape} / agent_labels {labels.shape} must be {boxes.shape[:3]} / "
            f"{(batch, boxes.shape[2])}"
        )
    if not np.isfinite(boxes[valid]).all():
        raise DataError(
            "agent_boxes holds NaN or inf for valid agents; fix the annotations or mark them invalid"
        )
    return np.where(valid[..., None], boxes, 0.0), valid, labels


def pdm_score(
    plan: Any,
    ego_state: Any,
    agent_boxes: Any,
    agent_valid: Any,
    agent_labels: Any,
    scenes: Sequence[SceneGeometry | None],
    config: PDMConfig = DEFAULT_CONFIG,
) -> dict[str, np.ndarray]:
    """Closed-loop-style PDM score of each plan (``docs/CLOSED-LOOP.md``).

    :param plan: float [B, K, 2] waypoints at t = 0.5 (k + 1) s, ego frame (rear axle).
    :param ego_state: float [B, 3] speed, accel, yaw rate (``EGO_STATE_FIELDS``) at t = 0.
    :param agent_boxes: float [B, K + 1, N, 5] (x, y, width, length, yaw) at t = 0, 0.5, ... s;
        slot n is the same agent at every keyframe.
    :param agent_valid: bool [B, K + 1, N]; ``agent_labels``: int [B, N] into CATEGORIES, -1 = padding.
    :param scenes: B map geometries in the ego frame; None where the map is unknown.
    :return: float64 [B] per key of ``SCORE_KEYS`` (NaN where not scored), ``scored`` bool [B],
        ``progress_m`` and ``reference_progress_m`` float [B], ``tracking_error_m`` float [B]
        (largest distance between the rollout and the plan at the waypoint times).
    :raises DataError: malformed input, or a plan with NaN / inf (one line naming the samples).
    """
    plan_np, state_np = _checked_plan(plan, ego_state)
    batch = plan_np.shape[0]
    boxes, valid, labels = _checked_agents(
        agent_boxes, agent_valid, agent_labels, batch, plan_np.shape[1] + 1
    )
    if len(scenes) != batch:
        raise DataError(
            f"got {len(scenes)} scene geometries for {batch} plans; pass one (or None) per sample"
        )
    problems = [("no map" if s is None else s.problem()) for s in scenes]
    scored = np.array([p is None for p in problems], dtype=bool)
    for b in np.flatnonzero(~scored):
        logger.warning("sample %d not scored: %s", b, problems[b])
    out = {key: np.full(batch, np.nan) for key in (*SCORE_KEYS, "progress_m", "reference_progress_m")}
    column = EGO_STATE_FIELDS.index
    states = rollout(
        plan_np,
        state_np[:, column("speed")],
        state_np[:, column("accel")],
        state_np[:, column("yaw_rate")],
        config.ego,
        config.tracker,
    )
    per_wp = round(PLAN_DT_S / config.tracker.dt_s)
    out["tracking_error_m"] = np.linalg.norm(states[:, per_wp::per_wp, :2] - plan_np, axis=-1).max(axis=1)
    out["scored"] = scored
    idx = np.flatnonzero(scored)
    if idx.size == 0:
        return out
    tracks = interpolate_agents(boxes[idx], valid[idx], labels[idx], PLAN_DT_S, config.tracker.dt_s)
    usable = [scene for scene, ok in zip(scenes, scored, strict=True) if ok and scene is not None]
    for key, value in sub_scores(states[idx], tracks, usable, config).items():
        out[key][idx] = value
    return out


def sub_scores(
    states: np.ndarray, tracks: AgentTracks, scenes: Sequence[SceneGeometry], config: PDMConfig
) -> dict[str, np.ndarray]:
    """Every sub-score, PDMS and the two progress distances of B rollouts.

    :param states: float [B, T, S] rollouts; ``tracks``: agents over the same T steps.
    :param scenes: B usable scene geometries. :return: float64 [B] per key.
    """
    areas = ego_areas(states, scenes, config.ego)
    lines = pad_polylines([np.asarray(s.centreline, dtype=np.float64) for s in scenes])
    nc = no_at_fault_collision(states, tracks, areas.multiple_lanes | areas.off_road, config)
    dac = drivable_area_compliance(areas.off_road)
    risky = areas.multiple_lanes | areas.off_road | areas.in_intersection
    progress = progress_along(states, lines, config)
    reference = reference_progress(states[:, 0, State.SPEED], lines, tracks, config)
    values = {
        "nc": nc,
        "dac": dac,
        "ttc": time_to_collision(states, tracks, risky, config),
        "ep": ego_progress(progress, reference, nc * dac, config),
        "comfort": comfort(states, config),
        "ddc": driving_direction_compliance(states, areas.oncoming, config),
        "progress_m": progress,
        "reference_progress_m": reference,
    }
    values["pdms"] = combine(nc, dac, values["ttc"], values["ep"], values["comfort"], config)
    return values
