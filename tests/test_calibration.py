"""AutoPrune's MI -> slope map calibrated per model (``pruning_calibration.json``).

The paper's k0 = 0.4, gamma = 0.2 clamp every slope of the bundled models at 0 (their MI is 3-6,
summed over heads): AutoPrune's curve was the same flat curve for every scene. A calibration fits
k0 and gamma to the model's MI on training scenes; the main job hands it to AutoPrune.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from conftest import evaluate_config

from data_tools import calibrate_autoprune
from data_tools.synthetic_nuscenes import generate
from data_tools.train_tiny_vla import TrainArgs, calibrate_trained, load_split
from vla_autoprune.data import CAMERAS
from vla_autoprune.errors import ConfigError, ModelLoadError
from vla_autoprune.models import BUNDLED_MODELS, load
from vla_autoprune.models.loading import model_argument, resolve_model_path
from vla_autoprune.pipeline.app import adopt_model_calibration, build, run_meta
from vla_autoprune.pruning import AutoPrunePruner, run_pruned
from vla_autoprune.pruning import autoprune_math as ap
from vla_autoprune.pruning.calibration import (
    CALIBRATION_FILE,
    calibrate_pruner,
    read_calibration,
    write_calibration,
)

# --------------------------------------------------------------------------- the fit


def test_calibrate_slope_hand_worked() -> None:
    # MI 1..5, quantiles 0 and 1: gamma = 0.4 / (5 - 1) = 0.1, k0 = 0.1 * 5 = 0.5.
    k0, gamma = ap.calibrate_slope(torch.tensor([3.0, 1.0, 5.0, 2.0, 4.0]), 0.4, (0.0, 1.0))
    assert k0 == pytest.approx(0.5) and gamma == pytest.approx(0.1)
    assert ap.slope(torch.tensor([1.0, 3.0, 5.0, 6.0]), k0, gamma).tolist() == pytest.approx(
        [0.4, 0.2, 0.0, 0.0]
    )
    # 0..100: the 5th and 95th percentiles are 5 and 95, so gamma = 0.4 / 90 and k(5) = 0.4, k(95) = 0.
    k0, gamma = ap.calibrate_slope(torch.arange(101.0))
    assert gamma == pytest.approx(0.4 / 90) and k0 == pytest.approx(0.4 * 95 / 90)


@pytest.mark.parametrize(
    ("mi", "quantiles", "match"),
    [
        (torch.full((10,), 2.5), (0.05, 0.95), "does not vary"),
        (torch.tensor([1.0]), (0.05, 0.95), "at least 2 samples"),
        (torch.arange(5.0), (0.9, 0.1), "low < high"),
    ],
)
def test_calibrate_slope_refuses_what_it_cannot_fit(
    mi: torch.Tensor, quantiles: tuple[float, float], match: str
) -> None:
    with pytest.raises(ap.ScheduleError, match=match):
        ap.calibrate_slope(mi, 0.4, quantiles)


# --------------------------------------------------------------------------- the pruner and the file

ENTRY = {"head_reduce": "sum", "k0": 1.2, "gamma": 0.21}


def test_autoprune_adopts_a_calibration_only_where_nothing_is_set() -> None:
    pruner = AutoPrunePruner(budget=96)
    assert pruner.slope_constants() == (ap.DEFAULT_K0, ap.DEFAULT_GAMMA)  # nothing given: the paper's
    pruner.calibrate(ENTRY, model="m")
    assert (pruner.k0, pruner.gamma) == (1.2, 0.21) and pruner.slope_constants() == (1.2, 0.21)
    pinned = AutoPrunePruner(budget=96, k0=0.4, gamma=0.2)
    pinned.calibrate(ENTRY, model="m")
    assert pinned.slope_constants() == (0.4, 0.2)
    half = AutoPrunePruner(budget=96, gamma=0.5)  # one constant set: the other is the paper's
    half.calibrate(ENTRY, model="m")
    assert half.slope_constants() == (ap.DEFAULT_K0, 0.5)
    none = AutoPrunePruner(budget=96)
    none.calibrate(None, model="m")
    assert none.slope_constants() == (ap.DEFAULT_K0, ap.DEFAULT_GAMMA)


def test_a_calibration_for_another_head_reduction_does_not_apply(caplog: pytest.LogCaptureFixture) -> None:
    pruner = AutoPrunePruner(budget=96, head_reduce="mean")
    with caplog.at_level(logging.WARNING):
        pruner.calibrate(ENTRY, model="m")
    assert pruner.slope_constants() == (ap.DEFAULT_K0, ap.DEFAULT_GAMMA)
    assert "head_reduce=sum" in caplog.text and "paper" in caplog.text


@pytest.mark.parametrize("entry", [{"k0": 1.0}, {"head_reduce": "sum", "k0": "x", "gamma": 0.1}])
def test_a_malformed_entry_is_a_one_line_error(entry: dict) -> None:
    with pytest.raises(ConfigError, match="calibrate_autoprune") as err:
        AutoPrunePruner(budget=96).calibrate(entry, model="mymodel")
    assert "mymodel" in str(err.value) and "\n" not in str(err.value)


def test_calibration_file_round_trip_and_errors(tmp_path: Path) -> None:
    assert read_calibration(tmp_path) == {}
    write_calibration(tmp_path, "other", {"x": 1})
    path = write_calibration(tmp_path, "autoprune", ENTRY)  # other pruners' entries stay
    assert path == tmp_path / CALIBRATION_FILE
    assert read_calibration(tmp_path) == {"other": {"x": 1}, "autoprune": ENTRY}
    pruner = AutoPrunePruner(budget=96)
    calibrate_pruner(pruner, tmp_path)
    assert pruner.slope_constants() == (1.2, 0.21)
    path.write_text("{not json")
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        read_calibration(tmp_path)
    path.write_text(json.dumps({"autoprune": 3}))
    with pytest.raises(ModelLoadError, match="pruner names to objects"):
        read_calibration(tmp_path)


# --------------------------------------------------------------------------- the bundled models


@pytest.mark.parametrize("name", BUNDLED_MODELS)
def test_bundled_models_ship_a_calibration_that_spans_the_slopes(name: str) -> None:
    entry = read_calibration(name)["autoprune"]
    assert entry["head_reduce"] == "sum" and entry["data"]["split"] == "train"  # never val scenes
    q = entry["mi_quantiles"]
    k = ap.slope(
        torch.tensor([q["0.05"], q["0.5"], q["0.95"]], dtype=torch.float64), entry["k0"], entry["gamma"]
    )
    assert k[0] == pytest.approx(entry["k_max"], abs=1e-4) and k[2] == pytest.approx(0.0, abs=1e-4)
    assert 0.0 < float(k[1]) < entry["k_max"]
    # under the paper's constants the same MI gives k = 0 throughout: the reason for calibrating
    assert ap.slope(torch.tensor([q["0.05"]]), ap.DEFAULT_K0, ap.DEFAULT_GAMMA).item() == 0.0


def test_the_main_job_hands_autoprune_the_models_calibration(synthetic_root: Path) -> None:
    cfg = evaluate_config(synthetic_root)  # default pruner: autoprune, default model: tiny-drive-vla
    planner = build(cfg.planner)
    adopt_model_calibration(cfg, planner)
    entry = read_calibration("tiny-drive-vla")["autoprune"]
    meta = run_meta(cfg, planner, torch.device("cpu"), synthetic_root)
    assert (meta["pruner_config"]["k0"], meta["pruner_config"]["gamma"]) == (entry["k0"], entry["gamma"])
    pinned = build(evaluate_config(synthetic_root, "pruner.k0=0.4", "pruner.gamma=0.2").planner)
    adopt_model_calibration(cfg, pinned)
    assert pinned.pruner.slope_constants() == (0.4, 0.2)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def train_split(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Six training scenes (one per family) x 4 keyframes, as the training script caches them."""
    root = tmp_path_factory.mktemp("train6")
    generate(root, scenes={"train": 6}, samples_per_scene=4, image_size=(192, 192), seed=0)
    return load_split(root, "train", load("tiny-drive-vla"))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def train_batch(train_split: dict) -> dict:
    return {**{k: train_split[k] for k in ("images", "command", "ego_state")}, "cameras": CAMERAS}


