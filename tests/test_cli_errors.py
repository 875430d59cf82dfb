"""Bad input on the command line: one line naming the problem and the fix, before any data or model load."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import synthetic_overrides
from hydra.errors import InstantiationException
from omegaconf import OmegaConf

from vla_autoprune.errors import ConfigError
from vla_autoprune.models.model_folder import resolve_model_path
from vla_autoprune.pipeline.app import build

ROOT = Path(__file__).resolve().parents[1]
ENV = {**{k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}, "OMP_NUM_THREADS": "1"}
#: Log lines that only appear once the dataset or the model is being loaded.
LOADING = ("NuScenesDrivingDataset", "Loading weights", "loading driving_vla")


def _error_line(*args: str, tmp_path: Path, run_dir: Path | None = None) -> str:
    """Run the CLI, expect exit 2, return its single ``error:`` line (and check nothing was loaded).

    ``run_dir``: the run folder to pass (default ``tmp_path/run``); unless it existed before, it must
    not be left behind.
    """
    run_dir = run_dir or tmp_path / "run"
    existed = run_dir.exists()
    proc = subprocess.run(
        [sys.executable, "-m", "vla_autoprune.evaluate", *args, f"hydra.run.dir={run_dir}"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=ENV,
        timeout=300,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert not any(marker in output for marker in LOADING), output[-3000:]
    assert "to resume" not in output  # nothing ran, so there is nothing to resume
    assert run_dir.exists() == existed  # no empty run folder is left behind, nor a user's removed
    (line,) = [line for line in output.splitlines() if "error:" in line]
    return line


def test_a_failed_check_keeps_a_run_folder_the_user_made(tmp_path: Path) -> None:
    """The folder Hydra made for a refused command is removed; a user's own empty one was too."""
    mine = tmp_path / "my-run"
    mine.mkdir()
    assert "budget" in _error_line("budget=abc", tmp_path=tmp_path, run_dir=mine)
    assert mine.is_dir()
    # the parents it made go too (outputs/runs/ of a fresh checkout), not those that were there
    _error_line("budget=abc", tmp_path=tmp_path, run_dir=mine / "outputs" / "runs" / "run")
    assert not (mine / "outputs").exists()


@pytest.mark.parametrize("seed", ["abc", "1.5", "-1"])
def test_a_seed_that_is_not_a_non_negative_integer_is_one_line(seed: str, tmp_path: Path) -> None:
    """seed=abc was a traceback from torch.manual_seed; seed=1.5 ran with the seed truncated."""
    assert "must be a non-negative integer, e.g. seed=0" in _error_line(f"seed={seed}", tmp_path=tmp_path)


@pytest.mark.parametrize(
    ("override", "fix"),
    [
        ("data.dataset.image_size=[0,10]", "set e.g. data.dataset.image_size=[1600,900]"),
        ("data.dataset.samples_per_scene=1", "set data.dataset.samples_per_scene=2 or more"),
        ("data.dataset.scenes.val=0", "got {'val': 0}; set data.dataset.scenes.val=1 or more"),
    ],
)
def test_a_bad_synthetic_set_argument_names_the_config_key(override: str, fix: str, tmp_path: Path) -> None:
    """The generator's errors named its command line flags (--image-size 1600x900) to a Hydra user."""
    assert _error_line(override, tmp_path=tmp_path).endswith(fix)


def test_nuscenes_without_dataroot(tmp_path: Path) -> None:
    line = _error_line("data=nuscenes", tmp_path=tmp_path)
    assert "data.dataset.dataroot" in line and "must be set" in line


def test_non_numeric_budget_names_budget(tmp_path: Path) -> None:
    assert "budget" in _error_line("budget=abc", tmp_path=tmp_path)


def test_unreachable_budget_is_checked_against_the_model_config(tmp_path: Path) -> None:
    line = _error_line("pruner=fastv", "budget=5", tmp_path=tmp_path)
    assert "budget" in line and "384 visual tokens" in line  # 6 cameras x 64 tokens, 8 layers


def test_pruner_blind_on_a_deep_fusion_layer_is_refused_before_loading(tmp_path: Path) -> None:
    # FastV at 49 on 8 layers must rank by layer 0's text rows, which this model's text leaves blind.
    line = _error_line("model=tiny_drive_vla_deep_fusion", "pruner=fastv", "budget=49", tmp_path=tmp_path)
    assert (
        "decoder layer 0" in line and "vision_from_layer=1" in line and "tiny-drive-vla-deep-fusion" in line
    )
    assert "use a budget of at least 96.75" in line  # (2 x 384 + 6 x 1) / 8: K = 2, one token after


