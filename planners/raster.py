"""BEV occupancy raster and ego footprint cells of the ST-P3 / UniAD collision metrics.

Implements "The reference raster, exactly" of ``docs/METRICS.md`` so that
grid collision rates match published tables. Inputs are numpy arrays in our ego frame
(x forward, y left); the raster itself lives in the references' frame (right = -y, fwd = x).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

#: Grid conventions; they differ only in the direction of the row axis.
GRID_CONVENTIONS: tuple[str, ...] = ("stp3", "uniad")


@dataclass(frozen=True)
class CollisionGeometry:
    """Grid and ego constants shared by the ``stp3``, ``uniad`` and ``box`` collision tests."""

    grid_size: int = 200  # [cells] per side: 100 m / 0.5 m
    resolution_m: float = 0.5  # [m] per cell (ST-P3 / VAD / UniAD BEV bounds [-50, 50, 0.5])
    half_extent_m: float = 50.0  # [m] the grid covers [-50, 50) on both axes
    ego_length_m: float = 4.084  # [m] along x: the nuScenes Renault Zoe used by the references
    ego_width_m: float = 1.85  # [m] along y
    ego_centre_ahead_m: float = 0.5  # [m] footprint centre ahead of the waypoint (rear axle -> centre)
    min_heading_step_m: float = 0.1  # [m] ``box`` only: shorter steps keep the previous heading

    @property
    def first_cell_centre_m(self) -> float:
        """[m] coordinate of the first cell centre (-49.75 m by default)."""
        return -self.half_extent_m + self.resolution_m / 2

    @property
    def ego_fwd_offsets(self) -> np.ndarray:
        """int64 [8]: forward cell offsets of the ego block (97..104 by default)."""
        half, origin = self.ego_length_m / 2, self.first_cell_centre_m - self.ego_centre_ahead_m
        return self._offsets(-half - origin, half - origin)

    @property
    def ego_lat_offsets(self) -> np.ndarray:
        """int64 [4]: lateral cell offsets of the ego block (98..101 by default)."""
        half, origin = self.ego_width_m / 2, self.first_cell_centre_m
        return self._offsets(-half - origin, half - origin)

    def _offsets(self, low_m: float, high_m: float) -> np.ndarray:
        low, high = math.ceil(low_m / self.resolution_m), math.floor(high_m / self.resolution_m)
        return np.arange(low, high + 1, dtype=np.int64)


DEFAULT_GEOMETRY = CollisionGeometry()

#: Value of an occupied cell (one-channel colour for cv2).
_OCCUPIED = (1,)

# Corner signs (length, width) in cyclic order, as the references list them.
_CORNER_SIGNS = np.array([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]])


def check_grid_convention(convention: str) -> None:
    """Raise ValueError unless ``convention`` is a grid convention."""
    if convention not in GRID_CONVENTIONS:
        raise ValueError(f"unknown grid convention {convention!r}; use one of {GRID_CONVENTIONS}")


def box_corners(boxes: np.ndarray) -> np.ndarray:
    """Corners of agent boxes in our frame.

    :param boxes: float [..., 5] (x, y, width, length, yaw), length along the heading.
    :return: float64 [..., 4, 2] (x, y) corners in cyclic order: front-left, rear-left, rear-right,
        front-right (nuPlan's ``OrientedBox.all_corners`` order; corners 3 -> 0 are the front bumper).
    """
    boxes = boxes.astype(np.float64)
    centre, yaw = boxes[..., None, 0:2], boxes[..., None, 4]
    along = _CORNER_SIGNS[:, 0] * boxes[..., None, 3] / 2  # [..., 4]
    across = _CORNER_SIGNS[:, 1] * boxes[..., None, 2] / 2
    cos, sin = np.cos(yaw), np.sin(yaw)
    offset = np.stack([cos * along - sin * across, sin * along + cos * across], axis=-1)
    return centre + offset


def corner_cells(corners: np.ndarray, convention: str, geometry: CollisionGeometry) -> np.ndarray:
    """Grid points of box corners, as ``cv2.fillPoly`` takes them.

    :param corners: float [..., 4, 2] (x, y) corners in our frame.
    :return: int32 [..., 4, 2] (col, row) points.
    """
    check_grid_convention(convention)
    right, fwd = -corners[..., 1], corners[..., 0]
    half, res = geometry.half_extent_m, geometry.resolution_m
    col = np.round((right + half) / res)  # numpy rounds half to even, like the references
    row = np.round((half - fwd) / res) if convention == "stp3" else np.round((fwd + half) / res)
    return np.stack([col, row], axis=-1).astype(np.int32)


def rasterize_agents(
    boxes: np.ndarray, keep: np.ndarray, convention: str, geometry: CollisionGeometry = DEFAULT_GEOMETRY
) -> np.ndarray:
    """Fill the kept agent boxes of every (sample, step) into an occupancy grid.

    :param boxes: float [B, T, N, 5] (x, y, width, length, yaw) in our ego frame.
    :param keep: bool [B, T, N], the agents to draw (existing and of the convention's classes).
    :return: uint8 [B, T, grid_size, grid_size] occupancy indexed [row, col] (40 kB per step).
    """
    points = corner_cells(box_corners(boxes), convention, geometry)  # [B, T, N, 4, 2]
    size = geometry.grid_size
    grids = np.zeros((*keep.shape[:2], size, size), dtype=np.uint8)
    for b, t, n in zip(*np.nonzero(keep), strict=True):
        # One call per polygon: a multi-polygon fillPoly applies even-odd and leaves overlaps empty.
        cv2.fillPoly(grids[b, t], [points[b, t, n]], _OCCUPIED)
    return grids


def ego_cells(
    traj: np.ndarray, convention: str, geometry: CollisionGeometry = DEFAULT_GEOMETRY
) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of the 8 x 4 ego footprint block at each waypoint.

    :param traj: float [B, T, 2] (x, y) waypoints in our ego frame; cast to float32 as in the references.
    :return: (rows int64 [B, T, 8, 1], cols int64 [B, T, 1, 4]), broadcasting to the 32 cells.
    """
    check_grid_convention(convention)
    traj = traj.astype(np.float32)
    res = np.float32(geometry.resolution_m)
    # float32 division, then float64 offsets (numpy promotes float32 + int64 arrays like this).
    right = (-traj[..., 1] / res).astype(np.float64)[..., None, None]
    fwd = (traj[..., 0] / res).astype(np.float64)[..., None, None]
    lat = geometry.ego_lat_offsets[None, :]  # [1, 4]
    lon = geometry.ego_fwd_offsets[:, None]  # [8, 1]
    rows = geometry.grid_size - (fwd + lon) if convention == "stp3" else fwd + lon
    return _truncate_clip(rows, geometry.grid_size), _truncate_clip(right + lat, geometry.grid_size)


def _truncate_clip(values: np.ndarray, size: int) -> np.ndarray:
    """int(value) clipped to [0, size - 1]; clipping first is equivalent and avoids int overflow."""
    return np.trunc(np.clip(values, 0, size - 1)).astype(np.int64)


def footprint_hits(
    grids: np.ndarray, traj: np.ndarray, convention: str, geometry: CollisionGeometry = DEFAULT_GEOMETRY
) -> np.ndarray:
    """Whether the ego block at each waypoint touches an occupied cell.

    :param grids: uint8 [B, T, S, S] from :func:`rasterize_agents` (same convention).
    :param traj: float [B, T, 2] (x, y) waypoints in our ego frame.
    :return: bool [B, T].
    """
    rows, cols = ego_cells(traj, convention, geometry)
    batch = np.arange(grids.shape[0])[:, None, None, None]
    step = np.arange(grids.shape[1])[None, :, None, None]
    return grids[batch, step, rows, cols].any(axis=(-2, -1))
