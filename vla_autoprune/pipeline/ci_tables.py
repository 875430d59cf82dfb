"""Result tables with scene-bootstrap 95 % intervals, computed from the per-sample records.

A :class:`Run` is one configuration's summary with its records sorted by sample token, so runs on
the same samples line up sample by sample and draw identical bootstrap weights from one seed
(the weights depend only on the sorted scenes and their scenario families, the number of resamples
and the seed, see :mod:`~vla_autoprune.pipeline.resampling`): every comparison with ``none`` is
paired. Point estimates equal the summary's numbers; the intervals come
from :mod:`vla_autoprune.pipeline.bootstrap`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from vla_autoprune.errors import DataError
from vla_autoprune.pipeline.bootstrap import Interval, paired_difference, paired_ratio, ratio_interval
from vla_autoprune.pipeline.resampling import Bootstrap, Run
from vla_autoprune.pipeline.summary import full_future, has_pdm, metric_terms, pdm_terms, stat_values
from vla_autoprune.pipeline.table import (
    HORIZONS,
    drop_empty_variant,
    find_baseline,
    key_columns,
    sort_summaries,
    table_rows,
)

#: Figure columns of the main table whose terms come from :func:`summary.metric_terms`: the
#: horizons, plus the horizon average for L2 (the papers' "Avg.").
_L2_COLUMNS = (*HORIZONS, "avg")
#: Complexity bins of the breakdown: tertiles of the evaluated samples' complexity.
COMPLEXITY_QUANTILES = (1 / 3, 2 / 3)


def figure_terms(records: Sequence[dict[str, Any]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Table column (``L2@3s stp3``, ``L2 avg uniad``, ``Col@1s box``, ..., and ``PDMS``, ``NC``,
    ... for runs scored closed-loop-style) -> (num [S], den [S])."""
    out = dict(pdm_terms(records)) if has_pdm(records) else {}
    for name, (num, den) in metric_terms(records).items():
        prefix, conv = name.split()
        if prefix == "L2":
            num = np.column_stack([num, num.mean(axis=1)])  # avg over horizons; den is shared
        horizons = _L2_COLUMNS if prefix == "L2" else HORIZONS
        for i, h in enumerate(horizons):
            column = f"{prefix} avg {conv}" if h == "avg" else f"{prefix}@{h} {conv}"
            out[column] = (num[:, i], den)
    return out


def put_interval(row: dict[str, Any], column: str, interval: Interval, scale: float = 1.0) -> None:
    """Set ``row[column]`` and its ``lo`` / ``hi`` companions from a scalar ``interval``."""
    row[column] = float(interval.estimate) * scale
    row[f"{column} lo"] = float(interval.low) * scale
    row[f"{column} hi"] = float(interval.high) * scale


#: A scene bootstrap needs two scenes to vary anything: with fewer, every replicate is the sample
#: itself and the "interval" [x, x] would claim a certainty nothing measured.
MIN_SCENES = 2


def scene_count(records: Sequence[dict[str, Any]]) -> int:
    """How many scenes ``records`` come from."""
    return len({r["scene_token"] for r in records})


