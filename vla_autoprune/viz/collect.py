"""From a pruned forward (the engine's :class:`PruningRecord` and the model's token layout) to a chunk."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vla_autoprune.models.layout import TokenLayout
from vla_autoprune.pruning import PruningRecord
from vla_autoprune.viz.persistence import FULL_IMAGE, chunk_arrays, kept_mask


def _per_sample(value: Any) -> list[float | None] | None:
    """A ``[B]`` stat tensor as floats (None when the pruner did not report it)."""
    return None if value is None else [float(v) for v in np.asarray(value, dtype=np.float64).reshape(-1)]


def _size(size: Any, key: str) -> int | None:
    """A field of a transformers ``SizeDict`` (or plain dict), None when unset."""
    value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
    return None if value is None else int(value)


def image_region(model: Any, image_size: tuple[int, int]) -> tuple[float, float, float, float]:
    """``(x0, y0, x1, y1)``, fractions of a ``(W, H)`` camera image its patch grid covers.

    DrivingVLA resizes the whole image to the tower's input. A model with a transformers image
    processor (the LLaVA adapter) may resize the shortest edge and centre-crop: the grid then covers
    the crop only.
    """
    processor = getattr(getattr(model, "processor", None), "image_processor", None)
    if processor is None:
        return FULL_IMAGE
    w, h = float(image_size[0]), float(image_size[1])
    if getattr(processor, "do_resize", False):
        size = processor.size
        shortest = _size(size, "shortest_edge")
        if shortest is not None:
            scale = shortest / min(w, h)
            w, h = w * scale, h * scale
        elif _size(size, "height") is not None and _size(size, "width") is not None:
            w, h = float(_size(size, "width") or w), float(_size(size, "height") or h)
    if not getattr(processor, "do_center_crop", False):
        return FULL_IMAGE
    crop_w = _size(processor.crop_size, "width") or w
    crop_h = _size(processor.crop_size, "height") or h
    fx, fy = min(crop_w / w, 1.0), min(crop_h / h, 1.0)
    return ((1 - fx) / 2, (1 - fy) / 2, (1 + fx) / 2, (1 + fy) / 2)


def merged_into(record: PruningRecord, num_visual: int) -> np.ndarray | None:
    """int ``[B, L, V]`` merged-token membership, when the engine records it (else None).

    Reads ``record.merged_into`` if the engine provides it: per layer, int ``[B, V]`` (the id of
    the merged token holding original visual token ``v`` at that layer, -1 = none) or None.
    """
    layers = getattr(record, "merged_into", None)
    if not layers or all(value is None for value in layers):
        return None  # an engine without merge members, or a forward that merged nothing
    b = record.visual_tokens.shape[0] if record.visual_tokens is not None else 0
    out = np.full((b, record.num_layers, num_visual), -1, dtype=np.int16)
    for layer, value in enumerate(layers):
        if value is not None:
            out[:, layer] = np.asarray(value)
    return out


def chunk_from_record(
    record: PruningRecord,
    layout: TokenLayout,
    batch: Mapping[str, Any],
    indices: Sequence[int],
    region: tuple[float, float, float, float] = FULL_IMAGE,
) -> dict[str, np.ndarray]:
    """The chunk arrays of one batch's pruned forward.

    Args:
        record: the :class:`PruningRecord` of the forward (after the ``prune`` block).
        layout: the layout of the decoder inputs *given to* ``prune`` (before any pre-selection:
            ``kept_visual`` indexes its ``V`` visual tokens).
        batch: the batch (``sample_token``, ``scene_token``, ``cameras``).
        indices: dataset index of each sample.
        region: the part of each camera image the patch grid covers (:func:`image_region`).
    """
    if record.visual_tokens is None or record.merged_tokens is None:
        raise RuntimeError("the pruning record is empty: the decoder did not run inside prune()")
    num_visual = layout.num_visual
    return chunk_arrays(
        indices=indices,
        sample_tokens=list(batch["sample_token"]),
        scene_tokens=list(batch["scene_token"]),
        cameras=tuple(batch["cameras"]),
        patch_grid=layout.patch_grid,
        image_region=region,
        camera_index=layout.camera_index.cpu().numpy(),
        patch_index=layout.patch_index.cpu().numpy(),
        kept=kept_mask([None if k is None else k.cpu().numpy() for k in record.kept_visual], num_visual),
        visual_tokens=record.visual_tokens.numpy(),
        merged_tokens=record.merged_tokens.numpy(),
        schedule=None if record.schedule is None else record.schedule.numpy(),
        merged_into=merged_into(record, num_visual),
        mi=_per_sample(record.stats.get("mi")),
        k=_per_sample(record.stats.get("k")),
    )
