"""Visual-token pruning inside unmodified transformers decoders.

``with prune(model.decoder, build_pruner("autoprune", budget=64), inputs) as record: ...`` or
``run_pruned(model, batch, pruner)``; see :mod:`vla_autoprune.pruning.engine`.

Layout: :mod:`.pruner` (the extension point), :mod:`.budget` (budget arithmetic and its error),
:mod:`.options` (option types), :mod:`.stages` (staged schedules), :mod:`.recycling` (merging
dropped tokens back), :mod:`.cameras` (per-camera shares), :mod:`.autoprune_math` (AutoPrune's MI and schedule), :mod:`.pruners` (one
file each), :mod:`.registry` (pruners by name), :mod:`.engine` (the hooks).
"""

from __future__ import annotations

from vla_autoprune.pruning.budget import BudgetError
from vla_autoprune.pruning.engine import prune
from vla_autoprune.pruning.pruner import LayerView, Merge, Pruner
from vla_autoprune.pruning.pruners import (
    AutoPrunePruner,
    DARTPruner,
    DivPrunePruner,
    FasterVLMPruner,
    FastVPruner,
    MissingSaliencyError,
    NoPruner,
    PDropPruner,
    Prune2DrivePruner,
    RandomPruner,
    SparseVLMPruner,
    VisionZipPruner,
    VisPrunerPruner,
)
from vla_autoprune.pruning.record import PruningRecord
from vla_autoprune.pruning.registry import PRUNERS, UnknownPrunerError, build_pruner, register_pruner
from vla_autoprune.pruning.run import run_pruned

__all__ = [
    "PRUNERS",
    "AutoPrunePruner",
    "BudgetError",
    "DARTPruner",
    "DivPrunePruner",
    "Prune2DrivePruner",
    "VisPrunerPruner",
    "VisionZipPruner",
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
    "register_pruner",
    "run_pruned",
]
