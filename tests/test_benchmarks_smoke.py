"""Smoke test: ``python -m benchmarks.run --quick`` runs and writes its results (nothing about speed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.end_to_end import PHASES

ROOT = Path(__file__).resolve().parents[1]
EXPECTED = {
    "prefill_bundled_b1",
    "prefill_bundled_b2",
    "prefill_llava-shaped-tiny_b1",
    "prefill_llava-shaped-tiny_b2",
    "overhead_bundled_b2",
    "overhead_llava-shaped-tiny_b1",
    "memory",
    "flops",
    "scaling",
    "end_to_end",
    "compiled",
}


@pytest.mark.slow
def test_quick_benchmarks_write_results_and_report(tmp_path: Path) -> None:
    out, report = tmp_path / "results", tmp_path / "RESULTS.md"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--out", str(out), "--report", str(report)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")}
    assert set(results) == EXPECTED
    for name, result in results.items():
        machine = result["machine"]
        assert machine["torch"] and machine["transformers"] and machine["device"] == "cpu", name
        assert result["config"]["quick"] is True and result["rows"], name
    prefill = results["prefill_bundled_b1"]["rows"]
    pruners = {r["pruner"].split("[")[0] for r in prefill}
    assert {"none", "fastv", "pdrop", "sparsevlm", "fastervlm", "random", "autoprune"} <= pruners
    assert all(r["time_over_ideal"] > 0 for r in prefill if "time_over_ideal" in r)
    # Each ratio comes with the spread of its paired per-round ratios.
    assert all(
        0 < r["time_over_ideal lo"] <= r["time_over_ideal hi"] for r in prefill if "time_over_ideal" in r
    )
    # The analytic FLOPs match torch.utils.flop_counter on the same forwards (a count, not a timing).
    assert all(r["within_1pct"] for r in results["flops"]["rows"])
    assert results["overhead_bundled_b2"]["profiles"]["autoprune"], "profiler top entries missing"
    # The engine's time split into its stages (AutoPrune scores, solves its schedule and recycles).
    stages = {r["stage"]: r for r in results["overhead_bundled_b2"]["stages"]["autoprune"]}
    assert {"score", "schedule", "select", "merge", "record"} <= set(stages)
    assert sum(r["share"] for r in stages.values()) == pytest.approx(1.0, abs=1e-3)
    # The engine issues ops of its own on top of the ideal stack's (a count, not a timing).
    for row in results["overhead_bundled_b2"]["rows"]:
        assert row["aten_ops"] > row["ideal_aten_ops"] > 0, row
    e2e = {r["pruner"]: r for r in results["end_to_end"]["rows"]}
    assert set(e2e) == {"none", "autoprune"} and all(r["samples_per_s"] > 0 for r in e2e.values())
    for row in e2e.values():  # the phases split the loop's time (shares, not speed)
        assert row["engine_ms"] >= 0 and abs(sum(row[f"{p}_share"] for p in PHASES) - 1) < 0.01
    # torch.compile per decoder layer, the engine's hooks traced with it: every pruner runs (same
    # per-layer token counts as eager, outputs within float32 noise). The record's host bookkeeping
    # is excluded from tracing; traced, dynamo failed its own guards on it for `none` and `fastv`.
    for row in results["compiled"]["rows"]:
        assert "error" not in row, row
        assert row["same_token_counts"] and float(row["max_abs_diff"]) < 1e-3, row
    text = report.read_text()
    assert "benchmarks/gpu.sh run" in text and "python -m benchmarks.run --device cuda" in text
    assert "## prefill_bundled_b1" in text
    assert "Engine stages, autoprune" in text
    # The targets say whether each is met; GPU targets are not judged on CPU figures.
    assert (
        "| target | measured | met | where |" in text
        and "GPU target: this CPU figure is for reference" in text
    )


def test_report_only_rewrites_the_report_from_the_results_folder(tmp_path: Path) -> None:
    """Results made elsewhere (a GPU machine) are merged by copying their JSON in and rewriting the report."""
    out = tmp_path / "results"
    out.mkdir()
    for name in ("flops.json", "prefill_bundled_b1.json"):
        (out / name).write_text((ROOT / "benchmarks" / "results" / name).read_text())
    report = tmp_path / "RESULTS.md"
    command = [
        sys.executable,
        "-m",
        "benchmarks.run",
        "--report-only",
        "--out",
        str(out),
        "--report",
        str(report),
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    text = report.read_text()
    assert "## flops" in text and "## prefill_bundled_b1" in text and "## memory" not in text
    empty = tmp_path / "empty"
    empty.mkdir()
    command[command.index(str(out))] = str(empty)
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2 and f"no results (*.json) in {empty}" in done.stderr


# Stand-in for a lent GPU box: torch and transformers, none of the project's data stack.
_WITHOUT_DATA_STACK = """
import runpy, sys
BLOCKED = {"nuscenes", "hydra", "omegaconf", "cv2", "matplotlib", "pyquaternion", "shapely"}
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
        return None
sys.meta_path.insert(0, Blocker())
sys.argv = ["benchmarks.run", *sys.argv[1:]]
runpy.run_module("benchmarks.run", run_name="__main__")
"""


@pytest.mark.slow
def test_shapes_only_runs_without_nuscenes_devkit_or_the_data_stack(tmp_path: Path) -> None:
    out, report = tmp_path / "results", tmp_path / "RESULTS.md"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    args = ["--quick", "--out", str(out), "--report", str(report), "--only", "prefill,overhead,flops,memory"]

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-c", _WITHOUT_DATA_STACK, *args, *extra]
        return subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False
        )

    refused = run()
    assert refused.returncode == 2 and "pass --shapes-only" in refused.stderr
    done = run("--shapes-only")
    assert done.returncode == 0, done.stderr[-3000:]
    names = {p.stem for p in out.glob("*.json")}
    assert names == {
        "prefill_llava-shaped-tiny_b1",
        "prefill_llava-shaped-tiny_b2",
        "overhead_llava-shaped-tiny_b1",
        "flops",
        "memory",
    }
    assert "## prefill_llava-shaped-tiny_b1" in report.read_text()
