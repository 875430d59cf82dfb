"""Every pruner meets the same budget, measured from what the decoder processed.

Budget = mean visual tokens per decoder layer over all layers, layer 0 included ("actual"
accounting). Contract (AUTOPRUNE.md): within one token of the budget on average per layer, never
above budget + 1.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from conftest import (
    NUM_VISUAL,
    build_decoder,
    forward,
    make_inputs,
)

from vla_autoprune.errors import ConfigError
from vla_autoprune.pruning import PRUNERS, BudgetError, build_pruner, prune
from vla_autoprune.pruning.budget import stage0_count, token_layers

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIGS: list[tuple[str, dict[str, Any]]] = [
    ("random", {}),
    ("fastv", {}),
    ("pdrop", {}),
    ("pdrop", {"early_start": False}),
    ("sparsevlm", {}),
    ("sparsevlm", {"recycle": False}),
    ("fastervlm", {}),
    ("autoprune", {}),
    ("autoprune", {"stage0": "none"}),
    ("autoprune", {"stage0": "before"}),
    ("autoprune", {"recycle": False, "position_ids": "contiguous"}),
]
DEPTHS = (4, 8)
BATCHES = {"single": (5,), "ragged": (5, 2, 4)}
# Where in each pruner's reachable range [lo, hi] the budgets sit (ends included).
RANGE_POINTS = (0.0, 0.13, 0.5, 0.77, 1.0)


def budgets(name: str, kwargs: dict[str, Any], layers: int) -> list[float]:
    lo, hi = build_pruner(name, **kwargs).reachable(layers, NUM_VISUAL)
    return [round(lo + f * (hi - lo), 3) for f in RANGE_POINTS]


@pytest.mark.parametrize("batch", list(BATCHES))
@pytest.mark.parametrize("layers", DEPTHS)
@pytest.mark.parametrize(
    ("name", "kwargs"), CONFIGS, ids=[f"{n}-{'-'.join(map(str, k.values()))}" for n, k in CONFIGS]
)
def test_budget_met_for_every_pruner(name: str, kwargs: dict[str, Any], layers: int, batch: str) -> None:
    model = build_decoder("qwen2" if layers == 4 else "llama", layers=layers)
    inputs = make_inputs(batch=len(BATCHES[batch]), text_lengths=BATCHES[batch])
    for budget in budgets(name, kwargs, layers):
        lo = build_pruner(name, **kwargs).reachable(layers, NUM_VISUAL)[0]
        budget = max(budget, lo)  # rounding must not step below the range
        with prune(model, build_pruner(name, budget=budget, **kwargs), inputs) as record:
            forward(model, record.inputs)
        mean = record.mean_visual_tokens()
        assert bool((mean <= budget + 1).all()), (budget, mean)
        assert bool(((mean - budget).abs() <= 1).all()), (budget, mean)
        assert record.visual_tokens is not None
        counts = record.visual_tokens
        assert bool((counts[:, 1:] <= counts[:, :-1]).all()) and bool((counts >= 1).all())
        assert record.accounting == "actual"


def test_keep_all_budget_prunes_nothing() -> None:
    model = build_decoder(layers=4)
    inputs = make_inputs(batch=2, text_lengths=(5, 3))
    for name, kwargs in [*CONFIGS, ("none", {})]:
        with prune(model, build_pruner(name, budget=NUM_VISUAL, **kwargs), inputs) as record:
            forward(model, record.inputs)
        assert record.visual_tokens is not None
        assert bool((record.visual_tokens == NUM_VISUAL).all()), name


@pytest.mark.parametrize(("name", "kwargs"), [*CONFIGS, ("none", {})])
def test_unreachable_budget_is_a_one_line_error_naming_the_range(name: str, kwargs: dict[str, Any]) -> None:
    model = build_decoder(layers=4)
    inputs = make_inputs()
    lo, hi = build_pruner(name, **kwargs).reachable(4, NUM_VISUAL)
    for budget in (lo - 0.25, hi + 0.5):
        if budget <= 0:
            continue
        with (
            pytest.raises(BudgetError, match=rf"\[{lo:.4g}, {hi:.4g}\]") as err,
            prune(model, build_pruner(name, budget=budget, **kwargs), inputs),
        ):
            pass
        assert "\n" not in str(err.value)


def test_reachable_ranges_by_hand() -> None:
    # Layer 0 sees all 16 tokens, layers 1..3 at least one: (16 + 3) / 4.
    assert build_pruner("fastv").reachable(4, 16) == (19 / 4, 16.0)
    # PDrop's first reduced stage starts at layer 2 of 8: (2 * 16 + 6) / 8; moved earlier when the
    # budget needs it (early_start, the default), down to layer 1: (16 + 7) / 8.
    assert build_pruner("pdrop", early_start=False).reachable(8, 16) == (38 / 8, 16.0)
    assert build_pruner("pdrop").reachable(8, 16) == (23 / 8, 16.0)
    assert build_pruner("fastervlm").reachable(4, 16) == (1.0, 16.0)
    assert build_pruner("autoprune", stage0="before").reachable(4, 16) == (1.0, 16.0)
    assert build_pruner("none").reachable(4, 16) == (16.0, 16.0)


def test_fastv_counts_by_hand() -> None:
    # 8 layers, V = 16, budget 10: K = 2 layers at 16, six at n with 32 + 6 n <= 80 -> n = 8.
    assert build_pruner("fastv", budget=10).plan(8, 16) == (2, 8)
    # Budget 3 on 4 layers: K = 2 would need 32 + 2 > 12, so K = 1: 16 + 3 n <= 12 is impossible
    # -> lowest reachable is (16 + 3) / 4; at budget 4.75 every later layer keeps one token.
    assert build_pruner("fastv", budget=4.75).plan(4, 16) == (1, 1)


def test_mean_measured_equals_schedule_total() -> None:
    model = build_decoder(layers=8)
    inputs = make_inputs(batch=3, text_lengths=(5, 1, 3))
    with prune(model, build_pruner("autoprune", budget=5.5), inputs) as record:
        forward(model, record.inputs)
    assert record.schedule is not None and record.visual_tokens is not None
    total = NUM_VISUAL + record.schedule[:, :-1].sum(1)
    assert torch.equal(record.visual_tokens.sum(1), total)
    assert bool((total <= 5.5 * 8).all()) and bool((total >= 5.5 * 8 - 8).all())


@pytest.mark.parametrize("name", sorted(PRUNERS))
@pytest.mark.parametrize("budget", ["abc", "64", True, float("nan"), float("inf"), 0, -3.5])
def test_bad_budget_is_a_config_error_naming_budget_when_built(name: str, budget: object) -> None:
    # Hydra passes `budget=abc` on as the str 'abc': refused when the pruner is built, before any data.
    with pytest.raises(BudgetError, match=rf"^{name}: budget={budget!r} ") as err:
        build_pruner(name, budget=budget)
    assert isinstance(err.value, ConfigError)
    assert "\n" not in str(err.value) and "e.g. budget=64" in str(err.value)


def test_stage0_count_by_hand() -> None:
    # AUTOPRUNE.md section 6: stage 0 keeps min(2.5 B, V), capped by what the budget leaves.
    # In the decoder (after layer 0): layer 0 saw V = 16, layer 1 sees v0, layers 2..L-1 one each,
    # so v0 <= floor(B L) - V - (L - 2). 8 layers, budget 3: 24 - 16 - 6 = 2 (2.5 B would be 7).
    assert stage0_count(3, 8, 16, first_layer=1) == 2
    # Before the decoder: layer 0 sees v0, layers 1..L-1 one each, so v0 <= floor(B L) - (L - 1).
    # 8 layers, budget 1.2: floor(9.6) - 7 = 2 (2.5 B would be 3).
    assert stage0_count(1.2, 8, 16, first_layer=0) == 2
    # Room to spare: min(int(2.5 B), V).
    assert stage0_count(6, 4, 16, first_layer=0) == 15
    assert stage0_count(10, 8, 16, first_layer=1) == 16
    # The range floors leave exactly one token: (V + L - 1) / L in the decoder, 1 before it.
    assert stage0_count(19 / 4, 4, 16, first_layer=1) == 1
    assert stage0_count(1, 4, 16, first_layer=0) == 1


@pytest.mark.parametrize(
    ("stage0", "budget", "v0_layer"),
    [("reference", 3, 1), ("before", 1.2, 0)],
)
def test_stage0_keeps_the_most_the_budget_allows_and_meets_it_exactly(
    stage0: str, budget: float, v0_layer: int
) -> None:
    # Where the budget caps stage 0, the cap is tight: one more survivor (the other file's L - 1 or
    # L - 2) would either overshoot floor(B L) ("before") or leave it unreachable ("reference").
    model = build_decoder(layers=8)
    inputs = make_inputs(batch=2, text_lengths=(5, 3))
    with prune(model, build_pruner("autoprune", budget=budget, stage0=stage0), inputs) as record:
        forward(model, record.inputs)
    assert record.visual_tokens is not None
    v0 = stage0_count(budget, 8, NUM_VISUAL, first_layer=v0_layer)
    assert record.visual_tokens[:, v0_layer].tolist() == [v0, v0]
    assert record.visual_tokens.sum(dim=1).tolist() == [token_layers(budget, 8)] * 2


def test_pdrop_first_stage_moves_earlier_only_when_the_budget_needs_it() -> None:
    # 12 layers, V = 600 (6 x 100): stages at 3, 6, 9. Budget V/4 = 150 leaves 1800 - 12 token
    # layers: 3 * 599 > 1788, so the first stage moves to layer 2 (2 * 599 <= 1788); V/9 to layer 1.
    assert build_pruner("pdrop", budget=300).stage_starts(12, 600) == [3, 6, 9]
    assert build_pruner("pdrop", budget=150).stage_starts(12, 600) == [2, 6, 9]
    assert build_pruner("pdrop", budget=600 / 9).stage_starts(12, 600) == [1, 6, 9]
    for budget in (300, 150, 600 / 9):
        pruner = build_pruner("pdrop", budget=budget)
        starts = pruner.stage_starts(12, 600)
        counts = pruner.counts(12, 600)
        processed = [600] * 12
        for start, count in zip(starts, counts, strict=True):
            processed[start:] = [count] * (12 - start)
        assert token_layers(budget, 12) - 12 < sum(processed) <= token_layers(budget, 12)


def test_pdrop_budget_error_names_the_first_stage_and_the_reachable_range() -> None:
    with pytest.raises(BudgetError) as err:
        build_pruner("pdrop", budget=150, early_start=False).check_budget(12, 600)
    message = str(err.value)
    assert "\n" not in message
    assert "choose a budget in [150.8, 600]" in message  # layers 0..2 see 600: (3 * 600 + 9) / 12
    assert "first stage starts at layer 3" in message and "early_start=true" in message
    assert "reaching down to 50.92" in message
    with pytest.raises(BudgetError, match=r"choose a budget in \[50\.92, 600\].*down to 1"):
        build_pruner("pdrop", budget=40).check_budget(12, 600)


def test_pdrop_budget_that_needed_layer_one_runs_and_meets_it() -> None:
    # 8 layers, V = 16: budget V/4 = 4 used to fail (the L/4 first stage at layer 2 allows >= 4.75).
    # Matched mode now starts the first stage at layer 1 and processes exactly floor(4 * 8) = 32.
    with pytest.raises(BudgetError, match=r"choose a budget in \[4\.75, 16\]"):
        build_pruner("pdrop", budget=4, early_start=False).check_budget(8, NUM_VISUAL)
    model = build_decoder(layers=8)
    inputs = make_inputs(batch=2, text_lengths=(5, 3))
    pruner = build_pruner("pdrop", budget=4)
    assert pruner.stage_starts(8, NUM_VISUAL) == [1, 4, 6]
    with prune(model, pruner, inputs) as record:
        forward(model, record.inputs)
    assert record.visual_tokens is not None
    assert record.visual_tokens[:, 1].tolist() == [4, 4]  # layer 1 already sees the first stage
    assert record.visual_tokens.sum(dim=1).tolist() == [token_layers(4, 8)] * 2
    # Deeper: 12 layers, budget 3 (V/5.3), first stage at layer 1, within the budget contract.
    model = build_decoder(layers=12)
    with prune(model, build_pruner("pdrop", budget=3), inputs) as record:
        forward(model, record.inputs)
    assert record.visual_tokens is not None
    total = record.visual_tokens.sum(dim=1)
    assert bool((total <= token_layers(3, 12)).all()) and bool((total > token_layers(3, 12) - 12).all())


def test_pdrop_faithful_keeps_the_paper_stages_and_counts_on_deep_models() -> None:
    # LLaVA-1.5 shape: stages at layers 8, 16, 24 of 32, each keeping half of the previous stage.
    faithful = build_pruner("pdrop", mode="faithful")
    assert faithful.stage_starts(32, 576) == [8, 16, 24]
    assert faithful.counts(32, 576) == [288, 144, 72]
    # The budget never moves a faithful pyramid: it refuses a budget instead.
    with pytest.raises(ConfigError, match="faithful"):
        build_pruner("pdrop", mode="faithful", budget=64)


def test_pdrop_budget_below_layer_one_is_a_one_line_error_naming_the_floor() -> None:
    # Below even a first stage at layer 1 ((V + L - 1) / L): one line, the floor and the fix.
    with pytest.raises(BudgetError) as err:
        build_pruner("pdrop", budget=2).check_budget(8, NUM_VISUAL)
    message = str(err.value)
    assert "\n" not in message and "choose a budget in [2.875, 16]" in message
    assert "down to 1" in message and "stage0=before" in message
