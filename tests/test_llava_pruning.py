"""Pruning a generative VLM: the engine under LlavaForConditionalGeneration's prefill and KV-cache decode.

The reference for a pruned prefill is the unpruned sequence with, at every decoder layer, the
visual tokens that layer did not get masked out of attention (docs/ENGINE-NOTES.md: dropping ==
masking). Cached greedy decoding after the pruned prefill must give the same logits and tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import ATOL, masked_keys, visible_keys

from vla_autoprune.models.base import DecoderInputs
from vla_autoprune.models.llava_adapter import LlavaDrivingAdapter
from vla_autoprune.pruning import PruningRecord, build_pruner, prune

Batch = Callable[[int], dict[str, Any]]
NEW_TOKENS = 6  # enough decode steps to exercise the cache after the prefill


@pytest.fixture(scope="module")
def model(llava_folder: Path) -> LlavaDrivingAdapter:
    model = LlavaDrivingAdapter.from_pretrained(llava_folder)
    model.max_new_tokens = NEW_TOKENS
    return model


@contextmanager
def step_logits(model: LlavaDrivingAdapter) -> Iterator[list[torch.Tensor]]:
    """While active, collect the last-position logits ``[B, vocab]`` of every forward (one per new token)."""
    logits: list[torch.Tensor] = []
    handle = model.llava.lm_head.register_forward_hook(
        lambda _m, _a, out: logits.append(out[:, -1].detach().float())
    )
    try:
        yield logits
    finally:
        handle.remove()


def generate(model: LlavaDrivingAdapter, inputs: DecoderInputs) -> tuple[list[str], torch.Tensor]:
    """Greedy answers and their per-step logits ``[steps, B, vocab]``."""
    with step_logits(model) as logits:
        texts = model.generate_waypoints(inputs).texts
    return texts, torch.stack(logits)


def pruned_generate(
    model: LlavaDrivingAdapter, inputs: DecoderInputs, name: str, **kwargs: Any
) -> tuple[list[str], torch.Tensor, PruningRecord]:
    with prune(model.decoder, build_pruner(name, **kwargs), inputs) as record:
        texts, logits = generate(model, record.inputs)
    return texts, logits, record


def test_keep_all_generates_the_unpruned_tokens(model: LlavaDrivingAdapter, camera_batch: Batch) -> None:
    inputs = model.prepare(camera_batch(2))
    reference, reference_logits = generate(model, inputs)
    for name in ("autoprune", "fastv", "pdrop"):
        texts, logits, _ = pruned_generate(model, inputs, name, budget=float(inputs.layout.num_visual))
        assert texts == reference, name
        assert torch.equal(logits, reference_logits), name


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("fastv", {}),  # one drop after layer K - 1
        # several stages; the masked reference keeps every token's original position, so compare
        # with original ids (PDrop's official default renumbers survivors contiguously)
        ("pdrop", {"position_ids": "original"}),
        ("autoprune", {"recycle": False}),  # its MI-driven schedule (merged tokens have no masked twin)
    ],
)
def test_cached_decode_after_pruned_prefill_equals_masked_reference(
    model: LlavaDrivingAdapter, camera_batch: Batch, name: str, kwargs: dict[str, Any]
) -> None:
    inputs = model.prepare(camera_batch(2))
    assert not inputs.attention_mask.all()  # the prompts differ in length: left padding is exercised
    num_visual = inputs.layout.num_visual
    texts, logits, record = pruned_generate(model, inputs, name, budget=0.6 * num_visual, **kwargs)
    assert record.visual_tokens is not None and bool((record.visual_tokens[:, -1] < num_visual).all())

    with masked_keys(model.decoder, visible_keys(inputs, record), inputs.attention_mask.bool()):
        masked_texts, masked_logits = generate(model, inputs)
    _, unpruned_logits = generate(model, inputs)

    assert logits.shape == masked_logits.shape == (NEW_TOKENS, 2, logits.shape[-1])
    assert torch.allclose(logits, masked_logits, atol=ATOL)
    assert texts == masked_texts
    # The test has teeth: the pruned prefill changes every sample's logits.
    first_step_change = (logits[0] - unpruned_logits[0]).abs().amax(dim=-1)
    assert bool((first_step_change > 100 * ATOL).all())
