"""An explicit dataroot for the embedded synthetic set: never generated into, and checked against the
arguments it was requested with (its ``generator.json``); only the cache is generated on first use."""

from __future__ import annotations

import hashlib
import json
import logging
import shlex
import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from data_tools.embedded import (
    SYNTHETIC_VERSION,
    SyntheticSetMismatchError,
    SyntheticSetNotFoundError,
    ensure_synthetic,
    synthetic_dataset,
)
from data_tools.synthetic.scenario import WORLD_VERSION
from data_tools.synthetic_nuscenes import MANIFEST_FILE, generate, main, read_manifest
from data_tools.train_tiny_vla import main as train_main
from vla_autoprune.data import NuScenesDataError
from vla_autoprune.errors import ConfigError, DataNotFoundError

CONF = Path(__file__).resolve().parents[1] / "conf"
#: Generation arguments of the small set these tests use (about 0.2 s to generate).
ARGS = {"scenes": {"val": 1}, "samples_per_scene": 2, "image_size": (32, 18), "seed": 5}


@pytest.fixture(scope="module")
def small_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic set generated with ``ARGS``; read-only (tests that edit it use a copy)."""
    return generate(tmp_path_factory.mktemp("small") / "set", **ARGS)  # type: ignore[arg-type]


def _tree(root: Path) -> dict[str, str]:
    """relative path -> sha1 of every file under ``root``."""
    return {
        str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }


def _one_line(err: BaseException, *fragments: str) -> str:
    message = str(err)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def _suggested_command(message: str) -> list[str]:
    """The ``python -m data_tools.synthetic_nuscenes ...`` arguments an error suggests."""
    start = message.index("python -m data_tools.synthetic_nuscenes ")
    argv = shlex.split(message[start : message.index(")", start)])
    assert argv[:3] == ["python", "-m", "data_tools.synthetic_nuscenes"]
    return argv[3:]


def test_generator_records_its_arguments(small_root: Path) -> None:
    assert read_manifest(small_root) == {
        "world_version": WORLD_VERSION,
        "seed": 5,
        "scenes": {"val": 1},
        "samples_per_scene": 2,
        "image_size": [32, 18],
    }
    assert (small_root / SYNTHETIC_VERSION / MANIFEST_FILE).is_file()


def test_missing_dataroot_is_refused_not_generated_and_the_fix_works(tmp_path: Path) -> None:
    missing = tmp_path / "typo" / "root"
    with pytest.raises(SyntheticSetNotFoundError) as info:
        ensure_synthetic(missing, **ARGS)  # type: ignore[arg-type]
    message = _one_line(info.value, str(missing), "does not exist", "data.dataset.dataroot unset")
    assert isinstance(info.value, DataNotFoundError) and isinstance(info.value, NuScenesDataError)
    assert not (tmp_path / "typo").exists()  # nothing created, nothing generated
    # The suggested command generates exactly the requested set, which is then accepted.
    assert main(_suggested_command(message)) == 0
    assert ensure_synthetic(missing, **ARGS) == missing  # type: ignore[arg-type]
    assert (read_manifest(missing) or {}).get("scenes") == {"val": 1}
    assert len(synthetic_dataset("val", dataroot=missing, **ARGS)) == 2  # type: ignore[arg-type]


def test_empty_dataroot_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SyntheticSetNotFoundError) as info:
        ensure_synthetic(tmp_path, **ARGS)  # type: ignore[arg-type]
    _one_line(info.value, str(tmp_path), "is empty", f"--dataroot {tmp_path} ")
    assert not any(tmp_path.iterdir())


def test_non_empty_folder_without_a_set_is_refused_untouched(tmp_path: Path) -> None:
    (tmp_path / "v1.0-mini").mkdir()
    (tmp_path / "v1.0-mini" / "scene.json").write_text("[]")
    (tmp_path / "notes.txt").write_text("user data")
    before = _tree(tmp_path)
    with pytest.raises(SyntheticSetNotFoundError) as info:
        ensure_synthetic(tmp_path, **ARGS)  # type: ignore[arg-type]
    message = _one_line(info.value, str(tmp_path), "not empty", "NEW_DIR")
    assert "Directory not empty" not in message
    assert _tree(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == [
        "notes.txt",
        "v1.0-mini",
    ]


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"seed": 6}, "seed 5 (requested 6)"),
        ({"scenes": {"val": 2}}, "scenes val=1 (requested val=2)"),
        ({"scenes": 2}, "scenes val=1 (requested train=1,val=1)"),
        ({"samples_per_scene": 3}, "samples_per_scene 2 (requested 3)"),
        ({"image_size": (48, 18)}, "image_size 32x18 (requested 48x18)"),
    ],
)
def test_set_from_other_arguments_is_refused(small_root: Path, change: dict, says: str) -> None:
    with pytest.raises(SyntheticSetMismatchError) as info:
        synthetic_dataset("val", dataroot=small_root, **{**ARGS, **change})
    message = _one_line(info.value, str(small_root), says, "--overwrite", "data.dataset.dataroot unset")
    assert isinstance(info.value, ConfigError)
    assert message.count("(requested") == 1  # only what differs is named


def test_a_cli_dataroot_is_named_by_its_flag(small_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    # the training CLI's --dataroot: its errors name the flag, not the Hydra key, and offer no
    # Hydra override (evaluating the folder as it is)
    with pytest.raises(SyntheticSetMismatchError) as info:
        ensure_synthetic(small_root, **{**ARGS, "seed": 9}, setting="--dataroot")  # type: ignore[arg-type]
    message = _one_line(info.value, "--overwrite", "or leave --dataroot unset to use the cached set")
    assert "data.dataset" not in message and "data=nuscenes" not in message
    missing = small_root / "typo"
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exit_info:
        train_main(["--dataroot", str(missing), "--out", str(small_root / "model")])
    assert exit_info.value.code == 2 and not missing.exists() and not (small_root / "model").exists()
    (line,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert line.startswith(f"error: dataroot {missing} does not exist") and "leave --dataroot unset" in line


def test_set_from_another_world_version_is_refused(small_root: Path, tmp_path: Path) -> None:
    root = shutil.copytree(small_root, tmp_path / "set")
    path = root / SYNTHETIC_VERSION / MANIFEST_FILE
    path.write_text(json.dumps({**json.loads(path.read_text()), "world_version": "world1"}))
    with pytest.raises(SyntheticSetMismatchError) as info:
        ensure_synthetic(root, **ARGS)  # type: ignore[arg-type]
    _one_line(info.value, f"world_version world1 (requested {WORLD_VERSION})")


def test_set_without_manifest_is_accepted_with_a_warning(
    small_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = shutil.copytree(small_root, tmp_path / "set")
    (root / SYNTHETIC_VERSION / MANIFEST_FILE).unlink()
    with caplog.at_level(logging.WARNING, logger="data_tools.embedded"):
        assert ensure_synthetic(root, **{**ARGS, "seed": 9}) == root  # type: ignore[arg-type]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert (
        len(warnings) == 1
        and MANIFEST_FILE in warnings[0].getMessage()
        and str(root) in warnings[0].getMessage()
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]  # nothing generated beside it


def test_matching_explicit_dataroot_is_used_as_it_is(
    small_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    before = _tree(small_root)
    with caplog.at_level(logging.INFO, logger="data_tools.embedded"):
        ds = synthetic_dataset("val", dataroot=str(small_root), **ARGS)  # type: ignore[arg-type]
    assert ds.dataroot == small_root and len(ds) == 2
    assert not [r for r in caplog.records if r.levelno >= logging.INFO]  # no generation, no warning
    assert _tree(small_root) == before


def test_default_config_with_a_missing_dataroot_names_the_fix(tmp_path: Path) -> None:
    """What ``evaluate data.dataset.dataroot=/typo`` builds: the same one-line error, nothing created."""
    missing = tmp_path / "nonexistent"
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("evaluate", overrides=[f"data.dataset.dataroot={missing}"])
    with pytest.raises(InstantiationException) as info:
        instantiate(cfg.data.dataset)
    assert isinstance(info.value.__cause__, SyntheticSetNotFoundError)
    _one_line(
        info.value.__cause__, str(missing), "--val-scenes 144 --samples-per-scene 12 --image-size 192x192"
    )
    assert not missing.exists()
