"""Per-camera budgets: how a layer's kept visual tokens are shared among the cameras.

Every pruner has ``per_camera``: ``"none"`` (one ranking over all cameras: cameras compete),
``"uniform"`` (each camera gets an equal share of the kept tokens) or a list of ``C`` ratios (shares
proportional to them, e.g. more for the front camera). Within a camera the pruner's own scores
rank the tokens. Shares are whole tokens: ``kept * ratio_c`` rounded down, the remainder handed
to the cameras with the largest shares; a camera with fewer tokens left than its share keeps them
all and the rest is shared among the others. Driving cares which views keep tokens, so the record
counts each camera's tokens per layer (:func:`camera_counts`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from vla_autoprune.devices import device_ints
from vla_autoprune.errors import ConfigError

PER_CAMERA_MODES = ("none", "uniform")


def check_per_camera(value: Any, who: str) -> str | tuple[float, ...]:
    """``value`` as ``"none"``, ``"uniform"`` or a tuple of non-negative ratios (one-line ConfigError)."""
    if isinstance(value, str):
        if value not in PER_CAMERA_MODES:
            raise ConfigError(
                f"{who}: per_camera={value!r} is unknown; use none, uniform or a list of camera ratios"
            )
        return value
    try:
        ratios = tuple(float(r) for r in value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{who}: per_camera={value!r} is not none, uniform or a list of numbers (one per camera)"
        ) from None
    if not ratios or any(not math.isfinite(r) or r < 0 for r in ratios) or sum(ratios) <= 0:
        raise ConfigError(f"{who}: per_camera={list(ratios)} must be non-negative ratios with a positive sum")
    return ratios


def camera_ratios(per_camera: str | Sequence[float], num_cameras: int, who: str) -> list[float] | None:
    """The ``C`` shares (None for ``"none"``); a ratio list must name every camera."""
    if per_camera == "none":
        return None
    if per_camera == "uniform":
        return [1.0] * num_cameras
    ratios = [float(r) for r in per_camera]
    if len(ratios) != num_cameras:
        raise ConfigError(
            f"{who}: per_camera has {len(ratios)} ratios but the inputs have {num_cameras} cameras; give one each"
        )
    return ratios


def camera_quotas(kept: int, alive: Sequence[int], ratios: Sequence[float]) -> list[int]:
    """Whole-token shares of ``kept`` among cameras with ``alive`` tokens left, proportional to ``ratios``.

    Never more than a camera's ``alive``; cameras with ratio 0 get nothing here. The shares sum to
    ``min(kept, tokens left in cameras with a positive ratio)``.
    """
    quota = [0] * len(alive)
    remaining = min(kept, sum(a for a, r in zip(alive, ratios, strict=True) if r > 0))
    open_cams = [c for c, (a, r) in enumerate(zip(alive, ratios, strict=True)) if a > 0 and r > 0]
    while remaining > 0 and open_cams:
        total = sum(ratios[c] for c in open_cams)
        shares = {c: remaining * ratios[c] / total for c in open_cams}
        given = 0
        for c in open_cams:
            add = min(math.floor(shares[c]), alive[c] - quota[c])
            quota[c] += add
            given += add
        if given == 0:  # every share is below one token: one each to the largest shares
            for c in sorted(open_cams, key=lambda c: (-shares[c], c))[:remaining]:
                quota[c] += 1
                given += 1
        remaining -= given
        open_cams = [c for c in open_cams if quota[c] < alive[c]]
    return quota


def rank_order(
    scores: torch.Tensor, valid: torch.Tensor | None, preferred: torch.Tensor | None = None
) -> torch.Tensor:
    """int64 ``[B, K]``: slots ranked valid first, then ``preferred`` (bool ``[B, K]``), then by score.

    Stable sorts, so equal keys keep slot order (deterministic). ``valid`` None: every slot is
    valid (that stable sort would keep the order as it is, so it is skipped).
    """
    order = torch.argsort(scores.float(), dim=1, descending=True, stable=True)
    if preferred is not None:
        order = order.gather(
            1, torch.argsort((~preferred.gather(1, order)).to(torch.int8), dim=1, stable=True)
        )
    if valid is None:
        return order
    return order.gather(1, torch.argsort((~valid.gather(1, order)).to(torch.int8), dim=1, stable=True))


def camera_choice(
    scores: torch.Tensor,
    valid: torch.Tensor,
    camera: torch.Tensor,
    kept: torch.Tensor,
    ratios: Sequence[float],
) -> torch.Tensor:
    """bool ``[B, K]``: each camera's top tokens by score, as many as its share of ``kept``.

    Args:
        scores: float ``[B, K]``, higher = keep.
        valid: bool ``[B, K]``, tokens that may be kept.
        camera: int64 ``[B, K]``, camera of each token (``0..C-1``).
        kept: int64 ``[B]``, tokens to keep per row.
        ratios: ``C`` shares.
    """
    num_cameras = len(ratios)
    onehot = (camera.unsqueeze(-1) == torch.arange(num_cameras, device=camera.device)) & valid.unsqueeze(-1)
    alive = onehot.sum(dim=1).tolist()  # [B][C]: one host sync per pruning layer
    quotas = device_ints(
        [camera_quotas(int(k), a, ratios) for k, a in zip(kept.tolist(), alive, strict=True)], scores.device
    )  # [B, C]
    chosen = torch.zeros_like(valid)
    for c in range(num_cameras):
        mine = onehot[..., c]
        order = rank_order(scores, mine)
        rank = torch.empty_like(order).scatter_(
            1, order, torch.arange(order.shape[1], device=order.device).expand_as(order)
        )
        chosen |= mine & (rank < quotas[:, c : c + 1])
    return chosen


def camera_counts(kept_visual: np.ndarray, camera_index: np.ndarray, num_cameras: int) -> np.ndarray:
    """int64 ``[B, C]``: original visual tokens of each camera among ``kept_visual`` [B, K] (-1 padded).

    On the host (numpy, one ``bincount``); ``camera_index`` ``[B, V]`` is each visual token's camera.
    """
    b = kept_visual.shape[0]
    cams = np.take_along_axis(camera_index, np.maximum(kept_visual, 0), axis=1)
    slot = np.arange(b)[:, None] * num_cameras + cams  # (row, camera) as one index
    counts = np.bincount(slot[kept_visual >= 0], minlength=b * num_cameras)
    return counts.astype(np.int64).reshape(b, num_cameras)