def blank_bounds(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with every ``lo`` / ``hi`` bound set to ``nan`` (no interval: fewer than :data:`MIN_SCENES`)."""
    return {k: float("nan") if k.endswith((" lo", " hi")) else v for k, v in row.items()}


def _paired_base(run: Run, runs: Sequence[Run]) -> Run | None:
    base = find_baseline(run.summary, [r.summary for r in runs])
    if base is None or base is run.summary:
        return None
    found = next(r for r in runs if r.summary is base)
    return found if found.same_samples(run) else None


def interval_columns(
    records: Sequence[dict[str, Any]], base: Sequence[dict[str, Any]] | None, weights: np.ndarray
) -> dict[str, float]:
    """CI columns of one run: ``c lo``/``c hi`` for every figure ``c``, ``c diff`` (run - none)
    with its interval, and the L2 retentions (none / run, %) with theirs.

    :param records: [S] the run's records; ``base``: [S] the ``none`` run's, aligned sample by
        sample (or None: no comparison); ``weights``: float [R, S] bootstrap weights.
    """
    row: dict[str, Any] = {}
    terms = figure_terms(records)
    base_terms = figure_terms(base) if base is not None else {}
    for column, (num, den) in terms.items():
        interval = ratio_interval(weights, num, den)
        row[f"{column} lo"], row[f"{column} hi"] = float(interval.low), float(interval.high)
        if column in base_terms:
            put_interval(row, f"{column} diff", paired_difference(weights, num, den, *base_terms[column]))
    for column in ("L2 avg stp3", "L2@3s stp3"):
        if column in base_terms:
            name = "L2 avg retention stp3 %" if column == "L2 avg stp3" else "L2@3s retention stp3 %"
            put_interval(row, name, paired_ratio(weights, *terms[column], *base_terms[column]), 100.0)
    return row


def compare_records(
    records: Sequence[dict[str, Any]], none_records: Sequence[dict[str, Any]], boot: Bootstrap | None = None
) -> dict[str, float]:
    """:func:`interval_columns` of a run against its ``none`` run, e.g. for acceptance checks:
    ``compare_records(run, none)["L2@3s retention stp3 % hi"]``.

    :param records: the run's per-sample records; ``none_records``: the unpruned run's records on
        the same samples (any order).
    """
    run, base = Run.of({}, records), Run.of({}, none_records)
    if not run.same_samples(base):
        raise DataError(
            f"the runs hold different samples ({len(records)} vs {len(none_records)}); "
            "compare runs of one data selection"
        )
    return interval_columns(run.records, base.records, (boot or Bootstrap()).weights(run))


def unpaired_runs(runs: Sequence[Run]) -> list[int]:
    """Row numbers of the pruned runs (with records) that have no ``none`` run to be paired with."""
    return [
        run_id
        for run_id, run in numbered_runs(runs)
        if run.records and run.summary.get("pruner") not in (None, "none") and _paired_base(run, runs) is None
    ]


def numbered_runs(runs: Sequence[Run]) -> list[tuple[int, Run]]:
    """``runs`` in table order, with their row number in the main table (``run`` column)."""
    by_summary = {id(r.summary): r for r in runs}
    ordered = sort_summaries([r.summary for r in runs])
    return [(i, by_summary[id(s)]) for i, s in enumerate(ordered, start=1)]


def main_rows(runs: Sequence[Run], boot: Bootstrap) -> list[dict[str, Any]]:
    """The main table: ``run`` (row number), :func:`table.table_rows` columns and intervals (see
    :func:`interval_columns`)."""
    numbered = numbered_runs(runs)
    rows = []
    for row, (run_id, run) in zip(table_rows([r.summary for _, r in numbered]), numbered, strict=True):
        if run.records:
            base = _paired_base(run, runs)
            base_records = base.records if base is not None else None
            columns = interval_columns(run.records, base_records, boot.weights(run))
            row.update(columns if scene_count(run.records) >= MIN_SCENES else blank_bounds(columns))
        rows.append({"run": run_id, **row})
    return rows


def complexity_labels(records: Sequence[dict[str, Any]]) -> list[str]:
    """Complexity tertile of each record (edges from these records), or ``unknown``."""
    values = np.array([np.nan if r.get("complexity") is None else float(r["complexity"]) for r in records])
    known = np.isfinite(values)
    if not known.any():
        return ["unknown"] * len(records)
    edges = np.unique(np.quantile(values[known], COMPLEXITY_QUANTILES))
    names = [f"<= {edges[0]:g}"]
    names += [f"({lo:g}, {hi:g}]" for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    names.append(f"> {edges[-1]:g}")
    bins = np.searchsorted(edges, values, side="left")
    return [names[b] if ok else "unknown" for b, ok in zip(bins, known, strict=True)]


def _groups(run: Run, by: str) -> list[tuple[str, np.ndarray]]:
    """``(group, mask bool [S])`` of ``run``: families alphabetically, complexity bins from low to
    high (``unknown`` last)."""
    if by == "scenario":
        labels = [str(r.get("scenario") or "unknown") for r in run.records]
        arr = np.asarray(labels)
        return [(name, arr == name) for name in sorted(set(labels))]
    labels = complexity_labels(run.records)
    arr = np.asarray(labels)
    values = np.array(
        [np.nan if r.get("complexity") is None else float(r["complexity"]) for r in run.records]
    )
    lowest = {name: np.nanmin(values[arr == name]) if name != "unknown" else np.inf for name in set(labels)}
    return [(name, arr == name) for name in sorted(lowest, key=lambda n: (lowest[n], n))]


def _run_keys(run_id: int, summary: dict[str, Any]) -> dict[str, Any]:
    keys = key_columns(summary)
    return {"run": run_id, **{k: keys[k] for k in ("planner", "pruner", "budget", "positions", "variant")}}


def _group_figures(
    terms: dict[str, tuple[np.ndarray, np.ndarray]],
    base_terms: dict[str, tuple[np.ndarray, np.ndarray]],
    weights: np.ndarray,
    mask: np.ndarray,
) -> dict[str, float]:
    """L2@3s and Col@3s (stp3), L2@3s retention and PDMS (when scored) of the samples in ``mask`` (bool [S])."""
    row: dict[str, float] = {}
    w = weights[:, mask]  # [R, S_group]: the whole-split scene draws, restricted to the group
    for column in ("L2@3s stp3", "Col@3s stp3", "PDMS"):
        if column in terms:
            num, den = terms[column]
            put_interval(row, column, ratio_interval(w, num[mask], den[mask]))
    if "L2@3s stp3" in base_terms:
        (num, den), (ref_num, ref_den) = terms["L2@3s stp3"], base_terms["L2@3s stp3"]
        interval = paired_ratio(w, num[mask], den[mask], ref_num[mask], ref_den[mask])
        put_interval(row, "L2@3s retention stp3 %", interval, 100.0)
    return row


def breakdown_rows(runs: Sequence[Run], boot: Bootstrap) -> list[dict[str, Any]]:
    """Per run (``run`` = its row number in the main table) and group of ``scenario`` family or
    complexity bin: samples, samples @3s, scenes, L2@3s and Col@3s (stp3) and L2@3s retention, with intervals."""
    rows = []
    for run_id, run in numbered_runs(runs):
        if not run.records:
            continue
        weights, base = boot.weights(run), _paired_base(run, runs)
        terms = figure_terms(run.records)
        base_terms = figure_terms(base.records) if base is not None else {}
        scenes = np.array([r["scene_token"] for r in run.records])
        full = full_future(run.records)
        for by in ("scenario", "complexity"):
            for name, mask in _groups(run, by):
                row = {**_run_keys(run_id, run.summary), "by": by, "group": name}
                row |= {"samples": int(mask.sum()), "samples @3s": int(full[mask].sum())}
                row["scenes"] = len(set(scenes[mask]))
                figures = _group_figures(terms, base_terms, weights, mask)
                rows.append(row | (figures if row["scenes"] >= MIN_SCENES else blank_bounds(figures)))
    return drop_empty_variant(rows)


def stat_rows(
    runs: Sequence[Run], boot: Bootstrap, keys: Sequence[str] = ("mi", "k")
) -> list[dict[str, Any]]:
    """Mean of per-sample pruner statistics (AutoPrune's ``mi`` and ``k``) per scenario family, with
    intervals, for every run that records them; plus an ``all`` row per run."""
    rows = []
    for run_id, run in numbered_runs(runs):
        stats = {key: stat_values(run.records, key) for key in keys}
        if not any(present.any() for _, present in stats.values()):
            continue
        weights = boot.weights(run)
        everything = ("all", np.ones(len(run.records), dtype=bool))
        for name, mask in [everything, *_groups(run, "scenario")]:
            row = {**_run_keys(run_id, run.summary), "scenario": name, "samples": int(mask.sum())}
            for key, (values, present) in stats.items():
                put_interval(row, key, ratio_interval(weights[:, mask], values[mask], present[mask]))
            few = scene_count([r for r, m in zip(run.records, mask, strict=True) if m]) < MIN_SCENES
            rows.append(blank_bounds(row) if few else row)
    return drop_empty_variant(rows)
