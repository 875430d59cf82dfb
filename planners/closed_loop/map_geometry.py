"""A sample's :class:`~planners.closed_loop.areas.SceneGeometry` from the nuScenes map expansion.

Uses only the ``NuScenesMap`` calls that work on this stack (docs/DEVKIT-NOTES.md):
``extract_polygon`` (patch queries go through an index built once per map, :func:`records_in_patch`),
``discretize_lanes`` and ``get_outgoing_lane_ids``; never the devkit's renderers. Geometry comes back in the ego frame of the given pose.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from planners.closed_loop.areas import Lane, SceneGeometry
from planners.closed_loop.geometry import wrap_angle
from vla_autoprune.errors import DataNotFoundError

#: [m] half size of the square map patch around the ego (ample for 3 s at highway speed).
PATCH_RADIUS_M = 80.0
#: [m] spacing of the discretised lane centre lines.
LANE_RESOLUTION_M = 0.5
#: [m] how far the reference centreline reaches ahead of / behind the ego.
CENTRELINE_AHEAD_M, CENTRELINE_BEHIND_M = 120.0, 10.0
#: [m per rad] heading mismatch cost when choosing the ego's lane (a 90 deg turn ~ 8 m off).
HEADING_COST_M_PER_RAD = 5.0
_LANE_LAYERS = ("lane", "lane_connector")
#: The polygon layers a scene's geometry is read from.
_SCENE_LAYERS = ("drivable_area", "carpark_area", "road_segment", *_LANE_LAYERS)


class _PatchIndex:
    """Every record of the scene layers as a shapely geometry in an STRtree, built once per map.

    ``NuScenesMap.get_records_in_patch`` rebuilds every record's polygon from its nodes on every
    call (a linear scan: ~95 % of a scene's cost). This answers the same question (``intersect``
    mode, the devkit's geometries: a drivable area is the MultiPolygon of its polygons) with the
    polygons built once, and returns the tokens in the devkit's record order.
    """

    def __init__(self, nusc_map: Any) -> None:
        self._layers: dict[str, tuple[list[str], shapely.STRtree]] = {}
        for layer in _SCENE_LAYERS:
            records = getattr(nusc_map, layer)
            geoms = [
                shapely.MultiPolygon([nusc_map.extract_polygon(t) for t in r["polygon_tokens"]])
                if layer == "drivable_area"
                else nusc_map.extract_polygon(r["polygon_token"])
                for r in records
            ]
            self._layers[layer] = ([r["token"] for r in records], shapely.STRtree(geoms))
        # Not a strong reference: _INDEXES maps each live map to its index, and a value that
        # references its WeakKeyDictionary key keeps the key alive forever (every sweep job's maps
        # leaked, ~150 MB each).
        self._map = weakref.proxy(nusc_map)
        self._paths: dict[str, list[Any]] = {}

    def records_in_patch(self, patch: tuple[float, float, float, float]) -> dict[str, list[str]]:
        """Tokens per layer whose geometry intersects the box ``(x_min, y_min, x_max, y_max)``."""
        box = shapely.box(*patch)
        return {
            layer: [tokens[i] for i in sorted(tree.query(box, predicate="intersects").tolist())]
            for layer, (tokens, tree) in self._layers.items()
        }

    def lane_paths(self, tokens: list[str]) -> dict[str, list[Any]]:
        """``nusc_map.discretize_lanes(tokens, LANE_RESOLUTION_M)``, each lane discretised once
        (a lane's poses depend on that lane alone; neighbouring samples share most lanes)."""
        missing = [t for t in tokens if t not in self._paths]
        if missing:
            self._paths.update(self._map.discretize_lanes(missing, LANE_RESOLUTION_M))
        return {t: self._paths[t] for t in tokens if t in self._paths}


_INDEXES: weakref.WeakKeyDictionary[Any, _PatchIndex] = weakref.WeakKeyDictionary()


def _index(nusc_map: Any) -> _PatchIndex:
    """The map's index, built on its first use and kept for as long as the map lives."""
    index = _INDEXES.get(nusc_map)
    if index is None:
        index = _INDEXES[nusc_map] = _PatchIndex(nusc_map)
    return index


def records_in_patch(nusc_map: Any, patch: tuple[float, float, float, float]) -> dict[str, list[str]]:
    """``nusc_map.get_records_in_patch(patch, scene layers, mode="intersect")``, through the map's index."""
    return _index(nusc_map).records_in_patch(patch)


def map_path(dataroot: str | Path, location: str) -> Path:
    """Where the map expansion of ``location`` lives: ``<dataroot>/maps/expansion/<location>.json``."""
    return Path(dataroot) / "maps" / "expansion" / f"{location}.json"


def check_maps(dataroot: str | Path, locations: Iterable[str]) -> None:
    """A one-line :class:`DataNotFoundError` naming the first location without a map file (no loading)."""
    for location in sorted(set(locations)):
        path = map_path(dataroot, location)
        if not path.is_file():
            raise DataNotFoundError(
                f"no map expansion for location {location!r} ({path} is missing); download the nuScenes "
                f"map expansion v1.3 and unpack it into {Path(dataroot) / 'maps'}"
            )


def load_map(dataroot: str | Path, location: str) -> Any:
    """``NuScenesMap`` of a log's location, or a one-line error naming the missing file and the fix."""
    from nuscenes.map_expansion.map_api import NuScenesMap

    check_maps(dataroot, [location])
    return NuScenesMap(dataroot=str(dataroot), map_name=location)


def to_ego(points: np.ndarray, pose: tuple[float, float, float]) -> np.ndarray:
    """Global points float [..., 2] -> the frame of ``pose`` (global x, y, yaw): x forward, y left."""
    x, y, yaw = pose
    cos, sin = math.cos(yaw), math.sin(yaw)
    dx, dy = points[..., 0] - x, points[..., 1] - y
    return np.stack([cos * dx + sin * dy, -sin * dx + cos * dy], axis=-1)


def _polygons(
    nusc_map: Any, tokens: list[str], pose: tuple[float, float, float], radius_m: float = PATCH_RADIUS_M
) -> BaseGeometry:
    """Union of map polygons cut to the patch around ``pose`` (real drivable areas span whole
    districts), valid, in the ego frame."""
    x, y, _ = pose
    shapes = [
        shapely.clip_by_rect(
            shapely.make_valid(nusc_map.extract_polygon(token)),
            x - radius_m,
            y - radius_m,
            x + radius_m,
            y + radius_m,
        )
        for token in tokens
    ]
    union = shapely.union_all(shapes) if shapes else shapely.Polygon()
    return shapely.transform(union, lambda xy: to_ego(xy, pose))


def _lanes(
    nusc_map: Any, records: dict[str, list[str]], pose: tuple[float, float, float]
) -> dict[str, tuple[Any, np.ndarray]]:
    """token -> (ego-frame polygon or None, ego-frame centre line float [P, 3] (x, y, yaw))."""
    layers = {token: layer for layer in _LANE_LAYERS for token in records[layer]}
    paths = _index(nusc_map).lane_paths(list(layers))
    out = {}
    for token, layer in layers.items():
        points = np.asarray(paths.get(token, []), dtype=np.float64).reshape(-1, 3)
        if len(points) < 2:
            continue
        line = np.concatenate([to_ego(points[:, :2], pose), wrap_angle(points[:, 2:] - pose[2])], axis=1)
        record = nusc_map.get(layer, token)
        polygon_token = record.get("polygon_token")
        polygon = _polygons(nusc_map, [polygon_token], pose) if polygon_token else None
        out[token] = (polygon, line)
    return out


def _start(lanes: dict[str, tuple[Any, np.ndarray]]) -> tuple[str, int] | None:
    """The lane (and its point index) nearest the ego's rear axle, heading within 90 deg of +x."""
    best: tuple[float, str, int] | None = None
    for token, (_, line) in lanes.items():
        cost = np.linalg.norm(line[:, :2], axis=1) + HEADING_COST_M_PER_RAD * np.abs(line[:, 2])
        cost = np.where(np.abs(line[:, 2]) < math.pi / 2, cost, np.inf)
        i = int(cost.argmin())
        if np.isfinite(cost[i]) and (best is None or cost[i] < best[0]):
            best = (float(cost[i]), token, i)
    return None if best is None else (best[1], best[2])


def _successor(
    nusc_map: Any,
    token: str,
    lanes: dict[str, tuple[Any, np.ndarray]],
    route: np.ndarray | None,
    end: np.ndarray,
) -> str | None:
    """Next lane: the one nearest the route if given, else the one turning least."""
    options = [t for t in nusc_map.get_outgoing_lane_ids(token) if t in lanes]
    if not options:
        return None

    def cost(option: str) -> float:
        line = lanes[option][1]
        if route is not None and len(route):
            gaps = np.linalg.norm(line[:, None, :2] - route[None], axis=-1)
            return float(gaps.min(axis=0).mean())
        return float(abs(wrap_angle(np.asarray(line[0, 2] - end[2]))))

    return min(options, key=cost)


def reference_centreline(
    nusc_map: Any, lanes: dict[str, tuple[Any, np.ndarray]], route: np.ndarray | None = None
) -> np.ndarray:
    """Lane centre line through the ego, in travel order: from a little behind the ego along its
    lane, then successor lanes up to ``CENTRELINE_AHEAD_M``. float [P, 2] (empty without a lane)."""
    start = _start(lanes)
    if start is None:
        return np.zeros((0, 2))
    token, index = start
    line = lanes[token][1]
    behind = max(0, index - round(CENTRELINE_BEHIND_M / LANE_RESOLUTION_M))
    pieces, seen = [line[behind:]], {token}
    length = float(np.linalg.norm(np.diff(line[index:, :2], axis=0), axis=1).sum())
    while length < CENTRELINE_AHEAD_M:
        following = _successor(nusc_map, token, lanes, route, pieces[-1][-1])
        if following is None or following in seen:
            break
        token = following
        seen.add(token)
        nxt = lanes[token][1]
        pieces.append(nxt)
        length += float(np.linalg.norm(np.diff(nxt[:, :2], axis=0), axis=1).sum())
    points = np.concatenate(pieces)[:, :2]
    keep = np.concatenate([[True], np.linalg.norm(np.diff(points, axis=0), axis=1) > 1e-6])
    return points[keep]


def scene_geometry(
    nusc_map: Any,
    pose: tuple[float, float, float],
    route: np.ndarray | None = None,
    radius_m: float = PATCH_RADIUS_M,
) -> SceneGeometry:
    """Drivable area (drivable_area + carpark_area), intersections (road segments flagged
    ``is_intersection``), lanes and lane connectors, and the reference centreline near ``pose``.

    :param nusc_map: a ``NuScenesMap`` (see :func:`load_map`).
    :param pose: the ego's global (x, y, yaw) at t = 0 (rear axle, ``LIDAR_TOP`` ego pose).
    :param route: optional float [M, 2] ego-frame points the ego is known to pass (its logged
        future), used to choose among successor lanes at forks.
    :return: geometry in the ego frame; an empty centreline / drivable area when the map has none here.
    """
    x, y, _ = pose
    patch = (x - radius_m, y - radius_m, x + radius_m, y + radius_m)
    records = records_in_patch(nusc_map, patch)
    drivable_tokens = [
        p for t in records["drivable_area"] for p in nusc_map.get("drivable_area", t)["polygon_tokens"]
    ]
    drivable_tokens += [nusc_map.get("carpark_area", t)["polygon_token"] for t in records["carpark_area"]]
    crossing = [
        nusc_map.get("road_segment", t)["polygon_token"]
        for t in records["road_segment"]
        if nusc_map.get("road_segment", t).get("is_intersection")
    ]
    lanes = _lanes(nusc_map, records, pose)
    route_ego = None if route is None else np.asarray(route, dtype=np.float64).reshape(-1, 2)
    return SceneGeometry(
        drivable=_polygons(nusc_map, drivable_tokens, pose, radius_m),
        centreline=reference_centreline(nusc_map, lanes, route_ego),
        lanes=tuple(Lane(poly, line[:, :2]) for poly, line in lanes.values() if poly is not None),
        intersections=_polygons(nusc_map, crossing, pose, radius_m),
    )
