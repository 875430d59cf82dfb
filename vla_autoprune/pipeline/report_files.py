"""Write a sweep's report files: Markdown and CSV tables with bootstrap intervals, and the plots
(:mod:`~vla_autoprune.pipeline.report_plots`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vla_autoprune.errors import ConfigError, DataNotFoundError
from vla_autoprune.pipeline.camera_reliance import CAMERA_COLUMNS, camera_rows
from vla_autoprune.pipeline.ci_tables import (
    breakdown_rows,
    main_rows,
    numbered_runs,
    stat_rows,
    unpaired_runs,
)
from vla_autoprune.pipeline.merge import Merged, find_runs, find_skipped, group_runs, merge_group
from vla_autoprune.pipeline.pairwise import pairwise_rows
from vla_autoprune.pipeline.report_plots import finite_number, plot_stats_by_scenario, plot_vs_budget
from vla_autoprune.pipeline.resampling import Bootstrap, Run
from vla_autoprune.pipeline.summary import stat_values
from vla_autoprune.pipeline.table import IDENTITY_COLUMNS, SHORT_COLUMNS, to_csv, to_markdown
from vla_autoprune.run_files import RUN_FILE, SKIPPED_FILE, atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)

#: Columns of report.md's main table (report.csv has every column).
MAIN_COLUMNS: tuple[str, ...] = (
    "run",
    *IDENTITY_COLUMNS,
    "L2@3s stp3",
    "L2@3s stp3 diff",
    "Col@3s stp3",
    "Col@3s stp3 diff",
    "L2@3s uniad",
    "Col@3s uniad",
    "FLOPs reduction",
    "L2 avg retention stp3 %",
    "L2@3s retention stp3 %",
    "PDMS",
    "PDMS diff",
    "PDM unscored",
)
#: Columns of report.md's closed-loop-style table (runs scored with ``closed_loop_style``).
PDM_TABLE_COLUMNS: tuple[str, ...] = (
    "run",
    "planner",
    "pruner",
    "budget",
    "variant",
    "samples",
    "PDM unscored",
    "PDMS",
    "PDMS diff",
    "NC",
    "DAC",
    "TTC",
    "EP",
    "C",
    "DDC",
)
BREAKDOWN_COLUMNS: tuple[str, ...] = (
    "run",
    "planner",
    "pruner",
    "budget",
    "variant",
    "group",
    "samples",
    "samples @3s",
    "scenes",
    "L2@3s stp3",
    "Col@3s stp3",
    "L2@3s retention stp3 %",
    "PDMS",
)
#: The pruner-vs-pruner columns the sweep's log shows (report.md / pairwise.csv have them all).
PAIRWISE_LOG_COLUMNS: tuple[str, ...] = (
    "budget",
    "pruner A",
    "pruner B",
    "L2@3s stp3 A/B",
    "L2@3s stp3 A/B excludes 1",
)
PAIRWISE_COLUMNS: tuple[str, ...] = (
    "planner",
    "run A",
    "pruner A",
    "run B",
    "pruner B",
    "samples @3s",
    "L2@3s stp3 A-B",
    "L2@3s stp3 A-B excludes 0",
    "Col@3s stp3 A-B",
    "Col@3s stp3 A-B excludes 0",
    "L2@3s stp3 A/B",
    "L2@3s stp3 A/B excludes 1",
)
STAT_COLUMNS: tuple[str, ...] = (
    "run",
    "planner",
    "pruner",
    "budget",
    "variant",
    "scenario",
    "samples",
    "mi",
    "k",
)
#: The header a CSV gets when it has no row (no pair of runs at one budget, no AutoPrune run).
EMPTY_HEADERS: dict[str, tuple[str, ...]] = {
    "pairwise.csv": PAIRWISE_COLUMNS,
    "autoprune_stats.csv": STAT_COLUMNS,
}


def load_merged(dirs: Sequence[Path]) -> list[Merged]:
    """Every configuration under ``dirs``, its folders merged (:func:`merge.merge_group`); never
    writes into them. Each of ``dirs`` must exist and hold a run (``run.json``) or a job that was not
    run (``skipped.json``): a folder holding neither is a one-line error, not silently nothing."""
    missing = [str(d) for d in dirs if not Path(d).exists()]
    if missing:
        raise DataNotFoundError(f"{', '.join(missing)} does not exist; pass a run or sweep output folder")
    empty = [
        str(d)
        for d in dirs
        if not Path(d).is_dir() or not any(Path(d).rglob(RUN_FILE)) and not any(Path(d).rglob(SKIPPED_FILE))
    ]
    if empty:
        raise DataNotFoundError(
            f"no {RUN_FILE} under {', '.join(empty)}; pass only evaluate output folders (a run or a sweep)"
        )
    return [merge_group(folders) for folders in group_runs(find_runs(dirs))]


def load_runs(dirs: Sequence[Path]) -> list[Run]:
    """One :class:`Run` per configuration under ``dirs`` (shards merged as :func:`merge.merge_runs` does)."""
    return [Run.of(m.summary, m.records) for m in load_merged(dirs)]


def _resampling(boot: Bootstrap, runs: Sequence[Run]) -> str:
    """Which resampling the runs got: one phrase, or one per group of runs (``runs 1, 2: ...``)."""
    by_design: dict[str, list[int]] = {}
    for run_id, run in numbered_runs(runs):
        if run.records:
            by_design.setdefault(boot.design(run).describe(), []).append(run_id)
    if len(by_design) <= 1:
        return next(iter(by_design), "no samples")
    return "; ".join(f"runs {', '.join(map(str, ids))}: {text}" for text, ids in by_design.items())


def _skipped_section(skipped: Sequence[tuple[Path, dict[str, Any]]]) -> str:
    """report.md's list of the sweep's jobs that were not runnable on their model, with why."""
    if not skipped:
        return ""
    lines = [
        "\n## Not run\n",
        "Jobs of the sweep that this model cannot run (each job folder's `skipped.json`):\n",
        "| model | pruner | budget | why | job folder |",
        "|---|---|---|---|---|",
    ]
    for folder, info in skipped:
        cells = [info.get(key, "") for key in ("model", "pruner", "budget", "reason")]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + f" | `{folder.name}` |")
    return "\n".join(lines) + "\n"


def _per_run(values: Sequence[Any]) -> str:
    return ", ".join(map(str, sorted({v for v in values if v is not None})))


def _header(boot: Bootstrap, runs: Sequence[Run]) -> str:
    sizes = _per_run([len(r.records) for r in runs])
    sizes_3s = _per_run([r.summary.get("num_samples_3s") for r in runs])
    models = _models(runs)
    return (
        "# vla-autoprune report\n\n"
        + (f"Model: {', '.join(models)}. " if models else "")
        + "L2 in metres; collision rates as fractions. `stp3` = ST-P3/VAD convention (average over "
        "horizon), `uniad` = UniAD convention (at the horizon); `box` = exact box overlap, not "
        "comparable with published tables. `diff` = run - `none`; retention = `none` / run (%), "
        "L2 `avg` over 1-3 s or at 3 s; both paired with the `none` run of the same planner, model and "
        f"samples. `samples` = evaluated samples of each row ({sizes} per run); `samples @3s` = "
        f"those with a plan and a full 3 s future ({sizes_3s} per run), the only ones every `stp3` "
        "figure (each horizon) and PDMS count; `uniad` figures keep every sample in the "
        "denominator.\n\n"
        f"Brackets: 95 % percentile intervals from {boot.resamples} scene-bootstrap resamples "
        f"(seed {boot.seed}): scenes drawn with replacement, all their samples taken. When every "
        "sample has a known scenario family, each scene one family and each family two or more "
        "scenes, the draws are stratified by family, as the synthetic set's design fixes every scene's family: each family draws as many "
        "of its own scenes as it holds; otherwise the plain scene bootstrap is used. A figure from a "
        "single scene has no interval (shown without brackets). Resampling here: "
        f"{_resampling(boot, runs)}. The same draws for a run and its `none`, and for the two runs "
        "of a pruner-vs-pruner comparison. Every horizon and convention, with intervals, is in "
        "report.csv.\n\n"
        + (
            "PDMS = closed-loop-style PDM score (NAVSIM v1.1 formula on a pseudo-simulated plan, "
            "docs/CLOSED-LOOP.md), mean over the scored samples; `PDM unscored` = samples whose score "
            "cannot be computed (log shorter than 3 s ahead, no map or lane near the ego), counted, "
            "not dropped.\n\n"
            if any(_has_pdm(r) for r in runs)
            else ""
        )
    )


def _flat_note(runs: Sequence[Run]) -> str:
    """A warning under the MI table for runs whose every recorded slope is 0 ("" when none is)."""
    flat = []
    for run_id, run in numbered_runs(runs):
        values, present = stat_values(run.records, "k")
        if present.any() and not values[present > 0].any():
            flat.append(str(run_id))
    if not flat:
        return ""
    return (
        f"\n**k = 0 for every sample of run {', '.join(flat)}**: the slope map clamped, so AutoPrune gave "
        "every scene the same flat curve (not adaptive). Calibrate it for this model: "
        "`python -m data_tools.calibrate_autoprune --model <folder> --write` (docs/AUTOPRUNE.md, section 2).\n"
    )


def _has_pdm(run: Run) -> bool:
    return "pdm" in run.summary


def _sections(
    runs: Sequence[Run], boot: Bootstrap, scope: str
) -> tuple[str, dict[str, list[dict[str, Any]]]]:
    """report.md's body and the CSV tables (name -> rows); ``scope``: :func:`ranking_scope`."""
    rows = main_rows(runs, boot)
    several_planners = len({r.summary.get("planner") for r in runs}) > 1

    def shown(columns: tuple[str, ...]) -> tuple[str, ...]:
        # the secondary tables name the planner only when the sweep has several (vla, vla[grey], ...);
        # their run numbers point into the results table, which always does
        return columns if several_planners else tuple(c for c in columns if c != "planner")

    breakdown = breakdown_rows(runs, boot)
    stats = stat_rows(runs, boot)
    pairs = pairwise_rows(runs, boot)
    cameras = camera_rows(runs, boot)
    text = "## Results\n\n" + to_markdown(rows, MAIN_COLUMNS) + _unpaired_note(runs)
    text += _pairwise_section(pairs, scope)
    text += _camera_section(cameras)
    if any(finite_number(r.get("PDMS")) is not None for r in rows):
        text += (
            "\n## Closed-loop-style score (`run` = row of the results table)\n\n"
            "PDMS = NC x DAC x (5 TTC + 5 EP + 2 C) / 12; DDC reported, weight 0.\n\n"
            + to_markdown([r for r in rows if "PDMS" in r], shown(PDM_TABLE_COLUMNS))
        )
    for by, title in (("scenario", "scenario family"), ("complexity", "complexity tertile")):
        part = [r for r in breakdown if r["by"] == by]
        text += f"\n## By {title} (`run` = row of the results table)\n\n" + to_markdown(
            part, shown(BREAKDOWN_COLUMNS)
        )
    text += (
        "\n## AutoPrune's mutual information (mi) and slope k per scenario family\n\n"
        "Mean of the per-sample values, with intervals.\n\n"
        + to_markdown(stats, shown(STAT_COLUMNS))
        + _flat_note(runs)
    )
    tables = {"report.csv": rows, "pairwise.csv": pairs, "breakdown.csv": breakdown}
    if cameras:
        tables["cameras.csv"] = cameras
    return text, tables | {"autoprune_stats.csv": stats}


