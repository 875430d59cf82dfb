"""Scenario families: what a scene puts in the ego's way, and the small visual cue that tells it.

Every family but ``easy`` has a trigger that only the cameras show at the keyframe being planned
(a light's colour, a pedestrian leaving the curb, brake lights, a car angling into the lane) and a
conflict object annotated as a nuScenes box in the ego's path (cross traffic, the pedestrian, the
stopped or braking or cutting-in vehicle), so a plan that ignores the trigger collides with it:

- ``traffic_light``: a signalised intersection; the light turns amber then red (the ego stops at
  the stop line while cross traffic passes), turns green (the ego, waiting, goes) or stays green.
- ``pedestrian``: a pedestrian steps off the curb, on a marked crosswalk or mid-block, and crosses;
  the ego yields until the pedestrian has left its lane.
- ``lead_brake``: the vehicle ahead brakes hard to a stop, brake lights lit.
- ``stopped_vehicle``: a vehicle stands in the ego lane, hazard / brake lights lit.
- ``cut_in``: a vehicle in the neighbouring lane moves into the ego lane just ahead, then slows.
- ``easy``: an empty lane ahead or plain car following.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from data_tools.synthetic.road import Road
from data_tools.synthetic.traffic import (
    EGO_FRONT_M,
    AgentSpec,
    KnotProfile,
    LateralMove,
    SpeedProfile,
    draw_size,
    spawn_agents,
)

FAMILIES: tuple[str, ...] = ("traffic_light", "pedestrian", "lead_brake", "stopped_vehicle", "cut_in", "easy")

#: Amber phase (s): long enough for the ego to decide to stop or go (3-4 s in most cities).
AMBER_S = 3.0
#: Traffic light variants and their shares. ``stop``: amber or red from about the scene start, the
#: ego approaching; ``go``: the ego creeps up to the line (or waits at it) and the light turns green
#: about then; ``green``: green throughout, the ego approaching. Triggers come early, so at most
#: the first keyframe or two of a scene cannot see what decides its future.
SIGNAL_VARIANTS: tuple[tuple[str, float], ...] = (("stop", 0.4), ("go", 0.3), ("green", 0.3))
SWITCH_TO_AMBER_AT = (-4.0, -0.5)  # s
SWITCH_TO_GREEN_AT = (-0.5, 1.5)  # s
#: Distance (m) from the ego's front to the stop line at the start: approaching, or creeping up.
STOP_DISTANCE_APPROACH = (18.0, 45.0)
STOP_DISTANCE_CREEP = (2.0, 10.0)
#: Ego speed (m/s) when it starts creeping up to a red light.
CREEP_SPEED = (0.0, 3.0)
#: Intersection layout along the main road (m): stop line, then the crosswalk, then the crossing
#: road (two lanes), then the mast arm of the light on the far side.
CROSSWALK_M = 4.0
CROSS_LANES = 2
MAST_BEYOND_CROSS_M = 2.0
#: Half length (m) of the crossing road, centred on the main road.
CROSS_HALF_LENGTH_M = 70.0
#: Cross traffic: speed (m/s), bumper gap (m), and how long (s) around its crossing a car exists.
CROSS_SPEED = (8.0, 11.0)
CROSS_GAP = (3.0, 9.0)
CROSS_LIFETIME_S = 6.0
#: Cross traffic starts this long (s) after the ego's red begins and ends this long before it ends.
CROSS_CLEARANCE_S = (1.0, 2.0)
#: Pedestrians who cross on the crosswalk in the ego's red phase: how many, and when (s after the
#: red begins) they step off.
RED_WALKERS = (1, 3)
RED_WALK_AFTER_S = (0.3, 1.5)
#: Pedestrian crossing: step-off time (s), walking speed (m/s), start distance (m) from the curb,
#: distance (m) of the crossing ahead of where the ego's front is at the step-off, marked share.
STEP_OFF_AT = (-1.0, 1.0)
CROSSING_WALK_SPEED = (1.1, 1.7)
CURB_STANDOFF_M = 0.4
CROSSING_AHEAD_M = (10.0, 28.0)
MARKED_CROSSWALK_SHARE = 0.6
#: Cut-in: the car's rear starts this far (m) ahead of the ego's front at this speed ratio, moves
#: over at the given time (s) for the given duration (s), then slows to a fraction of its speed.
CUT_IN_AHEAD_M = (2.0, 10.0)
CUT_IN_SPEED_RATIO = (0.9, 1.05)
CUT_IN_AT = (-1.0, 0.5)
CUT_IN_DURATION = (2.0, 3.0)
CUT_IN_SLOW_RATIO = (0.3, 0.6)
CUT_IN_DECEL = 2.5  # m/s^2
#: Shares of the ``easy`` family: an empty lane ahead, else plain car following.
EASY_EMPTY_SHARE = 0.5


@dataclass(frozen=True)
class Signal:
    """The traffic light the ego obeys: its stop line and its phases.

    :param stop_line_s: centre-line arc length (m) of the stop line.
    :param initial: ``green`` or ``red`` at the scene start.
    :param switch_at: seconds at which it switches (green -> amber -> red, or red -> green); inf: never.
    :param cross_s: centre-line arc length (m) of the crossing road's centre.
    """

    stop_line_s: float
    initial: str
    switch_at: float
    cross_s: float

    def state(self, t: float) -> str:
        """``green``, ``amber`` or ``red`` at time ``t`` (s)."""
        if t < self.switch_at:
            return self.initial
        if self.initial == "red":
            return "green"
        return "amber" if t < self.switch_at + AMBER_S else "red"

    def red_window(self) -> tuple[float, float]:
        """``(from, to)`` seconds of the ego's red phase (``-inf`` / ``inf`` when open)."""
        if self.initial == "red":
            return -math.inf, self.switch_at
        return self.switch_at + AMBER_S, math.inf

    @property
    def mast_s(self) -> float:
        """Centre-line arc length (m) of the mast arm carrying the light over the ego lane."""
        return self.cross_s + CROSS_LANES * 3.5 / 2.0 + MAST_BEYOND_CROSS_M