def test_training_calibrates_autoprune_on_its_training_samples(train_split: dict, train_batch: dict) -> None:
    model = load("tiny-drive-vla")
    entry = calibrate_trained(model, train_split, TrainArgs(out=Path("out")))  # type: ignore[arg-type]
    assert entry is not None and entry["samples"] == 24 and entry["data"]["split"] == "train"
    mi, _ = calibrate_autoprune.measure_mi(model, [train_batch], 96, "sum")  # the command's measurement
    assert entry["budget"] == 96 and entry["k0"] == round(ap.calibrate_slope(mi)[0], 6)


def test_calibrated_autoprune_adapts_its_slope_to_the_scene(train_batch: dict) -> None:
    """Six training scenes, one of each family: the paper's constants give every sample k = 0 (one
    flat curve); the calibration gives slopes that differ from sample to sample, and so schedules."""
    model = load("tiny-drive-vla")
    _, paper = run_pruned(model, train_batch, AutoPrunePruner(budget=96, k0=0.4, gamma=0.2))  # type: ignore[arg-type]
    pruner = AutoPrunePruner(budget=96)
    calibrate_pruner(pruner, "tiny-drive-vla")
    _, calibrated = run_pruned(model, train_batch, pruner)  # type: ignore[arg-type]
    assert torch.equal(paper.stats["mi"], calibrated.stats["mi"])  # MI does not depend on the map
    assert bool((paper.stats["k"] == 0).all())
    k = calibrated.stats["k"]
    assert bool((k > 0).any()) and float(k.max() - k.min()) > 0.05
    assert calibrated.schedule is not None and len({tuple(r) for r in calibrated.schedule.tolist()}) > 1


