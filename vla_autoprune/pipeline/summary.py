"""Turn per-sample records into a run summary, using the metric aggregations of :mod:`planners.metrics`.

The summary is a pure function of the records (sorted by dataset index), so a resumed run and an
uninterrupted one produce the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from planners.metrics import CONVENTIONS, aggregate_at, sample_terms_at
from vla_autoprune.data.schema import NUM_FUTURE_STEPS

#: Collision conventions stored per sample; ``box`` is aggregated the ``stp3`` way (not comparable
#: with published tables, which use the grids).
COLLISION_KEYS: tuple[str, ...] = ("stp3", "uniad", "box")


def _stack(records: Sequence[dict[str, Any]], *path: str) -> np.ndarray:
    """``records[i][path...]`` stacked into one array ``[S, ...]``."""
    values = []
    for r in records:
        v: Any = r
        for key in path:
            v = v[key]
        values.append(v)
    return np.asarray(values)


def planned(records: Sequence[dict[str, Any]]) -> np.ndarray:
    """bool [S]: records holding a plan (False for malformed answers, which have no ``l2``)."""
    return np.array([r.get("l2") is not None for r in records], dtype=bool)


def full_future(records: Sequence[dict[str, Any]]) -> np.ndarray:
    """bool [S]: records with a plan and a full 3 s future (every ``gt_mask`` step true), the samples
    that every ``stp3`` figure averages over (``uniad`` keeps all samples in its denominator)."""
    if not records:
        return np.zeros(0, dtype=bool)
    return _stack(records, "gt_mask").astype(bool).all(axis=1) & planned(records)


def _stack_planned(records: Sequence[dict[str, Any]], *path: str) -> np.ndarray:
    """``records[i][path...]`` stacked ``[S, ...]``, with zeros in the rows of malformed records."""
    ok = planned(records)
    if not ok.any():
        return np.zeros((len(records), NUM_FUTURE_STEPS))
    values = _stack([r for r, good in zip(records, ok, strict=True) if good], *path).astype(np.float64)
    out = np.zeros((len(records), *values.shape[1:]))
    out[ok] = values
    return out


def _mean_or_none(records: Sequence[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in records if r.get(key) is not None]
    return float(np.mean(values)) if values else None


def planning_metrics(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """L2 and collision rates at 1/2/3 s in every convention, from per-sample per-step values.

    Each record holds ``l2`` float[6], ``gt_mask`` bool[6] and ``collision`` {convention: bool[6]}.
    """
    records = [r for r in records if r.get("l2") is not None]  # malformed answers have no plan
    out: dict[str, dict[str, dict[str, float]]] = {"l2": {}, "collision": {}}
    if not records:
        return out
    mask = _stack(records, "gt_mask").astype(bool)
    l2 = _stack(records, "l2").astype(np.float64)
    for convention in CONVENTIONS:
        out["l2"][convention] = aggregate_at(l2, mask, convention)
    for key in COLLISION_KEYS:
        flags = _stack(records, "collision", key).astype(np.float64)
        out["collision"][key] = aggregate_at(flags, mask, "stp3" if key == "box" else key)
    return out


#: The reported figures: (table column prefix, record key, record sub-key, aggregation convention).
FIGURES: tuple[tuple[str, str, str, str], ...] = (
    ("L2", "l2", "stp3", "stp3"),
    ("L2", "l2", "uniad", "uniad"),
    ("Col", "collision", "stp3", "stp3"),
    ("Col", "collision", "uniad", "uniad"),
    ("Col", "collision", "box", "stp3"),
)


def metric_terms(records: Sequence[dict[str, Any]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-sample terms of every figure, in the order of ``records``: ``"L2 stp3"`` -> (num, den).

    ``num`` float64 [S, 3] (1/2/3 s) and ``den`` float64 [S]: the figure at each horizon is
    ``num.sum(0) / den.sum()`` (see :func:`planners.metrics.sample_terms_at`), which is what the
    bootstrap reweights.
    """
    # malformed answers (no plan) weigh nothing: their mask rows are False
    mask = _stack(records, "gt_mask").astype(bool) & planned(records)[:, None]
    terms = {}
    for prefix, key, sub, convention in FIGURES:
        values = _stack_planned(records, key) if key == "l2" else _stack_planned(records, key, sub)
        terms[f"{prefix} {sub}"] = sample_terms_at(values.astype(np.float64), mask, convention)
    return terms


