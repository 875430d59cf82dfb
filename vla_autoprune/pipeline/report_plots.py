"""The report's figures: a figure against budget with interval bands, and AutoPrune's statistics by
scenario family with their intervals. Each draws on a bare :class:`~matplotlib.figure.Figure` (the
global backend is never switched) in matplotlib's own style, whatever a library changed."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.figure import Figure


def finite_number(value: Any) -> float | None:
    """``value`` as a finite float, else None (missing, None or nan cells)."""
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


@contextlib.contextmanager
def _plot_style() -> Iterator[None]:
    """Draw with matplotlib's settings as loaded from its matplotlibrc, whatever a library changed
    since (nuscenes' map API calls ``plt.style.use`` on import, so a sweep's plots would otherwise
    differ from a report of the same runs made by the CLI); the backend is left as it is."""
    with matplotlib.rc_context():
        matplotlib.rcParams.update({k: v for k, v in matplotlib.rcParamsOrig.items() if k != "backend"})
        yield


def plot_vs_budget(rows: Sequence[dict[str, Any]], column: str, path: Path) -> Figure:
    """``column`` against budget (see :func:`_plot_vs_budget`), in the report's fixed style."""
    with _plot_style():
        return _plot_vs_budget(rows, column, path)


def _plot_vs_budget(rows: Sequence[dict[str, Any]], column: str, path: Path) -> Figure:
    """``column`` against budget, one line with its interval band per (planner, pruner, variant);
    unpruned runs (no budget) are a dashed line with a grey band. Saved as a PNG; returns the figure.

    Draws on a bare :class:`~matplotlib.figure.Figure`, so the global backend is never switched."""
    fig = Figure(figsize=(6.5, 4.2))
    ax = fig.add_subplot()
    series: dict[str, list[tuple[float, float, float, float]]] = {}
    for row in rows:
        value, budget = finite_number(row.get(column)), row.get("budget")
        if value is None:
            continue
        low, high = finite_number(row.get(f"{column} lo")), finite_number(row.get(f"{column} hi"))
        if low is None or high is None:
            low = high = value
        label = "/".join(str(row[k]) for k in ("planner", "pruner", "variant") if row.get(k))
        if budget is None:  # unpruned (or camera-blind) reference: the same at every budget
            ax.axhline(value, linestyle="--", color="gray", linewidth=1)
            ax.axhspan(low, high, color="gray", alpha=0.15, linewidth=0)
            ax.annotate(label, (0, value), xycoords=("axes fraction", "data"), fontsize="small")
            continue
        series.setdefault(label, []).append((float(budget), value, low, high))
    for label, points in sorted(series.items()):
        xs, ys, lows, highs = zip(*sorted(points), strict=True)
        (line,) = ax.plot(xs, ys, marker="o", label=label)
        ax.fill_between(xs, lows, highs, color=line.get_color(), alpha=0.15, linewidth=0)
        # Interval bars, so a lone budget shows its CI too. vlines, not errorbar: a percentile
        # interval need not contain the point estimate (skewed replicates on few scenes).
        ax.vlines(xs, lows, highs, color=line.get_color(), linewidth=1.5)
    ax.set_xlabel("budget (mean visual tokens per decoder layer)")
    ax.set_ylabel(f"{column} (95 % CI band)")
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return fig


def plot_stats_by_scenario(rows: Sequence[dict[str, Any]], key: str, path: Path) -> Figure | None:
    """:func:`_plot_stats_by_scenario` in the report's fixed style."""
    with _plot_style():
        return _plot_stats_by_scenario(rows, key, path)


def _plot_stats_by_scenario(rows: Sequence[dict[str, Any]], key: str, path: Path) -> Figure | None:
    """Mean ``key`` (e.g. AutoPrune's ``mi``) per scenario family with interval bars, one marker
    series per run; None (nothing written) when no row has it."""
    rows = [r for r in rows if r.get("scenario") != "all" and finite_number(r.get(key)) is not None]
    if not rows:
        return None
    families = sorted({str(r["scenario"]) for r in rows})
    runs = sorted({r["run"] for r in rows})
    fig = Figure(figsize=(6.5, 4.2))
    ax = fig.add_subplot()
    for i, run in enumerate(runs):
        mine = [r for r in rows if r["run"] == run]
        xs = [families.index(str(r["scenario"])) + (i - (len(runs) - 1) / 2) * 0.1 for r in mine]
        ys = [float(r[key]) for r in mine]
        bounds = [(finite_number(r.get(f"{key} lo")), finite_number(r.get(f"{key} hi"))) for r in mine]
        label = f"run {run}: {mine[0]['pruner']} b{mine[0]['budget']} {mine[0].get('variant') or ''}".strip()
        (points,) = ax.plot(xs, ys, "o", label=label)
        # the interval as it is: a percentile interval need not contain the mean (errorbar's
        # distances from the point would cut such an interval at the point)
        ranged = [
            (x, lo, hi) for x, (lo, hi) in zip(xs, bounds, strict=True) if lo is not None and hi is not None
        ]
        if ranged:
            ax.vlines(*zip(*ranged, strict=True), color=points.get_color(), linewidth=1.5)
    ax.set_xticks(range(len(families)), families, rotation=30, ha="right")
    ax.set_ylabel(f"mean {key} (95 % CI)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return fig
