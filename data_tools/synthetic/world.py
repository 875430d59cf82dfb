"""Scene simulation: agents replay their motion plans, the ego drives by what its cameras can see.

The ego stays on its lane centre (so a curved road means turning) and sets its speed with the
Intelligent Driver Model (Treiber, Hennecke & Helbing 2000) on the nearest obstacle ahead in its
lane, with a desired speed capped by the curvature of the road ahead. Obstacles are what a driver
sees now: a vehicle in (or visibly moving into) the ego lane, a pedestrian on the carriageway who
is in or heading into the ego's path, and the stop line while the light shows red (or amber, when
the ego can still stop comfortably). Nothing hidden (a future braking, the scene's family) enters
the rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from data_tools.synthetic.geometry import wrap_angle
from data_tools.synthetic.scenario import KEYFRAME_DT_S, MAX_EGO_SPEED, ScenePlan
from data_tools.synthetic.traffic import EGO_FRONT_M, AgentSpec

#: Simulation step (s): 10 steps per keyframe keeps the explicit IDM integration smooth.
SIM_DT_S = 0.05
SUBSTEPS = round(KEYFRAME_DT_S / SIM_DT_S)

# IDM parameters: common urban values from Treiber & Kesting, "Traffic Flow Dynamics" (2013), Table 11.2.
EGO_DESIRED_SPEED = MAX_EGO_SPEED  # m/s (~47 km/h)
IDM_MAX_ACCEL = 1.5  # m/s^2
IDM_COMFORT_DECEL = 2.0  # m/s^2
IDM_MIN_GAP = 2.5  # m, bumper to bumper when stopped
IDM_HEADWAY = 1.2  # s
IDM_EXPONENT = 4
#: Hard limits: emergency braking (m/s^2) and the bumper gap (m) the ego never closes below.
EGO_MAX_DECEL = 6.0
EGO_SAFETY_GAP = 1.0
#: Curve speed: lateral acceleration (m/s^2) a comfortable driver accepts, and the preview horizon.
LATERAL_ACCEL_LIMIT = 2.0
CURVE_PREVIEW_S = 2.0
CURVE_PREVIEW_MIN_M = 10.0
CURVE_PREVIEW_SAMPLES = 16
#: Agents are removed this close (m) to either road end, where the world stops.
ROAD_END_MARGIN_M = 5.0
#: A vehicle is the ego's obstacle when its centre is this close (m, laterally) to the ego lane
#: centre, or within ``MERGING_OFFSET_M`` and moving towards it faster than ``MERGING_RATE``.
IN_LANE_OFFSET_M = 1.9
MERGING_OFFSET_M = 3.1
MERGING_RATE = 0.2  # m/s
#: A pedestrian is an obstacle when on the carriageway (or within ``CURB_REACH_M`` past the curb)
#: and either this close (m, laterally) to the ego lane centre (half the ego's width + half a
#: pedestrian + 0.6 m) or walking towards the ego lane; never on the sidewalk.
PEDESTRIAN_CONFLICT_M = 1.9
CURB_REACH_M = 0.6
#: At amber the ego stops when it can with at most this deceleration (m/s^2), else it goes on.
AMBER_STOP_DECEL = 3.5
#: Where (m past the stop line, as a virtual obstacle's rear) the ego holds for a red light; with
#: the IDM standstill gap it stops about a metre before the line.
STOP_LINE_HOLD_M = IDM_MIN_GAP - 1.0
#: Vehicles brake-light when decelerating harder than this (m/s^2) or standing still.
BRAKE_LIGHT_DECEL = 0.5
STANDSTILL_SPEED = 0.1


@dataclass(frozen=True, eq=False)
class AgentTrack:
    """One agent at the ``K`` keyframes: global ``xy [K, 2]``, ``yaw [K]``, ``speed [K]``,
    ``present [K]`` and ``lights [K]`` (brake / hazard lights lit; vehicles only)."""

    spec: AgentSpec
    xy: np.ndarray
    yaw: np.ndarray
    speed: np.ndarray
    present: np.ndarray
    lights: np.ndarray

    def center(self, k: int) -> np.ndarray:
        """Box centre ``[3]`` at keyframe ``k``: boxes stand on the flat ground (z = 0)."""
        return np.array([self.xy[k, 0], self.xy[k, 1], self.spec.wlh[2] / 2.0])


@dataclass(frozen=True, eq=False)
class SceneTrajectory:
    """A simulated scene at its keyframes: ego ``xy [K, 2]``, ``yaw [K]``, ``speed [K]``, agents,
    and the light's state per keyframe (empty without a light)."""

    plan: ScenePlan
    times: np.ndarray
    ego_xy: np.ndarray
    ego_yaw: np.ndarray
    ego_speed: np.ndarray
    agents: tuple[AgentTrack, ...]
    signal_states: tuple[str, ...] = ()


