"""The evaluation pipeline: Hydra composition, crash-safe records, resume, shards, merge, report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import synthetic_overrides
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from planners.constant_velocity import ConstantVelocityPlanner
from planners.metrics import l2_at
from vla_autoprune.data.schema import CAMERAS
from vla_autoprune.errors import ConfigError
from vla_autoprune.models.describe import describe
from vla_autoprune.pipeline.app import evaluate
from vla_autoprune.pipeline.loop import run_split, shard_indices
from vla_autoprune.pipeline.merge import find_runs, merge_runs
from vla_autoprune.pipeline.report_files import write_report
from vla_autoprune.run_files import RECORDS_FILE, RecordWriter, atomic_write_json, read_records

CONF = Path(__file__).resolve().parents[1] / "conf"


def _cfg(root: Path, *overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(
            "evaluate",
            overrides=[
                *(
                    synthetic_overrides(root)
                    if "data=nuscenes" not in overrides
                    else [f"data.dataset.dataroot={root}"]
                ),
                "device=cpu",
                "batch_size=3",
                *overrides,
            ],
        )


# -- results files ---------------------------------------------------------------------------------


def test_torn_last_record_is_skipped_by_readers_and_truncated_by_a_resume(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    with RecordWriter(path) as w:
        w.write([{"index": 0}, {"index": 1}])
    with path.open("a") as f:
        f.write('{"index": 2, "l2": [0.1')  # killed mid-write
    torn = path.read_bytes()
    assert [r["index"] for r in read_records(path)] == [0, 1]
    assert path.read_bytes() == torn  # a reader (report, viewer) never writes: the run may be appending
    assert [r["index"] for r in read_records(path, repair=True)] == [0, 1]  # the run itself, resuming
    assert path.read_text().endswith("}\n")  # the torn tail is gone, appends stay valid
    with RecordWriter(path) as w:
        w.write([{"index": 2}])
    assert [r["index"] for r in read_records(path)] == [0, 1, 2]


def test_corrupt_middle_line_is_an_error_not_silent_loss(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    path.write_text('{"index": 0}\nnot json\n{"index": 2}\n')
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        read_records(path)


def test_atomic_write_replaces_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "summary.json"
    atomic_write_json(path, {"a": 1})
    atomic_write_json(path, {"b": 2})
    assert json.loads(path.read_text()) == {"b": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no temp files left


def test_atomic_files_get_the_mode_open_would_give(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    atomic_write_json(path, {"a": 1})
    (tmp_path / "plain.txt").write_text("x")  # what open() makes under this process's umask
    assert path.stat().st_mode & 0o777 == (tmp_path / "plain.txt").stat().st_mode & 0o777


def test_shard_indices_partition_the_split() -> None:
    shards = [shard_indices(10, i, 3) for i in range(3)]
    assert sorted(sum(shards, [])) == list(range(10))
    # a limit picks the split's first samples, which the shards then divide: the shards of a
    # limited run evaluate exactly what the unsharded limited run does
    assert shard_indices(10, 1, 3, limit=5) == [1, 4]
    limited = [shard_indices(10, i, 3, limit=5) for i in range(3)]
    assert sorted(sum(limited, [])) == shard_indices(10, 0, 1, limit=5) == [0, 1, 2, 3, 4]
    assert shard_indices(10, 2, 3, limit=2) == []  # more shards than samples: this one has none
    with pytest.raises(ValueError, match="0 <= shard < num_shards"):
        shard_indices(10, 3, 3)


# -- the loop, resume ------------------------------------------------------------------------------


class _Crashing(ConstantVelocityPlanner):
    """Dies (like a killed job) after ``batches`` batches."""

    def __init__(self, batches: int) -> None:
        super().__init__()
        self.left = batches

    def plan(self, batch: Any) -> Any:
        if self.left == 0:
            raise KeyboardInterrupt("killed")
        self.left -= 1
        return super().plan(batch)


def test_killed_run_resumes_to_identical_results(synthetic_root: Path, tmp_path: Path) -> None:
    from vla_autoprune.data import NuScenesDrivingDataset

    ds = NuScenesDrivingDataset(synthetic_root, split="val")
    indices = list(range(len(ds)))
    full = run_split(ConstantVelocityPlanner(), ds, indices, tmp_path / "full", batch_size=3)
    with pytest.raises(KeyboardInterrupt):
        run_split(_Crashing(1), ds, indices, tmp_path / "resumed", batch_size=3)
    assert len(read_records(tmp_path / "resumed" / RECORDS_FILE)) == 3
    resumed = run_split(ConstantVelocityPlanner(), ds, indices, tmp_path / "resumed", batch_size=3)
    assert resumed == full
    assert len(read_records(tmp_path / "resumed" / RECORDS_FILE)) == len(ds)  # nothing evaluated twice


def test_records_hold_metrics_consistent_with_metric_functions(synthetic_root: Path, tmp_path: Path) -> None:
    from vla_autoprune.data import NuScenesDrivingDataset

    ds = NuScenesDrivingDataset(synthetic_root, split="val")
    records = run_split(ConstantVelocityPlanner(), ds, range(len(ds)), tmp_path, batch_size=4)
    pred = np.array([r["pred"] for r in records])
    gt = np.array([r["gt"] for r in records])
    mask = np.array([r["gt_mask"] for r in records])
    from vla_autoprune.pipeline.summary import planning_metrics

    got = planning_metrics(records)["l2"]
    for conv in ("stp3", "uniad"):
        want = l2_at(pred, gt, mask, conv)
        for h in ("1s", "2s", "3s"):
            assert got[conv][h] == pytest.approx(want[h], abs=1e-3)  # preds are stored rounded to 1e-4


# -- Hydra app -------------------------------------------------------------------------------------


#: Extra overrides that make a group option cheap and runnable here (``{root}``: the synthetic dataroot).
_TINY = {
    ("data", "nuscenes"): ["data.dataset.version=v1.0-synthetic", "data.dataset.split=val"],
    ("pruner", "*"): ["budget=64"],
}


def _group_options() -> list[tuple[str, str]]:
    """(group, option) for every yaml of every config group under conf/, hydra groups included."""
    return sorted(
        (str(path.parent.relative_to(CONF)), path.stem)
        for path in CONF.rglob("*.yaml")
        if path.parent != CONF
    )


@pytest.mark.parametrize(("group", "option"), _group_options())
def test_default_config_composes_every_group(
    synthetic_root: Path, group: str, option: str, request: pytest.FixtureRequest
) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate

    from planners.base import Planner
    from vla_autoprune.data import NuScenesDrivingDataset, collate
    from vla_autoprune.models.base import DrivingModel
    from vla_autoprune.pruning import Pruner

    extra = _TINY.get((group, option), []) + _TINY.get((group, "*"), [])
    if (group, option) == ("model", "qwen2_5_vl"):  # no bundled Qwen: a tiny one saved by conftest
        extra.append(f"model.name_or_path={request.getfixturevalue('qwen_folder')}")
    if (group, option) == ("model", "qwen3_vl"):
        extra.append(f"model.name_or_path={request.getfixturevalue('qwen3_folder')}")
    data = (
        synthetic_overrides(synthetic_root)
        if (group, option) == ("data", "synthetic")
        else [f"data.dataset.dataroot={synthetic_root}"]
    )
    overrides = [f"{group}={option}", *data, "device=cpu", *extra]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("evaluate", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # the launcher configs interpolate hydra.* values
    node = OmegaConf.select(cfg, group.replace("/", "."))
    built = instantiate(node)
    if group == "data":
        assert isinstance(built["dataset"], NuScenesDrivingDataset) and len(built["dataset"]) > 0
    elif group == "model":
        assert isinstance(built(device="cpu"), DrivingModel)  # _partial_: the planner passes device/dtype
    elif group == "planner":
        assert isinstance(built, Planner)
        built.setup()
        batch = collate([NuScenesDrivingDataset(synthetic_root, split="val")[0]])
        assert tuple(built(batch).shape) == (1, 6, 2)
    elif group == "pruner":
        assert isinstance(built, Pruner)
        shape = describe("tiny-drive-vla")  # the bundled model's depth and visual tokens
        built.check_budget(shape.num_layers, shape.num_visual(len(CAMERAS)))
    elif group == "cameras":
        from planners.cameras import CameraAblation

        assert isinstance(built, CameraAblation) and (built.name == option or option == "intact")
    elif group == "hydra/launcher":
        assert type(built).__name__.endswith("Launcher")
    elif group == "hydra/sweeper":
        assert type(built).__name__.endswith("Sweeper")
    else:
        raise AssertionError(f"conf/{group} is a new config group: teach this test to check it")


def test_hydra_plugin_launchers_compose() -> None:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("evaluate", overrides=["hydra/launcher=joblib"], return_hydra_config=True)
        assert "Joblib" in cfg.hydra.launcher._target_


def test_unknown_pruner_is_a_config_error_listing_options() -> None:
    from hydra.errors import MissingConfigException

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        with pytest.raises(MissingConfigException, match="autoprune"):
            compose("evaluate", overrides=["pruner=nope"])


def test_constant_velocity_run_and_shards_merge_to_the_unsharded_summary(
    synthetic_root: Path, tmp_path: Path
) -> None:
    whole = evaluate(_cfg(synthetic_root, "planner=constant_velocity"), tmp_path / "whole")
    for shard in range(2):
        evaluate(
            _cfg(synthetic_root, "planner=constant_velocity", f"data.shard={shard}", "data.num_shards=2"),
            tmp_path / "sharded" / str(shard),
        )
    (merged,) = merge_runs(find_runs([tmp_path / "sharded"]))
    assert merged["num_samples"] == whole["num_samples"] > 0
    assert merged["l2"] == whole["l2"] and merged["collision"] == whole["collision"]
    assert merged["samples_digest"] == whole["samples_digest"]
    rows = write_report([tmp_path / "sharded"], tmp_path / "report")
    assert len(rows) == 1
    assert (tmp_path / "report" / "report.md").read_text().count("constant_velocity") == 1
    assert (tmp_path / "report" / "l2_3s_vs_budget.png").stat().st_size > 0


def test_real_nuscenes_config_takes_cameras_and_decode_size(synthetic_root: Path, tmp_path: Path) -> None:
    """data=nuscenes names its cameras and decode size (they needed a `+` before: Hydra refused
    ``data.dataset.image_size=...`` as not in the config); its camera list is the model's order."""
    nuscenes = OmegaConf.load(CONF / "data" / "nuscenes.yaml")
    assert tuple(nuscenes.dataset.cameras) == CAMERAS and nuscenes.dataset.image_size is None
    cfg = _cfg(
        synthetic_root,
        "data=nuscenes",
        "data.dataset.version=v1.0-synthetic",
        "data.dataset.split=val",
        "data.dataset.cameras=[CAM_FRONT,CAM_BACK]",
        "data.dataset.image_size=[96,54]",
        "planner=constant_velocity",
        "limit=3",
    )
    summary = evaluate(cfg, tmp_path / "run")
    recorded = json.loads((tmp_path / "run" / "run.json").read_text())["data"]
    assert recorded["cameras"] == ["CAM_FRONT", "CAM_BACK"] and recorded["image_size"] == [96, 54]
    assert summary["num_samples"] == 3


