"""The nuScenes map-expansion vector map (``maps/expansion/<location>.json``, format version 1.3).

Each scene's road becomes: a drivable area and a road segment (the carriageway polygon), one road
block per travel direction, one lane per lane (polygon, edge lines, divider segments and an exact
arc-line centre line in ``arcline_path_3``), road/lane dividers and two walkways. A signalised
intersection adds its crossing road, the crosswalk (``ped_crossing``), the ``stop_line`` and the
``traffic_light``; a marked mid-block crossing adds its ``ped_crossing`` and a ``PED_CROSSING`` stop
line. All geometry is sampled from the same :class:`Road` the renderer paints, so the map matches
the images.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from data_tools.synthetic.ground import CROSSWALK_LENGTH_M, STOP_LINE_WIDTH_M
from data_tools.synthetic.props import MAST_HEAD_Z
from data_tools.synthetic.road import Road
from data_tools.synthetic.scenario import ScenePlan
from data_tools.synthetic.tables import ROTATION_DIGITS, TokenFactory, rounded

#: Oldest map format NuScenesMap accepts.
MAP_VERSION = "1.3"
#: Node spacing (m) along boundaries; a 2 m chord at curvature 0.03 is 1.5 cm off the arc.
MAP_STEP_M = 2.0
#: Placeholder radius (m) of the zero-length arcs around a straight arc-line segment.
STRAIGHT_ARC_RADIUS_M = 1000.0
#: nuScenes divider segment types of our markings.
EDGE_LINE_TYPE, DASHED_LINE_TYPE, CENTRE_LINE_TYPE = (
    "SINGLE_SOLID_WHITE",
    "DOUBLE_DASHED_WHITE",
    "SINGLE_SOLID_YELLOW",
)
GEOMETRY_LAYERS = ("polygon", "line", "node")
RECORD_LAYERS = (
    "drivable_area",
    "road_segment",
    "road_block",
    "lane",
    "ped_crossing",
    "walkway",
    "stop_line",
    "carpark_area",
    "road_divider",
    "lane_divider",
    "traffic_light",
    "lane_connector",
)


class MapBuilder:
    """Collects the records of one map location."""

    def __init__(self, tokens: TokenFactory, location: str) -> None:
        self._token = tokens
        self._location = location
        self.layers: dict[str, list[dict[str, Any]]] = {n: [] for n in GEOMETRY_LAYERS + RECORD_LAYERS}
        self.arcline_path_3: dict[str, list[dict[str, Any]]] = {}
        self.connectivity: dict[str, dict[str, list[str]]] = {}

    def to_json(self, canvas: tuple[float, float]) -> dict[str, Any]:
        """The full map-expansion payload for a canvas of ``(width, height)`` metres."""
        return {
            "version": MAP_VERSION,
            "canvas_edge": rounded(canvas),
            **self.layers,
            "arcline_path_3": self.arcline_path_3,
            "connectivity": self.connectivity,
        }

    def add_road(self, scene: str, road: Road) -> None:
        """Add every layer of one scene's road."""
        stations = np.linspace(0.0, road.length, max(2, math.ceil(road.length / MAP_STEP_M) + 1))
        bounds = [
            self._polyline(scene, f"boundary{j}", road, stations, d)
            for j, d in enumerate(road.boundary_offsets)
        ]
        road_poly = self._polygon(scene, "road", bounds[0], bounds[-1])
        drivable = self._record("drivable_area", scene, "drivable", polygon_tokens=[road_poly])
        segment = self._record(
            "road_segment",
            scene,
            "segment",
            polygon_token=road_poly,
            is_intersection=False,
            drivable_area_token=drivable,
        )
        self._add_blocks(scene, road, bounds, segment)
        for lane in range(len(road.lane_forward)):
            self._add_lane(scene, road, bounds, lane)
        self._add_dividers(scene, road, bounds, segment)
        for side, (inner, outer) in enumerate(
            [
                (-road.half_width, -road.half_width - road.sidewalk_width),
                (road.half_width, road.half_width + road.sidewalk_width),
            ]
        ):
            near = self._polyline(scene, f"walk{side}-inner", road, stations, inner)
            far = self._polyline(scene, f"walk{side}-outer", road, stations, outer)
            self._record(
                "walkway",
                scene,
                f"walkway{side}",
                polygon_token=self._polygon(scene, f"walk{side}", near, far),
            )

    def add_scenario(self, plan: ScenePlan) -> None:
        """The crossing road, crosswalk, stop line and traffic light of ``plan`` (if it has them)."""
        scene, road = plan.name, plan.road
        if plan.cross is not None:
            self.add_road(f"{scene}-cross", plan.cross)
        crossing: list[str] = []
        if plan.crosswalk_s is not None:
            s0 = plan.crosswalk_s
            poly = self._quad(
                scene, "crosswalk", road, (s0, s0 + CROSSWALK_LENGTH_M), (-road.half_width, road.half_width)
            )
            segment = self._token_for(scene, "road_segment", "segment")
            crossing.append(
                self._record(
                    "ped_crossing", scene, "crosswalk", polygon_token=poly, road_segment_token=segment
                )
            )
        forward = [i for i, f in enumerate(road.lane_forward) if f]
        block = self._token_for(scene, "road_block", f"block{min(forward)}")
        bounds = road.boundary_offsets
        lanes_d = (float(bounds[min(forward)]), float(bounds[max(forward) + 1]))
        lights: list[str] = []
        if plan.signal is not None:
            stop = plan.signal.stop_line_s
            line = self._line(
                scene, "traffic_light", self._nodes(scene, "traffic_light", road, plan.signal.mast_s, lanes_d)
            )
            xy, heading = road.pose_at(plan.signal.mast_s, plan.ego_offset)
            lights.append(
                self._record(
                    "traffic_light",
                    scene,
                    "light",
                    line_token=line,
                    traffic_light_type="VERTICAL",
                    from_road_block_token=block,
                    items=[
                        {
                            "color": colour,
                            "shape": "CIRCLE",
                            "rel_pos": {"tx": 0.0, "ty": 0.0, "tz": z, "rx": 0.0, "ry": 0.0, "rz": 0.0},
                            "to_road_block_tokens": [],
                        }
                        for colour, z in (("RED", 0.37), ("YELLOW", 0.0), ("GREEN", -0.37))
                    ],
                    pose={
                        "tx": rounded([xy[0]])[0],
                        "ty": rounded([xy[1]])[0],
                        "tz": MAST_HEAD_Z,
                        "rx": 0.0,
                        "ry": 0.0,
                        "rz": rounded([float(heading) + math.pi], ROTATION_DIGITS)[0],
                    },
                )
            )
            poly = self._quad(scene, "stop_line", road, (stop - STOP_LINE_WIDTH_M, stop), lanes_d)
            self._record(
                "stop_line",
                scene,
                "stop_line",
                polygon_token=poly,
                stop_line_type="TRAFFIC_LIGHT",
                ped_crossing_tokens=[],
                traffic_light_tokens=lights,
                road_block_tokens=[block],
            )
        elif crossing and plan.crosswalk_s is not None:
            stop = plan.crosswalk_s - 1.0
            poly = self._quad(scene, "stop_line", road, (stop - STOP_LINE_WIDTH_M, stop), lanes_d)
            self._record(
                "stop_line",
                scene,
                "stop_line",
                polygon_token=poly,
                stop_line_type="PED_CROSSING",
                ped_crossing_tokens=crossing,
                traffic_light_tokens=[],
                road_block_tokens=[block],
            )

    def _nodes(self, scene: str, name: str, road: Road, s: ArrayLike, d: ArrayLike) -> list[str]:
        """Nodes at road coordinates ``(s, d)`` (broadcast together); returns their tokens in order."""
        xy, _ = road.pose_at(*np.broadcast_arrays(np.asarray(s, dtype=float), np.asarray(d, dtype=float)))
        tokens = [self._token_for(scene, "node", name, i) for i in range(len(xy))]
        for token, (x, y) in zip(tokens, xy, strict=True):
            self.layers["node"].append({"token": token, "x": rounded([x])[0], "y": rounded([y])[0]})
        return tokens

    def _quad(self, scene: str, name: str, road: Road, s: tuple[float, float], d: tuple[float, float]) -> str:
        """A polygon covering ``s[0] <= s <= s[1]``, ``d[0] <= d <= d[1]``; returns its token."""
        right = self._nodes(scene, f"{name}-right", road, s, d[0])
        left = self._nodes(scene, f"{name}-left", road, s, d[1])
        return self._polygon(scene, name, right, left)

    def _token_for(self, *parts: object) -> str:
        return self._token("map", self._location, *parts)

    def _record(self, layer: str, scene: str, name: str, **fields: Any) -> str:
        token = self._token_for(scene, layer, name)
        self.layers[layer].append({"token": token, **fields})
        return token

    def _polyline(self, scene: str, name: str, road: Road, stations: np.ndarray, d: float) -> list[str]:
        """Nodes along offset ``d`` at ``stations``; returns their tokens in +s order."""
        xy, _ = road.pose_at(stations, d)
        tokens = [self._token_for(scene, "node", name, i) for i in range(len(stations))]
        for token, (x, y) in zip(tokens, xy, strict=True):
            self.layers["node"].append({"token": token, "x": rounded([x])[0], "y": rounded([y])[0]})
        return tokens

    def _line(self, scene: str, name: str, nodes: list[str]) -> str:
        token = self._token_for(scene, "line", name)
        self.layers["line"].append({"token": token, "node_tokens": nodes})
        return token

    def _polygon(self, scene: str, name: str, right: list[str], left: list[str]) -> str:
        """A polygon between two node rows (both in +s order): along one, back along the other."""
        token = self._token_for(scene, "polygon", name)
        self.layers["polygon"].append(
            {"token": token, "exterior_node_tokens": right + left[::-1], "holes": []}
        )
        return token

    def _edges(
        self, scene: str, name: str, right: list[str], left: list[str], forward: bool
    ) -> tuple[str, str]:
        """(from, to) edge lines across the strip between two boundaries, in travel order."""
        start = self._line(scene, f"{name}-start", [right[0], left[0]])
        end = self._line(scene, f"{name}-end", [right[-1], left[-1]])
        return (start, end) if forward else (end, start)

    def _add_blocks(self, scene: str, road: Road, bounds: list[list[str]], segment: str) -> None:
        """One road block per run of lanes driving the same way."""
        lanes = len(road.lane_forward)
        first = 0
        for j in range(1, lanes + 1):
            if j == lanes or road.lane_forward[j] != road.lane_forward[first]:
                name = f"block{first}"
                forward = road.lane_forward[first]
                src, dst = self._edges(scene, name, bounds[first], bounds[j], forward)
                self._record(
                    "road_block",
                    scene,
                    name,
                    polygon_token=self._polygon(scene, name, bounds[first], bounds[j]),
                    from_edge_line_token=src,
                    to_edge_line_token=dst,
                    road_segment_token=segment,
                )
                first = j

    def _add_lane(self, scene: str, road: Road, bounds: list[list[str]], lane: int) -> None:
        forward = road.lane_forward[lane]
        name = f"lane{lane}"
        src, dst = self._edges(scene, name, bounds[lane], bounds[lane + 1], forward)
        right_nodes, left_nodes = bounds[lane], bounds[lane + 1]
        if not forward:  # travelling towards -s, the right-hand boundary is the higher one
            right_nodes, left_nodes = left_nodes[::-1], right_nodes[::-1]
        token = self._record(
            "lane",
            scene,
            name,
            polygon_token=self._polygon(scene, name, bounds[lane], bounds[lane + 1]),
            lane_type="CAR",
            from_edge_line_token=src,
            to_edge_line_token=dst,
            left_lane_divider_segments=self._segments(road, left_nodes, lane, upper=forward),
            right_lane_divider_segments=self._segments(road, right_nodes, lane, upper=not forward),
        )
        self.arcline_path_3[token] = lane_arclines(road, float(road.lane_offsets[lane]), forward)
        self.connectivity[token] = {"incoming": [], "outgoing": []}

    def _segments(self, road: Road, nodes: list[str], lane: int, upper: bool) -> list[dict[str, str]]:
        """Divider segments along the boundary of ``lane`` at higher d (``upper``) or lower d."""
        boundary = lane + 1 if upper else lane
        kind = _boundary_type(road, boundary)
        return [{"node_token": n, "segment_type": kind} for n in nodes]

    def _add_dividers(self, scene: str, road: Road, bounds: list[list[str]], segment: str) -> None:
        """Road dividers between the two directions, lane dividers between same-direction lanes."""
        for j in range(1, len(road.lane_forward)):
            line = self._line(scene, f"divider{j}", bounds[j])
            if _boundary_type(road, j) == CENTRE_LINE_TYPE:
                self._record(
                    "road_divider", scene, f"divider{j}", line_token=line, road_segment_token=segment
                )
            else:
                segments = [{"node_token": n, "segment_type": DASHED_LINE_TYPE} for n in bounds[j]]
                self._record(
                    "lane_divider", scene, f"divider{j}", line_token=line, lane_divider_segments=segments
                )


