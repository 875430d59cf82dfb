"""The host (numpy) solve of AutoPrune's "actual" schedule gives the old tensor solve's integers.

``_tensor_schedule`` below is the device solve the engine used before issue 14 (40 sequential
halvings of ``log s`` as torch ops, then the integer fix-up), kept verbatim as the reference.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from vla_autoprune.pruning import autoprune_math as ap
from vla_autoprune.pruning.autoprune_math import retention_schedule, tokens_processed
from vla_autoprune.pruning.budget import min_budget, stage0_count
from vla_autoprune.pruning.recycling import recycle_count

# --------------------------------------------------------------------------- the old tensor solve


def _tensor_schedule(
    k: torch.Tensor, budget: float, layers: int, visual: int, stage0: str, recycle: bool
) -> torch.Tensor:
    plan = ap._actual_plan(budget, layers, visual, stage0, recycle)  # type: ignore[arg-type]
    log_p = ap._log_curve(k, layers, ap.default_x0(layers, "actual"))
    used = log_p[:, plan.first_curve_layer :]
    lo = -math.log(2.0 * plan.base) - used.max(dim=-1).values
    hi = math.log(2.0) - used.min(dim=-1).values
    for _ in range(ap.ACTUAL_BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        fits = _processed(_counts(mid, log_p, plan), plan) <= plan.target
        lo = torch.where(fits, mid, lo)
        hi = torch.where(fits, hi, mid)
    lower = _counts(lo, log_p, plan)
    lower_fits = _processed(lower, plan) <= plan.target
    floor = torch.ones_like(lower)
    if plan.stage0_count is not None:
        floor[:, 0] = plan.stage0_count
    lower = torch.where(lower_fits[:, None], lower, floor)
    return _fill(lower, _counts(hi, log_p, plan), plan)


def _counts(log_s: torch.Tensor, log_p: torch.Tensor, plan: ap._ActualPlan) -> torch.Tensor:
    frac = torch.exp(log_s[:, None] + log_p).clamp(max=1.0)
    wanted = torch.ceil(plan.base * frac).to(torch.int64).clamp(min=1)
    if plan.stage0_count is not None:
        wanted[:, 0] = plan.stage0_count
    if not plan.recycle:
        return torch.cummin(wanted, dim=-1).values
    cur = torch.full_like(log_s, plan.num_visual, dtype=torch.int64)
    columns = []
    for layer in range(plan.num_layers):
        keep = torch.minimum(wanted[:, layer], cur)
        handed = keep + recycle_count(cur - keep) if layer >= plan.first_curve_layer else keep
        columns.append(handed)
        cur = handed
    return torch.stack(columns, dim=-1)


def _processed(counts: torch.Tensor, plan: ap._ActualPlan) -> torch.Tensor:
    return tokens_processed(counts, plan.num_visual, "actual", plan.stage0)


def _fill(lower: torch.Tensor, upper: torch.Tensor, plan: ap._ActualPlan) -> torch.Tensor:
    weights = torch.ones(plan.num_layers, dtype=torch.int64)
    weights[-1] = 0
    if plan.stage0 == "before":
        weights[0] += 1
    base_total = _processed(lower, plan)
    gains = ((upper - lower) * weights).cumsum(dim=-1)
    totals = torch.cat([base_total[:, None], base_total[:, None] + gains], dim=-1)
    j = (totals <= plan.target).sum(dim=-1) - 1
    layers = torch.arange(plan.num_layers)
    mixed = torch.where(layers[None, :] < j[:, None], upper, lower)
    deficit = plan.target - totals.gather(-1, j[:, None]).squeeze(-1)
    weight_j = weights[j.clamp(max=plan.num_layers - 1)].clamp(min=1)
    raise_by = deficit // weight_j
    return mixed + (layers[None, :] == j[:, None]).to(torch.int64) * raise_by[:, None]


# --------------------------------------------------------------------------- tests

# 16 slopes from flat (0: keep the plateau) to the default k0, plus irregular values.
SLOPES = torch.tensor(
    [0.0, 1e-4, 0.003, 0.01, 0.025, 0.05, 0.075, 0.1, 0.137, 0.2, 0.25, 0.3, 0.333, 0.37, 0.39, 0.4],
    dtype=torch.float64,
)
SHAPES = [(2, 8), (4, 37), (12, 600), (16, 576), (24, 100), (32, 576), (32, 2880)]


def _budgets(layers: int, visual: int, stage0: str) -> list[float]:
    lo = min_budget(layers, visual, 0 if stage0 == "before" else 1)
    return sorted({lo, lo + 0.37, (lo + visual) / 2, visual / 4 + 0.5, visual * 0.9, float(visual)} - {0.0})


CASES = [
    (layers, visual, stage0, recycle, budget)
    for (layers, visual), stage0, recycle in itertools.product(
        SHAPES, ("reference", "none", "before"), (True, False)
    )
    for budget in _budgets(layers, visual, stage0)
    if min_budget(layers, visual, 0 if stage0 == "before" else 1) <= budget <= visual
]


def test_enough_configurations():
    assert len(CASES) >= 70


@pytest.mark.parametrize(("layers", "visual", "stage0", "recycle", "budget"), CASES)
def test_numpy_solve_equals_tensor_solve(layers: int, visual: int, stage0: str, recycle: bool, budget: float):
    new = retention_schedule(SLOPES, budget, layers, visual, stage0=stage0, recycle=recycle)  # type: ignore[arg-type]
    old = _tensor_schedule(SLOPES, budget, layers, visual, stage0, recycle)
    assert new.dtype == torch.int64 and new.device == SLOPES.device
    assert torch.equal(new, old)


def test_solve_result_lands_on_the_slopes_device():
    k = torch.tensor([0.1, 0.3], dtype=torch.float32)
    sched = retention_schedule(k, 100, 8, 576, stage0="none")
    assert sched.device == k.device and sched.shape == (2, 8) and sched.dtype == torch.int64


@pytest.mark.parametrize(
    ("layers", "visual", "budget"), [c[:2] + c[4:] for c in CASES if c[2] == "reference"]
)
def test_stage0_count_is_the_solved_first_entry_for_every_slope(layers: int, visual: int, budget: float):
    # AutoPrune's layer-0 hook uses stage0_count alone instead of solving the curve at k = 0.
    v0 = stage0_count(budget, layers, visual, first_layer=1)
    sched = retention_schedule(SLOPES, budget, layers, visual, stage0="reference")
    assert sched[:, 0].tolist() == [v0] * len(SLOPES)


def test_bisection_stops_once_the_counts_are_settled(monkeypatch: pytest.MonkeyPatch):
    # The early stop is what makes the solve cheap; the equality tests above say it changes nothing.
    # k = 0 (a flat curve: every layer's count steps at the same scale) never settles early and runs
    # every round; the other rows leave once settled.
    rows: list[int] = []
    search = ap._search_round

    def counted(*args):  # type: ignore[no-untyped-def]
        result = search(*args)
        rows.append(len(result[2]))
        return result

    monkeypatch.setattr(ap, "_search_round", counted)
    retention_schedule(SLOPES, 144.0, 8, 576, stage0="reference")
    assert len(rows) == ap.ACTUAL_BISECTION_STEPS // ap.SEARCH_LEVELS
    assert rows[0] == len(SLOPES) and rows[-1] == 1  # only k = 0 searched to the end
