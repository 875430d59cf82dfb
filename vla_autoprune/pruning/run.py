"""Run a driving model with a pruner: ``waypoints, record = run_pruned(model, batch, pruner)``."""

from __future__ import annotations

from typing import Any

import torch

from vla_autoprune.models.base import DecoderInputs, DrivingModel
from vla_autoprune.pruning.engine import prune
from vla_autoprune.pruning.pruner import Pruner
from vla_autoprune.pruning.record import PruningRecord


def run_pruned(
    model: DrivingModel, data: dict[str, Any] | DecoderInputs, pruner: Pruner
) -> tuple[torch.Tensor, PruningRecord]:
    """Plan with visual tokens pruned inside the model's decoder (inference, no gradients).

    Args:
        model: the driving model; its ``decoder`` is hooked, ``decode`` runs on the record's inputs.
        data: a collated batch (passed to ``model.prepare``) or already prepared decoder inputs.
        pruner: what to keep where.

    Returns:
        Waypoints float32 ``[B, 6, 2]`` and the :class:`PruningRecord` of what the decoder processed.
    """
    with torch.inference_mode():
        inputs = data if isinstance(data, DecoderInputs) else model.prepare(data)
        with prune(model.decoder, pruner, inputs) as record:
            waypoints = model.decode(record.inputs)
    return waypoints, record
