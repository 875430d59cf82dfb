"""Pruning a generative VLM: the engine under LlavaForConditionalGeneration's prefill and KV-cache decode."""

from __future__ import annotations

from pathlib import Path

import torch
from test_llava_adapter import _batch, llava_folder  # noqa: F401 - the fixture is used by name

from vla_autoprune.models.llava_adapter import LlavaDrivingAdapter
from vla_autoprune.pruning import build_pruner, prune


def _texts(model: LlavaDrivingAdapter, pruner_name: str, **kwargs: float) -> tuple[list[str], object]:
    inputs = model.prepare(_batch())
    with prune(model.decoder, build_pruner(pruner_name, **kwargs), inputs) as record:
        texts = model.generate_waypoints(record.inputs).texts
    return texts, record


def test_keep_all_generates_the_unpruned_tokens(llava_folder: Path) -> None:  # noqa: F811
    model = LlavaDrivingAdapter.from_pretrained(llava_folder)
    model.max_new_tokens = 8
    reference = model.generate_waypoints(model.prepare(_batch())).texts
    for name in ("autoprune", "fastv"):
        num_visual = model.prepare(_batch()).layout.num_visual
        texts, _ = _texts(model, name, budget=float(num_visual))
        assert texts == reference, name


def test_pruned_prefill_then_cached_decode_runs_and_records(llava_folder: Path) -> None:  # noqa: F811
    model = LlavaDrivingAdapter.from_pretrained(llava_folder)
    model.max_new_tokens = 8
    num_visual = model.prepare(_batch()).layout.num_visual
    budget = num_visual * 0.75
    texts, record = _texts(model, "fastv", budget=budget)
    assert len(texts) == 2
    visual = record.visual_tokens.double().mean(dim=1)  # what the prefill actually processed
    assert torch.all(visual <= budget + 1) and torch.all(visual < num_visual)
