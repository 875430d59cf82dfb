"""End to end: the bundled VLA under each pruner through the Hydra app, sweeps and reports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import evaluate_config, synthetic_overrides

from vla_autoprune.models import load
from vla_autoprune.models.loading import DEFAULT_MODEL
from vla_autoprune.pipeline.app import evaluate
from vla_autoprune.pruning.flops import decoder_flops_from_config
from vla_autoprune.run_files import RECORDS_FILE, read_records

ROOT = Path(__file__).resolve().parents[1]


def _cfg(root: Path, *overrides: str):
    return evaluate_config(root, *overrides)


@pytest.fixture(scope="module")
def decoder_config():
    return load("tiny-drive-vla").decoder.config


@pytest.mark.parametrize("pruner", ["fastv", "autoprune", "fastervlm"])
def test_reported_tokens_and_flops_are_what_ran(
    synthetic_root: Path, tmp_path: Path, pruner: str, decoder_config
) -> None:
    budget = 64
    summary = evaluate(_cfg(synthetic_root, f"pruner={pruner}", f"budget={budget}"), tmp_path)
    records = read_records(tmp_path / RECORDS_FILE)
    assert summary["num_samples"] == len(records) > 0
    for r in records:
        visual = np.array(r["visual_tokens_per_layer"])
        assert visual.mean() <= budget + 1 and abs(visual.mean() - budget) <= 1
        assert np.all(np.diff(visual) <= 0) and visual[0] <= r["num_visual"]
        tokens = torch.tensor([r["tokens_per_layer"]])
        assert r["flops"] == int(decoder_flops_from_config(tokens, decoder_config)[0])
        assert r["flops"] < r["flops_unpruned"]
    assert 0 < summary["flops_reduction"] < 1
    assert summary["mean_visual_tokens_per_layer"] == pytest.approx(
        np.mean([np.mean(r["visual_tokens_per_layer"]) for r in records])
    )
    if pruner == "autoprune":
        assert all(r["mi"] is not None and r["k"] is not None for r in records)


def test_none_beats_random_at_a_tight_budget(synthetic_root: Path, tmp_path: Path) -> None:
    none = evaluate(_cfg(synthetic_root, "pruner=none"), tmp_path / "none")
    rand = evaluate(_cfg(synthetic_root, "pruner=random", "budget=49"), tmp_path / "random")
    assert none["l2"]["stp3"]["3s"] < rand["l2"]["stp3"]["3s"]
    assert none["flops_reduction"] == pytest.approx(0.0)
    first = read_records(tmp_path / "none" / RECORDS_FILE)[0]
    assert none["mean_visual_tokens_per_layer"] == first["num_visual"]  # every token at every layer


def test_impossible_budget_fails_before_any_work(synthetic_root: Path, tmp_path: Path) -> None:
    from vla_autoprune.pruning import BudgetError

    with pytest.raises(BudgetError, match="choose a budget in"):
        evaluate(_cfg(synthetic_root, "pruner=autoprune", "budget=5"), tmp_path)
    assert not (tmp_path / RECORDS_FILE).exists()


def test_cli_bad_config_is_one_line(synthetic_root: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "vla_autoprune.evaluate",
            f"data.dataset.dataroot={tmp_path}/missing",
            "data=nuscenes",
            f"hydra.run.dir={tmp_path}/run",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 2
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if "error:" in line]
    assert len(errors) == 1 and "missing" in errors[0], proc.stdout + proc.stderr


def _multirun(root: Path, sweep: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    """``evaluate -m`` on the first 4 samples of ``root`` into ``sweep``, single-threaded."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "vla_autoprune.evaluate",
            "-m",
            *overrides,
            f"hydra.sweep.dir={sweep}",
            *synthetic_overrides(root),
            "device=cpu",
            "limit=4",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def test_joblib_multirun_writes_summaries_and_a_merged_report(synthetic_root: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = _multirun(
        synthetic_root,
        sweep,
        "pruner=fastv,autoprune",
        "budget=64,128",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summaries = sorted(sweep.rglob("summary.json"))
    assert len(summaries) == 4
    budgets = sorted(
        (json.loads(p.read_text())["pruner"], json.loads(p.read_text())["budget"]) for p in summaries
    )
    assert budgets == [("autoprune", 64), ("autoprune", 128), ("fastv", 64), ("fastv", 128)]
    report = (sweep / "report.md").read_text()
    assert report.count("| vla | autoprune |") == 2 and report.count("| vla | fastv[matched] |") == 2
    assert (sweep / "report.csv").exists() and (sweep / "collision_3s_vs_budget.png").exists()


def test_a_sweep_runs_past_a_cell_the_model_cannot_run_and_reports_it(
    synthetic_root: Path, tmp_path: Path
) -> None:
    sweep = tmp_path / "sweep"
    # budget 5 is below FastV's reach on 8 layers x 384 tokens
    proc = _multirun(synthetic_root, sweep, "pruner=fastv", "budget=5,96", "scores=[open_loop]")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    (skipped,) = sweep.rglob("skipped.json")
    info = json.loads(skipped.read_text())
    assert (info["pruner"], info["budget"], info["model"]) == (
        "fastv",
        5,
        DEFAULT_MODEL,
    )  # as run.json names it
    assert "budget=5" in info["overrides"] and "choose a budget in" in info["reason"]
    assert not (skipped.parent / RECORDS_FILE).exists()
    (summary,) = sweep.rglob("summary.json")
    assert json.loads(summary.read_text())["budget"] == 96
    report = (sweep / "report.md").read_text()
    assert (
        "## Not run" in report
        and f"| {DEFAULT_MODEL} | fastv | 5 | fastv: budget 5 is not reachable" in report
    )
    assert report.count("| vla | fastv[matched] |") == 1


def test_sigkilled_run_resumes_to_the_uninterrupted_summary(synthetic_root: Path, tmp_path: Path) -> None:
    def command(run_dir: Path) -> list[str]:
        return [
            sys.executable,
            "-m",
            "vla_autoprune.evaluate",
            *synthetic_overrides(synthetic_root),
            "device=cpu",
            "batch_size=1",
            "pruner=autoprune",
            "budget=64",
            f"hydra.run.dir={run_dir}",
        ]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        command(tmp_path / "whole"), check=True, capture_output=True, cwd=ROOT, env=env, timeout=300
    )
    records = tmp_path / "killed" / RECORDS_FILE
    proc = subprocess.Popen(
        command(tmp_path / "killed"), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if records.exists() and records.read_bytes().count(b"\n") >= 1:
                proc.send_signal(signal.SIGKILL)  # no cleanup: exactly what a lost node looks like
                break
            time.sleep(0.005)
    finally:
        proc.kill()
        proc.wait()
    total = len(read_records(tmp_path / "whole" / RECORDS_FILE))
    assert 1 <= len(read_records(records)) < total, "the run was not killed halfway"
    subprocess.run(
        command(tmp_path / "killed"), check=True, capture_output=True, cwd=ROOT, env=env, timeout=300
    )
    whole = json.loads((tmp_path / "whole" / "summary.json").read_text())
    resumed = json.loads((tmp_path / "killed" / "summary.json").read_text())
    for key in ("num_samples", "l2", "collision", "mean_visual_tokens_per_layer", "flops", "samples_digest"):
        assert resumed[key] == whole[key], key
    assert len(read_records(records)) == total  # nothing evaluated twice
