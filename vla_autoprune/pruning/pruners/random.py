"""Random pruning: FastV's schedule with random scores (a lower bound for any scoring rule).

Each sample's scores come from its own generator, seeded from the run seed and the sample's id
(``DecoderInputs.sample_ids``, the nuScenes sample token), so a sample keeps the same tokens
whatever batch, shard or resumed run it is evaluated in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from vla_autoprune.errors import ConfigError
from vla_autoprune.pruning.options import check_seed
from vla_autoprune.pruning.pruner import LayerView
from vla_autoprune.pruning.pruners.fastv import FastVPruner
from vla_autoprune.pruning.registry import register_pruner

_SEED_BITS = 63  # torch.Generator.manual_seed takes a non-negative int64


def sample_seed(seed: int, sample_id: str) -> int:
    """A generator seed for one sample: a stable hash of the run seed and the sample id."""
    digest = hashlib.sha256(f"{seed}\x00{sample_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << _SEED_BITS) - 1)


def per_sample_uniform(seed: int, sample_ids: Sequence[str], count: int) -> torch.Tensor:
    """float32 ``[B, count]``: uniform draws, row ``b`` from a generator keyed on ``sample_ids[b]``."""
    rows = [
        torch.rand(count, generator=torch.Generator().manual_seed(sample_seed(seed, s))) for s in sample_ids
    ]
    return torch.stack(rows) if rows else torch.empty(0, count)


@register_pruner
@dataclass
class RandomPruner(FastVPruner):
    """Drop visual tokens uniformly at random, once, with FastV's budget-derived schedule.

    Attributes:
        seed: the run seed. Each sample draws one score per visual token from a generator seeded
            by ``(seed, sample id)``. Inputs without ``sample_ids`` key each row on its index in the
            batch instead (reproducible for the same batch, but not across batchings).
    """

    name = "random"
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode != "matched":
            raise ConfigError(f"{self.name}: mode={self.mode!r} is FastV's; random has no faithful variant")
        check_seed(self.seed, self.name)

    @property
    def label(self) -> str:
        """``random``: one variant only."""
        return self.name

    def text_ranked_from(self, num_layers: int, num_visual: int) -> int | None:
        """None: a seeded draw, never the text's attention."""
        return None

    def score(self, view: LayerView) -> torch.Tensor:
        """Uniform random scores, float ``[B, Kv]``: each sample's draw over its ``V`` input tokens."""
        scores = view.scratch.get("random_scores")
        if scores is None:
            ids = view.inputs.sample_ids
            if ids is None or len(ids) != view.batch_size:
                ids = tuple(f"row-{b}" for b in range(view.batch_size))
            scores = per_sample_uniform(self.seed, ids, view.num_visual).to(view.hidden.device)
            view.scratch["random_scores"] = scores
        return scores.gather(1, view.visual_index)
