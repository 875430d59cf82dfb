"""Reports: per-sample breakdown keys, pairing with `none`, interval columns, breakdown tables, files."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import synthetic_overrides
from hydra import compose, initialize_config_dir

from vla_autoprune.errors import ConfigError, DataError
from vla_autoprune.pipeline.app import evaluate
from vla_autoprune.pipeline.ci_tables import (
    Bootstrap,
    Run,
    breakdown_rows,
    compare_records,
    complexity_labels,
    main_rows,
    stat_rows,
)
from vla_autoprune.pipeline.loop import sample_records
from vla_autoprune.pipeline.report_files import write_report
from vla_autoprune.pipeline.report_plots import plot_stats_by_scenario, plot_vs_budget
from vla_autoprune.pipeline.summary import summarize
from vla_autoprune.pipeline.table import find_baseline, retention, table_rows, to_markdown
from vla_autoprune.report import main

CONF = Path(__file__).resolve().parents[1] / "conf"
FAMILIES = ("traffic_light", "pedestrian", "empty_road")


def _records(
    scenes: int = 12, per_scene: int = 10, *, l2: float = 1.0, shift: float = 0.0, seed: int = 0, **stats: Any
) -> list[dict[str, Any]]:
    """Synthetic per-sample records in the loop's format; each scene has one scenario family,
    a scene-level error level and a complexity; ``stats`` maps a key to a per-family value."""
    rng = np.random.default_rng(seed)
    records = []
    for scene in range(scenes):
        family = FAMILIES[scene % len(FAMILIES)]
        level = l2 * (1.0 + 0.5 * rng.random())
        for i in range(per_scene):
            step = level * np.linspace(0.3, 1.8, 6) + 0.05 * rng.random(6) + shift
            record = {
                "index": scene * per_scene + i,
                "sample_token": f"s{scene:02d}-{i:02d}",
                "scene_token": f"scene-{scene:02d}",
                "gt_mask": [True] * 6,
                "l2": step.tolist(),
                "collision": {k: [False] * 5 + [bool(rng.random() < 0.2)] for k in ("stp3", "uniad", "box")},
                "scenario": family,
                "complexity": float(scene % 4),
            }
            for key, by_family in stats.items():
                record[key] = by_family[family] + 0.01 * rng.standard_normal()
            records.append(record)
    return records


def _run(records: list[dict[str, Any]], **meta: Any) -> Run:
    base = {"planner": "vla", "pruner": "none", "budget": None, "model": "tiny", "samples_digest": "d"}
    return Run.of(
        summarize(records, {**base, **meta}) | {"samples_digest": meta.get("samples_digest", "d")}, records
    )


BOOT = Bootstrap(resamples=1000, seed=0)


def test_sample_records_carry_scenario_and_complexity_or_unknown() -> None:
    batch = {
        "sample_token": ["a", "b"],
        "scene_token": ["s", "s"],
        "gt_trajectory": torch.zeros(2, 6, 2),
        "gt_mask": torch.ones(2, 6, dtype=torch.bool),
        "future_boxes": torch.zeros(2, 6, 0, 5),
        "future_labels": torch.zeros(2, 6, 0, dtype=torch.long),
    }
    pred, stats = torch.ones(2, 6, 2), [{}, {}]
    plain = sample_records(batch, [0, 1], pred, stats)
    assert [(r["scenario"], r["complexity"]) for r in plain] == [("unknown", None)] * 2
    batch |= {"scenario": ["traffic_light", "cut_in"], "complexity": torch.tensor([3.0, float("nan")])}
    tagged = sample_records(batch, [0, 1], pred, stats)
    assert [(r["scenario"], r["complexity"]) for r in tagged] == [("traffic_light", 3.0), ("cut_in", None)]
    json.dumps(tagged, allow_nan=False)  # records stay strict JSON


def test_interval_columns_identical_run_is_zero_and_shift_is_exact() -> None:
    records = _records()
    none = _run(records)
    same = _run(_records(), pruner="random", budget=32)
    shifted = _run(_records(shift=0.2), pruner="fastv", budget=32)
    rows = {r["pruner"]: r for r in main_rows([none, same, shifted], BOOT)}
    assert rows["random"]["L2@3s stp3 diff"] == rows["random"]["L2@3s stp3 diff lo"] == 0.0
    assert rows["random"]["L2@3s stp3 diff hi"] == 0.0
    assert rows["random"]["L2@3s retention stp3 %"] == pytest.approx(100.0)
    for col in ("L2@1s stp3 diff", "L2@3s stp3 diff", "L2 avg uniad diff", "L2@3s uniad diff lo"):
        assert rows["fastv"][col] == pytest.approx(0.2, abs=1e-9)
    assert rows["fastv"]["L2@3s retention stp3 % hi"] < 100.0  # worse everywhere: CI excludes 100 %
    # the point estimates are the summary's, the run's own interval brackets it and is not degenerate
    assert rows["fastv"]["L2@3s stp3"] == pytest.approx(shifted.summary["l2"]["stp3"]["3s"])
    assert rows["fastv"]["L2@3s stp3 lo"] < rows["fastv"]["L2@3s stp3"] < rows["fastv"]["L2@3s stp3 hi"]
    avg = [np.mean(list(run.summary["l2"]["stp3"].values())) for run in (none, shifted)]
    assert rows["fastv"]["L2 avg retention stp3 %"] == pytest.approx(retention(*avg))  # as table.retention
    assert "L2@3s stp3 diff" not in rows["none"]  # none is not compared with itself
    # every collision figure has a paired difference too
    assert all(
        f"Col@{h} {c} diff hi" in rows["fastv"] for h in ("1s", "2s", "3s") for c in ("stp3", "uniad", "box")
    )


def test_same_seed_same_report_numbers_other_seed_other_bounds() -> None:
    runs = [_run(_records()), _run(_records(shift=0.1, seed=1), pruner="random", budget=32)]
    first = main_rows(runs, BOOT)
    assert first == main_rows(runs, Bootstrap(resamples=1000, seed=0))
    other = main_rows(runs, Bootstrap(resamples=1000, seed=1))
    assert other[1]["L2@3s stp3 diff lo"] != first[1]["L2@3s stp3 diff lo"]
    assert other[1]["L2@3s stp3 diff"] == first[1]["L2@3s stp3 diff"]


def test_never_paired_with_a_none_of_another_model_or_samples_and_prefers_same_variant() -> None:
    run = {"planner": "vla", "pruner": "fastv", "model": "a", "samples_digest": "x", "variant": "v=1"}
    other_model = {**run, "pruner": "none", "model": "b", "variant": ""}
    other_samples = {**run, "pruner": "none", "samples_digest": "y", "variant": ""}
    assert find_baseline(run, [run, other_model, other_samples]) is None
    plain = {**run, "pruner": "none", "variant": ""}
    same_variant = {**run, "pruner": "none"}
    assert find_baseline(run, [run, plain]) is plain
    assert find_baseline(run, [run, plain, same_variant]) is same_variant


def test_variant_column_only_when_some_run_has_one() -> None:
    base = summarize(_records(2, 4), {"planner": "vla", "pruner": "none", "budget": None, "variant": ""})
    assert "variant" not in table_rows([base])[0]
    before = {**base, "pruner": "autoprune", "budget": 32, "variant": "pruner.stage0=before"}
    reference = {**before, "variant": "pruner.stage0=reference"}
    rows = table_rows([base, before, reference])
    assert [r["variant"] for r in rows] == ["", "pruner.stage0=before", "pruner.stage0=reference"]
    assert "pruner.stage0=before" in to_markdown(rows, ["pruner", "variant"])


def test_breakdown_by_family_and_complexity_states_samples_and_sums_to_the_run() -> None:
    none = _run(_records())
    worse = _run(_records(shift=0.3), pruner="random", budget=32)
    rows = breakdown_rows([none, worse], BOOT)
    for by, groups in (("scenario", set(FAMILIES)), ("complexity", None)):
        part = [r for r in rows if r["by"] == by and r["pruner"] == "random"]
        assert sum(r["samples"] for r in part) == 120
        if groups:
            assert {r["group"] for r in part} == groups and all(r["scenes"] == 4 for r in part)
        for r in part:
            assert r["L2@3s stp3 lo"] <= r["L2@3s stp3"] <= r["L2@3s stp3 hi"]
            assert r["L2@3s retention stp3 % hi"] < 100.0
    assert all(r["run"] == 2 for r in rows if r["pruner"] == "random")


def test_samples_at_3s_count_the_samples_the_stp3_figures_use() -> None:
    records = _records()  # 12 scenes x 10 samples
    for r in records[::10]:  # the first sample of every scene: no full 3 s future
        r["gt_mask"] = [True] * 4 + [False] * 2
    records[1] |= {"l2": None, "collision": None}  # a malformed answer: no plan
    run = _run(records, pruner="random", budget=32)
    assert (run.summary["num_samples"], run.summary["num_samples_3s"]) == (120, 107)
    (row,) = main_rows([run], BOOT)
    assert (row["samples"], row["samples @3s"], row["scenes"]) == (120, 107, 12)
    full = [r for r in records if r["l2"] is not None and all(r["gt_mask"])]
    assert row["L2@3s stp3"] == pytest.approx(np.mean([np.mean(r["l2"]) for r in full]))
    part = [r for r in breakdown_rows([run], BOOT) if r["by"] == "scenario"]
    assert sum(r["samples"] for r in part) == 120 and sum(r["samples @3s"] for r in part) == 107


def test_complexity_tertiles_from_the_values() -> None:
    records = [{"complexity": c} for c in (0, 0, 1, 2, 3, 3, 5, 8, 9)] + [{"complexity": None}]
    labels = complexity_labels(records)
    assert labels[-1] == "unknown"
    assert len(set(labels[:-1])) == 3 and labels[0] == labels[1] and labels[-2] == labels[-3]
    assert complexity_labels([{"complexity": None}]) == ["unknown"]


def test_autoprune_statistics_per_family_differ_when_they_do() -> None:
    mi = {"traffic_light": 0.9, "pedestrian": 0.5, "empty_road": 0.1}
    k = {"traffic_light": 2.0, "pedestrian": 2.0, "empty_road": 2.0}
    autoprune = _run(_records(mi=mi, k=k), pruner="autoprune", budget=32)
    rows = {r["scenario"]: r for r in stat_rows([_run(_records()), autoprune], BOOT)}
    assert set(rows) == {"all", *FAMILIES} and rows["all"]["samples"] == 120
    assert rows["empty_road"]["mi hi"] < rows["pedestrian"]["mi lo"] < rows["pedestrian"]["mi hi"]
    assert rows["pedestrian"]["mi hi"] < rows["traffic_light"]["mi lo"]
    assert rows["traffic_light"]["k"] == pytest.approx(2.0, abs=0.01)
    assert rows["traffic_light"]["k lo"] <= 2.0 <= rows["traffic_light"]["k hi"] + 0.01


def test_report_cli_errors_are_one_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert main([str(tmp_path / "nowhere")]) == 2
    assert "nowhere does not exist" in caplog.text
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty)]) == 2
    assert "no run.json" in caplog.text


def _cfg(root: Path, out: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(
            "evaluate",
            overrides=[*synthetic_overrides(root), "data.dataset.split=train", "device=cpu", *overrides],
        )


def test_report_end_to_end_on_pipeline_runs(synthetic_root: Path, tmp_path: Path) -> None:
    for name, overrides in (("none", ["pruner=none"]), ("auto", ["pruner=autoprune", "budget=64"])):
        evaluate(_cfg(synthetic_root, tmp_path, *overrides), tmp_path / "sweep" / name)
    out = tmp_path / "report"
    assert (
        main([str(tmp_path / "sweep"), "--out", str(out), "--resamples", "300", "--bootstrap-seed", "4"]) == 0
    )
    text = (out / "report.md").read_text()
    assert "300 scene-bootstrap resamples (seed 4)" in text
    # 3 scenes, one per family: a stratified draw could not vary them, so the plain bootstrap is used
    assert "Resampling here: plain scene bootstrap (scenario family" in text
    assert "`samples @3s` = those with a plan and a full 3 s future" in text
    assert "## By scenario family" in text and "## By complexity tertile" in text
    rows = list(csv.DictReader(io.StringIO((out / "report.csv").read_text())))
    assert [r["pruner"] for r in rows] == ["none", "autoprune"]
    auto = rows[1]
    assert (
        float(auto["L2@3s stp3 diff lo"])
        <= float(auto["L2@3s stp3 diff"])
        <= float(auto["L2@3s stp3 diff hi"])
    )
    assert int(auto["samples"]) == int(rows[0]["samples"]) > 0
    assert 0 < int(auto["samples @3s"]) <= int(auto["samples"])
    stats = list(csv.DictReader(io.StringIO((out / "autoprune_stats.csv").read_text())))
    assert stats and all(r["pruner"] == "autoprune" and r["mi"] for r in stats)
    breakdown = list(csv.DictReader(io.StringIO((out / "breakdown.csv").read_text())))
    assert {r["by"] for r in breakdown} == {"scenario", "complexity"}
    for plot in ("l2_3s_vs_budget.png", "collision_3s_vs_budget.png"):
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plain = tmp_path / "plain"
    assert (
        main([str(tmp_path / "sweep"), "--out", str(plain), "--resamples", "300", "--plain-bootstrap"]) == 0
    )
    assert (
        "Resampling here: plain scene bootstrap (stratification turned off)"
        in (plain / "report.md").read_text()
    )
    again = tmp_path / "again"
    write_report([tmp_path / "sweep"], again, resamples=300, seed=4)
    assert (again / "report.csv").read_text() == (out / "report.csv").read_text()


def test_plots_draw_interval_bands_without_switching_the_backend(tmp_path: Path) -> None:
    import matplotlib

    backend = matplotlib.get_backend()
    none = _run(_records())
    runs = [none] + [_run(_records(shift=0.1 * b / 32), pruner="random", budget=b) for b in (32, 64)]
    rows = main_rows(runs, BOOT)
    fig = plot_vs_budget(rows, "L2@3s stp3", tmp_path / "l2.png")
    assert matplotlib.get_backend() == backend
    ax = fig.axes[0]
    (line,) = [ln for ln in ax.get_lines() if ln.get_label() == "vla/random"]
    np.testing.assert_allclose(line.get_xdata(), [32, 64])
    from matplotlib.collections import PolyCollection

    (band,) = [c for c in ax.collections if isinstance(c, PolyCollection)]  # the pruned series' band
    ys = band.get_paths()[0].vertices[:, 1]
    lows, highs = [r["L2@3s stp3 lo"] for r in rows[1:]], [r["L2@3s stp3 hi"] for r in rows[1:]]
    assert ys.min() == pytest.approx(min(lows)) and ys.max() == pytest.approx(max(highs))
    (span,) = ax.patches  # the `none` reference band
    span_ys = span.get_path().transformed(span.get_patch_transform()).vertices[:, 1]
    assert span_ys.min() == pytest.approx(rows[0]["L2@3s stp3 lo"])
    assert span_ys.max() == pytest.approx(rows[0]["L2@3s stp3 hi"])
    assert (tmp_path / "l2.png").read_bytes()[:4] == b"\x89PNG"
    mi = {"traffic_light": 0.9, "pedestrian": 0.5, "empty_road": 0.1}
    stats = stat_rows([none, _run(_records(mi=mi), pruner="autoprune", budget=32)], BOOT)
    bars = plot_stats_by_scenario(stats, "mi", tmp_path / "mi.png")
    assert bars is not None and [t.get_text() for t in bars.axes[0].get_xticklabels()] == sorted(FAMILIES)
    assert plot_stats_by_scenario(stats, "k", tmp_path / "k.png") is None  # no run records k
    assert not (tmp_path / "k.png").exists()


def test_stats_plot_draws_each_interval_as_it_is(tmp_path: Path) -> None:
    """A percentile interval need not contain the mean: its bar spans lo..hi, not cut at the point."""
    from matplotlib.collections import LineCollection

    rows = [
        {
            "run": 2,
            "pruner": "autoprune",
            "budget": 32,
            "scenario": "a",
            "mi": 1.0,
            "mi lo": 1.2,
            "mi hi": 1.5,
        },
        {
            "run": 2,
            "pruner": "autoprune",
            "budget": 32,
            "scenario": "b",
            "mi": 2.0,
            "mi lo": 1.5,
            "mi hi": 2.5,
        },
    ]
    fig = plot_stats_by_scenario(rows, "mi", tmp_path / "mi.png")
    assert fig is not None
    (bars,) = [c for c in fig.axes[0].collections if isinstance(c, LineCollection)]
    spans = sorted((float(seg[:, 1].min()), float(seg[:, 1].max())) for seg in bars.get_segments())
    assert spans == [(1.2, 1.5), (1.5, 2.5)]


def test_compare_records_for_acceptance_checks_and_bad_input() -> None:
    none, worse = _records(), _records(shift=0.3)
    columns = compare_records(list(reversed(worse)), none, Bootstrap(resamples=500, seed=0))
    assert columns["L2@3s stp3 diff"] == pytest.approx(0.3)
    assert columns["L2@3s retention stp3 % hi"] < 100.0
    with pytest.raises(DataError, match="different samples"):
        compare_records(worse[:-1], none)
    with pytest.raises(ConfigError, match="resamples"):
        Bootstrap(resamples=0)


def test_report_cli_rejects_bad_resamples_in_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert main([str(tmp_path), "--resamples", "0"]) == 2
    assert "resamples=0" in caplog.text and "Traceback" not in caplog.text


def test_budget_plot_draws_an_interval_that_excludes_its_estimate(tmp_path: Path) -> None:
    # A percentile interval from few scenes can lie entirely on one side of the point estimate;
    # the plot must still be written (it once failed with "'yerr' must not contain negative values").
    row = {"planner": "vla", "pruner": "fastv", "budget": 32, "L2@3s stp3": 1.0}
    row |= {"L2@3s stp3 lo": 1.1, "L2@3s stp3 hi": 1.3}
    fig = plot_vs_budget([row], "L2@3s stp3", tmp_path / "l2.png")
    assert (tmp_path / "l2.png").stat().st_size > 0
    segments = fig.axes[0].collections[-1].get_segments()
    assert [tuple(map(tuple, s)) for s in segments] == [((32.0, 1.1), (32.0, 1.3))]


def test_report_warns_when_autoprune_never_adapted() -> None:
    """A run whose every recorded slope is 0 ran one flat curve for every scene: the MI table says
    so and how to calibrate; a run with some k > 0, or without k, gets no warning."""
    from vla_autoprune.pipeline.report_files import _flat_note
    from vla_autoprune.pipeline.resampling import Run

    def run(pruner: str, budget: float | None, ks: list[float | None]) -> Run:
        summary = {"planner": "vla", "pruner": pruner, "budget": budget}
        return Run.of(summary, [{"sample_token": f"s{i}", "k": k} for i, k in enumerate(ks)])

    runs = [
        run("none", None, [None, None]),
        run("autoprune", 49, [0.0, 0.0]),
        run("autoprune", 96, [0.0, 0.2]),
    ]
    note = _flat_note(runs)
    assert "k = 0 for every sample of run 2**" in note and "calibrate_autoprune" in note
    assert _flat_note([runs[0], runs[2]]) == ""
