"""Open-loop planning metrics (L2, collision) in the ``stp3`` and ``uniad`` conventions.

The contract is ``docs/METRICS.md``. All functions are pure and vectorised
over the batch and accept numpy arrays or torch tensors (any device; they are read on the CPU).
Rates come back as python floats (``nan`` when there is nothing to average); per-sample values
come back as the type of ``pred``: a numpy array, or a torch tensor on ``pred``'s device.

Shapes: ``B`` samples, ``T = 6`` future steps at 2 Hz, ``N`` padded agent boxes per step.
"""

from __future__ import annotations

from typing import TypeAlias

import numpy as np
import torch

from planners.raster import DEFAULT_GEOMETRY, GRID_CONVENTIONS, CollisionGeometry, footprint_hits
from planners.raster import rasterize_agents as _rasterize_agents
from vla_autoprune.data.schema import CATEGORIES, KEYFRAME_DT_S, NUM_FUTURE_STEPS

ArrayLike: TypeAlias = np.ndarray | torch.Tensor

#: Conventions for L2 and for aggregating per-step values over samples and steps.
CONVENTIONS: tuple[str, ...] = ("stp3", "uniad")
#: Collision tests: the two reference grids and the exact rectangle overlap.
COLLISION_CONVENTIONS: tuple[str, ...] = ("stp3", "uniad", "box")
#: Reported horizons in seconds; each one is a key ("1s", ...) of the returned dicts.
HORIZONS_S: tuple[int, ...] = (1, 2, 3)
_STEPS_PER_S = round(1 / KEYFRAME_DT_S)

#: Agent classes that count as obstacles in each convention.
CLASS_FILTERS: dict[str, tuple[str, ...]] = {
    # ST-P3 / VAD: every nuScenes vehicle.* and human.* category.
    "stp3": tuple(name for name in CATEGORIES if name.startswith(("vehicle.", "human."))),
    # UniAD: the vehicle detection classes; emergency vehicles map to no detection class.
    "uniad": (
        "vehicle.car",
        "vehicle.truck",
        "vehicle.bus.bendy",
        "vehicle.bus.rigid",
        "vehicle.trailer",
        "vehicle.construction",
        "vehicle.motorcycle",
        "vehicle.bicycle",
    ),
}


def _check_choice(value: str, known: tuple[str, ...], what: str) -> None:
    if value not in known:
        raise ValueError(f"unknown {what} {value!r}; use one of {known}")


def _as_numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _like(values: np.ndarray, ref: ArrayLike) -> ArrayLike:
    """``values`` as the array type of ``ref`` (a tensor on ``ref``'s device for torch)."""
    if isinstance(ref, torch.Tensor):
        return torch.from_numpy(np.ascontiguousarray(values)).to(ref.device)
    return values


def _trajectory(x: ArrayLike, name: str) -> np.ndarray:
    """float [B, T, >=2] -> float64 [B, T, 2], checked."""
    arr = _as_numpy(x)
    if arr.ndim != 3 or arr.shape[1] != NUM_FUTURE_STEPS or arr.shape[2] < 2:
        raise ValueError(f"{name} has shape {arr.shape}; expected [B, {NUM_FUTURE_STEPS}, 2] waypoints")
    arr = arr[..., :2].astype(np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} holds non-finite waypoints; fix the planner output or zero invalid steps")
    return arr