def test_a_run_folder_takes_one_process_at_a_time(synthetic_root: Path, tmp_path: Path) -> None:
    """A second process evaluating into a folder (a sweep started twice, a resume while the run
    still runs) appended its records among the first one's; it is refused in one line now."""
    import os

    from vla_autoprune.run_files import run_lock

    cfg = _cfg(synthetic_root, "planner=constant_velocity", "limit=3")
    run = tmp_path / "run"
    with run_lock(run), pytest.raises(ConfigError) as err:  # another evaluation holds the folder
        evaluate(cfg, run)
    assert str(err.value) == (
        f"{run} is being evaluated by another process (pid {os.getpid()}); wait for it to finish, "
        "or give this run another hydra.run.dir / hydra.sweep.dir"
    )
    assert not (run / RECORDS_FILE).exists()
    first = evaluate(cfg, run)  # the lock goes with its holder
    assert len(read_records(run / RECORDS_FILE)) == first["num_samples"] > 0
    assert evaluate(cfg, run)["l2"] == first["l2"]  # and an evaluation's own lock with it (a resume)


def test_a_file_system_without_locks_runs_unguarded_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """flock fails with ENOLCK on some network mounts: the run must still run."""
    import errno
    import fcntl

    from vla_autoprune.run_files import run_lock

    def no_locks(*args: Any) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    ran = []
    with caplog.at_level("WARNING"), run_lock(tmp_path):
        ran.append(True)
    assert ran and "nothing stops a second run writing here" in caplog.text


