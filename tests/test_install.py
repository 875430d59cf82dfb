"""Packaging: a non-editable install ships conf/ and the sweeper, so the console script runs anywhere."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from conftest import synthetic_overrides

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
#: Top-level folders whose packages the wheel must hold (hydra_plugins is a namespace: no __init__).
PACKAGE_ROOTS = ("vla_autoprune", "planners", "data_tools", "hydra_plugins")


def _tree_packages() -> set[str]:
    """Every folder with an ``__init__.py`` under the package roots, as a dotted name."""
    found = set()
    for top in PACKAGE_ROOTS:
        for init in (ROOT / top).rglob("__init__.py"):
            found.add(".".join(init.parent.relative_to(ROOT).parts))
    return found


def test_pyproject_lists_every_package_and_maps_conf() -> None:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    assert listed - {"vla_autoprune.conf"} == _tree_packages()
    assert setuptools["package-dir"]["vla_autoprune.conf"] == "conf"
    assert "**/*.yaml" in setuptools["package-data"]["vla_autoprune.conf"]


@pytest.mark.slow
@pytest.mark.parametrize("editable", [False, True], ids=["wheel", "editable"])
def test_console_script_runs_from_an_install(synthetic_root: Path, tmp_path: Path, editable: bool) -> None:
    """``pip install .`` (and ``-e .``) into a fresh venv; the console script from another directory."""
    source = tmp_path / "src"  # a copy: building in place would leave build/ and egg-info in the repo
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git", "outputs", "multirun", "build", "dist", "*.egg-info", ".*cache*"
        ),
    )
    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=False)
    python = env_dir / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HYDRA_FULL_ERROR")}
    env["OMP_NUM_THREADS"] = "1"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps"]
        + ["--no-build-isolation", *(["-e"] if editable else []), str(source)],
        check=True,
        env=env,
        timeout=600,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run(
        [
            python,
            "-c",
            "import vla_autoprune, hydra_plugins.vla_autoprune_sweeper as s; print(vla_autoprune.__file__, s.__file__)",
        ],
        capture_output=True,
        text=True,
        cwd=elsewhere,
        env=env,
        check=True,
    )
    assert all(path.startswith(str(source if editable else env_dir)) for path in where.stdout.split()), (
        where.stdout
    )
    script = env_dir / "bin" / "vla-autoprune-evaluate"
    sweep = tmp_path / "sweep"
    # a multirun goes through the project's sweeper (hydra_plugins), which an editable install
    # hides from Hydra's plugin scan
    args = ["-m", "planner=constant_velocity", "data.shard=0,1", "data.num_shards=2", "limit=2"]
    proc = subprocess.run(
        [script, *args, *synthetic_overrides(synthetic_root), "device=cpu", f"hydra.sweep.dir={sweep}"],
        capture_output=True,
        text=True,
        cwd=elsewhere,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert len(list(sweep.rglob("summary.json"))) == 2 and (sweep / "report.md").is_file()
    bad = subprocess.run(
        [script, "data=nuscenes"], capture_output=True, text=True, cwd=elsewhere, env=env, timeout=300
    )
    errors = [line for line in (bad.stdout + bad.stderr).splitlines() if "error:" in line]
    assert bad.returncode == 2 and len(errors) == 1 and "data.dataset.dataroot" in errors[0], bad.stderr[
        -2000:
    ]
