"""Where the simulated ego is on the map, per step: the masks the metric functions take.

The map of each sample is a :class:`SceneGeometry` in the ego frame at t = 0 (see
:mod:`.map_geometry` for building one from ``NuScenesMap``). Point tests use shapely's
vectorised ``intersects_xy`` (boundary counts as inside); the loop is over samples and lanes,
never over time steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from planners.closed_loop.config import EgoGeometry, State
from planners.closed_loop.geometry import (
    ego_boxes,
    point_at_station,
    project_to_polyline,
    wrap_angle,
)
from planners.raster import box_corners


@dataclass(frozen=True)
class Lane:
    """One lane or lane connector: its polygon and its centre line in travel order, float [P, 2]."""

    polygon: BaseGeometry
    centreline: np.ndarray


@dataclass(frozen=True)
class SceneGeometry:
    """A sample's map near the ego, in the ego frame at t = 0 (x forward, y left, metres).

    ``centreline`` is the reference path for ego progress (float [P, 2], P >= 2, in travel
    order, starting near the ego); ``intersections`` may be empty where the map has none.
    """

    drivable: BaseGeometry
    centreline: np.ndarray
    lanes: tuple[Lane, ...] = ()
    intersections: BaseGeometry = field(default_factory=shapely.Polygon)

    def problem(self) -> str | None:
        """Why this sample cannot be scored, or None."""
        if self.drivable.is_empty:
            return "no drivable area near the ego"
        line = np.asarray(self.centreline)
        if line.ndim != 2 or line.shape[0] < 2 or line.shape[1] != 2 or not np.isfinite(line).all():
            return "no lane centreline near the ego"
        if np.linalg.norm(np.diff(line, axis=0), axis=-1).sum() <= 0:
            return "the lane centreline has zero length"
        return None


@dataclass(frozen=True)
class EgoAreas:
    """Per-step map facts of B rollouts, each bool [B, T]."""

    off_road: np.ndarray  # some footprint corner outside the drivable area
    multiple_lanes: np.ndarray  # corners in more than one lane, and no lane holds all four
    oncoming: np.ndarray  # centre in a lane, none of them in the ego's direction, outside intersections
    in_intersection: np.ndarray  # rear axle inside an intersection


def _inside(geometry: BaseGeometry, points: np.ndarray) -> np.ndarray:
    """bool [...]: points float [..., 2] in (or on) the geometry."""
    if geometry.is_empty:
        return np.zeros(points.shape[:-1], dtype=bool)
    return np.asarray(shapely.intersects_xy(geometry, points[..., 0], points[..., 1]), dtype=bool)


def _lane_aligned(lane: Lane, points: np.ndarray, heading: np.ndarray) -> np.ndarray:
    """bool [T]: the lane runs within 90 deg of ``heading`` at the point nearest each of ``points``."""
    line = np.asarray(lane.centreline, dtype=np.float64)[None]
    station, _ = project_to_polyline(points[None], line)
    _, tangent = point_at_station(line, station)
    return np.abs(wrap_angle(tangent[0] - heading)) < np.pi / 2


def sample_areas(states: np.ndarray, scene: SceneGeometry, ego: EgoGeometry) -> tuple[np.ndarray, ...]:
    """The four :class:`EgoAreas` masks of one rollout. :param states: float [T, S]. :return: 4 x bool [T]."""
    boxes = ego_boxes(states, ego)  # [T, 5]
    corners = box_corners(boxes)  # [T, 4, 2]
    centre, rear = boxes[:, :2], states[:, [State.X, State.Y]]
    off_road = ~_inside(scene.drivable, corners).all(axis=1)
    if scene.lanes:
        in_lane = np.stack([_inside(lane.polygon, corners) for lane in scene.lanes])  # [L, T, 4]
        touched = in_lane.any(axis=2).sum(axis=0)
        multiple = (touched > 1) & ~in_lane.all(axis=2).any(axis=0)
        centre_in = np.stack([_inside(lane.polygon, centre) for lane in scene.lanes])  # [L, T]
        aligned = np.stack([_lane_aligned(lane, centre, states[:, State.HEADING]) for lane in scene.lanes])
        wrong_way = centre_in.any(axis=0) & ~(centre_in & aligned).any(axis=0)
    else:
        multiple = wrong_way = np.zeros(len(states), dtype=bool)
    oncoming = wrong_way & ~_inside(scene.intersections, centre)
    return off_road, multiple, oncoming, _inside(scene.intersections, rear)


def ego_areas(states: np.ndarray, scenes: Sequence[SceneGeometry], ego: EgoGeometry) -> EgoAreas:
    """Map masks of B rollouts. :param states: float [B, T, S]; ``scenes``: B scene geometries."""
    masks = [sample_areas(states[b], scene, ego) for b, scene in enumerate(scenes)]
    if not masks:
        empty = np.zeros((0, states.shape[1]), dtype=bool)
        return EgoAreas(empty, empty, empty, empty)
    return EgoAreas(*(np.stack(column) for column in zip(*masks, strict=True)))