def test_missing_dataroot_fails_before_any_work(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path / "nowhere", "planner=constant_velocity", "data=nuscenes")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        evaluate(cfg, tmp_path / "out")
    assert not (tmp_path / "out" / RECORDS_FILE).exists()


def test_a_sweep_job_logs_one_line_not_a_table() -> None:
    from vla_autoprune.pipeline.app import one_line

    horizons = {"1s": 0.25, "2s": 0.75, "3s": 1.5}
    summary = {
        "planner": "vla[grey]",
        "pruner": "autoprune",
        "pruner_label": "autoprune",
        "budget": 49,
        "num_samples": 12,
        "l2": {"stp3": horizons, "uniad": horizons},
        "collision": {conv: {"1s": 0.0, "2s": 0.0, "3s": 0.125} for conv in ("stp3", "uniad", "box")},
    }
    assert one_line(summary) == "vla[grey] autoprune @ 49: L2@3s 1.500 m, Col@3s 12.5 % (stp3), 12 samples"
    unplanned = {k: v for k, v in summary.items() if k not in ("l2", "collision")} | {"budget": None}
    assert one_line(unplanned) == "vla[grey] autoprune: no planned sample with a full 3 s future, 12 samples"


def test_negative_workers_fail_before_any_work(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path / "nowhere", "planner=constant_velocity", "data=nuscenes", "num_workers=-1")
    with pytest.raises(ConfigError, match=r"num_workers=-1 must be 0 \(load in this process\) or a positive"):
        evaluate(cfg, tmp_path / "out")


