"""Non-reactive rollout: a kinematic bicycle at 10 Hz tracks the planned waypoints.

Motion model as navsim v1.1 ``pdm_planner/simulation/batch_kinematic_bicycle.py`` (rear-axle
reference, first-order lag on acceleration and steering, forward Euler). The controller is ours,
documented in ``docs/CLOSED-LOOP.md``: navsim's one-step longitudinal LQR law on the speed 1 s
ahead (``batch_lqr.py``) with its stopping P controller, and pure pursuit for steering.
Everything is batched over samples; the only Python loop is over the 30 time steps.
"""

from __future__ import annotations

import numpy as np

from planners.closed_loop.config import EgoGeometry, State, TrackerConfig
from planners.closed_loop.geometry import point_at_station, project_to_polyline, unit, wrap_angle
from vla_autoprune.data.schema import KEYFRAME_DT_S

#: Planned waypoints' spacing (2 Hz keyframes).
PLAN_DT_S = KEYFRAME_DT_S


def reference_path(plan: np.ndarray, dt_s: float, plan_dt_s: float = PLAN_DT_S) -> np.ndarray:
    """The plan resampled at ``dt_s`` by linear interpolation, the origin (t = 0) prepended.

    :param plan: float [B, K, 2] waypoints at t = plan_dt (k + 1), ego frame (rear axle).
    :return: float [B, T, 2], T = K plan_dt / dt + 1.
    """
    batch, steps = plan.shape[:2]
    knots = np.concatenate([np.zeros((batch, 1, 2)), plan], axis=1)  # [B, K+1, 2]
    times = np.arange(round(steps * plan_dt_s / dt_s) + 1) * dt_s  # [T]
    pos = times / plan_dt_s
    low = np.minimum(np.floor(pos + 1e-9).astype(int), steps - 1)
    frac = (pos - low)[None, :, None]
    return knots[:, low] * (1 - frac) + knots[:, low + 1] * frac


def reference_speeds(path: np.ndarray, dt_s: float) -> np.ndarray:
    """Forward-difference speeds of a resampled path (the last step repeats).

    :param path: float [B, T, 2]. :return: float [B, T] m/s.
    """
    speed = np.linalg.norm(np.diff(path, axis=1), axis=-1) / dt_s  # [B, T-1]
    return np.concatenate([speed, speed[:, -1:]], axis=1)


def initial_states(
    ego_speed: np.ndarray,
    ego_accel: np.ndarray,
    ego_yaw_rate: np.ndarray,
    ego: EgoGeometry,
    tracker: TrackerConfig,
) -> np.ndarray:
    """Ego at the origin heading +x, steering that matches the yaw rate.

    :param ego_speed, ego_accel, ego_yaw_rate: float [B]. :return: float [B, len(State)].
    """
    states = np.zeros((len(ego_speed), len(State)))
    states[:, State.SPEED] = np.maximum(ego_speed, 0.0)
    states[:, State.ACCEL] = ego_accel
    moving = states[:, State.SPEED] > tracker.stopping_speed_mps
    curvature = np.where(moving, ego_yaw_rate / np.maximum(states[:, State.SPEED], 1e-9), 0.0)
    states[:, State.STEERING] = np.clip(
        np.arctan(curvature * ego.wheel_base_m), -tracker.max_steering_rad, tracker.max_steering_rad
    )
    states[:, State.YAW_RATE] = np.where(moving, ego_yaw_rate, 0.0)
    return states


