"""Bird's-eye view of one sample in its ego frame: map, agent boxes per future step, trajectories.

Forward (ego +x) points up, left (ego +y) points left. The map's drivable area and lane centre
lines come from the devkit's ``NuScenesMap`` records, drawn here with matplotlib: the devkit's own
polygon renderers fail with Shapely 2 (``docs``: DEVKIT-NOTES.md).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Polygon as PolygonPatch

from planners.closed_loop.map_geometry import records_in_patch
from vla_autoprune.data.geometry import invert_pose, pose_matrix, transform_points

logger = logging.getLogger(__name__)

MAP_RADIUS_M = 40.0
LANE_RESOLUTION_M = 1.0
EGO_SIZE_M = (1.85, 4.08)  # width, length of the ego outline (a nuScenes Renault Zoe)


@dataclass(frozen=True)
class MapLayers:
    """Map geometry in the ego frame: drivable-area polygons (``[N, 2]`` each) and lane polylines."""

    drivable: tuple[np.ndarray, ...]
    lanes: tuple[np.ndarray, ...]


@dataclass(frozen=True)
class Trajectory:
    """A trajectory to draw: ``xy`` float ``[T, 2]`` (ego frame), and per step a collision flag."""

    label: str
    xy: np.ndarray
    collision: np.ndarray | None = None


@lru_cache(maxsize=8)
def _nuscenes_map(dataroot: str, location: str) -> Any:
    from nuscenes.map_expansion.map_api import NuScenesMap  # the devkit's map API loads a large JSON

    return NuScenesMap(dataroot=dataroot, map_name=location)


def map_layers(nusc: Any, sample_token: str, radius_m: float = MAP_RADIUS_M) -> MapLayers | None:
    """The map around a sample, in its ego frame (``LIDAR_TOP``'s ego pose); None without a map.

    Args:
        nusc: the devkit's ``NuScenes`` (its ``dataroot`` must hold ``maps/expansion/<location>.json``).
    """
    sample = nusc.get("sample", sample_token)
    location = nusc.get("log", nusc.get("scene", sample["scene_token"])["log_token"])["location"]
    try:
        nmap = _nuscenes_map(str(nusc.dataroot), location)
    except (FileNotFoundError, AssertionError) as err:
        logger.info("no map drawn for %s: %s", location, err)
        return None
    pose = nusc.get("ego_pose", nusc.get("sample_data", sample["data"]["LIDAR_TOP"])["ego_pose_token"])
    ego_from_global = invert_pose(pose_matrix(pose["translation"], pose["rotation"]))
    x, y = pose["translation"][:2]
    patch = (x - radius_m, y - radius_m, x + radius_m, y + radius_m)
    # the devkit's get_records_in_patch, through an index built once per map (it rebuilds every
    # record's polygon on each call: ~0.4 s a sample, most of a drawing's map time)
    records = records_in_patch(nmap, patch)

    def to_ego(xy: np.ndarray) -> np.ndarray:
        xyz = np.column_stack([xy[:, :2], np.zeros(len(xy))])
        return transform_points(ego_from_global, xyz)[:, :2]

    drivable = []
    for token in records["drivable_area"]:
        for polygon_token in nmap.get("drivable_area", token)["polygon_tokens"]:
            polygon = nmap.extract_polygon(polygon_token)
            drivable.append(to_ego(np.asarray(polygon.exterior.coords)))
    lane_tokens = list(records["lane"]) + list(records["lane_connector"])
    lanes = [
        to_ego(np.asarray(pts)) for pts in nmap.discretize_lanes(lane_tokens, LANE_RESOLUTION_M).values()
    ]
    return MapLayers(tuple(drivable), tuple(p for p in lanes if len(p) > 1))


def box_corners(box: np.ndarray) -> np.ndarray:
    """float ``[4, 2]`` corners of a box ``(x, y, width, length, yaw)`` (length along the heading)."""
    x, y, w, length, yaw = (float(v) for v in box[:5])
    half = np.array([[1, 1], [1, -1], [-1, -1], [-1, 1]]) * np.array([length / 2, w / 2])
    rot = np.array([[np.cos(yaw), -np.sin(yaw)], [np.sin(yaw), np.cos(yaw)]])
    return half @ rot.T + np.array([x, y])


def _view(xy: np.ndarray) -> np.ndarray:
    """Ego ``(x fwd, y left)`` -> plot ``(right, up)``."""
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    return np.column_stack([-xy[:, 1], xy[:, 0]])


def _draw_map(ax: Axes, layers: MapLayers) -> None:
    for polygon in layers.drivable:
        ax.add_patch(PolygonPatch(_view(polygon), closed=True, fc="0.85", ec="0.7", lw=0.5, zorder=0))
    for lane in layers.lanes:
        xy = _view(lane)
        ax.plot(xy[:, 0], xy[:, 1], color="0.55", lw=0.6, ls="--", zorder=1)


def bev_figure(
    trajectories: Sequence[Trajectory],
    boxes: np.ndarray,
    labels: np.ndarray,
    layers: MapLayers | None = None,
    title: str = "",
    size: tuple[float, float] = (3.6, 3.8),
) -> Figure:
    """The bird's-eye view: map, GT agent boxes per future step (later = fainter), trajectories.

    Args:
        trajectories: the ground truth first, then each run's prediction; collisions get a red x.
        boxes: float ``[T, N, 5]`` GT agent boxes (x, y, width, length, yaw) per future step.
        labels: int ``[T, N]``, -1 = padding.
    """
    columns = 2 if max((len(t.label) for t in trajectories), default=0) <= 24 else 1
    legend_rows = -(-len(trajectories) // columns)
    fig = Figure(figsize=(size[0], size[1] + 0.18 * legend_rows), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    if layers is not None:
        _draw_map(ax, layers)
    steps = boxes.shape[0]
    for t in range(steps):
        alpha = 0.9 - 0.7 * t / max(steps - 1, 1)
        for box in boxes[t][labels[t] >= 0]:
            ax.add_patch(
                PolygonPatch(
                    _view(box_corners(box)), closed=True, fill=False, ec="tab:blue", alpha=alpha, lw=0.8
                )
            )
    ego = np.array([0.0, 0.0, EGO_SIZE_M[0], EGO_SIZE_M[1], 0.0])
    ax.add_patch(PolygonPatch(_view(box_corners(ego)), closed=True, fc="k", ec="k", zorder=3))
    styles = ["k-"] + [f"C{i}-" for i in range(len(trajectories))]  # run i: C{i}, as in the curves
    for trajectory, style in zip(trajectories, styles, strict=False):
        xy = _view(np.vstack([[0.0, 0.0], trajectory.xy]))
        ax.plot(xy[:, 0], xy[:, 1], style, marker="o", ms=3, lw=1.5, label=trajectory.label, zorder=4)
        if trajectory.collision is not None and np.any(trajectory.collision):
            hit = xy[1:][np.asarray(trajectory.collision, dtype=bool)]
            ax.plot(hit[:, 0], hit[:, 1], "rx", ms=9, mew=2, zorder=5)
    reach = max(20.0, float(np.abs(np.vstack([t.xy for t in trajectories])).max()) + 8.0)
    ax.set_xlim(-reach / 2, reach / 2)
    ax.set_ylim(-reach / 4, reach)
    ax.set_aspect("equal")
    ax.set_xlabel("right [m]")
    ax.set_ylabel("forward [m]")
    # below the axes: inside, it would hide the ego, the start of every plan or an agent
    fig.legend(loc="outside lower center", ncols=columns, fontsize=7, title="x: collision", title_fontsize=6)
    ax.set_title(title, fontsize=8)
    return fig