@dataclass(frozen=True, eq=False)
class _Motion:
    """An agent on the simulation grid: centre-line ``s [T]``, offset ``d [T]``, lateral rate
    ``[T]``, speed ``[T]``, existence ``[T]``."""

    s: np.ndarray
    d: np.ndarray
    rate: np.ndarray
    speed: np.ndarray
    exists: np.ndarray


def simulate(plan: ScenePlan) -> SceneTrajectory:
    """Run the scene on a ``SIM_DT_S`` grid and sample it at the 2 Hz keyframes."""
    steps = (plan.num_samples - 1) * SUBSTEPS + 1
    times = np.arange(steps) * SIM_DT_S
    motions = [_motion(plan, spec, times) for spec in plan.agents]
    ego_l, ego_v = _drive_ego(plan, times, motions)
    keys = slice(None, None, SUBSTEPS)
    d = plan.ego_offset
    s = plan.road.lane_s(ego_l[keys], d)
    xy, heading = plan.road.pose_at(s, d)
    agents = tuple(_track(plan, spec, m, times) for spec, m in zip(plan.agents, motions, strict=True))
    states = tuple(plan.signal.state(float(t)) for t in times[keys]) if plan.signal else ()
    return SceneTrajectory(plan, times[keys], xy, wrap_angle(heading), ego_v[keys], agents, states)


