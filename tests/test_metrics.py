"""Planning metrics against hand-worked cases and independent slow re-implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely
import torch
from shapely.geometry import Polygon

from planners.metrics import (
    CLASS_FILTERS,
    boxes_overlap,
    collision_at,
    collision_flags,
    ego_boxes,
    l2_at,
    l2_errors,
    travel_headings,
)
from planners.raster import DEFAULT_GEOMETRY, corner_cells, ego_cells, rasterize_agents
from vla_autoprune.data.schema import CATEGORIES

CAR = CATEGORIES.index("vehicle.car")
PEDESTRIAN = CATEGORIES.index("human.pedestrian.adult")
POLICE = CATEGORIES.index("vehicle.emergency.police")
BARRIER = CATEGORIES.index("movable_object.barrier")
STEPS = np.arange(1, 7, dtype=np.float64)
# Ego footprint front edge ahead of the waypoint: 0.5 m centre offset + half of 4.084 m.
EGO_FRONT = 0.5 + 4.084 / 2
EGO_HALF_WIDTH = 1.85 / 2


def straight(speed_per_step: float) -> np.ndarray:
    """[1, 6, 2]: driving along +x, ``speed_per_step`` metres per 0.5 s step."""
    return np.stack([speed_per_step * STEPS, np.zeros(6)], axis=-1)[None]


def agents(*placed: tuple[int, tuple[float, ...], tuple[int, ...]], n: int = 4) -> tuple:
    """future_boxes [1, 6, n, 5] and future_labels [1, 6, n] from (label, box, steps) triples."""
    boxes, labels = np.full((1, 6, n, 5), np.nan), np.full((1, 6, n), -1)
    for slot, (label, box, steps) in enumerate(placed):
        boxes[0, list(steps), slot] = box
        labels[0, list(steps), slot] = label
    return boxes, labels


ALL_STEPS = tuple(range(6))
# A parked car whose left-hand side the 4 m/s plan clips from step 4 (2.5 s) on:
# x in [11.5, 15.5], y in [0.6, 2.6] against ego y in [-0.925, 0.925].
PARKED = (13.5, 1.6, 2.0, 4.0, 0.0)
FAST, SLOW = straight(2.0), straight(0.5)
MASK = np.ones((1, 6), dtype=bool)


# ---------------------------------------------------------------- L2
def l2_case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    gt = np.zeros((2, 6, 2))
    pred = gt.copy()
    pred[0, :, 1] = [1, 1, 2, 2, 3, 0]
    pred[0, 5] = [1.8, 2.4]  # a 3-4-5 triangle: d = 3
    pred[1, :, 0] = [2, 2, 2, 2, 2, 4]
    mask = np.ones((2, 6), dtype=bool)
    mask[1, 5] = False
    return pred, gt, mask


def test_l2_errors_per_step() -> None:
    pred, gt, _ = l2_case()
    np.testing.assert_allclose(l2_errors(pred, gt)[0], [1, 1, 2, 2, 3, 3])


def test_l2_stp3_drops_invalid_samples() -> None:
    pred, gt, mask = l2_case()
    out = l2_at(pred, gt, mask, "stp3")
    assert out == pytest.approx({"1s": 1.0, "2s": 1.5, "3s": 2.0})


def test_l2_uniad_keeps_invalid_samples_in_denominator() -> None:
    pred, gt, mask = l2_case()
    out = l2_at(pred, gt, mask, "uniad")
    # k = 1: (1 + 2) / 2; k = 3: (2 + 2) / 2; k = 5: (3 + masked 0) / 2.
    assert out == pytest.approx({"1s": 1.5, "2s": 2.0, "3s": 1.5})


def test_l2_stp3_without_valid_samples_is_nan() -> None:
    pred, gt, _ = l2_case()
    mask = np.ones((2, 6), dtype=bool)
    mask[:, 5] = False
    assert math.isnan(l2_at(pred, gt, mask, "stp3")["1s"])


def test_l2_torch_matches_numpy() -> None:
    pred, gt, mask = l2_case()
    for convention in ("stp3", "uniad"):
        assert l2_at(torch.tensor(pred), torch.tensor(gt), torch.tensor(mask), convention) == pytest.approx(
            l2_at(pred, gt, mask, convention)
        )
    errors = l2_errors(torch.tensor(pred, dtype=torch.float32), torch.tensor(gt))
    assert isinstance(errors, torch.Tensor)
    np.testing.assert_allclose(errors.numpy(), l2_errors(pred, gt), rtol=1e-6)


@pytest.mark.parametrize("convention", ["paper", "STP3"])
def test_unknown_convention_lists_known_ones(convention: str) -> None:
    pred, gt, mask = l2_case()
    with pytest.raises(ValueError, match=r"stp3.*uniad"):
        l2_at(pred, gt, mask, convention)
    boxes, labels = agents((CAR, PARKED, ALL_STEPS))
    with pytest.raises(ValueError, match=r"stp3.*uniad.*box"):
        collision_flags(FAST, SLOW, boxes, labels, convention)


def test_bad_shapes_are_rejected() -> None:
    boxes, labels = agents((CAR, PARKED, ALL_STEPS))
    with pytest.raises(ValueError, match="pred"):
        l2_errors(np.zeros((1, 5, 2)), np.zeros((1, 6, 2)))
    with pytest.raises(ValueError, match="future_labels"):
        collision_flags(FAST, SLOW, boxes, labels[..., :2])
    with pytest.raises(ValueError, match="future_labels"):
        collision_flags(FAST, SLOW, boxes, labels + len(CATEGORIES))


# ---------------------------------------------------------------- raster details
def test_ego_offsets_match_metrics_md() -> None:
    assert DEFAULT_GEOMETRY.ego_fwd_offsets.tolist() == list(range(97, 105))
    assert DEFAULT_GEOMETRY.ego_lat_offsets.tolist() == list(range(98, 102))


def test_corner_cells_round_half_to_even() -> None:
    corners = np.array([[0.25, -0.75], [0.25, -0.25]])  # (x, y) -> right = 0.75 / 0.25, fwd = 0.25
    # col = round(101.5) = 102, round(100.5) = 100; stp3 row = round(99.5) = 100; uniad round(100.5) = 100.
    assert corner_cells(corners, "stp3", DEFAULT_GEOMETRY).tolist() == [[102, 100], [100, 100]]
    assert corner_cells(corners, "uniad", DEFAULT_GEOMETRY).tolist() == [[102, 100], [100, 100]]


def test_raster_of_an_axis_aligned_box() -> None:
    boxes = np.array([10.0, 0.0, 2.0, 4.0, 0.0]).reshape(1, 1, 1, 5)  # x 8..12, right -1..1
    keep = np.ones((1, 1, 1), dtype=bool)
    stp3, uniad = (rasterize_agents(boxes, keep, c)[0, 0] for c in ("stp3", "uniad"))
    rows, cols = np.nonzero(stp3)
    assert (rows.min(), rows.max(), cols.min(), cols.max(), stp3.sum()) == (76, 84, 98, 102, 45)
    rows, cols = np.nonzero(uniad)
    assert (rows.min(), rows.max(), cols.min(), cols.max(), uniad.sum()) == (116, 124, 98, 102, 45)


def test_overlapping_agents_stay_occupied() -> None:
    boxes = np.array([[0.0, 0.0, 4.0, 4.0, 0.0], [1.0, 1.0, 4.0, 4.0, 0.0]]).reshape(1, 1, 2, 5)
    grid = rasterize_agents(boxes, np.ones((1, 1, 2), dtype=bool), "stp3")[0, 0]
    assert grid[100, 100] == 1  # (x, y) = (0, 0): inside both boxes
    assert grid.sum() == 2 * 81 - 49  # two 9 x 9 blocks sharing 7 x 7 cells


def test_ego_cells_float32_and_truncation() -> None:
    rows, cols = ego_cells(np.array([[[0.3, -0.3]]]), "stp3")
    # fwd / 0.5 = 0.6: rows int(200 - 0.6 - l) for l = 97..104; cols int(0.6 + w) for w = 98..101.
    assert rows[0, 0, :, 0].tolist() == list(range(102, 94, -1))
    assert cols[0, 0, 0].tolist() == list(range(98, 102))
    rows, _ = ego_cells(np.array([[[1.5 - 1e-10, 0.0]]]), "uniad")
    assert rows[0, 0, 0, 0] == 100  # float32(1.5 - 1e-10) == 1.5; in float64 it would truncate to 99
    rows, cols = ego_cells(np.array([[[-60.0, 80.0]]]), "uniad")
    assert rows.max() == 0 and cols.max() == 0  # clipped into the grid


# ---------------------------------------------------------------- hand-worked collisions
@pytest.mark.parametrize("convention", ["stp3", "uniad", "box"])
def test_clipping_a_parked_car_from_2_5_s(convention: str) -> None:
    boxes, labels = agents((CAR, PARKED, ALL_STEPS))
    flags = collision_flags(FAST, SLOW, boxes, labels, convention)
    assert flags.tolist() == [[False, False, False, False, True, True]]
    out = collision_at(FAST, SLOW, boxes, labels, MASK, convention)
    expected_3s = 1.0 if convention == "uniad" else 2 / 6
    assert (out["1s"], out["2s"]) == (0.0, 0.0)
    assert out["3s"] == pytest.approx(expected_3s)


@pytest.mark.parametrize("convention", ["stp3", "uniad", "box"])
def test_collision_only_at_step_4(convention: str) -> None:
    boxes, labels = agents((CAR, PARKED, (4,)))
    out = collision_at(FAST, SLOW, boxes, labels, MASK, convention)
    assert out["per_sample"].tolist() == [[False] * 4 + [True, False]]
    # stp3 averages steps k < 6; uniad looks at k = 5 only and misses it.
    assert out["3s"] == pytest.approx(0.0 if convention == "uniad" else 1 / 6)


def test_box_aggregation_is_selectable() -> None:
    boxes, labels = agents((CAR, PARKED, ALL_STEPS))
    out = collision_at(FAST, SLOW, boxes, labels, MASK, "box", aggregation="uniad")
    assert out["3s"] == 1.0
    with pytest.raises(ValueError, match="only 'box'"):
        collision_at(FAST, SLOW, boxes, labels, MASK, "stp3", aggregation="uniad")


@pytest.mark.parametrize(("gap", "hits"), [(0.01, False), (-0.01, True)])
def test_box_one_centimetre_ahead(gap: float, hits: bool) -> None:
    front = 10.0 + EGO_FRONT  # the fast plan is at x = 10 at step 4
    boxes, labels = agents((CAR, (front + gap + 2.0, 0.0, 2.0, 4.0, 0.0), (4,)))
    assert collision_flags(FAST, SLOW, boxes, labels, "box")[0, 4] == hits


@pytest.mark.parametrize(("gap", "hits"), [(0.01, False), (-0.01, True)])
def test_box_one_centimetre_beside(gap: float, hits: bool) -> None:
    boxes, labels = agents((CAR, (10.5, EGO_HALF_WIDTH + gap + 1.0, 2.0, 4.0, 0.0), (4,)))
    assert collision_flags(FAST, SLOW, boxes, labels, "box")[0, 4] == hits


@pytest.mark.parametrize(("gap", "hits"), [(0.01, False), (-0.01, True)])
def test_box_footprint_turns_with_travel(gap: float, hits: bool) -> None:
    heading = np.array([math.cos(math.pi / 4), math.sin(math.pi / 4)])
    diagonal = (STEPS[:, None] * 2.0 * heading)[None]  # 2 m steps at 45 degrees
    centre = diagonal[0, 4] + (EGO_FRONT + gap + 2.0) * heading
    boxes, labels = agents((CAR, (*centre, 2.0, 4.0, math.pi / 4), (4,)))
    assert collision_flags(diagonal, SLOW, boxes, labels, "box")[0, 4] == hits


def test_boxes_overlap_touching_is_not_overlap() -> None:
    unit = np.array([0.0, 0.0, 1.0, 1.0, 0.0])
    others = np.array([[0.5, 0.5, 1.0, 1.0, 0.3], [1.0, 0.0, 1.0, 1.0, 0.0], [0.0, 1.3, 1.0, 1.0, 0.0]])
    assert boxes_overlap(unit, others).tolist() == [True, False, False]
    # A square turned 45 degrees reaches sqrt(2) / 2 ~ 0.707 m from its centre along x.
    diamond = np.array([[1.2, 0.0, 1.0, 1.0, math.pi / 4], [1.25, 0.0, 1.0, 1.0, math.pi / 4]])
    assert boxes_overlap(unit, diamond).tolist() == [True, False]


def test_travel_headings_keep_heading_on_short_steps() -> None:
    traj = np.array([[[0.05, 0.0], [2.0, 0.0], [2.0, 0.05], [2.0, 2.05], [2.0, 2.05], [0.0, 2.05]]])
    expected = [0.0, 0.0, 0.0, math.pi / 2, math.pi / 2, math.pi]
    np.testing.assert_allclose(travel_headings(traj)[0], expected, atol=1e-12)
    np.testing.assert_allclose(ego_boxes(traj)[0, 3], [2.0, 2.55, 1.85, 4.084, math.pi / 2], atol=1e-12)


@pytest.mark.parametrize("convention", ["stp3", "uniad", "box"])
def test_logged_ego_collision_is_not_counted(convention: str) -> None:
    boxes, labels = agents((CAR, PARKED, ALL_STEPS))
    assert not collision_flags(FAST, FAST, boxes, labels, convention).any()
    gt = FAST.copy()
    gt[0, 5] = SLOW[0, 5]  # the logged ego also clips the car at step 4, but not at step 5
    flags = collision_flags(FAST, gt, boxes, labels, convention)
    assert flags.tolist() == [[False] * 5 + [True]]
    out = collision_at(FAST, gt, boxes, labels, MASK, convention)
    assert out["3s"] == pytest.approx(1.0 if convention == "uniad" else 1 / 6)  # step 4 stays in B


@pytest.mark.parametrize(
    ("label", "stp3", "uniad"),
    [(CAR, True, True), (PEDESTRIAN, True, False), (POLICE, True, False), (BARRIER, False, False)],
)
def test_class_filters(label: int, stp3: bool, uniad: bool) -> None:
    boxes, labels = agents((label, PARKED, ALL_STEPS))
    assert collision_flags(FAST, SLOW, boxes, labels, "stp3")[0, 4] == stp3
    assert collision_flags(FAST, SLOW, boxes, labels, "uniad")[0, 4] == uniad
    assert collision_flags(FAST, SLOW, boxes, labels, "box")[0, 4] == stp3
    assert collision_flags(FAST, SLOW, boxes, labels, "box", classes="uniad")[0, 4] == uniad


def test_torch_inputs_match_numpy() -> None:
    boxes, labels = agents((CAR, PARKED, ALL_STEPS), (PEDESTRIAN, (4.0, -1.0, 0.6, 0.6, 0.3), ALL_STEPS))
    as_torch = [torch.tensor(a) for a in (FAST, SLOW, np.nan_to_num(boxes), labels, MASK)]
    for convention in ("stp3", "uniad", "box"):
        expected = collision_at(FAST, SLOW, boxes, labels, MASK, convention)
        got = collision_at(*as_torch, convention=convention)
        assert isinstance(got["per_sample"], torch.Tensor) and got["per_sample"].dtype == torch.bool
        assert got["per_sample"].tolist() == expected["per_sample"].tolist()
        assert {k: got[k] for k in ("1s", "2s", "3s")} == {k: expected[k] for k in ("1s", "2s", "3s")}


# ---------------------------------------------------------------- independent slow references
def random_scene(rng: np.random.Generator, batch: int, yaws: np.ndarray | None) -> tuple:
    """Plans wandering near the origin and a few agents around them."""
    pred = np.cumsum(rng.normal(0.0, 1.5, (batch, 6, 2)), axis=1)
    gt = np.cumsum(rng.normal(0.0, 1.5, (batch, 6, 2)), axis=1)
    n = 5
    centre = pred[:, :, None] + rng.uniform(-6.0, 6.0, (batch, 6, n, 2))
    size = rng.uniform(0.5, 6.0, (batch, 6, n, 2))
    yaw = rng.uniform(-np.pi, np.pi, (batch, 6, n)) if yaws is None else rng.choice(yaws, (batch, 6, n))
    boxes = np.concatenate([centre, size, yaw[..., None]], axis=-1)
    labels = rng.integers(-1, len(CATEGORIES), (batch, 6, n))
    return pred, gt, boxes, labels


def rectangle(x: float, y: float, width: float, length: float, yaw: float) -> list[tuple[float, float]]:
    c, s = math.cos(yaw), math.sin(yaw)
    signs = [(1, 1), (-1, 1), (-1, -1), (1, -1)]
    return [
        (x + c * a * length / 2 - s * b * width / 2, y + s * a * length / 2 + c * b * width / 2)
        for a, b in signs
    ]


def slow_box_hits(traj: np.ndarray, boxes: np.ndarray, labels: np.ndarray, classes: str) -> np.ndarray:
    hits = np.zeros(traj.shape[:2], dtype=bool)
    for b in range(traj.shape[0]):
        heading, prev = 0.0, (0.0, 0.0)
        for k in range(6):
            x, y = traj[b, k]
            if math.hypot(x - prev[0], y - prev[1]) >= 0.1:
                heading = math.atan2(y - prev[1], x - prev[0])
            prev = (x, y)
            ego = Polygon(
                rectangle(x + 0.5 * math.cos(heading), y + 0.5 * math.sin(heading), 1.85, 4.084, heading)
            )
            for n in range(boxes.shape[2]):
                if labels[b, k, n] < 0 or CATEGORIES[labels[b, k, n]] not in CLASS_FILTERS[classes]:
                    continue
                if ego.intersection(Polygon(rectangle(*boxes[b, k, n]))).area > 1e-9:
                    hits[b, k] = True
    return hits


@pytest.mark.parametrize("classes", ["stp3", "uniad"])
def test_box_matches_shapely(classes: str) -> None:
    pred, gt, boxes, labels = random_scene(np.random.default_rng(0), 24, yaws=None)
    expected = slow_box_hits(pred, boxes, labels, classes) & ~slow_box_hits(gt, boxes, labels, classes)
    got = collision_flags(pred, gt, boxes, labels, "box", classes=classes)
    assert 0 < expected.sum() < expected.size
    np.testing.assert_array_equal(got, expected)


def slow_grid(boxes: np.ndarray, labels: np.ndarray, convention: str) -> np.ndarray:
    """One step's grid with an explicit inside-or-on test per cell (rectangles only stay convex)."""
    grid = np.zeros((200, 200), dtype=bool)
    for box, label in zip(boxes, labels, strict=True):
        if label < 0 or CATEGORIES[label] not in CLASS_FILTERS[convention]:
            continue
        points = []
        for x, y in rectangle(*box):
            row = round((50 - x) / 0.5) if convention == "stp3" else round((x + 50) / 0.5)
            points.append((round((-y + 50) / 0.5), row))  # python's round is half-to-even too
        cols, rows = [c for c, _ in points], [r for _, r in points]
        # Cells outside the points' bounding box cannot be inside; skip them for speed.
        for row in range(max(min(rows), 0), min(max(rows), 199) + 1):
            for col in range(max(min(cols), 0), min(max(cols), 199) + 1):
                grid[row, col] |= inside_or_on(points, col, row)
    return grid


