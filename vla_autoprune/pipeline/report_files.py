"""Write a sweep's report files: Markdown and CSV tables, and budget plots."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vla_autoprune.pipeline.merge import find_runs, merge_runs
from vla_autoprune.pipeline.results import atomic_write_json, atomic_write_text
from vla_autoprune.pipeline.table import SHORT_COLUMNS, table_rows, to_csv, to_markdown

logger = logging.getLogger(__name__)


def plot_vs_budget(rows: Sequence[dict[str, Any]], column: str, path: Path) -> None:
    """One line per (planner, pruner): ``column`` against budget, saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    series: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        value, budget = row.get(column), row.get("budget")
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        label = f"{row['planner']}/{row['pruner']}"
        if budget is None:  # unpruned (or camera-blind) reference: the same at every budget
            ax.axhline(float(value), linestyle="--", color="gray", linewidth=1)
            ax.annotate(label, (0, float(value)), xycoords=("axes fraction", "data"), fontsize="small")
            continue
        series.setdefault(label, []).append((float(budget), float(value)))
    for label, points in sorted(series.items()):
        xs, ys = zip(*sorted(points), strict=True)
        ax.plot(xs, ys, marker="o", label=label)
    ax.set_xlabel("budget (mean visual tokens per decoder layer)")
    ax.set_ylabel(column)
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(dirs: Sequence[Path], out: Path) -> list[dict[str, Any]]:
    """Merge every run under ``dirs`` and write report.md/.csv/summaries.json and plots into ``out``."""
    runs = find_runs(dirs)
    if not runs:
        raise FileNotFoundError(
            f"no run.json under {', '.join(map(str, dirs))}; pass an evaluate output folder"
        )
    summaries = merge_runs(runs)
    rows = table_rows(summaries)
    out.mkdir(parents=True, exist_ok=True)
    header = (
        "# vla-autoprune report\n\n"
        "L2 in metres; collision rates as fractions. `stp3` = ST-P3/VAD convention (average over "
        "horizon), `uniad` = UniAD convention (at the horizon); `box` = exact box overlap, not "
        "comparable with published tables. Retention = L2 avg of `none` / L2 avg of the run, same samples.\n\n"
    )
    atomic_write_text(out / "report.md", header + to_markdown(rows))
    atomic_write_text(out / "report.csv", to_csv(rows))
    atomic_write_json(out / "summaries.json", summaries)
    plot_vs_budget(rows, "L2@3s stp3", out / "l2_3s_vs_budget.png")
    plot_vs_budget(rows, "Col@3s stp3", out / "collision_3s_vs_budget.png")
    logger.info(
        "Report of %d runs (%d configurations) in %s\n%s",
        len(runs),
        len(summaries),
        out,
        to_markdown(rows, SHORT_COLUMNS),
    )
    return rows
