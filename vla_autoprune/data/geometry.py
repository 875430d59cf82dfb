"""Pose and frame transforms for the data layer (pure numpy, float64).

nuScenes stores every pose as ``translation`` (x, y, z metres) + ``rotation`` (quaternion
w, x, y, z) mapping the record's own frame into its parent frame (sensor -> ego for
``calibrated_sensor``, ego -> global for ``ego_pose``, box -> global for ``sample_annotation``).
A batch expresses everything in the current keyframe's ego frame: x forward, y left, z up.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from nuscenes.utils.geometry_utils import transform_matrix
from pyquaternion import Quaternion

from vla_autoprune.data.schema import COMMANDS

#: Lateral offset (m, +y = left) of the last valid GT waypoint beyond which the command is a turn.
#: 2 m is the rule of VAD / UniAD's nuScenes planning info generation.
COMMAND_LATERAL_THRESHOLD_M = 2.0


@dataclass(frozen=True)
class EgoMotion:
    """Ego motion at the current keyframe, in the current ego frame."""

    speed: float  # m/s, norm of the planar velocity
    longitudinal_accel: float  # m/s^2, acceleration along the current heading (+x)
    yaw_rate: float  # rad/s, counter-clockwise positive


def pose_matrix(
    translation: Sequence[float] | np.ndarray, rotation: Sequence[float] | np.ndarray
) -> np.ndarray:
    """``[4, 4]`` transform of a nuScenes pose (record frame -> parent frame).

    :param translation: ``[3]`` x, y, z in metres.
    :param rotation: ``[4]`` quaternion w, x, y, z.
    """
    return transform_matrix(np.asarray(translation, dtype=np.float64), Quaternion(list(rotation)))


def invert_pose(pose: np.ndarray) -> np.ndarray:
    """Inverse ``[4, 4]`` of a rigid transform ``pose`` ``[4, 4]`` (exact, no general inverse)."""
    rot_t = pose[:3, :3].T
    inverse = np.eye(4)
    inverse[:3, :3] = rot_t
    inverse[:3, 3] = -rot_t @ pose[:3, 3]
    return inverse


def transform_points(transform: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply ``transform`` ``[4, 4]`` to ``points`` ``[N, 3]``; returns ``[N, 3]``."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    return points @ transform[:3, :3].T + transform[:3, 3]


def yaw_of(transform: np.ndarray) -> float:
    """Heading (rad) of the transformed frame's x axis in the target frame's xy plane."""
    return float(np.arctan2(transform[1, 0], transform[0, 0]))


def global_to_ego_xy(
    ego_translation: Sequence[float], ego_rotation: Sequence[float], points_global: np.ndarray
) -> np.ndarray:
    """Planar coordinates of global ``points_global`` ``[N, 3]`` in an ego frame; returns ``[N, 2]``.

    :param ego_translation: ``[3]`` ego position in the global frame (``ego_pose.translation``).
    :param ego_rotation: ``[4]`` ego orientation w, x, y, z (``ego_pose.rotation``).
    """
    ego_from_global = invert_pose(pose_matrix(ego_translation, ego_rotation))
    return transform_points(ego_from_global, points_global)[:, :2]


def boxes_in_frame(
    frame_from_global: np.ndarray, centers: np.ndarray, rotations: Sequence[Sequence[float]]
) -> np.ndarray:
    """Planar pose of global boxes in another frame.

    :param frame_from_global: ``[4, 4]`` global -> target frame.
    :param centers: ``[N, 3]`` box centres (global).
    :param rotations: ``N`` box orientations, quaternions w, x, y, z (global).
    :return: ``[N, 3]`` (x, y, yaw) in the target frame.
    """
    out = np.zeros((len(rotations), 3))
    if not len(rotations):
        return out
    out[:, :2] = transform_points(frame_from_global, centers)[:, :2]
    for i, rotation in enumerate(rotations):
        box_to_frame = frame_from_global @ pose_matrix(np.zeros(3), rotation)
        out[i, 2] = yaw_of(box_to_frame)
    return out


def ego_motion(times_s: np.ndarray, xy: np.ndarray, yaws: np.ndarray, t0_s: float) -> EgoMotion:
    """Speed, longitudinal acceleration and yaw rate by finite differences over keyframes.

    Scheme: the polynomial of degree ``K - 1`` through the ``K <= 3`` given keyframes (the
    current one and its neighbours) is differentiated at ``t0_s``. With the current keyframe in
    the middle this is the (non-uniform) central difference; at a scene end the window is
    one-sided; with ``K = 2`` acceleration is 0, with ``K = 1`` everything is 0.

    :param times_s: ``[K]`` keyframe times in seconds, distinct.
    :param xy: ``[K, 2]`` ego positions in the current ego frame.
    :param yaws: ``[K]`` ego headings relative to the current heading (rad).
    :param t0_s: current keyframe time in seconds.
    """
    degree = len(times_s) - 1
    if degree < 1:
        return EgoMotion(0.0, 0.0, 0.0)
    # Columns: x, y, unwrapped yaw, so one fit gives every derivative.
    values = np.column_stack([xy, np.unwrap(np.asarray(yaws, dtype=np.float64))])
    coeffs = np.polyfit(np.asarray(times_s, dtype=np.float64) - t0_s, values, degree)  # [deg+1, 3]
    velocity = coeffs[-2]  # d/dt at t0, highest power first
    accel = 2.0 * coeffs[-3] if degree >= 2 else np.zeros(3)
    return EgoMotion(
        speed=float(np.hypot(velocity[0], velocity[1])),
        longitudinal_accel=float(accel[0]),  # current frame: +x is the heading
        yaw_rate=float(velocity[2]),
    )


def driving_command(trajectory: np.ndarray, mask: np.ndarray) -> int:
    """High-level command (index into ``COMMANDS``) from the GT future path.

    The VAD / UniAD rule: the lateral offset y of the last valid waypoint is > +2 m -> left,
    < -2 m -> right, else straight (also when no future waypoint exists).

    :param trajectory: ``[T, 2]`` future xy in the current ego frame.
    :param mask: ``[T]`` bool, waypoint exists.
    """
    valid = np.flatnonzero(np.asarray(mask, dtype=bool))
    if not valid.size:
        return COMMANDS.index("straight")
    lateral = float(trajectory[valid[-1], 1])
    if lateral > COMMAND_LATERAL_THRESHOLD_M:
        return COMMANDS.index("left")
    if lateral < -COMMAND_LATERAL_THRESHOLD_M:
        return COMMANDS.index("right")
    return COMMANDS.index("straight")
