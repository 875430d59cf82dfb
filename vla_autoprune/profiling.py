"""Named ``torch.profiler`` ranges for the pruning engine's stages, free when no profiler records.

Under ``torch.profiler.profile`` (CPU or CUDA) a pruned prefill's trace shows where the engine's
time goes, one range per stage: ``vla_autoprune.score``, ``vla_autoprune.merge``, ... (the
benchmarks' overhead breakdown reads them). Outside a profiler :func:`stage` is a no-op: a
``record_function`` costs about 15 us a call even when nothing records, as much as a small op.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch.profiler import record_function

#: Prefix of every range name.
STAGE_PREFIX = "vla_autoprune."
#: The engine's stages: ``setup`` (hooks, pre-decoder selection), ``layer_inputs`` (a pruned
#: layer's positions and mask), ``schedule`` (a pruner's counts, AutoPrune's MI and curve solve),
#: ``split`` (kept vs merged counts, host ints), ``score`` (text attention,
#: saliency), ``select`` (ranking, the kept block, the gather of the hidden states), ``merge``
#: (recycling dropped tokens), ``record`` (per-layer counts and which tokens each layer kept) and
#: ``restore`` (the last layer's output back in the caller's token order).
STAGES = ("setup", "layer_inputs", "schedule", "split", "score", "select", "merge", "record", "restore")

_profiler_enabled = torch.autograd._profiler_enabled  # private, but stable since torch 1.x


def stage(name: str) -> AbstractContextManager[Any]:
    """A profiler range ``vla_autoprune.<name>`` while a profiler records, else a no-op."""
    if name not in STAGES:
        raise ValueError(f"unknown engine stage {name!r}; expected one of {STAGES}")
    return record_function(STAGE_PREFIX + name) if _profiler_enabled() else nullcontext()