@dataclass(frozen=True, eq=False)
class FamilyContent:
    """What a family adds to a scene: agents, and the intersection / crosswalk when it has one."""

    agents: tuple[AgentSpec, ...]
    cross: Road | None = None
    signal: Signal | None = None
    crosswalk_s: float | None = None
    ego_speed: float | None = None


def plan_family(
    family: str,
    rng: np.random.Generator,
    road: Road,
    ego_lane: int,
    ego_start_s: float,
    ego_speed: float,
    duration: float,
    location: str,
) -> FamilyContent:
    """Agents (and intersection / crosswalk) of a scene of ``family``; draws from ``rng`` only."""
    no_lanes = frozenset(range(len(road.lane_forward)))
    if family == "traffic_light":
        return _traffic_light(rng, road, ego_lane, ego_start_s, ego_speed, duration)
    if family == "pedestrian":
        crossing, marked = _crossing_pedestrian(rng, road, ego_lane, ego_start_s, ego_speed)
        base = spawn_agents(rng, road, ego_lane, ego_start_s, ego_speed, "none", duration, no_lanes)
        return FamilyContent((crossing, *base), crosswalk_s=crossing_s(crossing, road) if marked else None)
    if family == "lead_brake":
        return FamilyContent(spawn_agents(rng, road, ego_lane, ego_start_s, ego_speed, "brake", duration))
    if family == "stopped_vehicle":
        return FamilyContent(spawn_agents(rng, road, ego_lane, ego_start_s, ego_speed, "stopped", duration))
    if family == "cut_in":
        cutter, lane = _cut_in(rng, road, ego_lane, ego_start_s, ego_speed)
        base = spawn_agents(rng, road, ego_lane, ego_start_s, ego_speed, "none", duration, frozenset({lane}))
        return FamilyContent((cutter, *base))
    if family == "easy":
        lead = "none" if rng.random() < EASY_EMPTY_SHARE else "cruise"
        return FamilyContent(spawn_agents(rng, road, ego_lane, ego_start_s, ego_speed, lead, duration))
    raise ValueError(f"unknown scenario family {family!r}; pick one of {FAMILIES}")


