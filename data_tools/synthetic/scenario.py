"""What each synthetic scene contains: its road, where it sits on the map, the ego start and the agents.

A scene's content comes from ``numpy.random.default_rng([seed, scene_index])``, so scene ``i`` is the
same whatever the number of scenes. The road's turn direction and the lead vehicle's behaviour cycle
with the scene index (periods 3 and 4, so any 12 consecutive scenes hold every pairing), which puts
left, straight and right futures and a braking lead vehicle into even a handful of scenes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from data_tools.synthetic.road import Road
from data_tools.synthetic.traffic import AgentSpec, spawn_agents

#: Real nuScenes map names: the devkit's NuScenesMap only accepts these four, so synthetic roads are
#: laid out on synthetic canvases that reuse the names. Boston drives on the right, Singapore on the left.
LOCATIONS: tuple[str, ...] = ("boston-seaport", "singapore-onenorth")
LEFT_HAND_TRAFFIC: frozenset[str] = frozenset({"singapore-onenorth"})

TURNS: tuple[str, ...] = ("left", "straight", "right")
LEAD_BEHAVIOURS: tuple[str, ...] = ("cruise", "brake", "none", "slowdown")

KEYFRAME_DT_S = 0.5  # nuScenes keyframes come at 2 Hz.
#: Road behind the ego start (m): enough for the rear cameras and the lidar to see a road.
ROAD_BEHIND_M = 60.0
#: Road beyond the furthest ego position (m): covers the 50 m annotation radius plus far scenery.
ROAD_AHEAD_M = 120.0
#: Ego speed (m/s) at the scene start: urban traffic; the model can read it off the past poses.
EGO_START_SPEED = (7.0, 12.0)
#: Upper bound of any ego speed (m/s), used to size the road; see world.EGO_DESIRED_SPEED.
MAX_EGO_SPEED = 13.0
#: Curved pieces: lengths (m) and curvature magnitudes (1/m; radius ~ 33-85 m, urban bends).
CURVE_PIECE_M = (30.0, 70.0)
CURVATURE_RANGE = (0.012, 0.03)
#: Before the first bend the road runs straight for this many metres past the ego start.
CURVE_ONSET_M = (0.0, 12.0)
#: Straight roads still wander gently: |k| below this keeps the 3 s lateral offset well under 2 m.
STRAIGHT_WANDER = 0.0015
#: Total heading change is capped (rad, ~150 deg) so a long road never loops onto itself.
MAX_TOTAL_TURN = 2.6
#: Lane layouts as (lanes, lanes in the ego's direction).
LANE_LAYOUTS: tuple[tuple[int, int], ...] = ((2, 1), (3, 2), (2, 2), (3, 1))
#: Map canvases put scenes on a grid this many columns wide.
GRID_COLUMNS = 4
#: Free space (m) between neighbouring scenes' roads on a canvas.
SCENE_MARGIN_M = 100.0


@dataclass(frozen=True, eq=False)
class ScenePlan:
    """Everything that defines one scene before simulation."""

    index: int
    name: str
    location: str
    turn: str
    lead: str
    road: Road
    ego_lane: int
    ego_start_s: float
    ego_speed: float
    agents: tuple[AgentSpec, ...]
    num_samples: int

    @property
    def ego_offset(self) -> float:
        """Lateral offset (m) of the ego lane centre."""
        return float(self.road.lane_offsets[self.ego_lane])


def road_length(num_samples: int) -> float:
    """Centre-line length (m) of every scene's road for scenes of ``num_samples`` keyframes."""
    duration = (num_samples - 1) * KEYFRAME_DT_S
    return ROAD_BEHIND_M + MAX_EGO_SPEED * duration + ROAD_AHEAD_M


def scene_spacing(num_samples: int) -> float:
    """Grid pitch (m) of scene origins on a canvas: a road of length L stays within L of its origin."""
    return 2.0 * road_length(num_samples) + SCENE_MARGIN_M


def canvas_size(scene_count: int, num_samples: int) -> tuple[float, float]:
    """``(width, height)`` in metres of a canvas holding ``scene_count`` scenes."""
    cols = min(scene_count, GRID_COLUMNS)
    rows = max(1, math.ceil(scene_count / GRID_COLUMNS))
    pitch = scene_spacing(num_samples)
    return cols * pitch, rows * pitch


def plan_scene(seed: int, index: int, num_samples: int) -> ScenePlan:
    """Draw scene ``index`` of the dataset generated with ``seed``."""
    rng = np.random.default_rng([seed, index])
    location = LOCATIONS[index % len(LOCATIONS)]
    turn, lead = TURNS[index % len(TURNS)], LEAD_BEHAVIOURS[index % len(LEAD_BEHAVIOURS)]
    slot = index // len(LOCATIONS)
    pitch = scene_spacing(num_samples)
    origin = (
        (slot % GRID_COLUMNS + 0.5) * pitch,
        (slot // GRID_COLUMNS + 0.5) * pitch,
        float(rng.uniform(-math.pi, math.pi)),
    )
    lanes, forward = LANE_LAYOUTS[int(rng.integers(len(LANE_LAYOUTS)))]
    lane_forward = _lane_directions(lanes, forward, location in LEFT_HAND_TRAFFIC)
    lengths, curvatures = _curvature_pieces(rng, turn, road_length(num_samples))
    road = Road(origin, lengths, curvatures, lane_forward)
    forward_lanes = [i for i, f in enumerate(lane_forward) if f]
    ego_lane = forward_lanes[int(rng.integers(len(forward_lanes)))]
    ego_speed = float(rng.uniform(*EGO_START_SPEED))
    duration = (num_samples - 1) * KEYFRAME_DT_S
    agents = spawn_agents(rng, road, ego_lane, ROAD_BEHIND_M, ego_speed, lead, duration)
    return ScenePlan(
        index=index,
        name=f"scene-{index + 1:04d}",
        location=location,
        turn=turn,
        lead=lead,
        road=road,
        ego_lane=ego_lane,
        ego_start_s=ROAD_BEHIND_M,
        ego_speed=ego_speed,
        agents=agents,
        num_samples=num_samples,
    )


def _lane_directions(lanes: int, forward: int, left_hand: bool) -> tuple[bool, ...]:
    """Per lane (right to left): drives towards +s. Forward lanes sit on the driving side."""
    dirs = [True] * forward + [False] * (lanes - forward)
    return tuple(reversed(dirs)) if left_hand else tuple(dirs)


def _curvature_pieces(rng: np.random.Generator, turn: str, length: float) -> tuple[np.ndarray, np.ndarray]:
    """Piece lengths and signed curvatures of a road of ``length`` m that bends per ``turn``."""
    if turn == "straight":
        count = max(1, math.ceil(length / CURVE_PIECE_M[1]))
        return np.full(count, length / count), rng.uniform(-STRAIGHT_WANDER, STRAIGHT_WANDER, count)
    sign = 1.0 if turn == "left" else -1.0
    lengths = [ROAD_BEHIND_M + float(rng.uniform(*CURVE_ONSET_M))]
    curvatures = [0.0]
    total, heading = lengths[0], 0.0
    while total < length:
        piece = min(float(rng.uniform(*CURVE_PIECE_M)), length - total)
        k = sign * float(rng.uniform(*CURVATURE_RANGE))
        if heading + abs(k) * piece > MAX_TOTAL_TURN:
            k = 0.0  # the bend is complete; the rest of the road runs straight
        heading += abs(k) * piece
        lengths.append(piece)
        curvatures.append(k)
        total += piece
    return np.asarray(lengths), np.asarray(curvatures)