def _camera_log(rows: Sequence[dict[str, Any]]) -> str:
    """The camera-ablation table for the console ("" when there is none)."""
    if not rows:
        return ""
    columns = ("run", "intact run", "cameras", "pruner", "budget", "L2@3s stp3 ablated/intact")
    return "\nCameras ablated vs intact (L2@3s ratio; above 1: worse without them):\n" + to_markdown(
        rows, columns
    )


def _camera_section(rows: Sequence[dict[str, Any]]) -> str:
    """report.md's camera-ablation section ("" when the sweep ran no ablated cameras)."""
    if not rows:
        return ""
    return (
        "\n## What the cameras are worth (`run` = row of the results table)\n\n"
        "Each run with ablated cameras (`cameras=...`, planner `vla[<ablation>]`) against the same "
        "configuration with intact cameras on the same samples, paired: `ablated/intact` = ratio of "
        "L2@3s (above 1: the plan is worse without what the cameras showed), `ablated-intact` = "
        "difference of the collision rate. `zero_tokens`, `black` and `grey` are inputs the model "
        "never saw; `other_scene` (real images of another scene) is the in-distribution control. "
        "All rows are in cameras.csv.\n\n" + to_markdown(rows, CAMERA_COLUMNS)
    )


def _pairwise_section(pairs: Sequence[dict[str, Any]], scope: str) -> str:
    """report.md's pruner-vs-pruner section: one table per budget ("" when no budget has two runs)."""
    if not pairs:
        return ""
    text = (
        "\n## Pruner vs pruner at each budget (`run` = row of the results table)\n\n"
        "Run A compared with run B on the same samples (same planner, model and data), paired: "
        "`A-B` = difference of the figure, `A/B` = ratio of L2@3s (below 1: A has the lower error), "
        "with the same bootstrap draws for both runs. `excludes 0` / `excludes 1` = `yes` when the "
        "95 % interval lies wholly on one side; the sign of the estimate says which run is ahead. "
        f"All pairs are in pairwise.csv. Rankings {scope}.\n"
    )
    for budget in dict.fromkeys(r["budget"] for r in pairs):
        part = [r for r in pairs if r["budget"] == budget]
        text += f"\n### Budget {budget}\n\n" + to_markdown(part, PAIRWISE_COLUMNS)
    return text