def crossing_s(agent: AgentSpec, road: Road) -> float:
    """Centre-line arc length (m) where a crossing pedestrian crosses (near edge of the crosswalk)."""
    return float(road.lane_s(agent.start, agent.offset)) - 1.5


# ---------------------------------------------------------------------- traffic light


def _traffic_light(
    rng: np.random.Generator, road: Road, ego_lane: int, ego_start_s: float, ego_speed: float, duration: float
) -> FamilyContent:
    """A signalised intersection ahead, its light's phases and the cross traffic of the ego's red."""
    names, shares = zip(*SIGNAL_VARIANTS, strict=True)
    variant = names[int(rng.choice(len(names), p=shares))]
    ego_front = ego_start_s + EGO_FRONT_M
    speed = None
    if variant == "go":
        initial, switch = "red", float(rng.uniform(*SWITCH_TO_GREEN_AT))
        stop = ego_front + float(rng.uniform(*STOP_DISTANCE_CREEP))
        speed = float(rng.uniform(*CREEP_SPEED))
    else:
        initial = "green"
        switch = float(rng.uniform(*SWITCH_TO_AMBER_AT)) if variant == "stop" else math.inf
        stop = ego_front + float(rng.uniform(*STOP_DISTANCE_APPROACH))
    cross_s = stop + CROSSWALK_M + CROSS_LANES * road.lane_width / 2.0
    signal = Signal(stop, initial, switch, cross_s)
    cross = _cross_road(road, cross_s)
    agents = list(spawn_agents(rng, road, ego_lane, ego_start_s, ego_speed, "none", duration,
                               frozenset(range(len(road.lane_forward)))))  # fmt: skip
    agents.extend(_cross_traffic(rng, cross, signal, duration))
    if variant == "stop":
        agents.extend(_red_walkers(rng, road, stop, signal))
    return FamilyContent(tuple(agents), cross=cross, signal=signal, crosswalk_s=stop + 0.5, ego_speed=speed)


def _cross_road(road: Road, cross_s: float) -> Road:
    """A straight two-lane road crossing ``road`` at right angles at centre-line ``cross_s``."""
    xy, heading = road.pose_at(cross_s, 0.0)
    yaw = float(heading) + math.pi / 2.0
    origin = (
        float(xy[0]) - CROSS_HALF_LENGTH_M * math.cos(yaw),
        float(xy[1]) - CROSS_HALF_LENGTH_M * math.sin(yaw),
        yaw,
    )
    return Road(origin, np.array([2.0 * CROSS_HALF_LENGTH_M]), np.array([0.0]), (True, False))


def _cross_traffic(rng: np.random.Generator, cross: Road, signal: Signal, duration: float) -> list[AgentSpec]:
    """Platoons on both cross lanes that cross the main road only during the ego's red phase."""
    red_from, red_to = signal.red_window()
    start = max(red_from + CROSS_CLEARANCE_S[0], -CROSS_LIFETIME_S)
    end = min(red_to - CROSS_CLEARANCE_S[1], duration + CROSS_LIFETIME_S)
    out: list[AgentSpec] = []
    for lane, forward in enumerate(cross.lane_forward):
        d = float(cross.lane_offsets[lane])
        speed = float(rng.uniform(*CROSS_SPEED))
        t = start + float(rng.uniform(0.0, 1.0))
        while t < end:
            category = "vehicle.car" if rng.random() < 0.85 else "vehicle.truck"
            wlh = draw_size(rng, category)
            direction = 1 if forward else -1
            begin = CROSS_HALF_LENGTH_M - direction * speed * t  # centre crosses the main road at t
            window = (t - CROSS_LIFETIME_S, t + CROSS_LIFETIME_S)
            out.append(AgentSpec(category, wlh, d, direction, begin, SpeedProfile(speed), road="cross",
                                 window=window, conflict=True))  # fmt: skip
            t += (wlh[1] + float(rng.uniform(*CROSS_GAP))) / speed
    return out