def agent_lane_position(spec: AgentSpec, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Arc length along the agent's offset curve ``[T]`` and its speed ``[T]`` at ``times``."""
    speed = spec.profile.speeds(times)
    steps = np.diff(times) * (speed[1:] + speed[:-1]) / 2.0  # trapezoid rule, exact for ramps
    travelled = np.concatenate([[0.0], np.cumsum(steps)])
    return spec.start + spec.direction * travelled, speed


def _motion(plan: ScenePlan, spec: AgentSpec, times: np.ndarray) -> _Motion:
    """Where ``spec`` is on its road at every simulation time."""
    road = plan.road_of(spec.road)
    lane_pos, speed = agent_lane_position(spec, times)
    s = road.lane_s(lane_pos, spec.offset)
    d = np.full(len(times), spec.offset)
    rate = np.zeros(len(times))
    if spec.lateral is not None:
        d = d + spec.lateral.offset(times)
        rate = spec.lateral.rate(times)
    exists = (s >= ROAD_END_MARGIN_M) & (s <= road.length - ROAD_END_MARGIN_M)
    exists &= (times >= spec.window[0]) & (times <= spec.window[1])
    return _Motion(s, d, rate, speed, exists)


def _track(plan: ScenePlan, spec: AgentSpec, motion: _Motion, times: np.ndarray) -> AgentTrack:
    """The agent's keyframe track."""
    road = plan.road_of(spec.road)
    keys = slice(None, None, SUBSTEPS)
    s, d = motion.s[keys], motion.d[keys]
    xy, heading = road.pose_at(s, d)
    turned = math.pi if spec.direction < 0 else 0.0
    speed = motion.speed[keys]
    # A vehicle changing lanes points along its path: atan(lateral rate / forward speed).
    steer = (
        np.arctan2(motion.rate[keys], np.maximum(speed, 1.0)) if spec.category.startswith("vehicle") else 0.0
    )
    yaw = wrap_angle(heading + turned + spec.facing + spec.direction * steer)
    accel = np.gradient(motion.speed, times)[keys]
    lights = spec.category.startswith("vehicle") & ((accel < -BRAKE_LIGHT_DECEL) | (speed < STANDSTILL_SPEED))
    return AgentTrack(spec, xy, yaw, speed, motion.exists[keys], np.asarray(lights, dtype=bool))


def _obstacles(plan: ScenePlan, motions: list[_Motion], times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rear arc length along the ego lane ``[A, T]`` (inf when not an obstacle) and speed ``[A, T]``
    of every main-road agent that is in, or visibly entering, the ego's path."""
    d_ego = plan.ego_offset
    rears = np.full((len(motions), len(times)), math.inf)
    speeds = np.zeros((len(motions), len(times)))
    for i, (spec, m) in enumerate(zip(plan.agents, motions, strict=True)):
        if spec.road != "main" or spec.direction < 0:
            continue
        gap = np.abs(m.d - d_ego)
        towards = -np.sign(m.d - d_ego) * m.rate
        if spec.category.startswith("vehicle"):
            relevant = (gap < IN_LANE_OFFSET_M) | ((gap < MERGING_OFFSET_M) & (towards > MERGING_RATE))
            half = spec.wlh[1] / 2.0
        elif spec.category.startswith("human"):
            on_road = np.abs(m.d) < plan.road.half_width + CURB_REACH_M
            relevant = on_road & ((gap < PEDESTRIAN_CONFLICT_M) | (towards > 0.0))
            half = spec.wlh[0] / 2.0
        else:
            continue
        relevant &= m.exists
        along = plan.road.lane_length(m.s, d_ego)
        rears[i] = np.where(relevant, along - half, math.inf)
        speeds[i] = m.speed if spec.category.startswith("vehicle") else 0.0
    return rears, speeds


def _drive_ego(plan: ScenePlan, times: np.ndarray, motions: list[_Motion]) -> tuple[np.ndarray, np.ndarray]:
    """Ego arc length along its lane ``[T]`` and speed ``[T]`` (explicit IDM integration)."""
    d = plan.ego_offset
    rears, speeds = _obstacles(plan, motions, times)
    stop_line = math.inf if plan.signal is None else float(plan.road.lane_length(plan.signal.stop_line_s, d))
    position = float(plan.road.lane_length(plan.ego_start_s, d))
    speed = plan.ego_speed
    stop_at_amber: bool | None = None
    positions, speeds_out = np.empty(len(times)), np.empty(len(times))
    for i, t in enumerate(times):
        positions[i], speeds_out[i] = position, speed
        front = position + EGO_FRONT_M
        ahead = rears[:, i] > front - 0.5
        rear = float(rears[ahead, i].min()) if ahead.any() else math.inf
        lead_speed = float(speeds[ahead, i][rears[ahead, i].argmin()]) if ahead.any() else 0.0
        if plan.signal is not None and front < stop_line:
            state = plan.signal.state(float(t))
            if state == "amber" and stop_at_amber is None:
                stop_at_amber = speed**2 / (2.0 * max(stop_line - front, 0.1)) <= AMBER_STOP_DECEL
            if state == "red" or (state == "amber" and stop_at_amber):
                hold = stop_line + STOP_LINE_HOLD_M
                if hold < rear:
                    rear, lead_speed = hold, 0.0
        gap = rear - front
        accel = idm_acceleration(speed, _curve_speed(plan, position, speed), gap, lead_speed)
        new_speed = max(0.0, speed + accel * SIM_DT_S)
        position += (speed + new_speed) / 2.0 * SIM_DT_S
        # Never closer than the safety gap to a vehicle, even if the explicit integration overshoots.
        if math.isfinite(rear):
            position = min(position, max(position - (speed + new_speed) / 2.0 * SIM_DT_S,
                                         rear - EGO_FRONT_M - EGO_SAFETY_GAP))  # fmt: skip
        speed = new_speed
    return positions, speeds_out


def idm_acceleration(speed: float, desired: float, gap: float, lead_speed: float) -> float:
    """IDM acceleration (m/s^2), clipped to ``[-EGO_MAX_DECEL, IDM_MAX_ACCEL]``.

    :param speed: ego speed (m/s).
    :param desired: desired free-road speed (m/s).
    :param gap: bumper-to-bumper distance to the lead (m); ``inf`` without a lead.
    :param lead_speed: lead speed (m/s).
    """
    free = 1.0 - (speed / max(desired, 1e-3)) ** IDM_EXPONENT
    interaction = 0.0
    if math.isfinite(gap):
        braking = speed * (speed - lead_speed) / (2.0 * math.sqrt(IDM_MAX_ACCEL * IDM_COMFORT_DECEL))
        wanted = IDM_MIN_GAP + max(0.0, speed * IDM_HEADWAY + braking)
        interaction = (wanted / max(gap, 0.1)) ** 2
    accel = IDM_MAX_ACCEL * (free - interaction)
    return float(np.clip(accel, -EGO_MAX_DECEL, IDM_MAX_ACCEL))


def _curve_speed(plan: ScenePlan, position: float, speed: float) -> float:
    """Desired speed (m/s): the free-road speed, capped so the sharpest bend ahead stays comfortable."""
    d = plan.ego_offset
    s_now = float(plan.road.lane_s(position, d))
    preview = max(CURVE_PREVIEW_MIN_M, speed * CURVE_PREVIEW_S)
    k = plan.road.curvature_at(s_now + np.linspace(0.0, preview, CURVE_PREVIEW_SAMPLES))
    lane_k = np.abs(k / (1.0 - k * d)).max()  # a parallel curve at offset d bends by k / (1 - k d)
    if lane_k <= 0.0:
        return EGO_DESIRED_SPEED
    return min(EGO_DESIRED_SPEED, math.sqrt(LATERAL_ACCEL_LIMIT / lane_k))
