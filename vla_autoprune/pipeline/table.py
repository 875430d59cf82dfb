"""Result tables: pruner x budget rows with L2 / collision in both conventions, FLOPs and retention."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from typing import Any

HORIZONS = ("1s", "2s", "3s")


def _avg(metric: dict[str, float] | None) -> float:
    """Average over the 1/2/3 s horizons (the papers' "Avg." column)."""
    if not metric:
        return math.nan
    return sum(metric[h] for h in HORIZONS) / len(HORIZONS)


def retention(reference: float, value: float) -> float:
    """Accuracy retention for an error metric (lower is better): reference / value, in percent."""
    if not (math.isfinite(reference) and math.isfinite(value)) or value == 0:
        return math.nan
    return 100.0 * reference / value


def _baseline(summary: dict[str, Any], summaries: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The unpruned run of the same planner on the same samples, if the sweep has one."""
    for other in summaries:
        if (
            other.get("pruner") == "none"
            and other.get("planner") == summary.get("planner")
            and other.get("samples_digest") == summary.get("samples_digest")
        ):
            return other
    return None


def table_rows(summaries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per summary, sorted by planner, pruner, budget."""
    rows = []
    for s in sorted(
        summaries, key=lambda s: (s.get("planner", ""), s.get("pruner", ""), s.get("budget") or 0)
    ):
        row: dict[str, Any] = {
            "planner": s.get("planner"),
            "pruner": s.get("pruner"),
            "budget": s.get("budget"),
            "samples": s.get("num_samples"),
            "tokens/layer": s.get("mean_visual_tokens_per_layer"),
        }
        for conv in ("stp3", "uniad"):
            for h in HORIZONS:
                row[f"L2@{h} {conv}"] = s.get("l2", {}).get(conv, {}).get(h, math.nan)
            row[f"L2 avg {conv}"] = _avg(s.get("l2", {}).get(conv))
        for conv in ("stp3", "uniad", "box"):
            for h in HORIZONS:
                row[f"Col@{h} {conv}"] = s.get("collision", {}).get(conv, {}).get(h, math.nan)
        row["FLOPs reduction"] = s.get("flops_reduction")
        base = _baseline(s, summaries)
        row["L2 retention stp3 %"] = (
            retention(_avg(base["l2"]["stp3"]), _avg(s["l2"]["stp3"])) if base and "l2" in s else math.nan
        )
        row["accounting"] = s.get("accounting")
        rows.append(row)
    return rows


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.3g}"
    return str(value)


def to_markdown(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A GitHub-flavoured Markdown table of ``rows`` (all columns unless ``columns`` is given)."""
    if not rows:
        return "(no results)\n"
    cols = list(columns or rows[0].keys())
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    """CSV text of ``rows`` (all columns)."""
    if not rows:
        return ""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0].keys()))
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


#: The compact set of columns printed at the end of a sweep.
SHORT_COLUMNS: tuple[str, ...] = (
    "planner",
    "pruner",
    "budget",
    "samples",
    "tokens/layer",
    "L2@1s stp3",
    "L2@2s stp3",
    "L2@3s stp3",
    "Col@3s stp3",
    "L2@3s uniad",
    "Col@3s uniad",
    "FLOPs reduction",
    "L2 retention stp3 %",
)
