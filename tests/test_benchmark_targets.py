"""The benchmark report's issue-14 targets table: which targets are met, on which device (hand-made results)."""

from __future__ import annotations

from typing import Any

from benchmarks.report import _columns, _runs_note, _targets


def _prefill(device: str, over: float, realised: float) -> dict[str, Any]:
    row = {
        "pruner": "autoprune",
        "budget_label": "V/4",
        "ms": 12.0,
        "ideal_ms": 10.0,
        "seq_len": [100, 80, 80, 60],  # two pruning layers
        "time_over_ideal": over,
        "time_over_ideal lo": over - 0.01,
        "time_over_ideal hi": over + 0.02,
        "realised_over_predicted": realised,
    }
    tight = row | {
        "budget_label": "V/9",
        "time_over_ideal": 1.0,
        "time_over_ideal lo": 0.99,
        "time_over_ideal hi": 1.01,
    }
    return {"machine": {"device": device}, "rows": [row, tight]}


def _overhead(device: str, share: float) -> dict[str, Any]:
    row = {
        "pruner": "autoprune",
        "overhead_share": share,
        "overhead_share lo": share,
        "overhead_share hi": share,
    }
    return {"machine": {"device": device}, "rows": [row]}


def _line(text: str, start: str, where: str) -> str:
    [line] = [row for row in text.splitlines() if row.startswith(start) and where in row]
    return line


def test_cpu_target_is_judged_on_the_median_with_its_range_and_cost_per_pruning_layer() -> None:
    text = _targets(
        {
            "prefill_a": _prefill("cpu", 1.04, 0.95),
            "prefill_b": _prefill("cpu", 1.2, 0.95),
            "prefill_c": _prefill("cpu", 1.02, 0.95),
            "prefill_d": _prefill("cpu", 1.055, 0.95),
        }
    )
    met = _line(text, "| AutoPrune prefill", "prefill_a")
    assert "1.040 [1.030, 1.060] x ideal" in met and "| yes (its range straddles 1.05) |" in met
    assert "V/4, +1.00 ms per pruning layer" in met  # (12 - 10) ms over 2 layers that dropped tokens
    assert "| no |" in _line(text, "| AutoPrune prefill", "prefill_b")  # [1.19, 1.22]: all above
    assert "| yes |" in _line(text, "| AutoPrune prefill", "prefill_c")  # [1.01, 1.04]: all below
    assert "| no (its range straddles 1.05) |" in _line(
        text, "| AutoPrune prefill", "prefill_d"
    )  # [1.045, 1.075]


def test_gpu_targets_are_judged_only_on_cuda_results() -> None:
    text = _targets(
        {
            "prefill_cpu": _prefill("cpu", 1.0, 0.95),
            "prefill_gpu": _prefill("cuda", 1.0, 0.85),
            "overhead_cpu": _overhead("cpu", 0.01),
            "overhead_gpu": _overhead("cuda", 0.02),
        }
    )
    assert "GPU target: this CPU figure is for reference" in _line(text, "| realised", "prefill_cpu")
    assert "| no |" in _line(text, "| realised", "prefill_gpu")  # 0.85 < 0.9
    assert "n/a (GPU run)" in _line(text, "| AutoPrune prefill", "prefill_gpu")
    assert "for reference" in _line(text, "| engine overhead", "overhead_cpu")
    assert "| yes |" in _line(text, "| engine overhead", "overhead_gpu")  # 2 % <= 3 %


def test_gpu_overhead_verdict_says_when_its_range_straddles_the_target() -> None:
    gpu = _overhead("cuda", 0.025)
    gpu["rows"][0] |= {"overhead_share lo": 0.02, "overhead_share hi": 0.04}
    text = _targets({"overhead_gpu": gpu})
    assert "| yes (its range straddles 3 %) |" in _line(text, "| engine overhead", "overhead_gpu")


def test_bounds_show_inside_their_column() -> None:
    rows = [{"a": 1.0, "a lo": 0.5, "a hi": 2.0, "b": 3, "c lo": 1}]
    assert _columns(rows) == ["a", "b", "c lo"]  # a bound without its column stays a column


def test_overhead_target_names_op_counts_and_gpu_host_syncs_when_measured() -> None:
    gpu = _overhead("cuda", 0.02)
    gpu["rows"][0] |= {"aten_ops": 900, "ideal_aten_ops": 500, "host_syncs": 17}
    text = _targets({"overhead_cpu": _overhead("cpu", 0.01), "overhead_gpu": gpu})
    line = _line(text, "| engine overhead", "overhead_gpu")
    assert "900 aten ops per prefill vs 500 for the ideal, 17 host syncs per prefill" in line
    assert "host syncs" not in _line(text, "| engine overhead", "overhead_cpu")


def test_report_names_the_runs_when_sections_come_from_several() -> None:
    def result(commit: str, time: str) -> dict[str, Any]:
        return {"machine": {"device": "cpu", "commit": commit, "time": time}, "rows": []}

    one = {"a": result("abc", "2026-12-01T04:00:00Z"), "b": result("abc", "2026-12-01T05:00:00Z")}
    assert _runs_note(one) == ""
    two = one | {"c": result("def", "2026-12-02T00:00:00Z")}
    assert "runs at 2 commits (abc (2026-12-01), def (2026-12-02)" in _runs_note(two)
