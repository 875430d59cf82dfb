"""How much a plan depends on the cameras: each camera-ablated run (planner ``vla[<ablation>]``,
:mod:`planners.cameras`) against the same configuration with intact cameras, paired by sample.

The ratio is L2@3s (stp3) of the ablated run over the intact one's (above 1: the plan got worse
without its cameras), with the same scene-bootstrap draws as every other comparison; the
collision figure is the paired difference, ablated minus intact.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from vla_autoprune.pipeline.ci_tables import numbered_runs
from vla_autoprune.pipeline.pairwise import RATIO, pair_row
from vla_autoprune.pipeline.resampling import Bootstrap, Run
from vla_autoprune.pipeline.table import comparable, key_columns

#: ``vla[grey]`` -> (``vla``, ``grey``).
_ABLATED = re.compile(r"^(?P<planner>[^\[\]]+)\[(?P<cameras>[^\[\]]+)\]$")
#: The collision figure compared (pairwise's ``DIFFERENCES`` has it); the ratio is pairwise's ``RATIO``.
DIFFERENCE = "Col@3s stp3"

#: Columns of the report's camera section (and cameras.csv).
CAMERA_COLUMNS: tuple[str, ...] = (
    "run",
    "intact run",
    "planner",
    "cameras",
    "pruner",
    "budget",
    "samples @3s",
    "L2@3s stp3 intact",
    "L2@3s stp3",
    "L2@3s stp3 ablated/intact",
    "L2@3s stp3 ablated/intact excludes 1",
    "Col@3s stp3 ablated-intact",
)


def split_planner(name: str) -> tuple[str, str | None]:
    """``vla[grey]`` -> ``("vla", "grey")``; a planner name without an ablation -> ``(name, None)``."""
    match = _ABLATED.match(name)
    return (match["planner"], match["cameras"]) if match else (name, None)


def _identity(summary: dict[str, Any]) -> tuple[Any, ...]:
    """What must match between an ablated run and its intact counterpart, besides the planner."""
    return tuple(summary.get(k) for k in ("pruner_label", "pruner", "budget", "variant", "position_ids"))


def _intact_of(run: Run, runs: Sequence[tuple[int, Run]]) -> tuple[int, Run] | None:
    """The intact-cameras run of ``run``'s configuration on the same samples, if the sweep has it."""
    planner, cameras = split_planner(str(run.summary.get("planner", "")))
    if cameras is None:
        return None
    wanted = {**run.summary, "planner": planner}
    for number, other in runs:
        if (
            other.summary.get("planner") == planner
            and comparable(wanted, other.summary)
            and _identity(other.summary) == _identity(run.summary)
            and other.same_samples(run)
        ):
            return number, other
    return None


def camera_rows(runs: Sequence[Run], boot: Bootstrap) -> list[dict[str, Any]]:
    """One row per camera-ablated run that has an intact counterpart (same pruner, budget, variant,
    model, data and samples): both L2@3s figures, their paired ratio and the paired collision
    difference, each with its 95 % interval. ``run`` / ``intact run`` = rows of the results table."""
    numbered = numbered_runs(runs)
    rows = []
    for number, run in numbered:
        found = _intact_of(run, numbered) if run.records else None
        if found is None:
            continue
        intact_number, intact = found
        pair = pair_row((number, run), found, boot)  # A = ablated, B = intact: A/B, A-B
        keys = key_columns(run.summary)
        planner, cameras = split_planner(str(keys["planner"]))
        row: dict[str, Any] = {
            "run": number,
            "intact run": intact_number,
            "planner": planner,
            "cameras": cameras,
            "pruner": keys["pruner"],
            "budget": keys["budget"],
            "samples @3s": pair["samples @3s"],
            "L2@3s stp3 intact": intact.summary.get("l2", {}).get("stp3", {}).get("3s"),
            "L2@3s stp3": run.summary.get("l2", {}).get("stp3", {}).get("3s"),
        }
        for suffix in ("", " lo", " hi", " excludes 1"):
            row[f"{RATIO} ablated/intact{suffix}"] = pair[f"{RATIO} A/B{suffix}"]
        for suffix in ("", " lo", " hi"):
            row[f"{DIFFERENCE} ablated-intact{suffix}"] = pair[f"{DIFFERENCE} A-B{suffix}"]
        rows.append(row)
    return rows