@pytest.mark.parametrize(
    ("pruner", "overrides", "said"),
    [
        (
            "fastv_faithful",
            ["budget=48"],
            "budget=48 is ignored: fastv[faithful] prunes by its own rule; pruner=fastv",
        ),
        ("none", ["pruner=none", "budget=10"], "budget=10 is ignored: pruner=none keeps every visual token"),
        ("fastv", ["budget=64"], None),  # budget-matched: the budget is used
        ("fastv_faithful", [], None),  # the config's default budget, not given: nothing to say
    ],
)
def test_a_budget_the_pruner_does_not_take_is_said_not_ignored(
    pruner: str, overrides: list[str], said: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    from vla_autoprune.pipeline.app import build, warn_unused_budget

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("evaluate", overrides=[f"pruner={pruner}"])
    planner = build(cfg.planner)
    with caplog.at_level("WARNING"):
        warn_unused_budget(planner, overrides)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    if said is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and warnings[0].startswith(said)


@pytest.mark.parametrize("planner", ["constant_velocity", "ground_truth"])
def test_a_model_free_planner_runs_as_pruner_none_and_says_a_pruner_given_is_ignored(
    planner: str, caplog: pytest.LogCaptureFixture
) -> None:
    from vla_autoprune.pipeline.app import build, warn_unused_budget

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("evaluate", overrides=[f"planner={planner}"], return_hydra_config=True)
        # the run folder is named by this choice (hydra.run.dir): not the default `autoprune`
        assert cfg.hydra.runtime.choices.pruner == "none" and cfg.pruner._target_.endswith("NoPruner")
        given = compose(
            "evaluate", overrides=[f"planner={planner}", "pruner=fastv"], return_hydra_config=True
        )
        assert given.hydra.runtime.choices.pruner == "fastv"  # the command line still wins ...
    with caplog.at_level("WARNING"):
        warn_unused_budget(build(cfg.planner), [f"planner={planner}", "pruner=fastv"])
        warn_unused_budget(build(cfg.planner), [f"planner={planner}", "pruner=none"])
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [f"pruner=fastv is ignored: planner={planner} prunes nothing"]  # ... and is told


@pytest.mark.parametrize(
    "path", sorted(p for p in (CONF / "pruner").glob("*.yaml") if p.stem != "none"), ids=lambda p: p.stem
)
def test_position_ids_are_overridable_without_a_plus(path: Path) -> None:
    """README: `position_ids: original | contiguous` overrides; Hydra refuses a key the yaml lacks
    (``none`` drops nothing, so it has no ids to choose)."""
    import inspect

    from hydra.utils import get_class

    node = OmegaConf.load(path)
    if "position_ids" in inspect.signature(get_class(node._target_).__init__).parameters:
        assert "position_ids" in node, f"{path.name}: `pruner.position_ids=...` would need a +"
