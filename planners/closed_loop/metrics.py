"""The PDM sub-scores as pure, vectorised functions of simulated ego states and replayed agents.

Each re-implements the matching ``_calculate_*`` of navsim v1.1 ``pdm_scorer.py`` (read, not
copied) on arrays; map facts come in as per-step boolean masks (see :mod:`.areas`). Shapes:
``B`` samples, ``T`` steps at 10 Hz (t = 0 included), ``N`` agent slots, ``S = len(State)``.
"""

from __future__ import annotations

import math

import numpy as np

from planners.closed_loop.agents import AgentTracks
from planners.closed_loop.config import ComfortBounds, EgoGeometry, PDMConfig, State
from planners.closed_loop.geometry import ego_boxes, front_bumpers, relative_angle, unit
from planners.metrics import boxes_overlap

#: Names of the comfort bounds, in the column order of :func:`comfort_checks`.
COMFORT_CHECKS: tuple[str, ...] = ("lon_accel", "lat_accel", "jerk", "lon_jerk", "yaw_accel", "yaw_rate")


def _first_events(events: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per agent: does any event happen, and the index of the first one.

    :param events: bool [B, E, N] in time order. :return: has bool [B, N], first int [B, N].
    """
    return events.any(axis=1), events.argmax(axis=1)


def _at(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """values[b, index[b, n], n]. :param values: [B, E, N, ...]; ``index``: int [B, N]."""
    idx = index.reshape(index.shape[0], 1, index.shape[1], *([1] * (values.ndim - 3)))
    return np.take_along_axis(values, idx, axis=1)[:, 0]


def initial_overlaps(states: np.ndarray, tracks: AgentTracks, ego: EgoGeometry) -> np.ndarray:
    """bool [B, N]: agents that already overlap the ego at t = 0; navsim ignores them throughout."""
    ego_box = ego_boxes(states[:, 0], ego)[:, None]  # [B, 1, 5]
    return boxes_overlap(ego_box, tracks.boxes[:, 0]) & tracks.valid[:, 0]


def no_at_fault_collision(
    states: np.ndarray, tracks: AgentTracks, lane_or_road_violation: np.ndarray, config: PDMConfig
) -> np.ndarray:
    """NC: 0 for an at-fault hit of an agent, 0.5 of a static object, else 1 (nuPlan's rule).

    The first contact with each agent decides its type: ego stopped (not at fault), agent stopped
    (at fault), agent behind the ego, > 150 deg off its heading (not at fault), agent touching
    the front bumper (at fault), else lateral (at fault only while the ego straddles lanes or
    leaves the drivable area). An agent met not at fault is ignored afterwards.

    :param states: float [B, T, S]; ``tracks``: agents over the same T steps.
    :param lane_or_road_violation: bool [B, T] ego in multiple lanes or off the drivable area.
    :return: float [B] in {0, 0.5, 1}.
    """
    ego_box = ego_boxes(states, config.ego)[:, :, None]  # [B, T, 1, 5]
    hits = boxes_overlap(ego_box, tracks.boxes) & tracks.valid
    hits &= ~initial_overlaps(states, tracks, config.ego)[:, None]
    has, first = _first_events(hits)  # [B, N]
    state = _at(np.broadcast_to(states[:, :, None], (*hits.shape, states.shape[-1])), first)  # [B, N, S]
    box = _at(tracks.boxes, first)  # [B, N, 5]
    ego_stopped = state[..., State.SPEED] <= config.collision_stopped_speed_mps
    agent_stopped = ~tracks.is_agent | (_at(tracks.speed, first) <= config.collision_stopped_speed_mps)
    angle = relative_angle(state[..., [State.X, State.Y]], state[..., State.HEADING], box[..., :2])
    behind = angle > math.radians(config.behind_angle_deg)
    front = boxes_overlap(front_bumpers(state, config.ego), box)
    lateral_fault = _at(np.broadcast_to(lane_or_road_violation[..., None], hits.shape), first)
    fault = has & ~ego_stopped & (agent_stopped | (~behind & (front | lateral_fault)))
    penalty = np.where(tracks.is_agent, 0.0, config.static_object_penalty)
    return np.where(fault, penalty, 1.0).min(axis=1, initial=1.0)


def time_to_collision(
    states: np.ndarray, tracks: AgentTracks, risky_area: np.ndarray, config: PDMConfig
) -> np.ndarray:
    """TTC: 0 when the ego, projected at constant velocity 0, 0.3, 0.6 or 0.9 s ahead, would hit an
    agent ahead of it (within 30 deg of its heading), or one not behind it while the ego straddles
    lanes, is off-road or in an intersection. The ego must be moving (>= 5 mm/s); as for NC the
    first contact with each agent decides, and agents met harmlessly are ignored afterwards.
    Steps whose projection would pass the last logged step are not checked (navsim v2 does the same).

    :param states: float [B, T, S]; ``tracks``: agents over the same T steps.
    :param risky_area: bool [B, T] multiple lanes, non-drivable area or intersection.
    :return: float [B] in {0, 1}.
    """
    dt = config.tracker.dt_s
    offsets = [round(s / dt) for s in config.ttc_projections_s]  # steps
    steps = states.shape[1] - max(offsets)
    speed, heading = states[:, :steps, State.SPEED], states[:, :steps, State.HEADING]
    boxes = ego_boxes(states[:, :steps], config.ego)  # [B, T', 5]
    shift = (speed[..., None] * unit(heading))[:, :, None] * (np.array(offsets) * dt)[None, None, :, None]
    projected = np.concatenate(
        [boxes[:, :, None, :2] + shift, np.broadcast_to(boxes[:, :, None, 2:], (*shift.shape[:3], 3))],
        axis=-1,
    )  # [B, T', D, 5]
    when = np.arange(steps)[:, None] + np.array(offsets)[None]  # [T', D] agent step
    agents = tracks.boxes[:, when]  # [B, T', D, N, 5]
    hits = boxes_overlap(projected[:, :, :, None], agents) & tracks.valid[:, when]
    hits &= (speed >= config.ttc_stopped_speed_mps)[:, :, None, None]
    hits &= ~initial_overlaps(states, tracks, config.ego)[:, None, None]
    batch, _, depth, slots = hits.shape
    has, first = _first_events(hits.reshape(batch, steps * depth, slots))
    step = first // depth  # [B, N] ego step of the first contact
    rear = np.take_along_axis(states, step[..., None], axis=1)  # [B, N, S] ego at each first contact
    agent_xy = _at(agents.reshape(batch, steps * depth, slots, 5), first)[..., :2]
    angle = relative_angle(rear[..., [State.X, State.Y]], rear[..., State.HEADING], agent_xy)
    ahead = angle < math.radians(config.ahead_angle_deg)
    behind = angle > math.radians(config.behind_angle_deg)
    risky = np.take_along_axis(risky_area, step, axis=1)
    fault = has & (ahead | (risky & ~behind))
    return np.where(fault.any(axis=1), 0.0, 1.0)


def drivable_area_compliance(off_road: np.ndarray) -> np.ndarray:
    """DAC: 0 if any footprint corner leaves the drivable area at any step, else 1.

    :param off_road: bool [B, T] some corner outside the drivable area. :return: float [B].
    """
    return np.where(off_road.any(axis=1), 0.0, 1.0)


def driving_direction_compliance(states: np.ndarray, oncoming: np.ndarray, config: PDMConfig) -> np.ndarray:
    """DDC: the most distance the ego centre covers against traffic within any 1 s window:
    < 2 m -> 1, < 6 m -> 0.5, else 0.

    :param states: float [B, T, S]; ``oncoming``: bool [B, T] centre in oncoming traffic (not in an
        intersection). :return: float [B].
    """
    centre = ego_boxes(states, config.ego)[..., :2]
    moved = np.concatenate(
        [np.zeros_like(centre[:, :1, 0]), np.linalg.norm(np.diff(centre, axis=1), axis=-1)], 1
    )
    moved = np.where(oncoming, moved, 0.0)
    window = round(config.driving_direction_horizon_s / config.tracker.dt_s) + 1  # steps t - h .. t
    total = np.cumsum(moved, axis=1)
    windowed = total - np.concatenate([np.zeros_like(total[:, :window]), total[:, :-window]], axis=1)
    worst = windowed.max(axis=1)
    return np.where(
        worst < config.driving_direction_compliance_m,
        1.0,
        np.where(worst < config.driving_direction_violation_m, 0.5, 0.0),
    )


def ego_progress(
    progress_m: np.ndarray, reference_m: np.ndarray, multiplier: np.ndarray, config: PDMConfig
) -> np.ndarray:
    """EP: progress along the centreline relative to the rule-based reference (navsim v1.1).

    p = progress x NC x DAC; EP = p / max(p, reference) when that maximum exceeds 5 m, else 1
    (0 when NC x DAC = 0).

    :param progress_m, reference_m, multiplier: float [B]. :return: float [B] in [0, 1].
    """
    masked = np.maximum(progress_m, 0.0) * multiplier
    best = np.maximum(masked, np.maximum(reference_m, 0.0))
    small = best <= config.progress_distance_threshold_m
    return np.where(small, (multiplier > 0).astype(float), masked / np.where(small, 1.0, best))


def savgol_matrix(n: int, window: int, order: int, deriv: int, dt: float) -> np.ndarray:
    """Savitzky-Golay filter as a matrix: ``y @ M.T`` fits a polynomial of ``order`` to each
    ``window`` samples around every point (the first / last window at the edges, as scipy's
    ``mode="interp"``) and returns its ``deriv``-th derivative there.

    :return: float [n, n].
    """
    window = min(window, n)
    if order >= window:
        raise ValueError(f"Savitzky-Golay order {order} needs a window > {order}, got {window}")
    matrix = np.zeros((n, n))
    for i in range(n):
        start = min(max(i - window // 2, 0), n - window)
        offsets = (np.arange(window) + start - i) * dt  # sample times relative to point i
        fit = np.linalg.pinv(np.vander(offsets, order + 1, increasing=True))  # [order+1, window]
        matrix[i, start : start + window] = math.factorial(deriv) * fit[deriv] if deriv <= order else 0.0
    return matrix


def comfort_checks(states: np.ndarray, bounds: ComfortBounds, dt: float) -> np.ndarray:
    """Which comfort bounds each rollout keeps, columns named by ``COMFORT_CHECKS``.

    Accelerations (longitudinal from the state, lateral = speed x yaw rate) are smoothed with an
    8-sample Savitzky-Golay filter; jerks are their 15-sample derivatives (magnitude of the
    (lon, lat) vector, and longitudinal); yaw rate and yaw acceleration are 5-sample derivatives
    of the unwrapped heading. A bound holds when the value stays strictly inside it at every step.

    :param states: float [B, T, S]. :return: bool [B, 6].
    """
    steps = states.shape[1]
    smooth = savgol_matrix(steps, bounds.accel_window, 2, 0, dt)
    lon = states[..., State.ACCEL] @ smooth.T
    lat = (states[..., State.SPEED] * states[..., State.YAW_RATE]) @ smooth.T
    jerk = savgol_matrix(steps, bounds.jerk_window, 2, 1, dt)
    magnitude = np.hypot(states[..., State.ACCEL], states[..., State.SPEED] * states[..., State.YAW_RATE])
    heading = np.unwrap(states[..., State.HEADING], axis=1)
    yaw_rate = heading @ savgol_matrix(steps, bounds.yaw_window, 2, 1, dt).T
    yaw_accel = heading @ savgol_matrix(steps, bounds.yaw_window, 3, 2, dt).T

    def inside(values: np.ndarray, low: float, high: float) -> np.ndarray:
        return ((values > low) & (values < high)).all(axis=1)

    return np.stack(
        [
            inside(lon, bounds.min_lon_accel, bounds.max_lon_accel),
            inside(lat, -bounds.max_abs_lat_accel, bounds.max_abs_lat_accel),
            inside((magnitude @ smooth.T) @ jerk.T, -bounds.max_abs_jerk, bounds.max_abs_jerk),
            inside(lon @ jerk.T, -bounds.max_abs_lon_jerk, bounds.max_abs_lon_jerk),
            inside(yaw_accel, -bounds.max_abs_yaw_accel, bounds.max_abs_yaw_accel),
            inside(yaw_rate, -bounds.max_abs_yaw_rate, bounds.max_abs_yaw_rate),
        ],
        axis=1,
    )


def comfort(states: np.ndarray, config: PDMConfig) -> np.ndarray:
    """C: 1 if every comfort bound holds, else 0. :param states: float [B, T, S]. :return: float [B]."""
    return comfort_checks(states, config.comfort, config.tracker.dt_s).all(axis=1).astype(float)


def combine(
    nc: np.ndarray, dac: np.ndarray, ttc: np.ndarray, ep: np.ndarray, c: np.ndarray, config: PDMConfig
) -> np.ndarray:
    """PDMS = NC x DAC x (5 TTC + 5 EP + 2 C) / 12 with the configured weights. :return: float [B]."""
    weights = config.ttc_weight + config.progress_weight + config.comfort_weight
    weighted = config.ttc_weight * ttc + config.progress_weight * ep + config.comfort_weight * c
    return nc * dac * weighted / weights
