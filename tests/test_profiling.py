"""The engine's named profiler ranges: every stage shows in a trace, nothing changes without one."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch
from conftest import build_decoder, forward, make_inputs
from torch.profiler import ProfilerActivity, profile

from benchmarks.overhead import stage_times
from vla_autoprune.profiling import STAGE_PREFIX, STAGES, stage
from vla_autoprune.pruning import build_pruner, prune


def _pruned_logits(decoder: torch.nn.Module, budget: float) -> torch.Tensor:
    inputs = make_inputs(batch=2, text_lengths=(5, 3))
    with prune(decoder, build_pruner("autoprune", budget=budget), inputs) as record:
        return forward(decoder, record.inputs)


def test_a_profiled_prefill_shows_every_engine_stage_and_the_same_numbers() -> None:
    decoder = build_decoder(layers=4)
    plain = _pruned_logits(decoder, budget=6.0)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        profiled = _pruned_logits(decoder, budget=6.0)
    assert torch.equal(profiled, plain)  # the ranges only name what runs
    names = {e.name[len(STAGE_PREFIX) :] for e in prof.events() if e.name.startswith(STAGE_PREFIX)}
    assert names == set(STAGES)  # AutoPrune at 6 of 16 tokens recycles: every stage runs
    rows = stage_times(prof)
    assert [r["stage"] for r in rows] == list(STAGES)
    assert all(r["calls"] >= 1 and r["cpu_ms"] >= 0 for r in rows)
    assert sum(r["share"] for r in rows) == pytest.approx(1.0, abs=1e-3)
    # exclusive: every merge range sits inside a selection, whose time does not count it again
    merge = STAGE_PREFIX + "merge"
    selects = [e for e in prof.events() if e.name == STAGE_PREFIX + "select"]
    nested = sum(c.name == merge for e in selects for c in e.cpu_children)
    assert nested == sum(e.name == merge for e in prof.events()) >= 1


def test_stages_cost_nothing_without_a_profiler_and_unknown_ones_fail() -> None:
    assert isinstance(stage("score"), nullcontext)
    with pytest.raises(ValueError, match="unknown engine stage 'scoring'"):
        stage("scoring")