def _commands(
    states: np.ndarray,
    step: int,
    path: np.ndarray,
    speeds: np.ndarray,
    ego: EgoGeometry,
    tracker: TrackerConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """Acceleration and target steering angle for every sample at one step. :return: float [B] each."""
    horizon = round(tracker.speed_lookahead_s / tracker.dt_s)
    v = states[:, State.SPEED]
    position, heading = states[:, None, [State.X, State.Y]], states[:, State.HEADING]
    station, _ = project_to_polyline(position, path)  # [B, 1]
    planned = np.linalg.norm(np.diff(path[:, : step + 1], axis=1), axis=-1).sum(1)  # [B] where the plan is
    # Ours: a proportional station term, so that speed errors do not accumulate into position errors.
    v_ref = speeds[:, min(step + horizon, speeds.shape[1] - 1)] + tracker.station_gain * (
        planned - station[:, 0]
    )
    # navsim batch_lqr.py: with the acceleration held over the lookahead H, v_H = v + H a; the
    # one-step LQR minimiser of q (v_H - v_ref)^2 + r a^2 is a = q H (v_ref - v) / (q H^2 + r).
    lookahead = horizon * tracker.dt_s
    q, r = tracker.q_longitudinal, tracker.r_longitudinal
    accel = q * lookahead * (v_ref - v) / (q * lookahead**2 + r)
    stopping = (v_ref <= tracker.stopping_speed_mps) & (v <= tracker.stopping_speed_mps)
    accel = np.where(stopping, -tracker.stopping_gain * (v - v_ref), accel)
    # Pure pursuit: steer the rear axle onto the point one lookahead further along the path.
    reach = np.maximum(tracker.min_lookahead_m, tracker.lookahead_time_s * v)  # [B]
    target, _ = point_at_station(path, station + reach[:, None])
    delta = target[:, 0] - position[:, 0]
    alpha = np.arctan2(delta[:, 1], delta[:, 0]) - heading
    distance = np.maximum(np.linalg.norm(delta, axis=-1), 1e-6)
    steer = np.arctan(2.0 * ego.wheel_base_m * np.sin(alpha) / distance)
    path_length = np.linalg.norm(np.diff(path, axis=1), axis=-1).sum(1)
    steer = np.where(path_length < 1e-3, 0.0, steer)  # a standing plan: keep the wheels straight
    return accel, np.where(stopping, states[:, State.STEERING], steer)


def propagate(
    states: np.ndarray, accel_cmd: np.ndarray, steer_cmd: np.ndarray, ego: EgoGeometry, tracker: TrackerConfig
) -> np.ndarray:
    """One step of the kinematic bicycle with lagged acceleration and steering.

    :param states: float [B, len(State)]; ``accel_cmd``, ``steer_cmd``: float [B].
    :return: float [B, len(State)].
    """
    dt = tracker.dt_s
    accel = states[:, State.ACCEL] + dt / (dt + tracker.accel_time_constant_s) * (
        accel_cmd - states[:, State.ACCEL]
    )
    steering = states[:, State.STEERING]
    steer_target = np.clip(steer_cmd, -tracker.max_steering_rad, tracker.max_steering_rad)
    new_steering = steering + dt / (dt + tracker.steering_time_constant_s) * (steer_target - steering)
    v, heading = states[:, State.SPEED], states[:, State.HEADING]
    out = np.empty_like(states)
    out[:, [State.X, State.Y]] = states[:, [State.X, State.Y]] + dt * v[:, None] * unit(heading)
    out[:, State.HEADING] = wrap_angle(heading + dt * v * np.tan(steering) / ego.wheel_base_m)
    # No reversing: a plan that backs up is tracked as a stop.
    out[:, State.SPEED] = np.maximum(v + dt * accel, 0.0)
    out[:, State.ACCEL] = np.where(v + dt * accel > 0.0, accel, -v / dt)
    out[:, State.STEERING] = np.clip(new_steering, -tracker.max_steering_rad, tracker.max_steering_rad)
    out[:, State.YAW_RATE] = out[:, State.SPEED] * np.tan(out[:, State.STEERING]) / ego.wheel_base_m
    return out


def rollout(
    plan: np.ndarray,
    ego_speed: np.ndarray,
    ego_accel: np.ndarray,
    ego_yaw_rate: np.ndarray,
    ego: EgoGeometry | None = None,
    tracker: TrackerConfig | None = None,
) -> np.ndarray:
    """Simulate the ego tracking each plan for the plan's horizon.

    :param plan: float [B, K, 2] waypoints at t = 0.5 (k + 1) s, ego frame (x forward, y left).
    :param ego_speed, ego_accel, ego_yaw_rate: float [B] the ego's state at t = 0.
    :return: float64 [B, T, len(State)] states at t = 0, 0.1, ..., 0.5 K s (T = 5 K + 1).
    """
    ego, tracker = ego or EgoGeometry(), tracker or TrackerConfig()
    path = reference_path(np.asarray(plan, dtype=np.float64), tracker.dt_s)  # [B, T, 2]
    speeds = reference_speeds(path, tracker.dt_s)
    states = [initial_states(ego_speed, ego_accel, ego_yaw_rate, ego, tracker)]
    for step in range(path.shape[1] - 1):
        accel, steer = _commands(states[-1], step, path, speeds, ego, tracker)
        states.append(propagate(states[-1], accel, steer, ego, tracker))
    return np.stack(states, axis=1)
