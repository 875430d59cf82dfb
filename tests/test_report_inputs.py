"""The report CLI on awkward folders: runs in progress, overlapping shards, folders named twice,
folders that hold no run, unwritable outputs, sweeps where nothing ran; and how it shows intervals
it cannot measure (one scene) and groups it orders (complexity)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vla_autoprune.pipeline.ci_tables import breakdown_rows, main_rows
from vla_autoprune.pipeline.merge import find_runs, merge_runs
from vla_autoprune.pipeline.pairwise import pairwise_rows
from vla_autoprune.pipeline.report_files import write_report
from vla_autoprune.pipeline.resampling import Bootstrap, Run
from vla_autoprune.pipeline.summary import summarize
from vla_autoprune.report import main

BOOT = Bootstrap(resamples=200, seed=0)
FAMILIES = ("traffic_light", "pedestrian", "easy")


def _records(
    scenes: int = 6, per_scene: int = 4, *, shift: float = 0.0, first: int = 0
) -> list[dict[str, Any]]:
    """Per-sample records in the loop's format: scene ``i`` has family ``FAMILIES[i % 3]`` and
    complexity ``i % 4``; ``first`` offsets the scenes (and dataset indices) for a second shard."""
    rng = np.random.default_rng(first)
    records = []
    for scene in range(first, first + scenes):
        for i in range(per_scene):
            records.append(
                {
                    "index": scene * per_scene + i,
                    "sample_token": f"s{scene:02d}-{i}",
                    "scene_token": f"scene-{scene:02d}",
                    "gt_mask": [True] * 6,
                    "l2": (np.linspace(0.3, 1.8, 6) * (1 + 0.3 * rng.random()) + shift).tolist(),
                    "collision": {k: [False] * 6 for k in ("stp3", "uniad", "box")},
                    "scenario": FAMILIES[scene % 3],
                    "complexity": float(scene % 4),
                }
            )
    return records


def _write_run(
    folder: Path,
    records: list[dict[str, Any]],
    *,
    pruner: str = "none",
    budget: int | None = None,
    finished: bool = True,
    **meta: Any,
) -> Path:
    """A run folder as evaluate leaves it: run.json, records.jsonl and (when finished) summary.json."""
    folder.mkdir(parents=True)
    run = {"planner": "vla", "pruner": pruner, "budget": budget, "model": "tiny", "variant": ""}
    run |= {"shard": 0, "num_shards": 1, "wall_time_s": 1.0, "device": "cpu"} | meta
    (folder / "run.json").write_text(json.dumps(run))
    (folder / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if finished:
        (folder / "summary.json").write_text(json.dumps(summarize(records, run)))
    return folder


def _skip(folder: Path, budget: int) -> None:
    folder.mkdir(parents=True)
    info = {
        "model": "tiny",
        "pruner": "fastv",
        "budget": budget,
        "reason": f"budget {budget} is not reachable",
    }
    (folder / "skipped.json").write_text(
        json.dumps(info | {"overrides": ["pruner=fastv", f"budget={budget}"]})
    )


def test_report_never_truncates_a_run_in_progress_and_lists_it_as_unfinished(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sweep = tmp_path / "sweep"
    _write_run(sweep / "none", _records())
    running = _write_run(sweep / "fastv", _records(shift=0.2)[:10], pruner="fastv", budget=64, finished=False)
    with (running / "records.jsonl").open("a") as f:
        f.write('{"index": 10, "sample_tok')  # the batch being appended right now
    before = (running / "records.jsonl").read_bytes()
    caplog.set_level(logging.WARNING)
    assert main([str(sweep), "--resamples", "50"]) == 0
    assert (running / "records.jsonl").read_bytes() == before  # the writer's file is left alone
    report = (sweep / "report.md").read_text()
    assert "## Unfinished runs" in report and "| 2 | fastv | 64 | 10 |" in report
    assert "run 2 is unfinished" in caplog.text and "torn last line" in caplog.text
    # not paired with `none` (other samples), and the report says so rather than leaving blanks
    assert "Run 2: no `none` run of the same planner" in report


def test_a_finished_run_is_not_listed_as_unfinished(tmp_path: Path) -> None:
    _write_run(tmp_path / "sweep" / "none", _records())
    write_report([tmp_path / "sweep"], tmp_path / "out", resamples=50)
    assert "Unfinished" not in (tmp_path / "out" / "report.md").read_text()


def test_overlapping_folders_of_one_configuration_count_each_sample_once_and_say_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    records = _records(scenes=6)
    a = _write_run(tmp_path / "a" / "run", records[:16], shard=0, num_shards=2)
    b = _write_run(tmp_path / "b" / "run", records[8:], shard=1, num_shards=2)
    caplog.set_level(logging.WARNING)
    (merged,) = merge_runs(find_runs([tmp_path / "a", tmp_path / "b"]))
    assert merged["num_samples"] == len(records) == 24
    assert f"8 samples are recorded in both {a} and {b}" in caplog.text


def test_a_folder_named_twice_is_one_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sweep = tmp_path / "sweep"
    _write_run(sweep / "none", _records())
    _skip(sweep / "budget=5", 5)
    monkeypatch.chdir(tmp_path)
    write_report([Path("sweep"), sweep], tmp_path / "out", resamples=50)
    report = (tmp_path / "out" / "report.md").read_text()
    assert report.count("`budget=5`") == 1  # the "Not run" row, once
    (summary,) = json.loads((tmp_path / "out" / "summaries.json").read_text())
    assert summary["wall_time_s"] == 1.0 and summary["num_samples"] == 24


def test_a_folder_without_runs_among_others_is_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _write_run(tmp_path / "sweep" / "none", _records())
    (tmp_path / "typo").mkdir()
    assert main([str(tmp_path / "sweep"), str(tmp_path / "typo")]) == 2
    (line,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert line.startswith("error: no run.json under") and "typo" in line and "sweep," not in line
    assert not (tmp_path / "sweep" / "report.md").exists()


def test_bad_out_folder_and_usage_errors_are_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _write_run(tmp_path / "sweep" / "none", _records())
    (tmp_path / "file").write_text("x")
    assert main([str(tmp_path / "sweep"), "--out", str(tmp_path / "file")]) == 2
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path / "sweep"), "--resamples", "abc"])
    assert exit_.value.code == 2
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(lines) == 2 and all(line.startswith("error: ") for line in lines)
    assert "file is a file" in lines[0] and "--out" in lines[0]
    assert "--resamples" in lines[1] and "Traceback" not in caplog.text


def test_corrupt_run_json_is_one_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run = _write_run(tmp_path / "sweep" / "none", _records())
    (run / "run.json").write_text('{"planner": ')
    assert main([str(tmp_path / "sweep")]) == 2
    assert "run.json is not valid JSON" in caplog.text and "Traceback" not in caplog.text


def test_a_sweep_where_no_job_ran_gets_a_report_listing_them(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    for budget in (5, 10):
        _skip(sweep / f"budget={budget}", budget)
    assert main([str(sweep)]) == 0
    report = (sweep / "report.md").read_text()
    assert "## Not run" in report and "budget 5 is not reachable" in report and "budget 10" in report


def _run(records: list[dict[str, Any]], pruner: str = "none", budget: int | None = None) -> Run:
    meta = {"planner": "vla", "pruner": pruner, "budget": budget, "model": "tiny", "samples_digest": "d"}
    return Run.of(summarize(records, meta) | {"samples_digest": "d"}, records)


def test_complexity_groups_run_from_low_to_high() -> None:
    rows = breakdown_rows([_run(_records(scenes=12))], BOOT)
    groups = [r["group"] for r in rows if r["by"] == "complexity"]
    assert groups == ["<= 1", "(1, 2]", "> 2"]


def test_a_figure_from_one_scene_has_no_interval_and_no_finding() -> None:
    one = _records(scenes=1, per_scene=6)
    none, fastv = _run(one), _run(_records(scenes=1, per_scene=6, shift=0.3), "fastv", 64)
    row = main_rows([none, fastv], BOOT)[1]
    assert row["L2@3s stp3 diff"] == pytest.approx(0.3)
    assert np.isnan(row["L2@3s stp3 diff lo"]) and np.isnan(row["L2@3s retention stp3 % hi"])
    random = _run(_records(scenes=1, per_scene=6, shift=0.1), "random", 64)
    (pair,) = pairwise_rows([none, fastv, random], BOOT)
    assert pair["L2@3s stp3 A-B"] == pytest.approx(0.2)
    assert pair["L2@3s stp3 A-B excludes 0"] is None and np.isnan(pair["L2@3s stp3 A/B lo"])
    # a family of the breakdown holding one scene has none either; one of several scenes keeps its own
    runs = [_run(_records(scenes=4)), _run(_records(scenes=4, shift=0.3), "fastv", 64)]
    by_family = {r["group"]: r for r in breakdown_rows(runs, BOOT) if r["by"] == "scenario" and r["run"] == 2}
    assert by_family["pedestrian"]["scenes"] == 1 and np.isnan(by_family["pedestrian"]["L2@3s stp3 lo"])
    assert by_family["traffic_light"]["scenes"] == 2
    assert by_family["traffic_light"]["L2@3s stp3 lo"] < by_family["traffic_light"]["L2@3s stp3 hi"]


def test_plots_are_the_same_bytes_whatever_style_a_library_set(tmp_path: Path) -> None:
    """nuscenes' map API calls ``plt.style.use`` on import: a sweep's plots must not differ from
    the CLI's over the same runs because of it."""
    from matplotlib import style

    from vla_autoprune.pipeline.report_plots import plot_vs_budget

    row = {"planner": "vla", "pruner": "fastv", "budget": 64, "L2@3s stp3": 1.0}
    row |= {"L2@3s stp3 lo": 0.9, "L2@3s stp3 hi": 1.2}
    plot_vs_budget([row], "L2@3s stp3", tmp_path / "plain.png")
    with style.context("seaborn-v0_8-whitegrid"):
        plot_vs_budget([row], "L2@3s stp3", tmp_path / "styled.png")
    assert (tmp_path / "styled.png").read_bytes() == (tmp_path / "plain.png").read_bytes()