def test_calibration_command_writes_the_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLA_AUTOPRUNE_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "model"
    shutil.copytree(resolve_model_path("tiny-drive-vla"), folder)
    (folder / CALIBRATION_FILE).unlink()
    entry = calibrate_autoprune.main(
        ["--model", str(folder), "--scenes", "2", "--samples-per-scene", "4", "--budget", "96", "--write"]
    )
    written = read_calibration(folder)["autoprune"]
    assert written == json.loads(json.dumps(entry))
    assert written["samples"] == 8 and written["budget"] == 96 and written["data"]["scenes"] == 2
    assert written["command"].startswith("python -m data_tools.calibrate_autoprune --model")


def test_recorded_commands_name_a_bundled_model_by_its_name(tmp_path: Path) -> None:
    """A calibration written into a bundled model's folder records a command that works from any
    checkout (the bundled name); any other folder is named as given."""
    for name in BUNDLED_MODELS:
        assert model_argument(resolve_model_path(name)) == name
        assert model_argument(str(resolve_model_path(name)) + "/") == name
    assert model_argument(tmp_path) == str(tmp_path)


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--batch-size", "0"], "error: --batch-size must be at least 1"),
        (["--threads", "-1"], "error: --threads must be at least 1"),
        (["--scenes", "0"], "error: --scenes must be at least 1"),
        (["--k-max", "-1"], "error: --k-max must be > 0"),
        (["--budget", "-5"], "error: --budget must be a positive number"),
        (["--head-reduce", "max"], "error: argument --head-reduce"),
        (["--model", "no-such-model"], "error: unknown model 'no-such-model'"),
    ],
)
def test_calibration_command_answers_bad_input_in_one_line(
    argv: list[str], named: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR):
        try:
            status = calibrate_autoprune.cli(argv)
        except SystemExit as exit_info:  # argparse's own checks
            status = exit_info.code
    assert status == 2
    assert len(caplog.records) == 1 and caplog.records[0].message.startswith(named)


def test_calibration_command_ctrl_c_is_one_line(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(_argv: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(calibrate_autoprune, "main", interrupted)
    with caplog.at_level(logging.ERROR):
        assert calibrate_autoprune.cli([]) == 130
    assert len(caplog.records) == 1 and caplog.records[0].message.startswith("interrupted: ")