@pytest.mark.parametrize("args", [("pruner=bogus",), ("-m", "pruner=fastv,bogus", "budget=64")])
def test_an_unknown_pruner_is_one_line_naming_the_pruners(args: tuple[str, ...], tmp_path: Path) -> None:
    # Hydra's own answer is ~25 lines ending in its config search path, exit 1
    line = _error_line(*args, tmp_path=tmp_path)
    assert "pruner=bogus: there is no pruner config bogus.yaml" in line and "autoprune, dart," in line


def test_build_unwraps_user_errors_only() -> None:
    with pytest.raises(ConfigError, match="device='gpu'"):
        build(OmegaConf.create({"_target_": "vla_autoprune.devices.resolve_device", "name": "gpu"}))
    bug = {
        "_target_": "vla_autoprune.pipeline.loop.shard_indices",
        "num_samples": 4,
        "shard": 9,
        "num_shards": 2,
    }
    with pytest.raises(InstantiationException):  # not a user error: keeps Hydra's wrapper and traceback
        build(OmegaConf.create(bug))


def test_bad_camera_ablation_value_is_one_line_before_loading(tmp_path: Path) -> None:
    line = _error_line("cameras=grey", "cameras.value=300", tmp_path=tmp_path)
    assert "cameras.value=300 must be an integer pixel value in 0..255" in line


def test_a_folder_of_another_family_is_refused_before_the_data_loads(tmp_path: Path) -> None:
    """The Qwen loader on the bundled DrivingVLA folder: refused once the dataset had loaded."""
    folder = resolve_model_path("tiny-drive-vla")
    line = _error_line("model=qwen2_5_vl", f"model.name_or_path={folder}", tmp_path=tmp_path)
    assert line.endswith(
        f"{folder} holds model_type='driving_vla', not 'qwen2_5_vl'; load it with load() (on the command "
        f"line: model=tiny_drive_vla model.name_or_path={folder})"
    )


def test_a_setting_the_models_loader_does_not_take_is_one_line(tmp_path: Path) -> None:
    """load() takes no max_new_tokens: a TypeError traceback once the data had loaded."""
    line = _error_line("+model.max_new_tokens=4", tmp_path=tmp_path)
    assert line.endswith(
        "model.max_new_tokens is not a setting of load (its settings: name_or_path); drop that override"
    )


def test_ctrl_c_says_how_to_resume_in_one_line(synthetic_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = [*synthetic_overrides(synthetic_root), "device=cpu", f"hydra.run.dir={run}"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "vla_autoprune.evaluate", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        env=ENV,
    )
    assert proc.stdout is not None
    seen = []
    # the hint comes once the config and the data passed their checks, before the model loads
    for line in proc.stdout:
        seen.append(line)
        if "to resume after an interruption" in line:
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.communicate(timeout=300)[0]
    output = "".join(seen) + rest
    assert proc.returncode == 130, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    (line,) = [line for line in output.splitlines() if "interrupted:" in line]
    assert line.endswith(f"resume with the same command and hydra.run.dir={run}")


def test_an_output_folder_that_cannot_be_made_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    line = _error_line(tmp_path=tmp_path, run_dir=tmp_path / "afile" / "run")
    assert line.endswith(
        f"cannot write the output folder {tmp_path}/afile/run ({tmp_path}/afile is a file); "
        "choose another with hydra.run.dir=<folder>"
    )


def test_a_setting_the_pruner_does_not_take_is_one_line_naming_those_it_does(tmp_path: Path) -> None:
    # Hydra suggests the + for a key the yaml lacks; the constructor then refuses it
    line = _error_line("+pruner.foo=1", tmp_path=tmp_path)
    assert "pruner.foo is not a setting of AutoPrunePruner (its settings: budget, position_ids," in line
    assert line.endswith("drop that override")


def test_a_refused_resume_leaves_the_folders_hydra_record_alone(synthetic_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    data = [*synthetic_overrides(synthetic_root), "device=cpu", "limit=1", "scores=[open_loop]"]

    def evaluate(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "vla_autoprune.evaluate", *data, *args, f"hydra.run.dir={run}"]
        return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=300)

    first = evaluate("pruner=fastv", "budget=64")
    assert first.returncode == 0, (first.stdout + first.stderr)[-3000:]
    record = {p.name: p.read_text() for p in (run / ".hydra").iterdir()}
    assert set(record) == {"config.yaml", "hydra.yaml", "overrides.yaml"}
    assert "- pruner=fastv" in record["overrides.yaml"] and "budget: 64" in record["config.yaml"]
    assert f"dir: {run}" in record["hydra.yaml"]
    refused = evaluate("pruner=autoprune", "budget=64")
    output = refused.stdout + refused.stderr
    assert refused.returncode == 2 and "holds another run" in output, output[-3000:]
    # the record still describes the run the folder holds, not the refused command
    assert {p.name: p.read_text() for p in (run / ".hydra").iterdir()} == record