def _models(runs: Sequence[Run]) -> list[str]:
    """The models the runs ran (model-free planners have none)."""
    return sorted({str(model) for r in runs if (model := r.summary.get("model"))})


def ranking_scope(runs: Sequence[Run]) -> str:
    """Which model(s) a ranking of pruners was measured on: it holds for them, not in general (a
    model that reads its cameras at another layer can order the pruners the other way round)."""
    models = _models(runs) or ["model-free planners"]
    return (
        f"measured on {', '.join(models)}; another model can rank the pruners differently, "
        "see the README's Models section"
    )


def _unfinished_section(runs: Sequence[Run], unfinished: dict[int, tuple[Path, ...]]) -> str:
    """report.md's list of the runs some of whose folders hold no finished run ("" when none)."""
    if not unfinished:
        return ""
    lines = [
        "\n## Unfinished runs\n",
        "These rows count only the samples recorded so far: a folder has records but no "
        "`summary.json` of them (the run is still going, or was killed; rerun its command with its "
        "folder to resume). A row is compared with `none` or another pruner only on the same samples.\n",
        "| run | pruner | budget | samples so far | unfinished folder |",
        "|---|---|---|---|---|",
    ]
    by_id = dict(numbered_runs(runs))
    for run_id, folders in sorted(unfinished.items()):
        summary = by_id[run_id].summary
        label = summary.get("pruner_label") or summary.get("pruner")
        for folder in folders:
            cells = [run_id, label, summary.get("budget"), summary.get("num_samples"), f"`{folder}`"]
            lines.append("| " + " | ".join("-" if c is None else str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _unpaired_note(runs: Sequence[Run]) -> str:
    """A line under the results table naming the pruned runs that have no `none` to compare with."""
    ids = unpaired_runs(runs)
    if not ids:
        return ""
    return (
        f"\nRun {', '.join(map(str, ids))}: no `none` run of the same planner, model, data and samples "
        "among these folders, so no `diff` or retention (run `pruner=none` on the same samples, or "
        "pass its folder too).\n"
    )


def _prepare_out(out: Path) -> None:
    """Make ``out``; a one-line :class:`ConfigError` when it cannot be a folder we write into."""
    try:
        if out.exists() and not out.is_dir():
            raise NotADirectoryError(f"{out} is a file")
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(
            f"cannot write the report into {out} ({err.strerror or err}); choose another folder with --out"
        ) from None


def write_report(
    dirs: Sequence[Path], out: Path, *, resamples: int = 2000, seed: int = 0, stratify: bool = True
) -> list[dict[str, Any]]:
    """Merge every run under ``dirs`` and write report.md, report.csv, pairwise.csv, breakdown.csv,
    autoprune_stats.csv, summaries.json and the budget plots (``pdms_vs_budget.png`` when runs were
    scored closed-loop-style) into ``out``; returns the main rows. ``stratify=False`` uses the plain
    scene bootstrap even where scenario families are known. Runs still in progress are reported as
    they stand and listed as unfinished; a sweep whose every job was not runnable gets a report
    listing them."""
    boot = Bootstrap(resamples=resamples, seed=seed, stratify=stratify)
    merged = load_merged(dirs)
    runs = [Run.of(m.summary, m.records) for m in merged]
    by_summary = {id(m.summary): m for m in merged}
    unfinished = {
        run_id: folders
        for run_id, run in numbered_runs(runs)
        if (folders := by_summary[id(run.summary)].unfinished)
    }
    scope = ranking_scope(runs)
    body, tables = _sections(runs, boot, scope)
    skipped = find_skipped(dirs)
    body += _unfinished_section(runs, unfinished) + _skipped_section(skipped)
    _prepare_out(out)
    atomic_write_text(out / "report.md", _header(boot, runs) + body)
    if "cameras.csv" not in tables:
        (out / "cameras.csv").unlink(missing_ok=True)  # an earlier report's: this sweep has no ablation
    for name, table in tables.items():
        atomic_write_text(out / name, to_csv(table, EMPTY_HEADERS.get(name, ())))
    atomic_write_json(out / "summaries.json", [r.summary for r in runs])
    rows = tables["report.csv"]
    plot_vs_budget(rows, "L2@3s stp3", out / "l2_3s_vs_budget.png")
    plot_vs_budget(rows, "Col@3s stp3", out / "collision_3s_vs_budget.png")
    if any(finite_number(r.get("PDMS")) is not None for r in rows):
        plot_vs_budget(rows, "PDMS", out / "pdms_vs_budget.png")
    for key in ("mi", "k"):
        plot_stats_by_scenario(tables["autoprune_stats.csv"], key, out / f"autoprune_{key}_by_scenario.png")
    for folder, info in skipped:
        logger.warning(
            "not run: %s (%s)", " ".join(info.get("overrides") or []) or folder, info.get("reason")
        )
    for run_id, folders in sorted(unfinished.items()):
        logger.warning(
            "run %d is unfinished (records but no summary of them in %s): its row counts the samples so far",
            run_id,
            ", ".join(map(str, folders)),
        )
    logger.info(
        "Report of %d configurations in %s (report.md: every figure, breakdowns, plots)\n%s\n"
        "Pruner vs pruner on the same samples (A/B < 1: A has the lower L2@3s; %s):\n%s%s",
        len(runs),
        out,
        to_markdown(rows, ("run", *SHORT_COLUMNS)),
        scope,
        to_markdown(tables["pairwise.csv"], PAIRWISE_LOG_COLUMNS) if tables["pairwise.csv"] else "(no pairs)",
        _camera_log(tables.get("cameras.csv", [])),
    )
    return rows
