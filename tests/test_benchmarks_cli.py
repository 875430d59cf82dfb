"""``python -m benchmarks.run``'s command line: bad input and Ctrl-C in one line, results written
atomically and naming the commit the run started at (nothing here runs a benchmark)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from benchmarks import common, run
from benchmarks.report import write_report

ROOT = Path(__file__).resolve().parents[1]


def _refused(argv: list[str], caplog: pytest.LogCaptureFixture) -> str:
    """The one error line ``run.main(argv)`` ends with (exit 2)."""
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exit_info:
        run.main(argv)
    assert exit_info.value.code == 2
    assert len(caplog.records) == 1 and "\n" not in caplog.records[0].message
    message = caplog.records[0].message
    caplog.clear()
    return message


@pytest.mark.parametrize("device", ["tpu", "cuda:abc", "mps"])
def test_a_device_other_than_cpu_or_cuda_is_one_line(device: str, caplog: pytest.LogCaptureFixture) -> None:
    message = _refused(["--quick", "--device", device], caplog)
    assert message.startswith("error: argument --device") and "cpu, cuda or cuda:N" in message


def test_unwritable_out_or_report_is_refused_before_anything_runs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def never(*_args: object) -> None:
        raise AssertionError("a benchmark ran")

    monkeypatch.setattr(run, "_run", never)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    message = _refused(["--quick", "--out", str(blocker / "results")], caplog)
    assert message.startswith("error: --out: cannot write the output folder") and "is a file" in message
    assert "choose another with --out=<folder>" in message
    message = _refused(["--quick", "--out", str(tmp_path), "--report", str(blocker / "R.md")], caplog)
    assert message.startswith("error: --report: cannot write the output folder")
    message = _refused(["--quick", "--out", str(tmp_path), "--report", str(tmp_path)], caplog)
    assert message.startswith("error: --report:") and "is a folder" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # no probe left behind


def test_ctrl_c_is_one_line_exit_130(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*_args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "_run", interrupted)
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exit_info:
        run.main(["--quick", "--out", str(tmp_path / "r"), "--report", str(tmp_path / "R.md")])
    assert exit_info.value.code == 130
    assert len(caplog.records) == 1 and caplog.records[0].message.startswith("interrupted: ")
    assert "--only" in caplog.text


def test_every_result_of_a_run_names_the_commit_it_started_at(monkeypatch: pytest.MonkeyPatch) -> None:
    """The checkout may move on while a run takes minutes: its sections still name one commit."""
    commits = iter(["aaaaaaa", "bbbbbbb", "ccccccc"])
    monkeypatch.setattr(common, "_commit", lambda: next(commits))
    monkeypatch.setattr(common, "_PINNED_COMMIT", [])
    common.pin_commit()
    cpu = torch.device("cpu")
    assert common.machine(cpu)["commit"] == "aaaaaaa" == common.machine(cpu)["commit"]


def test_results_and_report_are_written_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Interrupted while writing, a result or the report keeps its previous complete content."""
    cpu = torch.device("cpu")
    path = common.write_result(tmp_path, "memory", cpu, {"quick": True}, [{"pruner": "none"}])
    before = path.read_text()

    def interrupted(*_args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(common.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        common.write_result(tmp_path, "memory", cpu, {"quick": False}, [{"pruner": "autoprune"}])
    report = tmp_path / "R.md"
    report.write_text("the previous report")
    with pytest.raises(KeyboardInterrupt):
        write_report(tmp_path, report)
    assert path.read_text() == before and json.loads(before)["config"] == {"quick": True}
    assert report.read_text() == "the previous report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["R.md", "memory.json"]  # no temporary left


def test_report_states_no_machine_facts_it_did_not_measure(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    (results / "memory.json").write_text((ROOT / "benchmarks" / "results" / "memory.json").read_text())
    write_report(results, tmp_path / "R.md")
    text = (tmp_path / "R.md").read_text()
    assert "2-core" not in text and "other jobs were running" not in text
    assert "1 thread(s)" in text  # what each section did record
