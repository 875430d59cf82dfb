"""Procedural road geometry: a centre line of piecewise-constant curvature with parallel lanes.

Road coordinates are ``(s, d)``: arc length ``s`` along the centre line from its start and lateral
offset ``d`` (metres, left positive). A curve of constant curvature ``k`` is a circular arc, so every
pose on the road has a closed form and the map's arc-line lanes describe the same road exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike

#: Lane width (m): a typical urban lane is 3.0-3.7 m wide.
LANE_WIDTH_M = 3.5
#: Sidewalk width (m) on each side of the carriageway.
SIDEWALK_WIDTH_M = 3.0


@dataclass(frozen=True, eq=False)
class Road:
    """A road of ``len(lane_forward)`` lanes around a centre line of piecewise-constant curvature.

    :param origin: global ``(x, y, yaw)`` of the centre line at ``s = 0``.
    :param piece_lengths: ``[P]`` lengths (m) of the constant-curvature pieces, in order.
    :param piece_curvatures: ``[P]`` signed curvatures (1/m, positive turns left).
    :param lane_forward: per lane, ordered right to left: True when traffic drives towards +s.
    """

    origin: tuple[float, float, float]
    piece_lengths: np.ndarray
    piece_curvatures: np.ndarray
    lane_forward: tuple[bool, ...]
    lane_width: float = LANE_WIDTH_M
    sidewalk_width: float = SIDEWALK_WIDTH_M
    _starts: np.ndarray = field(init=False, repr=False, compare=False)
    _start_poses: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        lengths = np.asarray(self.piece_lengths, dtype=np.float64)
        starts = np.concatenate([[0.0], np.cumsum(lengths)])
        poses = np.zeros((len(lengths) + 1, 3))
        poses[0] = self.origin
        for i, (length, k) in enumerate(zip(lengths, self.piece_curvatures, strict=True)):
            poses[i + 1] = _advance(poses[i], float(length), float(k))
        object.__setattr__(self, "_starts", starts)
        object.__setattr__(self, "_start_poses", poses)

    @property
    def length(self) -> float:
        """Total centre-line length (m)."""
        return float(self._starts[-1])

    @property
    def piece_starts(self) -> np.ndarray:
        """``[P + 1]`` arc lengths of the piece boundaries (first 0, last ``length``)."""
        return self._starts

    @property
    def half_width(self) -> float:
        """Half the carriageway width (m): the road edges are at ``d = +-half_width``."""
        return len(self.lane_forward) * self.lane_width / 2.0

    @property
    def lane_offsets(self) -> np.ndarray:
        """``[L]`` lateral offsets (m) of the lane centres, right to left."""
        return (np.arange(len(self.lane_forward)) + 0.5) * self.lane_width - self.half_width

    @property
    def boundary_offsets(self) -> np.ndarray:
        """``[L + 1]`` lateral offsets (m) of the lane boundaries, right road edge first."""
        return np.arange(len(self.lane_forward) + 1) * self.lane_width - self.half_width

    def curvature_at(self, s: ArrayLike) -> np.ndarray:
        """Centre-line curvature (1/m) at arc lengths ``s`` (any shape)."""
        return np.asarray(self.piece_curvatures)[self._piece_index(s)]

    def pose_at(self, s: ArrayLike, d: ArrayLike = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Global ``xy [..., 2]`` and heading ``[...]`` (of the +s direction) at road coords ``(s, d)``."""
        s = np.asarray(s, dtype=np.float64)
        idx = self._piece_index(s)
        start = self._start_poses[idx]  # [..., 3]
        k = np.asarray(self.piece_curvatures, dtype=np.float64)[idx]
        u = s - self._starts[idx]
        turn = k * u
        # Chord of a circular arc: length u * sinc(turn / 2) along the mean heading; exact as k -> 0.
        chord = u * np.sinc(turn / (2.0 * np.pi))
        mid = start[..., 2] + turn / 2.0
        heading = start[..., 2] + turn
        x = start[..., 0] + chord * np.cos(mid) - np.asarray(d) * np.sin(heading)
        y = start[..., 1] + chord * np.sin(mid) + np.asarray(d) * np.cos(heading)
        return np.stack([x, y], axis=-1), heading

    def lane_length(self, s: ArrayLike, d: float) -> np.ndarray:
        """Arc length along the parallel curve at offset ``d`` up to centre-line arc length ``s``.

        A parallel curve at offset ``d`` has ``dl/ds = 1 - k d``, constant on each piece.
        """
        return np.interp(np.asarray(s, dtype=np.float64), self._starts, self._lane_starts(d))

    def lane_s(self, lane_length: ArrayLike, d: float) -> np.ndarray:
        """Inverse of :meth:`lane_length`: centre-line ``s`` of a point ``lane_length`` along offset ``d``."""
        return np.interp(np.asarray(lane_length, dtype=np.float64), self._lane_starts(d), self._starts)

    def _lane_starts(self, d: float) -> np.ndarray:
        scale = 1.0 - np.asarray(self.piece_curvatures) * d
        return np.concatenate([[0.0], np.cumsum(np.asarray(self.piece_lengths) * scale)])

    def _piece_index(self, s: ArrayLike) -> np.ndarray:
        idx = np.searchsorted(self._starts, np.asarray(s), side="right") - 1
        return np.clip(idx, 0, len(self.piece_lengths) - 1)


def _advance(pose: np.ndarray, length: float, curvature: float) -> np.ndarray:
    """Pose ``(x, y, yaw)`` after driving ``length`` m at constant ``curvature`` from ``pose``."""
    turn = curvature * length
    chord = length * np.sinc(turn / (2.0 * np.pi))
    mid = pose[2] + turn / 2.0
    return np.array([pose[0] + chord * np.cos(mid), pose[1] + chord * np.sin(mid), pose[2] + turn])
