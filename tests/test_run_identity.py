"""Run identity: run.json, the merge key, the resume check, sweep folders and the default sweep."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import evaluate_config, synthetic_overrides
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate
from omegaconf import DictConfig

from hydra_plugins.vla_autoprune_sweeper.default_sweeper import DefaultSweeper
from vla_autoprune.errors import ConfigError
from vla_autoprune.models.loading import DEFAULT_MODEL
from vla_autoprune.pipeline.app import evaluate
from vla_autoprune.pipeline.identity import check_resume, config_key, variant
from vla_autoprune.pipeline.merge import find_runs, merge_runs
from vla_autoprune.run_files import RECORDS_FILE, read_records

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
ENV = {**{k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}, "OMP_NUM_THREADS": "1"}


def _cfg(root: Path, *overrides: str) -> DictConfig:
    return evaluate_config(root, *overrides)


def _run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "vla_autoprune.evaluate", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=ENV,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


# -- the default sweep ------------------------------------------------------------------------------


def _jobs(*args: str) -> list[list[str]]:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("evaluate", return_hydra_config=True)
    sweeper = instantiate(cfg.hydra.sweeper)  # Hydra's plugin scan may load the module a second time:
    assert type(sweeper).__qualname__ == DefaultSweeper.__qualname__  # compare by name, not identity
    overrides = OverridesParser.create().parse_overrides(list(args))
    return [job for batch in sweeper.split_arguments(overrides, None) for job in batch]


def test_bare_multirun_runs_the_default_sweep_with_none_once() -> None:
    jobs = _jobs()
    assert ["pruner=none"] in jobs and sum("pruner=none" in job for job in jobs) == 1
    assert len(jobs) == 1 + 4 * 2 == len({tuple(job) for job in jobs})
    assert ["pruner=autoprune", "budget=96"] in jobs
    # plain overrides apply to every job of the default sweep
    assert all("device=cuda" in job for job in _jobs("device=cuda")) and len(_jobs("device=cuda")) == 9


def test_an_explicit_sweep_runs_only_what_it_asks_for() -> None:
    shards = _jobs("data.shard=0,1,2,3", "data.num_shards=4")
    assert shards == [[f"data.shard={i}", "data.num_shards=4"] for i in range(4)]
    assert _jobs("budget=48") == [["budget=48"]]  # setting a default-sweep key replaces the sweep
    assert _jobs("pruner.stage0=reference,before") == [["pruner.stage0=reference"], ["pruner.stage0=before"]]


def test_pruner_none_runs_once_however_many_budgets_a_sweep_names() -> None:
    jobs = _jobs("pruner=none,fastv", "budget=49,96", "cameras=intact,black")
    assert len(jobs) == 2 * 2 * 2 - 2  # none at budget 96 would repeat none at 49, per camera setting
    assert ["pruner=none", "budget=49", "cameras=intact"] in jobs and [
        "pruner=none",
        "budget=49",
        "cameras=black",
    ] in jobs
    assert not [job for job in jobs if "pruner=none" in job and "budget=96" in job]
    assert sum("pruner=fastv" in job for job in jobs) == 4  # every budget of a pruner that has one
    assert _jobs("pruner=none", "budget=49,96") == [["pruner=none", "budget=49"]]


# -- identity ---------------------------------------------------------------------------------------


def test_variant_keeps_what_changes_numbers_only() -> None:
    assert variant([]) == ""
    assert (
        variant(["pruner=fastv", "budget=48", "pruner.budget=40", "data.shard=1", "data.num_shards=4"]) == ""
    )
    assert variant(["device=cpu", "batch_size=2", "resume=false", "num_workers=2", "planner=vla"]) == ""
    assert variant(["pruner.stage0=before", "pruner=autoprune", "limit=8"]) == "limit=8 pruner.stage0=before"


def test_merge_key_groups_shards_and_separates_everything_else() -> None:
    meta = {
        "planner": "vla",
        "pruner": "autoprune",
        "budget": 32,
        "pruner_config": {"budget": 32, "stage0": "reference"},
        "model": "tiny-drive-vla",
        "data": {"dataroot": "/d", "split": "val"},
        "variant": "",
    }
    shard = {"shard": 1, "num_shards": 2, "data_digest": "b", "device": "cuda", "wall_time_s": 3.0}
    assert config_key({**meta, "shard": 0, "num_shards": 2, "data_digest": "a"}) == config_key(
        {**meta, **shard}
    )
    other = {**meta, "pruner_config": {"budget": 32, "stage0": "before"}}
    assert config_key(meta) != config_key(other)
    assert config_key(meta) != config_key({**meta, "model": "/models/other"})
    assert config_key(meta) != config_key({**meta, "data": {"dataroot": "/d", "split": "train"}})


def test_resume_into_another_run_is_one_line_naming_both(tmp_path: Path) -> None:
    old = {"pruner_config": {"stage0": "reference"}, "data_digest": "a", "device": "cpu"}
    new = {"pruner_config": {"stage0": "before"}, "data_digest": "a", "device": "cuda"}
    with pytest.raises(ConfigError) as err:
        check_resume(old, new, tmp_path)
    message = str(err.value)
    assert "\n" not in message and "'reference'" in message and "'before'" in message
    assert "device" not in message  # a rerun on another device continues the same run
    check_resume(old, {**old, "device": "cuda", "wall_time_s": 9.0}, tmp_path)


def test_run_json_records_what_ran_and_a_rerun_keeps_its_time(synthetic_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = _cfg(synthetic_root, "pruner=fastv", "pruner.budget=64", "limit=2")
    first = evaluate(cfg, out, overrides=["pruner=fastv", "pruner.budget=64", "limit=2"])
    meta = json.loads((out / "run.json").read_text())
    assert meta["budget"] == 64 == meta["pruner_config"]["budget"]  # not the top-level budget (96)
    assert meta["pruner"] == "fastv" and meta["pruner_config"]["layer"] == 2
    assert meta["model"] == DEFAULT_MODEL and meta["variant"] == "limit=2"  # the config's default model
    assert meta["data"]["dataroot"] == str(synthetic_root.resolve()) and len(meta["data_digest"]) == 12
    second = evaluate(cfg, out, overrides=["pruner=fastv", "pruner.budget=64", "limit=2"])
    assert second["wall_time_s"] == first["wall_time_s"] > 0  # nothing left to do: the time stays
    assert second["l2"] == first["l2"] and len(read_records(out / RECORDS_FILE)) == 2
    evaluate(_cfg(synthetic_root, "pruner=autoprune", "limit=2"), tmp_path / "ap")
    with pytest.raises(
        ConfigError, match=r"holds another run \(.*'reference'.*\) than this one \(.*'before'"
    ):
        evaluate(_cfg(synthetic_root, "pruner=autoprune", "pruner.stage0=before", "limit=2"), tmp_path / "ap")


# -- multiruns, end to end --------------------------------------------------------------------------


def test_stage0_multirun_gives_two_runs_two_rows_and_different_numbers(
    synthetic_root: Path, tmp_path: Path
) -> None:
    sweep = tmp_path / "sweep"
    _run(
        "-m",
        "pruner.stage0=reference,before",
        "budget=64",
        *synthetic_overrides(synthetic_root),
        "data.dataset.full_future_only=false",
        "device=cpu",
        "limit=3",
        f"hydra.sweep.dir={sweep}",
    )
    runs = find_runs([sweep])
    assert len(runs) == 2
    summaries = {s["pruner_config"]["stage0"]: s for s in merge_runs(runs)}
    assert set(summaries) == {"reference", "before"}
    records = {
        json.loads((r / "run.json").read_text())["variant"]: read_records(r / RECORDS_FILE) for r in runs
    }
    assert len(records) == 2 and all(len(v) == 3 for v in records.values())
    ref, before = summaries["reference"], summaries["before"]
    assert (ref["flops"], ref["l2"]) != (before["flops"], before["l2"])
    report = (sweep / "report.md").read_text()
    assert report.count("| vla | autoprune |") == 2


def _readme_command(marker: str) -> list[str]:
    """The README's command line containing ``marker``, as a new user would copy it."""
    for line in (ROOT / "README.md").read_text().splitlines():
        if marker in line and line.startswith("python -m vla_autoprune.evaluate"):
            return shlex.split(line.split("#")[0])
    raise AssertionError(f"README.md has no evaluate command with {marker!r}")


