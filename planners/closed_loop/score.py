"""``pdm_score``: roll out each plan, replay the logged agents, score as navsim's PDM score."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from planners.closed_loop.agents import interpolate_agents
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


def _array(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise DataError(f"{name} is not numeric ({err}); pass an array or tensor") from err


def _checked(
    plan: Any, ego_state: Any, agent_boxes: Any, agent_valid: Any, agent_labels: Any, scenes: Sequence[Any]
) -> tuple[np.ndarray, ...]:
    plan_np, state_np, boxes_np = (
        _array(plan, "plan"),
        _array(ego_state, "ego_state"),
        _array(agent_boxes, "agent_boxes"),
    )
    valid_np = np.asarray(
        agent_valid.cpu() if isinstance(agent_valid, torch.Tensor) else agent_valid, dtype=bool
    )
    labels_np = np.asarray(agent_labels.cpu() if isinstance(agent_labels, torch.Tensor) else agent_labels)
    batch = plan_np.shape[0] if plan_np.ndim == 3 else -1
    if plan_np.ndim != 3 or plan_np.shape[2] != 2:
        raise DataError(f"plan has shape {plan_np.shape}; expected [B, K, 2] waypoints every {PLAN_DT_S} s")
    bad = np.flatnonzero(~np.isfinite(plan_np).all(axis=(1, 2)))
    if bad.size:
        raise DataError(f"plan holds NaN or inf waypoints in samples {bad.tolist()}; fix the planner output")
    if state_np.shape != (batch, len(EGO_STATE_FIELDS)) or not np.isfinite(state_np).all():
        raise DataError(
            f"ego_state must be finite [{batch}, 3] {list(EGO_STATE_FIELDS)}, got {state_np.shape}"
        )
    keys = plan_np.shape[1] + 1
    if boxes_np.shape[:2] != (batch, keys) or boxes_np.ndim != 4 or boxes_np.shape[3] != 5:
        raise DataError(
            f"agent_boxes has shape {boxes_np.shape}; expected [{batch}, {keys}, N, 5] at t = 0 and every waypoint"
        )
    if valid_np.shape != boxes_np.shape[:3] or labels_np.shape != (batch, boxes_np.shape[2]):
        raise DataError(
            f"agent_valid {valid_np.shape} / agent_labels {labels_np.shape} must be {boxes_np.shape[:3]} / "
            f"{(batch, boxes_np.shape[2])}"
        )
    if not np.isfinite(boxes_np[valid_np]).all():
        raise DataError(
            "agent_boxes holds NaN or inf for valid agents; fix the annotations or mark them invalid"
        )
    if len(scenes) != batch:
        raise DataError(
            f"got {len(scenes)} scene geometries for {batch} plans; pass one (or None) per sample"
        )
    return (
        plan_np,
        state_np,
        np.where(valid_np[..., None], boxes_np, 0.0),
        valid_np,
        labels_np.astype(np.int64),
    )


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
    plan_np, state_np, boxes, valid, labels = _checked(
        plan, ego_state, agent_boxes, agent_valid, agent_labels, scenes
    )
    batch = plan_np.shape[0]
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
    sim = states[idx]
    usable = [s for s in scenes if s is not None and s.problem() is None]
    areas = ego_areas(sim, usable, config.ego)
    lines = pad_polylines([np.asarray(s.centreline, dtype=np.float64) for s in usable])
    nc = no_at_fault_collision(sim, tracks, areas.multiple_lanes | areas.off_road, config)
    dac = drivable_area_compliance(areas.off_road)
    risky = areas.multiple_lanes | areas.off_road | areas.in_intersection
    progress = progress_along(sim, lines, config)
    reference = reference_progress(sim[:, 0, State.SPEED], lines, tracks, config)
    values = {
        "nc": nc,
        "dac": dac,
        "ttc": time_to_collision(sim, tracks, risky, config),
        "ep": ego_progress(progress, reference, nc * dac, config),
        "comfort": comfort(sim, config),
        "ddc": driving_direction_compliance(sim, areas.oncoming, config),
        "progress_m": progress,
        "reference_progress_m": reference,
    }
    values["pdms"] = combine(values["nc"], dac, values["ttc"], values["ep"], values["comfort"], config)
    for key, value in values.items():
        out[key][idx] = value
    return out
