"""The GPU recipe's parts that run without a GPU: file names, commit, report note, profiler totals,
and ``benchmarks/gpu.sh`` failing fast and clearly where it cannot run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.autograd import DeviceType

from benchmarks.common import _commit, result_name
from benchmarks.overhead import device_entries
from benchmarks.report import write_report
from vla_autoprune.profiling import STAGE_PREFIX

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu.sh"


def test_a_gpu_result_does_not_replace_the_cpu_one() -> None:
    assert result_name("memory", torch.device("cpu")) == "memory"
    assert result_name("memory", torch.device("cuda")) == "memory_cuda"
    assert result_name("prefill_llava-1.5-7b_b1", torch.device("cuda", 0)) == "prefill_llava-1.5-7b_b1_cuda"


def test_commit_falls_back_to_the_environment_outside_a_git_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # a copy of the working tree without .git, as on a lent GPU box
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    monkeypatch.delenv("BENCHMARK_COMMIT", raising=False)
    assert _commit() is None
    monkeypatch.setenv("BENCHMARK_COMMIT", "abc1234")
    assert _commit() == "abc1234"
    monkeypatch.chdir(ROOT)  # a checkout's own commit wins
    assert _commit() not in (None, "abc1234")


def test_report_names_the_gpu_sections_once_there_are_any(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    cpu = json.loads((ROOT / "benchmarks" / "results" / "memory.json").read_text())
    (results / "memory.json").write_text(json.dumps(cpu))
    write_report(results, tmp_path / "cpu.md")
    assert "no GPU figure exists yet" in (tmp_path / "cpu.md").read_text()
    gpu = cpu | {"machine": cpu["machine"] | {"device": "cuda", "gpu": "NVIDIA H200"}}
    (results / "memory_cuda.json").write_text(json.dumps(gpu))
    write_report(results, tmp_path / "both.md")
    text = (tmp_path / "both.md").read_text()
    assert "GPU figures: sections `memory_cuda`." in text and "no GPU figure exists yet" not in text
    assert "## memory\n" in text and "## memory_cuda\n" in text and "NVIDIA H200" in text


def _entry(key: str, device: DeviceType, self_us: float, annotation: bool = False) -> SimpleNamespace:
    return SimpleNamespace(
        key=key, count=2, device_type=device, is_user_annotation=annotation, self_device_time_total=self_us
    )


def test_gpu_profile_counts_each_kernel_once_under_the_op_that_launched_it() -> None:
    cpu, cuda = DeviceType.CPU, DeviceType.CUDA
    averages = [
        _entry("aten::linear", cpu, 0.0),  # its time is its child's (aten::mm)
        _entry("aten::mm", cpu, 300.0),
        _entry("aten::add", cpu, 100.0),
        _entry("sm90_gemm_bf16", cuda, 300.0),  # the same kernels, listed as device entries
        _entry("elementwise_kernel", cuda, 100.0),
        _entry(STAGE_PREFIX + "score", cpu, 0.0, annotation=True),
        _entry(STAGE_PREFIX + "score", cuda, 390.0, annotation=True),  # the range's device-side copy
    ]
    ops, total = device_entries(averages)
    assert total == 400.0  # kernels once; the range's span is not a kernel
    assert ops == [("aten::linear", 2, 0.0), ("aten::mm", 2, 300.0), ("aten::add", 2, 100.0)]
    assert sum(t for _, _, t in ops) == total  # shares of the ops sum to 1


def _script(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}", **env},
    )


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_script_says_how_to_use_it_and_fails_fast_without_a_gpu(tmp_path: Path) -> None:
    done = _script()
    assert (
        done.returncode == 2 and "usage: bash benchmarks/gpu.sh fetch | run [OUT] | merge DIR" in done.stderr
    )
    done = _script("merge", str(tmp_path))
    assert done.returncode == 1 and f"no *_cuda.json in {tmp_path}" in done.stderr
    if torch.cuda.is_available():
        return
    out = tmp_path / "out"
    done = _script("run", str(out), WHEELS=str(tmp_path / "none"))
    assert done.returncode != 0
    log = (out / "log").read_text()  # what a lent machine would send back
    assert "no CUDA device visible" in log and "torch " in log
    assert not list(out.glob("*.json"))