def test_readme_shard_command_gives_one_folder_per_shard_and_one_row(
    synthetic_root: Path, tmp_path: Path
) -> None:
    command = _readme_command("data.shard=")
    assert command[:3] == ["python", "-m", "vla_autoprune.evaluate"]
    num_shards = int(re.search(r"data.num_shards=(\d+)", " ".join(command)).group(1))  # type: ignore[union-attr]
    sweep = tmp_path / "sweep"
    # as written, plus small data and a known sweep folder
    _run(
        *command[3:],
        *synthetic_overrides(synthetic_root),
        "data.dataset.full_future_only=false",
        "device=cpu",
        f"limit={2 * num_shards}",  # the split's first 8 samples, 2 per shard
        f"hydra.sweep.dir={sweep}",
    )
    runs = find_runs([sweep])
    assert len(runs) == num_shards  # the shards only: no default sweep added
    shards = []
    for run in runs:
        summary = json.loads((run / "summary.json").read_text())
        records = read_records(run / RECORDS_FILE)
        assert summary["num_samples"] == len(records) == 2
        assert all(r["index"] % num_shards == summary["shard"] for r in records)
        shards.append(summary["shard"])
    assert sorted(shards) == list(range(num_shards))
    (merged,) = merge_runs(runs)
    assert merged["num_samples"] == 2 * num_shards
    assert (sweep / "report.md").read_text().count("| vla | autoprune |") == 1
