"""Vectorised plane geometry of the closed-loop score: angles, boxes, polylines.

Boxes are ``(x, y, width, length, yaw)`` as ``future_boxes`` (length along the yaw direction).
"""

from __future__ import annotations

import numpy as np

from planners.closed_loop.config import EgoGeometry, State

_EPS = 1e-9


def wrap_angle(angle: np.ndarray) -> np.ndarray:
    """Angles mapped into [-pi, pi). :param angle: float [...]. :return: float [...]."""
    return (angle + np.pi) % (2.0 * np.pi) - np.pi


def unit(angle: np.ndarray) -> np.ndarray:
    """Unit vectors of headings. :param angle: float [...]. :return: float [..., 2]."""
    return np.stack([np.cos(angle), np.sin(angle)], axis=-1)


def ego_boxes(states: np.ndarray, ego: EgoGeometry) -> np.ndarray:
    """Ego footprints of simulated states. :param states: float [..., S]. :return: float [..., 5]."""
    heading = states[..., State.HEADING]
    centre = states[..., [State.X, State.Y]] + ego.rear_axle_to_centre_m * unit(heading)
    size = np.broadcast_to([ego.width_m, ego.length_m], (*heading.shape, 2))
    return np.concatenate([centre, size, heading[..., None]], axis=-1)


def front_bumpers(states: np.ndarray, ego: EgoGeometry) -> np.ndarray:
    """The ego's front edge as a zero-width box (a segment), for the front-collision test.

    :param states: float [..., S]. :return: float [..., 5] (x, y, 0, ego width, heading + pi/2).
    """
    heading = states[..., State.HEADING]
    reach = ego.rear_axle_to_centre_m + ego.length_m / 2
    centre = states[..., [State.X, State.Y]] + reach * unit(heading)
    zeros, widths = np.zeros_like(heading), np.full_like(heading, ego.width_m)
    return np.stack([centre[..., 0], centre[..., 1], zeros, widths, heading + np.pi / 2], axis=-1)


def relative_angle(origin: np.ndarray, heading: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Angle between a heading and the direction from ``origin`` to ``points`` (nuPlan
    ``get_agent_relative_angle``); 0 when the points coincide.

    :param origin: float [..., 2]; ``heading``: float [...]; ``points``: float [..., 2] (broadcast).
    :return: float [...] in [0, pi].
    """
    delta = points - origin
    norm = np.linalg.norm(delta, axis=-1)
    cos = (delta * unit(heading)).sum(-1) / np.maximum(norm, _EPS)
    return np.where(norm < _EPS, 0.0, np.arccos(np.clip(cos, -1.0, 1.0)))


def pad_polylines(lines: list[np.ndarray]) -> np.ndarray:
    """Stack polylines of different lengths, repeating each one's last point.

    :param lines: B arrays float [P_b, 2], P_b >= 2. :return: float [B, max P_b, 2].
    """
    size = max(len(line) for line in lines)
    return np.stack([np.concatenate([line, np.repeat(line[-1:], size - len(line), 0)]) for line in lines])


def project_to_polyline(points: np.ndarray, lines: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Arc-length station and signed lateral offset (left positive) of points on polylines.

    The nearest segment wins; beyond either end the first or last segment is extended.

    :param points: float [B, M, 2]; ``lines``: float [B, P, 2], P >= 2.
    :return: station float [B, M] (0 at the first vertex), lateral float [B, M].
    """
    start, seg = lines[:, :-1], np.diff(lines, axis=1)  # [B, P-1, 2]
    seg_len = np.linalg.norm(seg, axis=-1)  # [B, P-1]
    cum = np.concatenate([np.zeros_like(seg_len[:, :1]), np.cumsum(seg_len, axis=1)], axis=1)  # [B, P]
    direction = seg / np.maximum(seg_len, _EPS)[..., None]
    rel = points[:, :, None, :] - start[:, None]  # [B, M, P-1, 2]
    along = (rel * direction[:, None]).sum(-1)  # [B, M, P-1]
    t = np.clip(along, 0.0, seg_len[:, None])
    dist = np.linalg.norm(rel - t[..., None] * direction[:, None], axis=-1)
    dist = np.where(seg_len[:, None] < _EPS, np.inf, dist)  # padding / repeated vertices never win
    best = dist.argmin(axis=-1)[..., None]  # [B, M, 1]
    along_best = np.take_along_axis(along, best, -1)[..., 0]
    seg_best = np.take_along_axis(seg_len[:, None].repeat(points.shape[1], 1), best, -1)[..., 0]
    first_real = np.argmax(seg_len >= _EPS, axis=1)[:, None]
    first, last = best[..., 0] == first_real, best[..., 0] == _last_segment(seg_len)[:, None]
    # Clamp inside the segment except beyond the polyline's own ends.
    low = np.where(first, -np.inf, 0.0)
    high = np.where(last, np.inf, seg_best)
    along_best = np.clip(along_best, low, high)
    station = np.take_along_axis(cum[:, None, :-1].repeat(points.shape[1], 1), best, -1)[..., 0] + along_best
    cross = np.take_along_axis(
        rel[..., 0] * direction[:, None, :, 1] - rel[..., 1] * direction[:, None, :, 0], best, -1
    )[..., 0]
    return station, -cross


def _last_segment(seg_len: np.ndarray) -> np.ndarray:
    """int [B]: index of each polyline's last segment of non-zero length (0 if none)."""
    real = seg_len >= _EPS
    count = seg_len.shape[1]
    return np.where(real.any(1), count - 1 - np.argmax(real[:, ::-1], axis=1), 0)


def point_at_station(lines: np.ndarray, station: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Point and tangent heading at arc-length stations; extrapolated straight beyond the ends.

    :param lines: float [B, P, 2]; ``station``: float [B, M].
    :return: points float [B, M, 2], heading float [B, M] (0 for a polyline of zero length).
    """
    seg = np.diff(lines, axis=1)
    seg_len = np.linalg.norm(seg, axis=-1)  # [B, P-1]
    cum = np.concatenate([np.zeros_like(seg_len[:, :1]), np.cumsum(seg_len, axis=1)], axis=1)  # [B, P]
    real = seg_len >= _EPS
    # Segment index: the last real segment starting at or before the station (first real one before 0).
    starts_before = (cum[:, None, :-1] <= station[..., None]) & real[:, None]  # [B, M, P-1]
    count = seg_len.shape[1]
    last_before = count - 1 - np.argmax(starts_before[..., ::-1], axis=-1)
    first_real = np.argmax(real, axis=1)[:, None].repeat(station.shape[1], 1)
    idx = np.where(starts_before.any(-1), last_before, first_real)[..., None]  # [B, M, 1]
    seg_i = np.take_along_axis(seg[:, None].repeat(station.shape[1], 1), idx[..., None], 2)[:, :, 0]
    len_i = np.take_along_axis(seg_len[:, None].repeat(station.shape[1], 1), idx, 2)[..., 0]
    origin = np.take_along_axis(lines[:, None, :-1].repeat(station.shape[1], 1), idx[..., None], 2)[:, :, 0]
    offset = station - np.take_along_axis(cum[:, None, :-1].repeat(station.shape[1], 1), idx, 2)[..., 0]
    direction = seg_i / np.maximum(len_i, _EPS)[..., None]
    points = origin + offset[..., None] * direction
    heading = np.where(len_i >= _EPS, np.arctan2(direction[..., 1], direction[..., 0]), 0.0)
    return points, heading
