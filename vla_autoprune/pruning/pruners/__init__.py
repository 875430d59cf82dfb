"""One pruner per file, each registered by name (:mod:`vla_autoprune.pruning.registry`).

Importing this package registers them all; see :mod:`vla_autoprune.pruning.pruner` for the
extension point.
"""

from vla_autoprune.pruning.pruners.autoprune import AutoPrunePruner
from vla_autoprune.pruning.pruners.fastervlm import FasterVLMPruner, MissingSaliencyError
from vla_autoprune.pruning.pruners.fastv import FastVPruner
from vla_autoprune.pruning.pruners.none import NoPruner
from vla_autoprune.pruning.pruners.pdrop import PDropPruner
from vla_autoprune.pruning.pruners.random import RandomPruner
from vla_autoprune.pruning.pruners.sparsevlm import SparseVLMPruner

__all__ = [
    "AutoPrunePruner",
    "FastVPruner",
    "FasterVLMPruner",
    "MissingSaliencyError",
    "NoPruner",
    "PDropPruner",
    "RandomPruner",
    "SparseVLMPruner",
]