def _boundary_type(road: Road, boundary: int) -> str:
    """Marking type of lane boundary ``boundary`` (0 = right road edge)."""
    if boundary in (0, len(road.lane_forward)):
        return EDGE_LINE_TYPE
    same_way = road.lane_forward[boundary - 1] == road.lane_forward[boundary]
    return DASHED_LINE_TYPE if same_way else CENTRE_LINE_TYPE


def lane_arclines(road: Road, d: float, forward: bool) -> list[dict[str, Any]]:
    """The lane centre at offset ``d`` as nuScenes arc-line paths, one per road piece, in travel order.

    On a piece of centre-line curvature k the lane is an arc of curvature k / (1 - k d) and length
    L (1 - k d); driving it backwards flips the curvature's sign.
    """
    paths = []
    starts = road.piece_starts
    pieces = range(len(road.piece_lengths))
    for i in pieces if forward else reversed(pieces):
        k = float(road.piece_curvatures[i])
        scale = 1.0 - k * d
        curvature, length = (k / scale, float(road.piece_lengths[i]) * scale)
        begin, end = (starts[i], starts[i + 1]) if forward else (starts[i + 1], starts[i])
        if not forward:
            curvature = -curvature
        paths.append(_arcline(road, d, begin, end, curvature, length, forward))
    return paths


def _arcline(
    road: Road, d: float, begin: float, end: float, curvature: float, length: float, forward: bool
) -> dict[str, Any]:
    xy, heading = road.pose_at(np.array([begin, end]), d)
    heading = heading + (0.0 if forward else math.pi)
    heading = (heading + math.pi) % (2.0 * math.pi) - math.pi
    if curvature == 0.0:
        shape, radius, segments = "LSL", STRAIGHT_ARC_RADIUS_M, [0.0, length, 0.0]
    else:
        shape, radius, segments = (
            ("LSL" if curvature > 0 else "RSR"),
            1.0 / abs(curvature),
            [length, 0.0, 0.0],
        )
    return {
        "start_pose": rounded([xy[0, 0], xy[0, 1], heading[0]], ROTATION_DIGITS),
        "end_pose": rounded([xy[1, 0], xy[1, 1], heading[1]], ROTATION_DIGITS),
        "shape": shape,
        "radius": round(radius, ROTATION_DIGITS),
        "segment_length": rounded(segments),
    }