def stat_values(records: Sequence[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """A per-sample statistic (``mi``, ``k``, ...) as mean terms: values float64 [S] (0 where
    absent) and present float64 [S] (1/0), so that ``mean = values.sum() / present.sum()``."""
    raw = [r.get(key) for r in records]
    values = np.array([np.nan if v is None else float(v) for v in raw], dtype=np.float64)
    present = np.isfinite(values)
    return np.where(present, values, 0.0), present.astype(np.float64)


#: Closed-loop-style figures (``docs/CLOSED-LOOP.md``): (table column, key of a record's ``"pdm"``).
PDM_FIGURES: tuple[tuple[str, str], ...] = (
    ("PDMS", "pdms"),
    ("NC", "nc"),
    ("DAC", "dac"),
    ("TTC", "ttc"),
    ("EP", "ep"),
    ("C", "comfort"),
    ("DDC", "ddc"),
)
#: ``pdm_problem`` of a record evaluated without the closed-loop-style score (e.g. resumed from an
#: open-loop-only run) in a run where other records have it.
NOT_EVALUATED = "closed_loop_style was not among the scores"


def has_pdm(records: Sequence[dict[str, Any]]) -> bool:
    """Whether any record carries a closed-loop-style score (``scores`` had ``closed_loop_style``)."""
    return any("pdm" in r for r in records)


def pdm_terms(records: Sequence[dict[str, Any]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-sample mean terms of every PDM figure, in the order of ``records``: ``"PDMS"`` ->
    (value float64 [S], 0 where absent; present float64 [S], 1 where the sample is scored and has
    the value), so that the figure is ``value.sum() / present.sum()`` over the scored samples only
    (what the bootstrap reweights)."""
    terms = {}
    for column, key in PDM_FIGURES:
        values = [(r.get("pdm") or {}).get(key) if r.get("pdm_scored") else None for r in records]
        present = np.array([v is not None for v in values], dtype=np.float64)
        terms[column] = (np.array([0.0 if v is None else float(v) for v in values]), present)
    return terms


def closed_loop_metrics(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Means of the PDM figures over the scored samples, and how many samples were not scored and why.

    :return: ``{"pdm": {key: mean or None}, "pdm_scored": int, "pdm_unscored": int,
        "pdm_unscored_reasons": {reason: count}}``.
    """
    terms = pdm_terms(records)
    scored = sum(bool(r.get("pdm_scored")) for r in records)
    reasons: dict[str, int] = {}
    for r in records:
        if not r.get("pdm_scored"):
            reason = str(r.get("pdm_problem") or NOT_EVALUATED) if "pdm" in r else NOT_EVALUATED
            reasons[reason] = reasons.get(reason, 0) + 1
    means = {
        key: (terms[col][0].sum() / terms[col][1].sum()) if terms[col][1].any() else None
        for col, key in PDM_FIGURES
    }
    return {
        "pdm": {key: None if value is None else float(value) for key, value in means.items()},
        "pdm_scored": scored,
        "pdm_unscored": len(records) - scored,
        "pdm_unscored_reasons": dict(sorted(reasons.items())),
    }


def summarize(records: Sequence[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    """The ``summary.json`` document of one run.

    Args:
        records: per-sample records (any order; they are sorted by ``index``).
        meta: run facts copied verbatim (pruner, budget, accounting, device, wall_time_s, ...).
    """
    records = sorted(records, key=lambda r: r["index"])
    summary: dict[str, Any] = dict(meta)
    summary["num_samples"] = len(records)
    summary["num_scenes"] = len({r["scene_token"] for r in records})
    summary["num_malformed"] = int((~planned(records)).sum())
    summary["num_samples_3s"] = int(full_future(records).sum())
    if not records:
        return summary
    summary.update(planning_metrics(records))
    if has_pdm(records):
        summary.update(closed_loop_metrics(records))
    tokens = [np.mean(r["visual_tokens_per_layer"]) for r in records if r.get("visual_tokens_per_layer")]
    summary["mean_visual_tokens_per_layer"] = float(np.mean(tokens)) if tokens else None
    flops = _mean_or_none(records, "flops")
    unpruned = _mean_or_none(records, "flops_unpruned")
    summary["flops"] = flops
    summary["flops_unpruned"] = unpruned
    summary["flops_reduction"] = 1.0 - flops / unpruned if flops is not None and unpruned else None
    summary["mutual_information"] = _mean_or_none(records, "mi")
    summary["slope_k"] = _mean_or_none(records, "k")
    summary["collision_box_note"] = (
        "box: exact rectangle overlap, stp3 classes/aggregation; not comparable with published tables"
    )
    return summary
