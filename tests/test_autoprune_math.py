"""AutoPrune's pure math: mutual information, slope, curve, recycling and both schedules."""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from vla_autoprune.errors import ConfigError
from vla_autoprune.pruning import autoprune_math as ap
from vla_autoprune.pruning.autoprune_math import (
    ScheduleError,
    default_x0,
    logistic_curve,
    mutual_information,
    reachable_budget,
    reference_schedule,
    retention_schedule,
    slope,
    tokens_processed,
)
from vla_autoprune.pruning.budget import BudgetError
from vla_autoprune.pruning.recycling import recycle_count, split_handed_on

EPS = 1e-6


# --------------------------------------------------------------------------- helpers


def _mi_loops(attn: list[list[float]]) -> float:
    """MI of one head, written out with explicit loops (AUTOPRUNE.md section 1)."""
    t, v = len(attn), len(attn[0])
    p_x = 1.0 / t
    p_y = [sum(attn[x][y] / t for x in range(t)) for y in range(v)]
    total = 0.0
    for x in range(t):
        for y in range(v):
            p_xy = attn[x][y] / t
            total += p_xy * math.log2(max(p_xy / (p_x * p_y[y] + EPS), EPS))
    return total


def _random_attention(b: int, h: int, t: int, v: int, seed: int) -> torch.Tensor:
    """``[B, H, T, V]`` softmax rows over ``V + 3`` columns, restricted to the first ``V``."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, h, t, v + 3, generator=gen, dtype=torch.float64) * 2
    return logits.softmax(dim=-1)[..., :v]


def _appendix_schedule(k: float, budget: float, layers: int, visual: int, x0: float = 14.9):
    """Independent transcription of the AUTOPRUNE.md Appendix; returns (schedule, early_exit)."""
    v0 = min(int(2.5 * budget), visual)
    cap = min(int(2.5 * layers * budget), visual)
    curve = [0.75 / (1 + math.exp(k * (i - (x0 + k)))) for i in range(1, layers)]

    def counts(s):
        cur, out = v0, [v0]
        for p in curve:
            keep = min(math.ceil((v0 - 1) * min(1, s * p)), cap)
            d = cur - keep
            if d == 0:
                r = 0
            else:
                m = int(0.3 * d) + 1
                r = min(m // 10 + 1, m)
            cur = keep + r
            out.append(cur)
        return out

    u = [int(v0 * p) for p in curve]
    tok = sum(u) + u[-1]
    if abs(tok - layers * budget) < 1:
        return counts(1.0), True
    lo, hi, best_s, best_diff = 0.0, 20.0, 1.0, float("inf")
    for _ in range(200):
        mid = (lo + hi) / 2
        total = sum(counts(mid))
        diff = abs(total - layers * budget)
        if diff < best_diff:
            best_s, best_diff = mid, diff
            if diff < 0.01:
                break
        if total < layers * budget:
            lo = mid
        else:
            hi = mid
    return counts(best_s), False


def _assert_valid_schedule(sched: torch.Tensor, visual: int) -> None:
    assert sched.dtype == torch.int64
    assert bool((sched >= 1).all()) and bool((sched <= visual).all())
    assert bool((sched[:, 1:] <= sched[:, :-1]).all()), "counts must not increase"


# --------------------------------------------------------------------------- mutual information


def test_mi_hand_worked_2x2():
    attn = torch.tensor([[[[0.5, 0.1], [0.1, 0.3]]]])
    # p(x,y) = [[.25, .05], [.05, .15]], p(x) = .5, p(y) = [.3, .2]
    expected = (
        0.25 * math.log2(0.25 / (0.15 + EPS))
        + 0.05 * math.log2(0.05 / (0.10 + EPS))
        + 0.05 * math.log2(0.05 / (0.15 + EPS))
        + 0.15 * math.log2(0.15 / (0.10 + EPS))
    )
    assert expected == pytest.approx(0.14274, abs=1e-4)
    assert mutual_information(attn).item() == pytest.approx(expected, rel=1e-5)


def test_mi_identity_is_one_bit_and_uniform_is_zero():
    identity = torch.eye(2).view(1, 1, 2, 2)
    assert mutual_information(identity).item() == pytest.approx(1.0, abs=1e-5)
    uniform = torch.full((1, 1, 4, 8), 0.1)
    assert mutual_information(uniform).item() == pytest.approx(0.0, abs=1e-4)


def test_mi_matches_loops_per_head():
    attn = _random_attention(2, 3, 4, 5, seed=0)
    got = mutual_information(attn)
    expected = [sum(_mi_loops(attn[b, h].tolist()) for h in range(3)) for b in range(2)]
    assert got.dtype == torch.float64
    assert got.tolist() == pytest.approx(expected, rel=1e-10)


def test_mi_head_reductions():
    attn = _random_attention(2, 4, 6, 7, seed=1)
    total = mutual_information(attn, "sum")
    assert torch.allclose(mutual_information(attn, "mean"), total / 4)
    assert torch.allclose(mutual_information(attn, "sum_over_T"), total / 6)


def test_mi_batch_equals_one_by_one():
    attn = _random_attention(4, 2, 5, 9, seed=2).float()
    batched = mutual_information(attn)
    singles = torch.cat([mutual_information(attn[i : i + 1]) for i in range(4)])
    assert torch.allclose(batched, singles, rtol=1e-6)
    assert len(set(batched.tolist())) == 4  # samples really differ


def test_mi_text_valid_ignores_padded_rows():
    attn = _random_attention(2, 2, 5, 6, seed=3)
    valid = torch.tensor([[True, True, True, False, False], [True] * 5])
    padded = attn.clone()
    padded[0, :, 3:] = float("nan")  # padded rows may hold anything
    got = mutual_information(padded, text_valid=valid)
    assert got[0].item() == pytest.approx(mutual_information(attn[:1, :, :3]).item(), rel=1e-10)
    assert got[1].item() == pytest.approx(mutual_information(attn[1:]).item(), rel=1e-10)
    per_t = mutual_information(padded, "sum_over_T", text_valid=valid)
    assert per_t[0].item() == pytest.approx(got[0].item() / 3, rel=1e-10)


def test_mi_rejects_bad_shapes():
    with pytest.raises(ScheduleError, match=r"\[B, H, T, V\]"):
        mutual_information(torch.rand(2, 3, 4))
    with pytest.raises(ConfigError, match="head_reduce='max' is unknown"):
        mutual_information(torch.rand(1, 1, 2, 2), head_reduce="max")  # type: ignore[arg-type]


def test_mi_and_slope_stay_on_device_without_host_sync():
    # meta tensors have no data: any .item()/.tolist()/bool() sync would raise
    attn = torch.empty(3, 2, 4, 5, device="meta")
    valid = torch.empty(3, 4, dtype=torch.bool, device="meta")
    mi = mutual_information(attn, text_valid=valid)
    assert mi.device.type == "meta" and mi.shape == (3,)
    assert slope(mi).device.type == "meta"
    for fn in (mutual_information, slope, ap._valid_text_counts):
        src = inspect.getsource(fn)
        assert ".item(" not in src and ".tolist(" not in src and "float(" not in src


def test_slope_clamps_at_zero():
    mi = torch.tensor([0.0, 1.0, 2.0, 5.0])
    assert slope(mi).tolist() == pytest.approx([0.4, 0.2, 0.0, 0.0])
    assert slope(mi, k0=1.0, gamma=0.5).tolist() == pytest.approx([1.0, 0.5, 0.0, 0.0])


# --------------------------------------------------------------------------- curve & recycling


def test_default_x0_and_curve():
    assert default_x0(8, "reference") == 14.9
    assert default_x0(32, "actual") == pytest.approx(0.4656 * 32)
    k = torch.tensor([0.0, 0.4], dtype=torch.float64)
    curve = logistic_curve(k, 32, 14.9)
    assert curve.shape == (2, 32)
    assert torch.allclose(curve[0], torch.full((32,), 0.375, dtype=torch.float64))
    for layer in (0, 10, 31):
        expected = 0.75 / (1 + math.exp(0.4 * (layer - 14.9 - 0.4)))
        assert curve[1, layer].item() == pytest.approx(expected, rel=1e-12)


def test_recycle_count_values_and_tensor_form():
    # d -> m = int(0.3 d) + 1 -> min(m // 10 + 1, m)
    assert [recycle_count(d) for d in (0, 1, 10, 33, 100, 576)] == [0, 1, 1, 2, 4, 18]
    dropped = torch.arange(0, 5000)
    expected = torch.tensor([recycle_count(int(d)) for d in dropped])
    assert torch.equal(recycle_count(dropped), expected)


def test_split_handed_on_matches_brute_force():
    processed, handed, keep_bf = [], [], []
    for cur in range(1, 160):
        for n in range(1, cur + 1):
            fits = [kk for kk in range(cur + 1) if kk + recycle_count(cur - kk) == n]
            processed.append(cur)
            handed.append(n)
            keep_bf.append(max(fits) if fits else n)  # no room to merge: keep n, merge none
    keep, merged = split_handed_on(processed, handed)
    assert keep == keep_bf
    assert [k + m for k, m in zip(keep, merged, strict=True)] == handed
    assert split_handed_on([50], [20], recycle=False) == ([20], [0])
    with pytest.raises(ValueError):  # one count per row on both sides
        split_handed_on([50, 40], [20])


def test_tokens_processed_accountings():
    sched = torch.tensor([[5, 3, 2, 1]])
    assert tokens_processed(sched, 8, "actual").tolist() == [8 + 5 + 3 + 2]
    assert tokens_processed(sched, 8, "actual", stage0="before").tolist() == [5 + 5 + 3 + 2]
    assert tokens_processed(sched, 8, "reference").tolist() == [5 + 3 + 2 + 1]


# --------------------------------------------------------------------------- reference schedule


@pytest.mark.parametrize("budget", [64, 128, 192])
@pytest.mark.parametrize("k", [0.0, 0.1, 0.25, 0.4])
def test_reference_schedule_matches_appendix(k, budget):
    expected, _ = _appendix_schedule(k, budget, 32, 576)
    assert reference_schedule(k, budget, 32, 576) == expected


def test_reference_schedule_known_integers_and_quirk():
    flat = reference_schedule(0.0, 64, 32, 576)
    assert flat[:5] == [160, 64, 61, 61, 61] and flat[-1] == 61
    # the known quirk: the bisection stops at a mean of 64.19, not 64
    assert sum(flat) / 32 == pytest.approx(64.1875)
    steep = reference_schedule(0.4, 64, 32, 576)
    assert steep[:6] == [160, 126, 125, 125, 125, 124] and steep[-3:] == [2, 2, 2]
    assert sum(steep) == 64 * 32


def test_reference_schedule_early_exit():
    # L=8, B=64, k=0.0141: |u_1 + ... + u_7 + u_7 - 512| < 1, so s = 1 and no bisection
    expected, early = _appendix_schedule(0.0141, 64, 8, 576)
    assert early
    got = reference_schedule(0.0141, 64, 8, 576)
    assert got == expected
    assert sum(got) / 8 == pytest.approx(77.75)  # s = 1 overshoots: v0 is not in the test sum


def test_retention_schedule_reference_batch():
    k = torch.tensor([0.0, 0.1, 0.4])
    sched = retention_schedule(k, 128, 32, 576, accounting="reference")
    rows = [_appendix_schedule(float(kb), 128, 32, 576)[0] for kb in k.tolist()]
    assert sched.tolist() == rows
    assert tokens_processed(sched, 576, "reference").tolist() == [sum(r) for r in rows]
    with pytest.raises(ScheduleError, match="stage0='reference'"):
        retention_schedule(k, 128, 32, 576, accounting="reference", stage0="none")


# --------------------------------------------------------------------------- actual schedule


def _grid_budgets(lo: float, hi: float) -> list[float]:
    return [lo, lo + 0.37, lo + (hi - lo) * 0.1, (lo * hi) ** 0.5, (lo + hi) / 2 + 0.5, hi - 0.5, hi]


@pytest.mark.parametrize("stage0", ["reference", "none", "before"])
@pytest.mark.parametrize("visual", [60, 576])
@pytest.mark.parametrize("layers", [4, 8, 16, 32])
def test_actual_schedule_meets_budget(layers, visual, stage0):
    k = torch.tensor([0.0, 0.1, 0.4])
    lo, hi = reachable_budget(layers, visual, "actual", stage0)
    for budget in _grid_budgets(lo, hi):
        sched = retention_schedule(k, budget, layers, visual, stage0=stage0)
        assert sched.shape == (3, layers)
        _assert_valid_schedule(sched, visual)
        total = tokens_processed(sched, visual, "actual", stage0).double()
        assert bool((total <= budget * layers + 1e-6).all()), (budget, total)
        assert bool((total >= math.floor(budget * layers + 1e-9) - 1).all()), (budget, total)
        mean = total / layers
        assert bool(((mean - budget).abs() <= 1).all()) and bool((mean <= budget + 1).all())


def test_actual_schedule_shape_follows_slope():
    k = torch.tensor([0.0, 0.4])
    sched = retention_schedule(k, 128, 32, 576, stage0="none")
    # flat curve (k=0): the late layers keep as much as the early ones; steep: early-heavy
    assert sched[0, 1] - sched[0, 30] <= 2
    assert sched[1, 1] > 2 * sched[0, 1] / 3 and sched[1, 30] < sched[0, 30]


def test_actual_schedule_stage0_reference_count():
    sched = retention_schedule(torch.tensor([0.2]), 64, 32, 576)
    assert sched[0, 0].item() == 160  # min(int(2.5 * 64), 576)


@pytest.mark.parametrize("recycle", [True, False])
@pytest.mark.parametrize("stage0", ["reference", "none", "before"])
def test_keep_all_budget_prunes_nothing(stage0, recycle):
    k = torch.tensor([0.0, 0.3, 0.4])
    sched = retention_schedule(k, 576, 32, 576, stage0=stage0, recycle=recycle)
    assert bool((sched == 576).all())


def test_actual_schedule_without_recycle_and_custom_x0():
    k = torch.tensor([0.1, 0.4])
    sched = retention_schedule(k, 100, 16, 576, stage0="none", recycle=False, x0=5.0)
    _assert_valid_schedule(sched, 576)
    assert tokens_processed(sched, 576).tolist() == [1600, 1600]


def test_actual_schedule_batch_equals_one_by_one():
    k = torch.tensor([0.0, 0.05, 0.2, 0.4])
    batched = retention_schedule(k, 90, 16, 576, stage0="none")
    for i in range(4):
        assert torch.equal(batched[i : i + 1], retention_schedule(k[i : i + 1], 90, 16, 576, stage0="none"))


def test_budget_out_of_range_is_one_line_error():
    lo, hi = reachable_budget(32, 576, "actual", "reference")
    assert lo == pytest.approx((576 + 31) / 32) and hi == 576
    with pytest.raises(BudgetError, match=r"choose a budget in \[18\.97, 576\]") as err:
        retention_schedule(torch.tensor([0.1]), 10, 32, 576)
    assert "\n" not in str(err.value)
    with pytest.raises(BudgetError):
        retention_schedule(torch.tensor([0.1]), 577, 32, 576, stage0="before")
    with pytest.raises(BudgetError):
        retention_schedule(torch.tensor([0.1]), 0.5, 32, 576, stage0="before")
    assert reachable_budget(4, 60, "actual", "before") == (1.0, 60.0)
    with pytest.raises(ScheduleError, match="num_layers"):
        reachable_budget(1, 60)
