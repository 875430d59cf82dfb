"""The painted ground of a scene as flat quads in the global frame: asphalt, sidewalks, lane markings.

Each layer is a stack of quads ``[Q, 4, 3]`` (z = 0) of one colour; layers are drawn in order, so
markings land on the asphalt. Quads are short (a few metres) so curves stay smooth and each one can
be clipped to the camera's near plane on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data_tools.synthetic.road import Road

#: Cross-section spacing (m) of asphalt, sidewalk and solid-line quads; at the sharpest bend (k = 0.03)
#: a 2 m chord deviates from the arc by k * 2^2 / 8 = 1.5 cm.
GROUND_STEP_M = 2.0
#: Marking widths (m): 15 cm white lines; the yellow line between the two directions is 20 cm wide.
#: These match the map's segment types (SINGLE_SOLID_WHITE, DOUBLE_DASHED_WHITE, SINGLE_SOLID_YELLOW).
LINE_WIDTH_M = 0.15
YELLOW_LINE_WIDTH_M = 0.2
#: Edge lines sit this far inside the carriageway edge (m).
EDGE_LINE_INSET_M = 0.3
#: Dashed lane lines: 3 m dashes every 9 m (the common 10 ft / 30 ft US pattern).
DASH_M, DASH_PERIOD_M = 3.0, 9.0

#: Stop line width (m, 30-60 cm in most codes); zebra crosswalk: stripe and gap widths (m) across
#: the road, and its length (m) along it.
STOP_LINE_WIDTH_M = 0.4
ZEBRA_STRIPE_M, ZEBRA_GAP_M = 0.5, 0.6
CROSSWALK_LENGTH_M = 3.0

#: RGB colours of the ground materials.
ASPHALT_RGB = (72, 72, 78)
SIDEWALK_RGB = (160, 158, 150)
WHITE_PAINT_RGB = (235, 235, 235)
YELLOW_PAINT_RGB = (235, 195, 50)


@dataclass(frozen=True, eq=False)
class GroundLayer:
    """Quads ``[Q, 4, 3]`` of one RGB colour, with their centres ``[Q, 2]`` for range culling."""

    rgb: tuple[int, int, int]
    quads: np.ndarray
    centers: np.ndarray


def ground_layers(
    road: Road,
    cross: Road | None = None,
    stop_line_s: float | None = None,
    crosswalk_s: float | None = None,
) -> tuple[GroundLayer, ...]:
    """Asphalt, sidewalks, white markings and yellow markings of ``road``, in drawing order; with a
    crossing road's asphalt over the sidewalks, a stop line across the lanes driving towards +s
    and zebra stripes of a crosswalk starting at centre-line ``crosswalk_s``."""
    stations = np.linspace(0.0, road.length, max(2, int(np.ceil(road.length / GROUND_STEP_M)) + 1))
    half, walk = road.half_width, road.sidewalk_width
    asphalt = [_strip(road, stations, -half, half)]
    sidewalks = [_strip(road, stations, half, half + walk), _strip(road, stations, -half - walk, -half)]
    crossing = []
    if cross is not None:
        cross_stations = np.linspace(
            0.0, cross.length, max(2, int(np.ceil(cross.length / GROUND_STEP_M)) + 1)
        )
        crossing.append(_strip(cross, cross_stations, -cross.half_width, cross.half_width))
    white = [
        _line(road, stations, half - EDGE_LINE_INSET_M, LINE_WIDTH_M),
        _line(road, stations, -half + EDGE_LINE_INSET_M, LINE_WIDTH_M),
    ]
    yellow = []
    boundaries = road.boundary_offsets
    for i in range(1, len(road.lane_forward)):
        if road.lane_forward[i - 1] == road.lane_forward[i]:
            white.append(_dashed_line(road, boundaries[i]))
        else:
            yellow.append(_line(road, stations, boundaries[i], YELLOW_LINE_WIDTH_M))
    if stop_line_s is not None:
        forward = [i for i, f in enumerate(road.lane_forward) if f]
        lo, hi = boundaries[min(forward)], boundaries[max(forward) + 1]
        white.append(_strip(road, np.array([stop_line_s - STOP_LINE_WIDTH_M, stop_line_s]), lo, hi))
    if crosswalk_s is not None:
        starts = np.arange(
            -half + ZEBRA_GAP_M / 2.0, half - ZEBRA_STRIPE_M / 2.0, ZEBRA_STRIPE_M + ZEBRA_GAP_M
        )
        span = np.array([crosswalk_s, crosswalk_s + CROSSWALK_LENGTH_M])
        white.extend(_strip(road, span, d, d + ZEBRA_STRIPE_M) for d in starts)
    return tuple(
        _layer(rgb, quads)
        for rgb, quads in (
            (ASPHALT_RGB, asphalt),
            (SIDEWALK_RGB, sidewalks),
            (ASPHALT_RGB, crossing),
            (WHITE_PAINT_RGB, white),
            (YELLOW_PAINT_RGB, yellow),
        )
        if quads
    )


def _layer(rgb: tuple[int, int, int], parts: list[np.ndarray]) -> GroundLayer:
    quads = np.concatenate(parts)
    return GroundLayer(rgb, quads, quads[:, :, :2].mean(axis=1))


def _strip(road: Road, stations: np.ndarray, d_right: float, d_left: float) -> np.ndarray:
    """Quads ``[len(stations) - 1, 4, 3]`` covering ``d_right <= d <= d_left`` between stations."""
    right, _ = road.pose_at(stations, d_right)
    left, _ = road.pose_at(stations, d_left)
    quads = np.stack([right[:-1], right[1:], left[1:], left[:-1]], axis=1)  # [Q, 4, 2]
    return np.concatenate([quads, np.zeros((*quads.shape[:2], 1))], axis=-1)


def _line(road: Road, stations: np.ndarray, d: float, width: float) -> np.ndarray:
    """A solid line of ``width`` centred on offset ``d``."""
    return _strip(road, stations, d - width / 2.0, d + width / 2.0)


def _dashed_line(road: Road, d: float) -> np.ndarray:
    """Dashes of length ``DASH_M`` every ``DASH_PERIOD_M`` along offset ``d``."""
    starts = np.arange(0.0, road.length - DASH_M, DASH_PERIOD_M)
    right, _ = road.pose_at(np.stack([starts, starts + DASH_M], axis=1), d - LINE_WIDTH_M / 2.0)
    left, _ = road.pose_at(np.stack([starts, starts + DASH_M], axis=1), d + LINE_WIDTH_M / 2.0)
    quads = np.stack([right[:, 0], right[:, 1], left[:, 1], left[:, 0]], axis=1)  # [Q, 4, 2]
    return np.concatenate([quads, np.zeros((*quads.shape[:2], 1))], axis=-1)
