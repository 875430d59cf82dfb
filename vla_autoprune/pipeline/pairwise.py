"""Pruner-vs-pruner comparisons at one budget: paired differences and ratios with bootstrap intervals.

The main table pairs every pruned run with ``none`` only; these rows pair two pruned runs at the
same budget, so "A beats B" gets an interval too. Two runs are paired only when
:func:`table.comparable` allows it (same planner, model, data, dtype and samples) and they hold the
same samples; both are reweighted by the same bootstrap draws, sample by sample.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

from vla_autoprune.pipeline.bootstrap import Interval, paired_difference, paired_ratio
from vla_autoprune.pipeline.ci_tables import (
    MIN_SCENES,
    blank_bounds,
    figure_terms,
    numbered_runs,
    put_interval,
    scene_count,
)
from vla_autoprune.pipeline.resampling import Bootstrap, Run
from vla_autoprune.pipeline.summary import full_future
from vla_autoprune.pipeline.table import comparable, key_columns

#: Figures compared as differences A - B (``stp3``: samples with a full 3 s future).
DIFFERENCES: tuple[str, ...] = ("L2@3s stp3", "Col@3s stp3")
#: Figure compared as a ratio A / B.
RATIO = "L2@3s stp3"


def excludes(interval: Interval, null: float) -> str | None:
    """``"yes"`` when the interval lies wholly above or below ``null``, ``"no"`` when it holds it,
    None when a bound is undefined (``nan``)."""
    low, high = float(interval.low), float(interval.high)
    if math.isnan(low) or math.isnan(high):
        return None
    return "yes" if low > null or high < null else "no"


def label(summary: dict[str, Any], with_variant: bool = True) -> str:
    """A run's pruner label, with its variant when it has one and ``with_variant``:
    ``autoprune (pruner.stage0=before)``."""
    keys = key_columns(summary)
    shown = with_variant and keys["variant"]
    return f"{keys['pruner']} ({keys['variant']})" if shown else str(keys["pruner"])


def _samples_3s(a: Run, b: Run) -> int | str:
    """Samples the 3 s figures use: one number, or ``A/B`` when malformed answers make them differ."""
    na, nb = int(full_future(a.records).sum()), int(full_future(b.records).sum())
    return na if na == nb else f"{na}/{nb}"


def pair_row(a: tuple[int, Run], b: tuple[int, Run], boot: Bootstrap) -> dict[str, Any]:
    """One comparison of run A with run B (``(row number, run)`` each), on the same samples.

    Columns: ``c A-B`` for each of :data:`DIFFERENCES` and ``L2@3s stp3 A/B``, each with ``lo`` /
    ``hi`` and ``... excludes 0`` (``excludes 1`` for the ratio).
    """
    (a_id, run_a), (b_id, run_b) = a, b
    weights = boot.weights(run_a)  # == boot.weights(run_b): same samples, scenes and families
    terms_a, terms_b = figure_terms(run_a.records), figure_terms(run_b.records)
    variants = run_a.summary.get("variant") != run_b.summary.get("variant")  # shown when they differ
    row: dict[str, Any] = {
        "budget": run_a.summary.get("budget"),
        "planner": run_a.summary.get("planner"),
        "run A": a_id,
        "pruner A": label(run_a.summary, variants),
        "run B": b_id,
        "pruner B": label(run_b.summary, variants),
        "samples @3s": _samples_3s(run_a, run_b),
    }
    for figure in DIFFERENCES:
        interval = paired_difference(weights, *terms_a[figure], *terms_b[figure])
        put_interval(row, f"{figure} A-B", interval)
        row[f"{figure} A-B excludes 0"] = excludes(interval, 0.0)
    # paired_ratio gives metric(reference) / metric(run): with A as the reference, that is A / B
    ratio = paired_ratio(weights, *terms_b[RATIO], *terms_a[RATIO])
    put_interval(row, f"{RATIO} A/B", ratio)
    row[f"{RATIO} A/B excludes 1"] = excludes(ratio, 1.0)
    return row


def _without_interval(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with no bounds and no finding: its runs hold a single scene, which a scene bootstrap
    cannot vary (every replicate would be the sample itself)."""
    return blank_bounds(row) | {k: None for k in row if k.endswith(("excludes 0", "excludes 1"))}


def pairwise_rows(runs: Sequence[Run], boot: Bootstrap) -> list[dict[str, Any]]:
    """Every pair of pruned runs at one budget that may be paired, A before B in table order;
    rows sorted by planner, budget and run numbers."""
    pruned = [
        (i, r)
        for i, r in numbered_runs(runs)
        if r.records and r.summary.get("budget") is not None and r.summary.get("pruner") != "none"
    ]
    rows = [
        pair_row(a, b, boot)
        if scene_count(a[1].records) >= MIN_SCENES
        else _without_interval(pair_row(a, b, boot))
        for a, b in itertools.combinations(pruned, 2)
        if a[1].summary.get("budget") == b[1].summary.get("budget")
        and comparable(a[1].summary, b[1].summary)
        and a[1].same_samples(b[1])
    ]
    return sorted(rows, key=lambda r: (str(r["planner"]), r["budget"], r["run A"], r["run B"]))
