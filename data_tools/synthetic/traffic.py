"""Other road users: vehicles in every lane, pedestrians and cones on the sidewalks.

Agents follow curves parallel to the road with open-loop speed profiles; only the ego reacts to
others (see :mod:`data_tools.synthetic.world`). Vehicles sharing a lane share its speed, so they
never run into each other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from data_tools.synthetic.road import Road

#: Ego footprint as the planning metrics model it (METRICS.md): 4.084 m long, centred 0.5 m ahead of
#: the ego pose, so its front bumper is this far ahead of the pose.
EGO_FRONT_M = 0.5 + 4.084 / 2.0

#: Box size ranges (m) per category as (width, length, height) low and high ends, around typical
#: nuScenes sizes (e.g. car ~ 1.9 x 4.6 x 1.7, adult ~ 0.67 x 0.73 x 1.77).
SIZE_RANGES: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "vehicle.car": ((1.75, 4.2, 1.45), (2.0, 4.9, 1.75)),
    "vehicle.truck": ((2.4, 6.5, 2.8), (2.6, 8.5, 3.4)),
    "vehicle.bus.rigid": ((2.8, 10.5, 3.2), (3.0, 12.0, 3.5)),
    "human.pedestrian.adult": ((0.55, 0.6, 1.6), (0.75, 0.8, 1.9)),
    "human.pedestrian.child": ((0.4, 0.4, 1.0), (0.55, 0.55, 1.35)),
    "movable_object.trafficcone": ((0.35, 0.35, 0.6), (0.45, 0.45, 0.8)),
}
VEHICLE_MIX: tuple[tuple[str, float], ...] = (
    ("vehicle.car", 0.8),
    ("vehicle.truck", 0.13),
    ("vehicle.bus.rigid", 0.07),
)
CHILD_SHARE = 0.2
STANDING_SHARE = 0.3
WALK_SPEED = (0.8, 1.6)  # m/s
LANE_SPEED = (8.0, 13.0)  # m/s of free-flowing traffic in the other lanes
#: Other-lane vehicles: count per lane, first position relative to the ego (m), bumper spacing (m).
SAME_WAY_COUNT, SAME_WAY_FIRST, SAME_WAY_GAP = (1, 4), (-35.0, 10.0), (18.0, 35.0)
ONCOMING_COUNT, ONCOMING_FIRST, ONCOMING_GAP = (2, 5), (15.0, 40.0), (20.0, 45.0)
PEDESTRIAN_COUNT, PEDESTRIAN_SPAN = (2, 7), (-20.0, 70.0)
#: Pedestrians keep this far (m) from both sidewalk edges; cones stand this far past the curb.
SIDEWALK_EDGE_CLEARANCE = 0.5
CONE_CURB_OFFSET = (0.25, 0.45)
CONE_COUNT = (0, 3)
#: Lead vehicle behaviours. Cruise: plain car following, the lead at about the ego's speed.
CRUISE_SPEED_RATIO = (0.95, 1.05)
#: Leads start at 85-100% of the ego's speed (cruising ones at the ratio above); headway gap =
#: base + speed * time headway.
BRAKE_SPEED_RATIO = (0.85, 1.0)
BRAKE_GAP_BASE, BRAKE_HEADWAY = 8.0, (0.9, 1.4)
#: Braking starts about the scene start (s; negative: already braking), so the brake lights show
#: at (nearly) every keyframe whose future holds the braking.
BRAKE_START = (-1.0, 0.5)
#: Hard braking to a stop (m/s^2): an emergency stop of a car is 6-8 m/s^2, a firm one 3-4.
BRAKE_DECEL = (3.0, 6.0)
#: A vehicle stopped in the ego lane (broken down, unloading): its rear this far (m) ahead.
STOPPED_GAP = (15.0, 45.0)


#: Lead behaviours whose lead is the scenario's conflict object.
CONFLICT_LEADS = frozenset({"brake", "stopped"})


@dataclass(frozen=True)
class SpeedProfile:
    """Longitudinal speed over time: ``initial`` until ``brake_time``, then ramps down to ``final``.

    :param initial: speed (m/s) before braking.
    :param brake_time: seconds after the scene start at which braking begins (inf: never).
    :param decel: braking deceleration (m/s^2, positive).
    :param final: speed (m/s) held after braking.
    """

    initial: float
    brake_time: float = math.inf
    decel: float = 0.0
    final: float = 0.0

    def speeds(self, times: np.ndarray) -> np.ndarray:
        """Speed (m/s) at each of ``times [T]`` (seconds)."""
        braking = np.maximum(np.asarray(times) - self.brake_time, 0.0) * self.decel
        return np.maximum(self.initial - braking, min(self.final, self.initial))


@dataclass(frozen=True)
class KnotProfile:
    """Speed (m/s) interpolated linearly between knots ``(time s, speed m/s)``, held outside them."""

    knots: tuple[tuple[float, float], ...]

    def speeds(self, times: np.ndarray) -> np.ndarray:
        """Speed (m/s) at each of ``times [T]`` (seconds)."""
        t, v = zip(*self.knots, strict=True)
        return np.interp(np.asarray(times, dtype=np.float64), t, v)


@dataclass(frozen=True)
class LateralMove:
    """A smooth change of lateral road offset: ``delta`` m over ``duration`` s from ``start`` s.

    The offset follows a half-cosine ramp, so the lateral speed is zero at both ends (a lane change
    or a pedestrian crossing at a steady walk both fit it well enough at 2 Hz).
    """

    start: float
    duration: float
    delta: float

    def offset(self, times: np.ndarray) -> np.ndarray:
        """Offset change (m) at ``times [T]``: 0 before ``start``, ``delta`` after the move."""
        u = np.clip((np.asarray(times, dtype=np.float64) - self.start) / self.duration, 0.0, 1.0)
        return self.delta * (1.0 - np.cos(np.pi * u)) / 2.0

    def rate(self, times: np.ndarray) -> np.ndarray:
        """Lateral speed (m/s, signed like ``delta``) at ``times [T]``."""
        u = (np.asarray(times, dtype=np.float64) - self.start) / self.duration
        inside = (u >= 0.0) & (u <= 1.0)
        return np.where(inside, self.delta * np.pi / (2.0 * self.duration) * np.sin(np.pi * u), 0.0)


@dataclass(frozen=True)
class AgentSpec:
    """One agent: a box that moves along a curve parallel to the road centre line.

    :param category: nuScenes category name.
    :param wlh: box size (m) as nuScenes stores it: width, length, height.
    :param offset: lateral road offset ``d`` (m) of the curve it follows.
    :param direction: +1 travels towards +s, -1 towards -s.
    :param start: arc length (m) along its offset curve at t = 0.
    :param profile: speed over time.
    :param facing: heading relative to its travel direction (rad); non-zero for standing pedestrians.
    :param is_lead: True for the vehicle ahead of the ego in the ego lane.
    :param lateral: a change of lateral offset over time (lane change, crossing the road), or None.
    :param road: ``main`` (the scene's road) or ``cross`` (the crossing road of an intersection).
    :param window: ``(from, to)`` seconds during which the agent exists (cross traffic comes and goes).
    :param conflict: True for the agent a scenario puts in the ego's way (recorded in the side file).
    """

    category: str
    wlh: tuple[float, float, float]
    offset: float
    direction: int
    start: float
    profile: SpeedProfile | KnotProfile
    facing: float = 0.0
    is_lead: bool = False
    lateral: LateralMove | None = None
    road: str = "main"
    window: tuple[float, float] = (-math.inf, math.inf)
    conflict: bool = False


def spawn_agents(
    rng: np.random.Generator,
    road: Road,
    ego_lane: int,
    ego_start_s: float,
    ego_speed: float,
    lead: str,
    duration: float,
    skip_lanes: frozenset[int] = frozenset(),
) -> tuple[AgentSpec, ...]:
    """All agents of a scene: the lead (per ``lead`` behaviour), traffic in the other lanes but
    ``skip_lanes``, pedestrians and cones."""
    agents: list[AgentSpec] = []
    lead_agent = _lead_vehicle(rng, road, ego_lane, ego_start_s, ego_speed, lead, duration)
    if lead_agent is not None:
        agents.append(lead_agent)
    for lane, forward in enumerate(road.lane_forward):
        if lane != ego_lane and lane not in skip_lanes:
            agents.extend(_lane_traffic(rng, road, lane, forward, ego_start_s))
    agents.extend(_pedestrians(rng, road, ego_start_s))
    agents.extend(_cones(rng, road, ego_start_s))
    return tuple(agents)


def draw_size(rng: np.random.Generator, category: str) -> tuple[float, float, float]:
    """A random ``(w, l, h)`` within the category's size range."""
    low, high = SIZE_RANGES[category]
    width, length, height = (round(float(rng.uniform(lo, hi)), 3) for lo, hi in zip(low, high, strict=True))
    return width, length, height


def _vehicle_category(rng: np.random.Generator) -> str:
    names = [name for name, _ in VEHICLE_MIX]
    return names[int(rng.choice(len(names), p=[p for _, p in VEHICLE_MIX]))]


def _lead_vehicle(
    rng: np.random.Generator,
    road: Road,
    ego_lane: int,
    ego_start_s: float,
    ego_speed: float,
    behaviour: str,
    duration: float,
) -> AgentSpec | None:
    """The vehicle ahead in the ego lane, or None for a free road."""
    if behaviour == "none":
        return None
    category = _vehicle_category(rng)
    wlh = draw_size(rng, category)
    if behaviour == "cruise":
        speed = ego_speed * float(rng.uniform(*CRUISE_SPEED_RATIO))
        profile: SpeedProfile = SpeedProfile(speed)
        gap = BRAKE_GAP_BASE + speed * float(rng.uniform(*BRAKE_HEADWAY))
    elif behaviour == "stopped":
        profile, gap = SpeedProfile(0.0), float(rng.uniform(*STOPPED_GAP))
    elif behaviour == "brake":
        speed = ego_speed * float(rng.uniform(*BRAKE_SPEED_RATIO))
        gap = BRAKE_GAP_BASE + speed * float(rng.uniform(*BRAKE_HEADWAY))
        brake_at = float(rng.uniform(*BRAKE_START))
        profile = SpeedProfile(speed, brake_at, float(rng.uniform(*BRAKE_DECEL)), 0.0)
    else:
        raise ValueError(f"unknown lead behaviour {behaviour!r}")
    d = float(road.lane_offsets[ego_lane])
    ego_l = float(road.lane_length(ego_start_s, d))
    start = ego_l + EGO_FRONT_M + gap + wlh[1] / 2.0
    return AgentSpec(category, wlh, d, 1, start, profile, is_lead=True, conflict=behaviour in CONFLICT_LEADS)


def _lane_traffic(
    rng: np.random.Generator, road: Road, lane: int, forward: bool, ego_start_s: float
) -> list[AgentSpec]:
    """A platoon of vehicles sharing one speed in a lane that is not the ego's."""
    d = float(road.lane_offsets[lane])
    ego_l = float(road.lane_length(ego_start_s, d))
    count_range, first_range, gap_range = (
        (SAME_WAY_COUNT, SAME_WAY_FIRST, SAME_WAY_GAP)
        if forward
        else (ONCOMING_COUNT, ONCOMING_FIRST, ONCOMING_GAP)
    )
    profile = SpeedProfile(float(rng.uniform(*LANE_SPEED)))
    position = ego_l + float(rng.uniform(*first_range))
    out = []
    for _ in range(int(rng.integers(*count_range))):
        category = _vehicle_category(rng)
        wlh = draw_size(rng, category)
        position += wlh[1] / 2.0
        out.append(AgentSpec(category, wlh, d, 1 if forward else -1, position, profile))
        position += wlh[1] / 2.0 + float(rng.uniform(*gap_range))
    return out


def _sidewalk_offset(rng: np.random.Generator, road: Road, side: int, inset: tuple[float, float]) -> float:
    """Lateral offset (m) on the sidewalk of ``side`` (+1 left, -1 right), ``inset`` m past the curb."""
    return side * (road.half_width + float(rng.uniform(*inset)))


def _pedestrians(rng: np.random.Generator, road: Road, ego_start_s: float) -> list[AgentSpec]:
    """Pedestrians on both sidewalks, walking along the road or standing facing it."""
    out = []
    for _ in range(int(rng.integers(*PEDESTRIAN_COUNT))):
        side = 1 if rng.random() < 0.5 else -1
        clearance = SIDEWALK_EDGE_CLEARANCE
        d = _sidewalk_offset(rng, road, side, (clearance, road.sidewalk_width - clearance))
        category = "human.pedestrian.child" if rng.random() < CHILD_SHARE else "human.pedestrian.adult"
        start = float(road.lane_length(ego_start_s, d)) + float(rng.uniform(*PEDESTRIAN_SPAN))
        direction = 1 if rng.random() < 0.5 else -1
        if rng.random() < STANDING_SHARE:
            # Standing still, turned towards the carriageway.
            profile, facing = SpeedProfile(0.0), -side * direction * math.pi / 2.0
        else:
            profile, facing = SpeedProfile(float(rng.uniform(*WALK_SPEED))), 0.0
        out.append(AgentSpec(category, draw_size(rng, category), d, direction, start, profile, facing))
    return out


def _cones(rng: np.random.Generator, road: Road, ego_start_s: float) -> list[AgentSpec]:
    """A few traffic cones just past the curb."""
    out = []
    for _ in range(int(rng.integers(*CONE_COUNT))):
        side = 1 if rng.random() < 0.5 else -1
        d = _sidewalk_offset(rng, road, side, CONE_CURB_OFFSET)
        start = float(road.lane_length(ego_start_s, d)) + float(rng.uniform(*PEDESTRIAN_SPAN))
        category = "movable_object.trafficcone"
        out.append(AgentSpec(category, draw_size(rng, category), d, 1, start, SpeedProfile(0.0)))
    return out