def _red_walkers(rng: np.random.Generator, road: Road, stop: float, signal: Signal) -> list[AgentSpec]:
    """Pedestrians crossing on the crosswalk just past the stop line while the ego has red."""
    red_from, _ = signal.red_window()
    out = []
    for _ in range(int(rng.integers(*RED_WALKERS))):
        side = 1 if rng.random() < 0.5 else -1
        start_d = side * (road.half_width + CURB_STANDOFF_M)
        walk = float(rng.uniform(*CROSSING_WALK_SPEED))
        at = red_from + float(rng.uniform(*RED_WALK_AFTER_S))
        s = stop + 0.5 + float(rng.uniform(0.5, 2.5))  # on the crosswalk
        category = "human.pedestrian.adult"
        move = LateralMove(at, 2.0 * abs(start_d) / walk, -2.0 * start_d)
        out.append(
            AgentSpec(
                category,
                draw_size(rng, category),
                start_d,
                1,
                float(road.lane_length(s, start_d)),
                SpeedProfile(0.0),
                -side * math.pi / 2.0,
                lateral=move,
                conflict=True,
            )  # fmt: skip
        )
    return out


# ---------------------------------------------------------------------- pedestrian


def _crossing_pedestrian(
    rng: np.random.Generator, road: Road, ego_lane: int, ego_start_s: float, ego_speed: float
) -> tuple[AgentSpec, bool]:
    """A pedestrian who waits at the curb, then crosses the whole carriageway; and whether the
    crossing is a marked crosswalk."""
    step_off = float(rng.uniform(*STEP_OFF_AT))
    walk = float(rng.uniform(*CROSSING_WALK_SPEED))
    side = 1 if rng.random() < 0.5 else -1
    start_d = side * (road.half_width + CURB_STANDOFF_M)
    delta = -2.0 * start_d
    ego_front = ego_start_s + EGO_FRONT_M + ego_speed * max(step_off, 0.0)
    s = ego_front + float(rng.uniform(*CROSSING_AHEAD_M))
    category = "human.pedestrian.adult"
    wlh = draw_size(rng, category)
    move = LateralMove(step_off, abs(delta) / walk, delta)
    facing = -side * math.pi / 2.0  # turned across the road, towards the far curb
    marked = bool(rng.random() < MARKED_CROSSWALK_SHARE)
    lane_pos = float(road.lane_length(s + 1.5, start_d))
    return (
        AgentSpec(
            category, wlh, start_d, 1, lane_pos, SpeedProfile(0.0), facing, lateral=move, conflict=True
        ),
        marked,
    )


# ---------------------------------------------------------------------- cut-in


def _cut_in(
    rng: np.random.Generator, road: Road, ego_lane: int, ego_start_s: float, ego_speed: float
) -> tuple[AgentSpec, int]:
    """A vehicle in a neighbouring same-direction lane that moves into the ego lane, then slows."""
    neighbours = [
        lane
        for lane in (ego_lane - 1, ego_lane + 1)
        if 0 <= lane < len(road.lane_forward) and road.lane_forward[lane]
    ]
    lane = neighbours[int(rng.integers(len(neighbours)))]
    d = float(road.lane_offsets[lane])
    category = "vehicle.car"
    wlh = draw_size(rng, category)
    speed = ego_speed * float(rng.uniform(*CUT_IN_SPEED_RATIO))
    at, over = float(rng.uniform(*CUT_IN_AT)), float(rng.uniform(*CUT_IN_DURATION))
    slow = speed * float(rng.uniform(*CUT_IN_SLOW_RATIO))
    brake_from = at + over / 2.0
    profile = KnotProfile(
        ((0.0, speed), (brake_from, speed), (brake_from + (speed - slow) / CUT_IN_DECEL, slow))
    )
    ego_front = float(road.lane_length(ego_start_s, d)) + EGO_FRONT_M
    start = ego_front + float(rng.uniform(*CUT_IN_AHEAD_M)) + wlh[1] / 2.0
    move = LateralMove(at, over, float(road.lane_offsets[ego_lane]) - d)
    return AgentSpec(category, wlh, d, 1, start, profile, lateral=move, conflict=True), lane
