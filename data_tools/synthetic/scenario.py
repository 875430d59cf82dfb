"""What each synthetic scene contains: its scenario family, road, map placement, ego start and agents.

World version 2. Scene ``i`` of split ``split`` comes from
``numpy.random.default_rng([seed, SPLIT_IDS[split], i])``: the train, val and test splits are
separate random streams, so no seed or scene count ever puts a training scene into val or test, and
scene ``i`` of a split is the same whatever the number of scenes. The scenario family cycles with
the scene index (:data:`FAMILIES`), and so do the road's turns, so even a handful of scenes holds
every family and every command; see
:mod:`data_tools.synthetic.events` for what each family puts in the ego's way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from data_tools.synthetic.events import FAMILIES, Signal, plan_family
from data_tools.synthetic.road import Road
from data_tools.synthetic.traffic import AgentSpec

#: Real nuScenes map names: the devkit's NuScenesMap only accepts these four, so synthetic roads are
#: laid out on synthetic canvases that reuse the names. Boston drives on the right, Singapore on the left.
LOCATIONS: tuple[str, ...] = ("boston-seaport", "singapore-onenorth")
LEFT_HAND_TRAFFIC: frozenset[str] = frozenset({"singapore-onenorth"})

TURNS: tuple[str, ...] = ("left", "straight", "right")
#: Name of this world's design; part of the cache folder name so an older world is never reused.
WORLD_VERSION = "world2"
#: Scene streams: the RNG key of a scene is ``[seed, SPLIT_IDS[split], index]``.
SPLIT_IDS: dict[str, int] = {"train": 0, "val": 1, "test": 2}

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
    """Everything that defines one scene before simulation.

    :param family: scenario family (one of :data:`~data_tools.synthetic.events.FAMILIES`).
    :param cross: the crossing road of a signalised intersection, or None.
    :param signal: the traffic light the ego obeys, or None.
    :param crosswalk_s: centre-line arc length (m) of a marked pedestrian crossing's near edge, or None.
    """

    index: int
    split: str
    name: str
    location: str
    family: str
    turn: str
    road: Road
    ego_lane: int
    ego_start_s: float
    ego_speed: float
    agents: tuple[AgentSpec, ...]
    num_samples: int
    cross: Road | None = None
    signal: Signal | None = None
    crosswalk_s: float | None = None

    @property
    def ego_offset(self) -> float:
        """Lateral offset (m) of the ego lane centre."""
        return float(self.road.lane_offsets[self.ego_lane])

    def road_of(self, name: str) -> Road:
        """The ``main`` road or the ``cross`` road."""
        if name == "cross":
            if self.cross is None:
                raise ValueError(f"{self.name} has no cross road")
            return self.cross
        return self.road


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


def plan_scene(seed: int, split: str, index: int, num_samples: int, slot: int = 0) -> ScenePlan:
    """Draw scene ``index`` of ``split`` in the dataset generated with ``seed``.

    :param slot: where the scene sits on its location's map canvas (placement only: the scene's
        content relative to the ego does not depend on it).
    """
    rng = np.random.default_rng([seed, SPLIT_IDS[split], index])
    family = FAMILIES[index % len(FAMILIES)]
    location = LOCATIONS[int(rng.integers(len(LOCATIONS)))]
    pitch = scene_spacing(num_samples)
    origin = (
        (slot % GRID_COLUMNS + 0.5) * pitch,
        (slot // GRID_COLUMNS + 0.5) * pitch,
        float(rng.uniform(-math.pi, math.pi)),
    )
    needs_straight = family in ("traffic_light", "pedestrian")
    # Turns cycle with the index (shifted every family cycle), so any six scenes hold left and right.
    turn = "straight" if needs_straight else TURNS[(index + index // len(FAMILIES)) % len(TURNS)]
    layouts = [lay for lay in LANE_LAYOUTS if family != "cut_in" or lay[1] >= 2]
    lanes, forward = layouts[int(rng.integers(len(layouts)))]
    lane_forward = _lane_directions(lanes, forward, location in LEFT_HAND_TRAFFIC)
    lengths, curvatures = _curvature_pieces(rng, turn, road_length(num_samples), wander=not needs_straight)
    road = Road(origin, lengths, curvatures, lane_forward)
    forward_lanes = [i for i, f in enumerate(lane_forward) if f]
    ego_lane = forward_lanes[int(rng.integers(len(forward_lanes)))]
    ego_speed = float(rng.uniform(*EGO_START_SPEED))
    duration = (num_samples - 1) * KEYFRAME_DT_S
    content = plan_family(family, rng, road, ego_lane, ROAD_BEHIND_M, ego_speed, duration, location)
    return ScenePlan(
        index=index,
        split=split,
        name=f"scene-{split}-{index + 1:04d}",
        location=location,
        family=family,
        turn=turn,
        road=road,
        ego_lane=ego_lane,
        ego_start_s=ROAD_BEHIND_M,
        ego_speed=content.ego_speed if content.ego_speed is not None else ego_speed,
        agents=content.agents,
        num_samples=num_samples,
        cross=content.cross,
        signal=content.signal,
        crosswalk_s=content.crosswalk_s,
    )


def _lane_directions(lanes: int, forward: int, left_hand: bool) -> tuple[bool, ...]:
    """Per lane (right to left): drives towards +s. Forward lanes sit on the driving side."""
    dirs = [True] * forward + [False] * (lanes - forward)
    return tuple(reversed(dirs)) if left_hand else tuple(dirs)


def _curvature_pieces(
    rng: np.random.Generator, turn: str, length: float, wander: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Piece lengths and signed curvatures of a road of ``length`` m that bends per ``turn``
    (a straight road wanders gently unless ``wander`` is False: intersections need it straight)."""
    if turn == "straight":
        count = max(1, math.ceil(length / CURVE_PIECE_M[1]))
        bends = rng.uniform(-STRAIGHT_WANDER, STRAIGHT_WANDER, count)
        return np.full(count, length / count), bends if wander else np.zeros(count)
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
