"""Result tables: pruner x budget rows with L2 / collision in both conventions, FLOPs and retention."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from typing import Any

HORIZONS = ("1s", "2s", "3s")
#: Closed-loop-style columns (``docs/CLOSED-LOOP.md``) -> key of a summary's ``"pdm"`` means.
PDM_COLUMNS: dict[str, str] = {
    "PDMS": "pdms",
    "NC": "nc",
    "DAC": "dac",
    "TTC": "ttc",
    "EP": "ep",
    "C": "comfort",
    "DDC": "ddc",
}


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


#: run.json / summary keys that must be equal for a run to be compared with a ``none`` run.
_PAIRING_KEYS = ("planner", "samples_digest", "model", "data", "dtype")


def comparable(summary: dict[str, Any], other: dict[str, Any]) -> bool:
    """Whether two runs share planner, model, data, dtype and samples, so they may be paired."""
    return all(other.get(k) == summary.get(k) for k in _PAIRING_KEYS)


def find_baseline(summary: dict[str, Any], summaries: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The unpruned run of the same planner, model, data and samples, if the sweep has one.

    Among several (e.g. ``none`` runs with different variants) the one with the same ``variant``
    wins, else the first in table order; a ``none`` of another model or data is never used.
    """
    candidates = [
        other
        for other in sort_summaries(summaries)
        if other.get("pruner") == "none" and comparable(summary, other)
    ]
    same_variant = [c for c in candidates if c.get("variant") == summary.get("variant")]
    best = same_variant or candidates
    return best[0] if best else None


def sort_summaries(summaries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Table order: planner, then its ``none`` reference first, then pruner, budget, variant."""
    return sorted(
        summaries,
        key=lambda s: (
            str(s.get("planner", "")),
            s.get("pruner") != "none",
            str(s.get("pruner", "")),
            s.get("budget") or 0,
            str(s.get("variant") or ""),
        ),
    )


def key_columns(summary: dict[str, Any]) -> dict[str, Any]:
    """What a row says about which run it is: planner, pruner label, budget, positions, variant, and
    its evaluated samples, the samples with a full 3 s future (``samples @3s``, what the ``stp3``
    figures and PDMS use) and scenes."""
    return {
        "planner": summary.get("planner"),
        "pruner": summary.get("pruner_label") or summary.get("pruner"),
        "budget": summary.get("budget"),
        "positions": summary.get("position_ids"),
        "variant": summary.get("variant") or "",
        "samples": summary.get("num_samples"),
        "samples @3s": summary.get("num_samples_3s"),
        "scenes": summary.get("num_scenes"),
    }


def drop_empty_variant(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Remove the ``variant`` column unless some row has a non-empty one."""
    if any(r.get("variant") for r in rows):
        return rows
    return [{k: v for k, v in r.items() if k != "variant"} for r in rows]


def table_rows(summaries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per summary, in :func:`sort_summaries` order (point estimates only)."""
    rows = []
    for s in sort_summaries(summaries):
        row = key_columns(s)
        row["tokens/layer"] = s.get("mean_visual_tokens_per_layer")
        for conv in ("stp3", "uniad"):
            for h in HORIZONS:
                row[f"L2@{h} {conv}"] = s.get("l2", {}).get(conv, {}).get(h, math.nan)
            row[f"L2 avg {conv}"] = _avg(s.get("l2", {}).get(conv))
        for conv in ("stp3", "uniad", "box"):
            for h in HORIZONS:
                row[f"Col@{h} {conv}"] = s.get("collision", {}).get(conv, {}).get(h, math.nan)
        row["FLOPs reduction"] = s.get("flops_reduction")
        base = find_baseline(s, summaries)
        has_l2 = base is not None and "l2" in base and "l2" in s
        row["L2 avg retention stp3 %"] = (
            retention(_avg(base["l2"]["stp3"]), _avg(s["l2"]["stp3"])) if base and has_l2 else math.nan
        )
        row["L2@3s retention stp3 %"] = (
            retention(base["l2"]["stp3"]["3s"], s["l2"]["stp3"]["3s"]) if base and has_l2 else math.nan
        )
        if "pdm" in s:  # only runs scored closed-loop-style have these columns
            for column, key in PDM_COLUMNS.items():
                value = s["pdm"].get(key)
                row[column] = math.nan if value is None else value
            row["PDM unscored"] = s.get("pdm_unscored")
        row["mutual information"] = s.get("mutual_information")
        row["slope k"] = s.get("slope_k")
        row["accounting"] = s.get("accounting")
        rows.append(row)
    return drop_empty_variant(rows)


def _fmt(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.3g}"
    return str(value)


def _cell(row: dict[str, Any], column: str) -> str:
    """``value``, or ``value [low, high]`` when the row has the column's ``lo``/``hi`` bounds."""
    text = _fmt(row.get(column))
    if f"{column} lo" in row and text != "-":
        low, high = _fmt(row[f"{column} lo"]), _fmt(row.get(f"{column} hi"))
        if low != "-":
            text += f" [{low}, {high}]"
    return text


def to_markdown(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A GitHub-flavoured Markdown table of ``rows`` (all columns unless ``columns`` is given).

    A column ``c`` with companions ``c lo`` / ``c hi`` is shown as ``value [lo, hi]``; columns
    missing from every row are left out.
    """
    if not rows:
        return "(no results)\n"
    cols = [c for c in (columns or rows[0].keys()) if any(c in r for r in rows)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(_cell(r, c) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def to_csv(rows: Sequence[dict[str, Any]], empty_header: Sequence[str] = ()) -> str:
    """CSV text of ``rows`` (all columns); with no rows, just ``empty_header`` (a reader then sees
    a table with no rows, not an empty file)."""
    if not rows and not empty_header:
        return ""
    buf = io.StringIO()
    fields = list(dict.fromkeys(k for r in rows for k in r)) if rows else list(empty_header)
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


#: What a run is and what it ran on: the first columns of every summary table.
IDENTITY_COLUMNS: tuple[str, ...] = (
    "planner",
    "pruner",
    "budget",
    "positions",
    "variant",
    "samples",
    "samples @3s",
    "scenes",
    "tokens/layer",
)

#: The compact set of columns printed at the end of a sweep.
SHORT_COLUMNS: tuple[str, ...] = (
    *IDENTITY_COLUMNS,
    "L2@1s stp3",
    "L2@2s stp3",
    "L2@3s stp3",
    "Col@3s stp3",
    "L2@3s uniad",
    "Col@3s uniad",
    "FLOPs reduction",
    "L2@3s retention stp3 %",
    "PDMS",
    "PDM unscored",
)
