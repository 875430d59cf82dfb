"""Prefill latency and throughput of every pruner at budgets {V, V/2, V/4, ~V/9}, against ``none``.

For each pruner and budget: median time per prefill, samples/s, the speedup over ``none`` (the
engine with nothing to drop), the speedup its executed FLOPs predict, and its time over the
*ideal*: the plain layer stack fed exactly the per-layer token counts the engine ran, sliced
between layers, with no scoring (what a zero-overhead engine would cost), with the range of that
ratio over the rounds (each round times the pruned prefill and its ideal back to back).
"""

from __future__ import annotations

from functools import partial
from typing import Any

from benchmarks.common import (
    BUDGET_FRACTIONS,
    PRUNER_NAMES,
    Subject,
    executed_macs,
    ideal_run,
    interleaved_rounds,
    make_pruner,
    medians,
    plain_run,
    pruned_run,
    round_range,
)


def measure(
    subject: Subject,
    rounds: int,
    pruners: tuple[str, ...] = PRUNER_NAMES,
    budgets: dict[str, float] | None = None,
) -> list[dict[str, Any]]:
    """One row per (pruner, budget), plus ``none``; all timed in the same interleaved rounds."""
    budgets = BUDGET_FRACTIONS if budgets is None else budgets
    cases: dict[str, dict[str, Any]] = {}
    fns: dict[str, Any] = {"plain": partial(plain_run, subject)}
    variants = [("none", "-", None)] + [(n, label, f) for n in pruners for label, f in budgets.items()]
    for name, label, fraction in variants:
        pruner, budget = make_pruner(name, fraction, subject.num_layers, subject.num_visual, subject.model)
        record = pruned_run(subject, pruner)
        assert record.seq_len is not None and record.flops is not None
        seq_len = [int(n) for n in record.seq_len]
        key = f"{name}@{label}"
        cases[key] = {
            "pruner": pruner.label,
            "budget_label": label,
            "budget": budget,
            "mean_visual_tokens": round(float(record.mean_visual_tokens().mean()), 2),
            "seq_len": seq_len,
            "executed_MACs": executed_macs(subject, record),
            "sample_MACs": int(record.flops.sum()),
            "scoring_MACs": int(record.scoring_flops.sum()) if record.scoring_flops is not None else 0,
        }
        fns[key] = partial(pruned_run, subject, pruner)
        fns[f"ideal:{key}"] = partial(ideal_run, subject, seq_len)
    per_round = interleaved_rounds(fns, rounds, subject.device)
    times = medians(per_round)
    base = cases["none@-"]
    t_none = times["none@-"]
    rows = []
    for key, case in cases.items():
        t, t_ideal = times[key], times[f"ideal:{key}"]
        predicted = base["executed_MACs"] / case["executed_MACs"]
        speedup = t_none / t
        rows.append(
            case
            | {
                "ms": round(1000 * t, 3),
                "samples_per_s": round(subject.batch / t, 2),
                "speedup_vs_none": round(speedup, 3),
                "flops_predicted_speedup": round(predicted, 3),
                "realised_over_predicted": round(speedup / predicted, 3),
                "ideal_ms": round(1000 * t_ideal, 3),
                "time_over_ideal": round(t / t_ideal, 3),
                # the lowest and highest paired (same-round) ratio: the spread of the figure above
                **round_range("time_over_ideal", _ratios(per_round[key], per_round[f"ideal:{key}"])),
                "ideal_speedup_vs_none": round(t_none / t_ideal, 3),
            }
        )
    rows.append(
        {
            "pruner": "plain (no engine)",
            "budget_label": "-",
            "ms": round(1000 * times["plain"], 3),
            "speedup_vs_none": round(t_none / times["plain"], 3),
        }
    )
    return rows


def _ratios(num: list[float], den: list[float]) -> list[float]:
    """``num[r] / den[r]`` for each round ``r`` (both timed in the same round: paired)."""
    return [a / b for a, b in zip(num, den, strict=True)]