def _pair(pred: ArrayLike, gt: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Checked pred and gt, float64 [B, T, 2] each."""
    pred_np, gt_np = _trajectory(pred, "pred"), _trajectory(gt, "gt")
    if gt_np.shape != pred_np.shape:
        raise ValueError(f"gt has shape {gt_np.shape} but pred has {pred_np.shape}; pass matching batches")
    return pred_np, gt_np


def _mask(mask: ArrayLike, batch: int) -> np.ndarray:
    arr = _as_numpy(mask)
    if arr.shape != (batch, NUM_FUTURE_STEPS):
        raise ValueError(f"mask has shape {arr.shape}; expected [{batch}, {NUM_FUTURE_STEPS}] (gt_mask)")
    return arr.astype(bool)


def sample_terms_at(values: np.ndarray, mask: np.ndarray, convention: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample numerator and weight of the convention's rates: rate = num.sum(0) / weight.sum().

    Every rate of :func:`aggregate_at` is such a ratio of sums over samples, which is what lets a
    bootstrap reweight samples (or whole scenes) without re-deriving the convention.
    ``stp3``: num[b, h] = mean of values[b, :2N] and weight[b] = 1 if every step of b is valid, else 0.
    ``uniad``: num[b, h] = mask[b, 2N - 1] * values[b, 2N - 1] and weight[b] = 1.

    :param values: float or bool [B, T] per-step values (L2 errors or collision flags).
    :param mask: bool [B, T] gt_mask.
    :return: num float64 [B, H] (one column per horizon of ``HORIZONS_S``), weight float64 [B].
    """
    _check_choice(convention, CONVENTIONS, "convention")
    if values.shape != mask.shape:
        raise ValueError(f"values {values.shape} and mask {mask.shape} differ; pass per-step [B, 6] arrays")
    values = np.where(mask, values, 0.0).astype(np.float64)
    valid = mask.all(axis=1)
    steps = [_STEPS_PER_S * seconds for seconds in HORIZONS_S]
    if convention == "stp3":
        num = np.stack([values[:, :n].mean(axis=1) for n in steps], axis=1)  # [B, H]
        return np.where(valid[:, None], num, 0.0), valid.astype(np.float64)
    num = values[:, [n - 1 for n in steps]]  # [B, H]
    return num, np.ones(values.shape[0])


def aggregate_at(values: np.ndarray, mask: np.ndarray, convention: str) -> dict[str, float]:
    """Per-step values -> the convention's rate at each horizon.

    ``stp3``: mean over samples with all steps valid of the mean over steps k < 2N.
    ``uniad``: sum_b mask[b, k] * values[b, k] / B at k = 2N - 1.

    :param values: float or bool [B, T] per-step values (L2 errors or collision flags).
    :param mask: bool [B, T] gt_mask.
    :return: {"1s", "2s", "3s"} -> float (``nan`` with no valid sample / empty batch).
    """
    num, weight = sample_terms_at(values, mask, convention)
    total = weight.sum()
    rates = num.sum(axis=0) / total if total else np.full(len(HORIZONS_S), np.nan)
    return {f"{seconds}s": float(rate) for seconds, rate in zip(HORIZONS_S, rates, strict=True)}


def l2_errors(pred: ArrayLike, gt: ArrayLike) -> ArrayLike:
    """Per-step displacement error d[b, k] = || pred[b, k, :2] - gt[b, k, :2] ||.

    :param pred: float [B, 6, 2] planned waypoints, our ego frame.
    :param gt: float [B, 6, 2] logged waypoints.
    :return: float64 [B, 6], same array type as ``pred``.
    """
    pred_np, gt_np = _pair(pred, gt)
    return _like(np.linalg.norm(pred_np - gt_np, axis=-1), pred)


def l2_at(pred: ArrayLike, gt: ArrayLike, mask: ArrayLike, convention: str = "stp3") -> dict[str, float]:
    """L2 at 1, 2 and 3 s in the ``stp3`` (average) or ``uniad`` (at-step) convention.

    :param pred: float [B, 6, 2]; ``gt``: float [B, 6, 2]; ``mask``: bool [B, 6] gt_mask.
    :return: {"1s", "2s", "3s"} -> metres.
    """
    _check_choice(convention, CONVENTIONS, "convention")
    pred_np, gt_np = _pair(pred, gt)
    errors = np.linalg.norm(pred_np - gt_np, axis=-1)
    return aggregate_at(errors, _mask(mask, errors.shape[0]), convention)


def _agents(boxes: ArrayLike, labels: ArrayLike, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Checked float64 boxes [B, T, N, 5] and int64 labels [B, T, N]."""
    boxes_np, labels_np = _as_numpy(boxes).astype(np.float64), _as_numpy(labels)
    lead = (batch, NUM_FUTURE_STEPS)
    if boxes_np.ndim != 4 or boxes_np.shape[:2] != lead or boxes_np.shape[3] != 5:
        raise ValueError(f"future_boxes has shape {boxes_np.shape}; expected [{batch}, 6, N, 5]")
    if labels_np.shape != boxes_np.shape[:3] or not np.issubdtype(labels_np.dtype, np.integer):
        raise ValueError(
            f"future_labels must be integers of shape {boxes_np.shape[:3]}, got {labels_np.shape}"
        )
    if labels_np.size and (labels_np.min() < -1 or labels_np.max() >= len(CATEGORIES)):
        raise ValueError(f"future_labels must lie in [-1, {len(CATEGORIES)}); index CATEGORIES, -1 = padding")
    if not np.isfinite(boxes_np[labels_np >= 0]).all():
        raise ValueError("future_boxes holds non-finite values for existing agents; fix the annotations")
    # Padding may hold anything; zero it so no NaN reaches the raster's integer casts.
    return np.where(labels_np[..., None] >= 0, boxes_np, 0.0), labels_np.astype(np.int64)


def class_keep(labels: np.ndarray, classes: str) -> np.ndarray:
    """bool [B, T, N]: the agent exists (label >= 0) and its class counts in ``classes``."""
    _check_choice(classes, CONVENTIONS, "class filter")
    counted = np.array([name in CLASS_FILTERS[classes] for name in CATEGORIES])
    return (labels >= 0) & counted[np.clip(labels, 0, None)]


def travel_headings(traj: np.ndarray, geometry: CollisionGeometry = DEFAULT_GEOMETRY) -> np.ndarray:
    """Heading of travel at each waypoint, from the previous one (the origin for the first).

    Steps shorter than ``geometry.min_heading_step_m`` keep the previous heading (0, i.e. +x,
    before the first step), so a standing ego keeps its orientation.

    :param traj: float [B, T, 2]. :return: float64 [B, T] radians.
    """
    headings = np.zeros(traj.shape[:2])
    previous, heading = np.zeros_like(traj[:, 0]), np.zeros(traj.shape[0])
    for step in range(traj.shape[1]):
        delta = traj[:, step] - previous
        moved = np.linalg.norm(delta, axis=-1) >= geometry.min_heading_step_m
        heading = np.where(moved, np.arctan2(delta[:, 1], delta[:, 0]), heading)
        headings[:, step], previous = heading, traj[:, step]
    return headings


def ego_boxes(traj: np.ndarray, geometry: CollisionGeometry = DEFAULT_GEOMETRY) -> np.ndarray:
    """Ego footprints turned to the direction of travel, as boxes.

    :param traj: float [B, T, 2]. :return: float64 [B, T, 5] (x, y, width, length, yaw).
    """
    yaw = travel_headings(traj, geometry)
    ahead = geometry.ego_centre_ahead_m
    centre = traj + ahead * np.stack([np.cos(yaw), np.sin(yaw)], axis=-1)
    size = np.broadcast_to([geometry.ego_width_m, geometry.ego_length_m], (*yaw.shape, 2))
    return np.concatenate([centre, size, yaw[..., None]], axis=-1)


def boxes_overlap(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Separating-axis test: do two rotated rectangles share interior (touching is no overlap)?

    :param first: float [..., 5] (x, y, width, length, yaw); ``second`` broadcasts against it.
    :return: bool [...].
    """
    first, second = np.broadcast_arrays(first, second)
    centre_gap = second[..., :2] - first[..., :2]
    separated = np.zeros(first.shape[:-1], dtype=bool)
    for axis_box in (first, second):
        for turn in (0.0, np.pi / 2):  # each rectangle's length axis, then its width axis
            angle = axis_box[..., 4] + turn
            axis = np.stack([np.cos(angle), np.sin(angle)], axis=-1)
            reach = _half_projection(first, axis) + _half_projection(second, axis)
            separated |= np.abs((centre_gap * axis).sum(-1)) >= reach
    return ~separated


def _half_projection(box: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """Half the length of a rectangle's shadow on a unit axis: l/2 |u . n| + w/2 |v . n|."""
    cos, sin = np.cos(box[..., 4]), np.sin(box[..., 4])
    along = np.abs(cos * axis[..., 0] + sin * axis[..., 1])
    across = np.abs(-sin * axis[..., 0] + cos * axis[..., 1])
    return box[..., 3] / 2 * along + box[..., 2] / 2 * across


def _box_hits(
    traj: np.ndarray, boxes: np.ndarray, keep: np.ndarray, geometry: CollisionGeometry
) -> np.ndarray:
    """bool [B, T]: the turned ego footprint overlaps a kept agent box."""
    ego = ego_boxes(traj, geometry)[:, :, None, :]  # [B, T, 1, 5]
    return (boxes_overlap(ego, boxes) & keep).any(axis=-1)


def _resolve_classes(convention: str, classes: str | None) -> str:
    _check_choice(convention, COLLISION_CONVENTIONS, "collision convention")
    if convention in GRID_CONVENTIONS:
        if classes not in (None, convention):
            raise ValueError(
                f"{classes!r} conflicts with convention={convention!r}; only 'box' picks classes"
            )
        return convention
    return "stp3" if classes is None else classes


def collision_flags(
    pred: ArrayLike,
    gt: ArrayLike,
    future_boxes: ArrayLike,
    future_labels: ArrayLike,
    convention: str = "stp3",
    classes: str | None = None,
    geometry: CollisionGeometry = DEFAULT_GEOMETRY,
) -> ArrayLike:
    """Per-step collision flags c[b, k]: the plan hits an obstacle and the logged ego does not.

    :param pred: float [B, 6, 2] planned waypoints; ``gt``: float [B, 6, 2] logged waypoints.
    :param future_boxes: float [B, 6, N, 5] (x, y, width, length, yaw) agent boxes per step.
    :param future_labels: int [B, 6, N] index into CATEGORIES, -1 = absent.
    :param convention: ``stp3`` / ``uniad`` (reference grids) or ``box`` (exact overlap).
    :param classes: obstacle classes for ``box`` (``stp3`` default, or ``uniad``); grids use their own.
    :return: bool [B, 6], same array type as ``pred``. Invalid steps are not masked here.
    """
    classes = _resolve_classes(convention, classes)
    pred_np, gt_np = _pair(pred, gt)
    boxes, labels = _agents(future_boxes, future_labels, pred_np.shape[0])
    keep = class_keep(labels, classes)
    if convention == "box":
        pred_hits, gt_hits = (_box_hits(t, boxes, keep, geometry) for t in (pred_np, gt_np))
    else:
        grids = _rasterize_agents(boxes, keep, convention, geometry)
        pred_hits, gt_hits = (footprint_hits(grids, t, convention, geometry) for t in (pred_np, gt_np))
    return _like(pred_hits & ~gt_hits, pred)


def collision_at(
    pred: ArrayLike,
    gt: ArrayLike,
    future_boxes: ArrayLike,
    future_labels: ArrayLike,
    mask: ArrayLike,
    convention: str = "stp3",
    aggregation: str | None = None,
    geometry: CollisionGeometry = DEFAULT_GEOMETRY,
) -> dict[str, float | ArrayLike]:
    """Collision rate at 1, 2 and 3 s.

    Grid conventions use their own classes and aggregation. ``box`` (not comparable with
    published tables) uses the classes and aggregation named by ``aggregation`` (default ``stp3``).

    :param mask: bool [B, 6] gt_mask; other arguments as in :func:`collision_flags`.
    :return: {"1s", "2s", "3s"} -> float rate, and "per_sample" -> bool [B, 6] flags (type of ``pred``).
    """
    classes = _resolve_classes(convention, aggregation)
    flags = collision_flags(pred, gt, future_boxes, future_labels, convention, classes, geometry)
    flags_np = _as_numpy(flags)
    rates: dict[str, float | ArrayLike] = dict(aggregate_at(flags_np, _mask(mask, len(flags_np)), classes))
    rates["per_sample"] = flags
    return rates