def inside_or_on(points: list[tuple[int, int]], col: int, row: int) -> bool:
    crosses = [
        (bx - ax) * (row - ay) - (by - ay) * (col - ax)
        for (ax, ay), (bx, by) in zip(points, points[1:] + points[:1], strict=True)
    ]
    return all(c >= 0 for c in crosses) or all(c <= 0 for c in crosses)


def slow_ego_hit(grid: np.ndarray, x: float, y: float, convention: str) -> bool:
    lon = range(math.ceil((-2.042 + 0.5 + 49.75) / 0.5), math.floor((2.042 + 0.5 + 49.75) / 0.5) + 1)
    lat = range(math.ceil((-0.925 + 49.75) / 0.5), math.floor((0.925 + 49.75) / 0.5) + 1)
    right, fwd = np.float32(-y) / np.float32(0.5), np.float32(x) / np.float32(0.5)
    for step in lon:
        row = int(200 - (float(fwd) + step)) if convention == "stp3" else int(float(fwd) + step)
        for side in lat:
            if grid[min(max(row, 0), 199), min(max(int(float(right) + side), 0), 199)]:
                return True
    return False


@pytest.mark.parametrize("convention", ["stp3", "uniad"])
def test_grid_matches_slow_raster(convention: str) -> None:
    pred, gt, boxes, labels = random_scene(np.random.default_rng(1), 3, yaws=np.pi / 2 * np.arange(-1, 3))
    expected = np.zeros((3, 6), dtype=bool)
    for b in range(3):
        for k in range(6):
            grid = slow_grid(boxes[b, k], labels[b, k], convention)
            hit = slow_ego_hit(grid, *pred[b, k], convention)
            expected[b, k] = hit and not slow_ego_hit(grid, *gt[b, k], convention)
    got = collision_flags(pred, gt, boxes, labels, convention)
    assert 0 < expected.sum() < expected.size
    np.testing.assert_array_equal(got, expected)


def test_rotated_raster_covers_the_rounded_polygon() -> None:
    rng = np.random.default_rng(2)
    boxes = np.concatenate(
        [rng.uniform(-30, 30, (8, 2)), rng.uniform(1.0, 10.0, (8, 2)), rng.uniform(-np.pi, np.pi, (8, 1))],
        axis=-1,
    )
    grids = rasterize_agents(boxes[:, None, None], np.ones((8, 1, 1), dtype=bool), "stp3")
    cols, rows = np.meshgrid(np.arange(200), np.arange(200))
    for box, grid in zip(boxes, grids[:, 0], strict=True):
        polygon = Polygon(corner_cells(np.array(rectangle(*box)), "stp3", DEFAULT_GEOMETRY))
        covered = shapely.intersects_xy(polygon, cols, rows)
        far = shapely.distance(polygon, shapely.points(cols, rows)) > 1.0
        assert grid[covered].all() and not grid[far].any()
