"""Visual-token pruning inside unmodified transformers decoders.

``with prune(model.decoder, build_pruner("autoprune", budget=64), inputs) as record: ...`` or
``run_pruned(model, batch, pruner)``; see :mod:`vla_autoprune.pruning.engine`.
"""

from __future__ import annotations

from typing import Any

from vla_autoprune.pruning.base import BudgetError, LayerView, Merge, Pruner
from vla_autoprune.pruning.engine import PruningRecord, prune
from vla_autoprune.pruning.pruners import (
    AutoPrunePruner,
    FasterVLMPruner,
    FastVPruner,
    MissingSaliencyError,
    NoPruner,
    PDropPruner,
    RandomPruner,
    SparseVLMPruner,
)
from vla_autoprune.pruning.run import run_pruned

PRUNERS: dict[str, type[Pruner]] = {
    cls.name: cls
    for cls in (
        NoPruner,
        RandomPruner,
        FastVPruner,
        PDropPruner,
        SparseVLMPruner,
        FasterVLMPruner,
        AutoPrunePruner,
    )
}


class UnknownPrunerError(ValueError):
    """No pruner is registered under the requested name."""


def build_pruner(name: str, **kwargs: Any) -> Pruner:
    """A pruner by registry name with its hyperparameters, e.g. ``build_pruner("fastv", budget=64)``."""
    cls = PRUNERS.get(name)
    if cls is None:
        raise UnknownPrunerError(f"unknown pruner {name!r}; known pruners: {', '.join(sorted(PRUNERS))}")
    return cls(**kwargs)


__all__ = [
    "PRUNERS",
    "AutoPrunePruner",
    "BudgetError",
    "FastVPruner",
    "FasterVLMPruner",
    "LayerView",
    "Merge",
    "MissingSaliencyError",
    "NoPruner",
    "PDropPruner",
    "Pruner",
    "PruningRecord",
    "RandomPruner",
    "SparseVLMPruner",
    "UnknownPrunerError",
    "build_pruner",
    "prune",
    "run_pruned",
]
