"""Small rigid-body helpers: rotations, nuScenes quaternions ``[w, x, y, z]``, polygon clipping."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def wrap_angle(angle: np.ndarray | float) -> np.ndarray:
    """Wrap angles to ``[-pi, pi)``."""
    return (np.asarray(angle) + np.pi) % (2.0 * np.pi) - np.pi


def rotation_z(yaw: float) -> np.ndarray:
    """3x3 rotation about +z by ``yaw`` radians (counter-clockwise seen from above)."""
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def yaw_quaternion(yaw: float) -> list[float]:
    """nuScenes quaternion ``[w, x, y, z]`` of a rotation about +z by ``yaw`` radians."""
    return [math.cos(yaw / 2.0), 0.0, 0.0, math.sin(yaw / 2.0)]


def quaternion_from_matrix(rot: np.ndarray) -> list[float]:
    """Unit quaternion ``[w, x, y, z]`` (with ``w >= 0``) of a 3x3 rotation matrix.

    Shepperd's method: branch on the largest diagonal term so the square root is well conditioned.
    """
    m = np.asarray(rot, dtype=np.float64)
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    if trace > 0.0:
        r = math.sqrt(1.0 + trace) * 2.0
        q = [0.25 * r, (m[2, 1] - m[1, 2]) / r, (m[0, 2] - m[2, 0]) / r, (m[1, 0] - m[0, 1]) / r]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        r = math.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2]) * 2.0
        q = [(m[2, 1] - m[1, 2]) / r, 0.25 * r, (m[0, 1] + m[1, 0]) / r, (m[0, 2] + m[2, 0]) / r]
    elif m[1, 1] > m[2, 2]:
        r = math.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2]) * 2.0
        q = [(m[0, 2] - m[2, 0]) / r, (m[0, 1] + m[1, 0]) / r, 0.25 * r, (m[1, 2] + m[2, 1]) / r]
    else:
        r = math.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1]) * 2.0
        q = [(m[1, 0] - m[0, 1]) / r, (m[0, 2] + m[2, 0]) / r, (m[1, 2] + m[2, 1]) / r, 0.25 * r]
    sign = -1.0 if q[0] < 0.0 else 1.0
    norm = math.sqrt(sum(v * v for v in q))
    return [sign * v / norm for v in q]


def box_corners(center: np.ndarray, wlh: np.ndarray, yaw: float) -> np.ndarray:
    """The 8 corners ``[8, 3]`` of an upright box, in the devkit's ``Box.corners`` order.

    Corners 0-3 are the front face (+x of the box, along its heading), 4-7 the rear face, with the
    same sign pattern as ``nuscenes.utils.data_classes.Box.corners``.
    """
    width, length, height = (float(v) for v in wlh)
    x = length / 2.0 * np.array([1, 1, 1, 1, -1, -1, -1, -1])
    y = width / 2.0 * np.array([1, -1, -1, 1, 1, -1, -1, 1])
    z = height / 2.0 * np.array([1, 1, -1, -1, 1, 1, -1, -1])
    local = np.stack([x, y, z], axis=1)  # [8, 3]
    return local @ rotation_z(yaw).T + np.asarray(center, dtype=np.float64)


#: Corner indices (into :func:`box_corners`) of the six faces, each in cyclic order around the face.
#: Outward normals are taken as face centre minus box centre (exact for a box), not from winding.
BOX_FACES: tuple[tuple[int, int, int, int], ...] = (
    (0, 3, 2, 1),  # front (+x)
    (4, 5, 6, 7),  # rear (-x)
    (0, 1, 5, 4),  # top (+z)
    (3, 7, 6, 2),  # bottom (-z)
    (0, 4, 7, 3),  # left (+y)
    (1, 2, 6, 5),  # right (-y)
)


def clip_polygon_near(polygon: np.ndarray, near: float) -> np.ndarray:
    """Clip a planar polygon ``[N, 3]`` in camera coordinates to the half-space ``z >= near``.

    Sutherland-Hodgman against one plane; returns ``[M, 3]`` (``M = 0`` when fully behind). Projecting
    vertices behind the camera would flip them through the image, so this must run before projection.
    """
    z = polygon[:, 2]
    inside = z >= near
    if inside.all():
        return polygon
    if not inside.any():
        return polygon[:0]
    out: list[np.ndarray] = []
    count = len(polygon)
    for i in range(count):
        cur, nxt = polygon[i], polygon[(i + 1) % count]
        cur_in, nxt_in = inside[i], inside[(i + 1) % count]
        if cur_in:
            out.append(cur)
        if cur_in != nxt_in:
            t = (near - cur[2]) / (nxt[2] - cur[2])
            out.append(cur + t * (nxt - cur))
    return np.asarray(out)


def project(points_cam: np.ndarray, intrinsic: np.ndarray) -> np.ndarray:
    """Pinhole projection of camera-frame points ``[N, 3]`` (z forward) to pixels ``[N, 2]``."""
    uvw = points_cam @ intrinsic.T
    return uvw[:, :2] / uvw[:, 2:3]


@dataclass(frozen=True, eq=False)
class WorldBox:
    """An agent's box at one instant, in the global frame (as a nuScenes sample_annotation).

    :param center: ``[3]`` box centre (m).
    :param wlh: ``[3]`` width, length, height (m); length runs along the heading.
    :param yaw: heading (rad, counter-clockwise from global +x).
    :param category: nuScenes category name (``prop`` for unannotated scenery: lights, poles).
    :param rgb: colour override (props); None uses the category's colour.
    :param emissive: drawn at full colour, without shading (lit lamps).
    """

    center: np.ndarray
    wlh: np.ndarray
    yaw: float
    category: str
    rgb: tuple[int, int, int] | None = None
    emissive: bool = False

    def corners(self) -> np.ndarray:
        """The 8 corners ``[8, 3]``, see :func:`box_corners`."""
        return box_corners(self.center, self.wlh, self.yaw)
