"""Scene simulation: agents replay their speed profiles, the ego drives by what its cameras can see.

The ego stays on its lane centre (so a curved road means turning) and sets its speed with the
Intelligent Driver Model (Treiber, Hennecke & Helbing 2000) on the lead vehicle in its lane, with a
desired speed capped by the curvature of the road ahead. Both inputs are visible in the images and
nothing hidden (the lead's future braking, the scene's label) enters the rule.
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


@dataclass(frozen=True, eq=False)
class AgentTrack:
    """One agent at the ``K`` keyframes: global ``xy [K, 2]``, ``yaw [K]``, ``speed [K]``, ``present [K]``."""

    spec: AgentSpec
    xy: np.ndarray
    yaw: np.ndarray
    speed: np.ndarray
    present: np.ndarray

    def center(self, k: int) -> np.ndarray:
        """Box centre ``[3]`` at keyframe ``k``: boxes stand on the flat ground (z = 0)."""
        return np.array([self.xy[k, 0], self.xy[k, 1], self.spec.wlh[2] / 2.0])


@dataclass(frozen=True, eq=False)
class SceneTrajectory:
    """A simulated scene at its keyframes: ego ``xy [K, 2]``, ``yaw [K]``, ``speed [K]`` and agents."""

    plan: ScenePlan
    times: np.ndarray
    ego_xy: np.ndarray
    ego_yaw: np.ndarray
    ego_speed: np.ndarray
    agents: tuple[AgentTrack, ...]


def simulate(plan: ScenePlan) -> SceneTrajectory:
    """Run the scene on a ``SIM_DT_S`` grid and sample it at the 2 Hz keyframes."""
    steps = (plan.num_samples - 1) * SUBSTEPS + 1
    times = np.arange(steps) * SIM_DT_S
    lead = next((a for a in plan.agents if a.is_lead), None)
    ego_l, ego_v = _drive_ego(plan, times, lead)
    keys = slice(None, None, SUBSTEPS)
    d = plan.ego_offset
    s = plan.road.lane_s(ego_l[keys], d)
    xy, heading = plan.road.pose_at(s, d)
    agents = tuple(_track(plan, spec, times)[1] for spec in plan.agents)
    return SceneTrajectory(plan, times[keys], xy, wrap_angle(heading), ego_v[keys], agents)


def agent_lane_position(spec: AgentSpec, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Arc length along the agent's offset curve ``[T]`` and its speed ``[T]`` at ``times``."""
    speed = spec.profile.speeds(times)
    steps = np.diff(times) * (speed[1:] + speed[:-1]) / 2.0  # trapezoid rule, exact for ramps
    travelled = np.concatenate([[0.0], np.cumsum(steps)])
    return spec.start + spec.direction * travelled, speed


def _track(plan: ScenePlan, spec: AgentSpec, times: np.ndarray) -> tuple[np.ndarray, AgentTrack]:
    """The agent's arc length on the simulation grid and its keyframe track."""
    lane_pos, speed = agent_lane_position(spec, times)
    keys = slice(None, None, SUBSTEPS)
    s = plan.road.lane_s(lane_pos[keys], spec.offset)
    xy, heading = plan.road.pose_at(s, spec.offset)
    turned = math.pi if spec.direction < 0 else 0.0
    yaw = wrap_angle(heading + turned + spec.facing)
    present = (s >= ROAD_END_MARGIN_M) & (s <= plan.road.length - ROAD_END_MARGIN_M)
    return lane_pos, AgentTrack(spec, xy, yaw, speed[keys], present)


def _drive_ego(plan: ScenePlan, times: np.ndarray, lead: AgentSpec | None) -> tuple[np.ndarray, np.ndarray]:
    """Ego arc length along its lane ``[T]`` and speed ``[T]`` (explicit IDM integration)."""
    d = plan.ego_offset
    lead_rear, lead_speed = np.full(len(times), math.inf), np.zeros(len(times))  # a free road
    if lead is not None:
        lead_pos, lead_speed = agent_lane_position(lead, times)
        lead_rear = lead_pos - lead.wlh[1] / 2.0
    position = float(plan.road.lane_length(plan.ego_start_s, d))
    speed = plan.ego_speed
    positions, speeds = np.empty(len(times)), np.empty(len(times))
    for i in range(len(times)):
        positions[i], speeds[i] = position, speed
        gap = float(lead_rear[i]) - position - EGO_FRONT_M
        accel = idm_acceleration(speed, _curve_speed(plan, position, speed), gap, float(lead_speed[i]))
        new_speed = max(0.0, speed + accel * SIM_DT_S)
        position += (speed + new_speed) / 2.0 * SIM_DT_S
        # Never closer than the safety gap, even if the explicit integration overshoots.
        next_rear = float(lead_rear[min(i + 1, len(times) - 1)])
        position = min(position, next_rear - EGO_FRONT_M - EGO_SAFETY_GAP)
        speed = new_speed
    return positions, speeds


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
