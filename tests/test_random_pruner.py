"""``random`` is seeded per sample: a sample keeps the same tokens in any batch, shard or resume."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import pytest
import torch
from conftest import (
    NUM_VISUAL,
    build_decoder,
    forward,
    make_inputs,
    sample,
)
from torch import nn

from vla_autoprune.models.base import DecoderInputs
from vla_autoprune.models.layout import TokenLayout
from vla_autoprune.pruning import build_pruner, prune
from vla_autoprune.pruning.pruners.random import sample_seed

pytestmark = pytest.mark.usefixtures("one_thread")

LAYERS = 4
BUDGET = 8
TOKENS = tuple(f"token-{i:02d}" for i in range(8))
LENGTHS = (5, 2, 4, 3, 5, 1, 2, 4)  # ragged prompts: rows are padded differently in each batch


def left_pad(samples: list[DecoderInputs]) -> DecoderInputs:
    """Unpadded one-row inputs stacked into a left-padded batch (padding rows are zeros)."""
    n = max(s.inputs_embeds.shape[1] for s in samples)

    def pad(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.new_zeros(1, n - x.shape[1], *x.shape[2:]), x], dim=1)

    def stack(name: str) -> Any:
        parts = [getattr(s.layout, name) for s in samples]
        if not isinstance(parts[0], torch.Tensor):
            return parts[0]  # patch_grid
        along_sequence = parts[0].shape[1] == samples[0].inputs_embeds.shape[1]  # else [1, V]
        return torch.cat([pad(p) if along_sequence else p for p in parts])

    mask = torch.cat([pad(s.attention_mask) for s in samples])
    return DecoderInputs(
        inputs_embeds=torch.cat([pad(s.inputs_embeds) for s in samples]),
        attention_mask=mask,
        position_ids=(mask.cumsum(1) - 1).clamp(min=0),
        layout=TokenLayout(**{f.name: stack(f.name) for f in fields(TokenLayout)}),
        vision_saliency=torch.cat([s.vision_saliency for s in samples if s.vision_saliency is not None]),
    )


def kept_after_drop(model: nn.Module, inputs: DecoderInputs, seed: int = 0) -> list[list[int]]:
    """Per row, the original visual indices the last layer sees (the kept set)."""
    with prune(model, build_pruner("random", budget=BUDGET, seed=seed), inputs) as record:
        forward(model, record.inputs)
    kept = record.kept_visual[LAYERS - 1]
    assert kept is not None
    return [[int(v) for v in row if v >= 0] for row in kept]


def test_batch_of_8_equals_one_by_one() -> None:
    model = build_decoder(layers=LAYERS)
    inputs = make_inputs(batch=8, text_lengths=LENGTHS).with_(sample_ids=TOKENS)
    batched = kept_after_drop(model, inputs)
    alone = [
        kept_after_drop(model, sample(inputs, b).with_(sample_ids=TOKENS[b : b + 1]))[0] for b in range(8)
    ]
    assert batched == alone
    assert len({tuple(k) for k in batched}) > 1  # different samples keep different sets
    assert all(len(k) < NUM_VISUAL for k in batched)  # something was dropped


def test_other_batch_composition_shard_and_resume_give_the_same_sets() -> None:
    model = build_decoder(layers=LAYERS)
    inputs = make_inputs(batch=8, text_lengths=LENGTHS).with_(sample_ids=TOKENS)
    whole = kept_after_drop(model, inputs)

    def subset(rows: list[int]) -> DecoderInputs:
        # The same samples, laid out as their own batch (padded to that batch's longest prompt).
        return left_pad([sample(inputs, r) for r in rows]).with_(sample_ids=tuple(TOKENS[r] for r in rows))

    # shards 0/2 and 1/2 (interleaved), and a run resumed after the first 3 samples, reversed order
    for rows in ([0, 2, 4, 6], [1, 3, 5, 7], [7, 6, 5, 4, 3]):
        got = kept_after_drop(model, subset(rows))
        assert got == [whole[r] for r in rows]


def test_seed_and_sample_id_both_change_the_choice() -> None:
    model = build_decoder(layers=LAYERS)
    inputs = make_inputs(batch=1).with_(sample_ids=("a",))
    assert kept_after_drop(model, inputs, seed=0) == kept_after_drop(model, inputs, seed=0)
    assert kept_after_drop(model, inputs, seed=0) != kept_after_drop(model, inputs, seed=1)
    assert kept_after_drop(model, inputs) != kept_after_drop(model, inputs.with_(sample_ids=("b",)))
    assert sample_seed(0, "a") == sample_seed(0, "a") != sample_seed(0, "b")
