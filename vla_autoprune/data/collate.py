"""``collate``: items of :class:`NuScenesDrivingDataset` -> one batch dict (see ``schema.py``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from vla_autoprune.data.errors import CollateError
from vla_autoprune.data.schema import BATCH_KEYS

#: Keys gathered into plain lists rather than stacked.
LIST_KEYS: tuple[str, ...] = ("sample_token", "scene_token", "scenario", "map_location")
#: Keys whose box dimension (dim 1 of an item's ``[6, N, ...]``) is padded to the batch max.
BOX_KEYS: tuple[str, ...] = ("future_boxes", "future_labels")
#: Keys whose agent-slot dimension is padded to the batch max: key -> (slot dim of an item, pad value).
AGENT_KEYS: dict[str, tuple[int, float | bool | int]] = {
    "agent_boxes": (1, 0.0),  # [7, A, 5]
    "agent_valid": (1, False),  # [7, A]
    "agent_labels": (0, -1),  # [A]
}
#: Label of a padding box (``schema``: -1 = padding / absent).
PAD_LABEL = -1


def collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack items into a batch; pad boxes to the batch's max ``N`` and agent slots to its max ``A``
    (labels -1, boxes 0, valid False).

    :param items: dataset items, each with exactly ``schema.BATCH_KEYS`` and the same cameras.
    :return: batch dict: tensors with a leading ``B``, token lists, a single ``cameras`` tuple.
    :raises CollateError: empty input, different keys or different cameras.
    """
    if not items:
        raise CollateError("collate got no items; pass at least one dataset item (check the sampler).")
    for i, item in enumerate(items):
        missing, extra = set(BATCH_KEYS) - set(item), set(item) - set(BATCH_KEYS)
        if missing or extra:
            raise CollateError(
                f"item {i} lacks keys {sorted(missing)} and has unexpected keys {sorted(extra)}; "
                "collate items of NuScenesDrivingDataset (schema.BATCH_KEYS)."
            )
    cameras = tuple(items[0]["cameras"])
    if any(tuple(item["cameras"]) != cameras for item in items):
        raise CollateError(
            "items have different camera lists; build every dataset of the batch with the same cameras."
        )
    batch: dict[str, Any] = {"cameras": cameras}
    for key in LIST_KEYS:
        batch[key] = [item[key] for item in items]
    n = max(item["future_labels"].shape[1] for item in items)
    batch["future_boxes"] = torch.stack([_pad_boxes(item["future_boxes"], n, 0.0) for item in items])
    batch["future_labels"] = torch.stack([_pad_boxes(item["future_labels"], n, PAD_LABEL) for item in items])
    for key, (dim, value) in AGENT_KEYS.items():
        slots = max(item[key].shape[dim] for item in items)
        batch[key] = torch.stack([_pad_dim(torch.as_tensor(item[key]), dim, slots, value) for item in items])
    for key in BATCH_KEYS:
        if key not in batch:
            batch[key] = torch.stack([torch.as_tensor(item[key]) for item in items])
    return batch


def _pad_boxes(tensor: torch.Tensor, n: int, value: float) -> torch.Tensor:
    """Pad dim 1 of ``[6, M, ...]`` to ``[6, n, ...]`` with ``value``."""
    padded = tensor.new_full((tensor.shape[0], n, *tensor.shape[2:]), value)
    padded[:, : tensor.shape[1]] = tensor
    return padded


def _pad_dim(tensor: torch.Tensor, dim: int, n: int, value: float | bool | int) -> torch.Tensor:
    """Pad dimension ``dim`` of ``tensor`` to length ``n`` with ``value``."""
    shape = list(tensor.shape)
    shape[dim] = n
    padded = tensor.new_full(shape, value)
    padded.narrow(dim, 0, tensor.shape[dim]).copy_(tensor)
    return padded
