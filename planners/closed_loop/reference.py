"""The rule-based reference for ego progress: an IDM driver along the lane centreline.

It plays the role of navsim's PDM-Closed trajectory (IDM along the route centreline, the leading
agent from the logged future): its progress is what EP divides by. Parameters: navsim v1.1
``metric_cache_processor.py`` (see :class:`~planners.closed_loop.config.ReferenceConfig`).
"""

from __future__ import annotations

import numpy as np

from planners.closed_loop.agents import AgentTracks
from planners.closed_loop.config import PDMConfig
from planners.closed_loop.geometry import ego_boxes, point_at_station, project_to_polyline, wrap_angle


def progress_along(states: np.ndarray, centrelines: np.ndarray, config: PDMConfig) -> np.ndarray:
    """Raw ego progress (navsim ``_calculate_progress``): station of the footprint centre at the
    last step minus at the first, on the centreline, floored at 0.

    :param states: float [B, T, S]; ``centrelines``: float [B, P, 2]. :return: float [B] metres.
    """
    centre = ego_boxes(states[:, [0, -1]], config.ego)[..., :2]  # [B, 2, 2]
    station, _ = project_to_polyline(centre, centrelines)
    return np.maximum(station[:, 1] - station[:, 0], 0.0)


def _project_valid(tracks: AgentTracks, centrelines: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Station, lateral offset and centreline heading at each valid agent box centre, float
    [B, T, N] each (invalid slots: station 0, lateral inf, heading 0). Only valid boxes are
    projected (most slots are padding); each value is what the batched projection gives.
    """
    batch, steps, slots = tracks.valid.shape
    centres = tracks.boxes[..., :2].reshape(batch, steps * slots, 2)
    valid = tracks.valid.reshape(batch, steps * slots)
    station, tangent = np.zeros((batch, steps * slots)), np.zeros((batch, steps * slots))
    lateral = np.full((batch, steps * slots), np.inf)
    for b in range(batch):
        idx = np.flatnonzero(valid[b])
        if idx.size:
            line = centrelines[b : b + 1]
            st, la = project_to_polyline(centres[b : b + 1, idx], line)
            station[b, idx], lateral[b, idx], tangent[b, idx] = st[0], la[0], point_at_station(line, st)[1][0]
    shape = (batch, steps, slots)
    return station.reshape(shape), lateral.reshape(shape), tangent.reshape(shape)


def reference_progress(
    ego_speed: np.ndarray, centrelines: np.ndarray, tracks: AgentTracks, config: PDMConfig
) -> np.ndarray:
    """Distance an IDM driver covers along the centreline over the horizon, following the nearest
    logged agent whose box overlaps the ego's lane corridor (ego width) ahead of it.

    :param ego_speed: float [B]; ``centrelines``: float [B, P, 2]; ``tracks``: over T steps.
    :return: float [B] metres.
    """
    ref, ego, dt = config.reference, config.ego, config.tracker.dt_s
    batch, steps, slots = tracks.valid.shape
    station, lateral, tangent = _project_valid(tracks, centrelines)
    on_path = tracks.valid & (np.abs(lateral) < (ego.width_m + tracks.boxes[..., 2]) / 2)
    along_speed = tracks.speed * np.maximum(np.cos(wrap_angle(tracks.boxes[..., 4] - tangent)), 0.0)
    start = project_to_polyline(np.array([[[ego.rear_axle_to_centre_m, 0.0]]]).repeat(batch, 0), centrelines)
    s = start[0][:, 0]
    s0, v = s.copy(), np.maximum(ego_speed, 0.0)
    for step in range(steps - 1):
        gap = station[:, step] - s[:, None] - (ego.length_m + tracks.boxes[:, step, :, 3]) / 2  # [B, N]
        ahead = on_path[:, step] & (station[:, step] > s[:, None])
        gap = np.where(ahead, gap, np.inf)
        lead = gap.argmin(axis=1)[:, None]
        lead_gap = np.take_along_axis(gap, lead, 1)[:, 0]
        lead_speed = np.take_along_axis(along_speed[:, step], lead, 1)[:, 0]
        free = 1.0 - (v / ref.target_speed_mps) ** ref.exponent
        desired = ref.min_gap_m + np.maximum(
            0.0, v * ref.headway_s + v * (v - lead_speed) / (2.0 * np.sqrt(ref.accel_max * ref.decel_max))
        )
        # batch_idm_policy.py clamps the gap at the minimum gap (no division by ~0) and clips the
        # acceleration; forward Euler as there.
        interaction = np.where(
            np.isfinite(lead_gap), (desired / np.maximum(lead_gap, ref.min_gap_m)) ** 2, 0.0
        )
        accel = np.clip(ref.accel_max * (free - interaction), -ref.decel_max, ref.accel_max)
        s = s + dt * v
        v = np.maximum(v + dt * accel, 0.0)
    return np.maximum(s - s0, 0.0)
