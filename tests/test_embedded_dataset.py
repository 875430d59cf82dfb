"""The embedded default dataset: wired in by the Hydra config, never imported by the library, and
safe when several jobs generate it at once."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from data_tools.embedded import SYNTHETIC_VERSION, ensure_synthetic, synthetic_dataroot
from vla_autoprune.data import NuScenesDrivingDataset

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"scenes": {"val": 1}, "samples_per_scene": 2, "image_size": (32, 32), "seed": 5}


def test_library_never_imports_its_tools() -> None:
    """No module of vla_autoprune imports data_tools (statically), and importing the whole library
    loads no data_tools module."""
    offenders = []
    for path in (ROOT / "vla_autoprune").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "data_tools"]
    assert not offenders
    code = (
        "import sys, pkgutil, importlib, vla_autoprune\n"
        "for m in pkgutil.walk_packages(vla_autoprune.__path__, 'vla_autoprune.'):\n"
        "    importlib.import_module(m.name)\n"
        "print(sorted(n for n in sys.modules if n.split('.')[0] == 'data_tools'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_default_config_generates_and_loads_the_held_out_val_split(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("VLA_AUTOPRUNE_CACHE", str(tmp_path))
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose(
            "evaluate",
            overrides=[
                "data.dataset.scenes.val=2",
                "data.dataset.samples_per_scene=8",
                "data.dataset.image_size=[48,48]",
            ],
        )
    assert cfg.data.dataset._target_ == "data_tools.embedded.synthetic_dataset"
    ds = instantiate(cfg.data.dataset)
    # The default evaluates the samples with a full 3 s future: 2 of each 8-keyframe scene.
    assert isinstance(ds, NuScenesDrivingDataset) and len(ds) == 4 and ds.split == "val"
    assert all(bool(ds[i]["gt_mask"].all()) for i in range(len(ds)))
    assert ds.dataroot == synthetic_dataroot({"val": 2}, 8, (48, 48), 0)
    assert ds.dataroot.parent.parent == tmp_path and ds[0]["images"].shape[-2:] == (48, 48)


def _ensure(cache: str) -> str:
    os.environ["VLA_AUTOPRUNE_CACHE"] = cache
    return str(ensure_synthetic(**SMALL))


def test_concurrent_first_use_yields_one_complete_set(tmp_path: Path) -> None:
    """Two processes racing to generate the same set both get it, complete, and leave no temp folder."""
    with ProcessPoolExecutor(max_workers=2) as pool:
        roots = list(pool.map(_ensure, [str(tmp_path)] * 2))
    assert roots[0] == roots[1]
    root = Path(roots[0])
    assert (root / SYNTHETIC_VERSION / "sample.json").is_file()
    assert [p.name for p in root.parent.iterdir()] == [root.name]  # the loser's copy is gone
    assert len(NuScenesDrivingDataset(root, split="val")) == 2


def test_a_killed_generations_staging_copy_is_removed_by_the_next(tmp_path: Path, monkeypatch) -> None:
    """SIGTERM or SIGKILL skip the generator's clean-up: its staging copy (up to a whole set) stayed
    in the cache for good. The next generation removes copies whose process is gone, not live ones."""
    monkeypatch.setenv("VLA_AUTOPRUNE_CACHE", str(tmp_path))
    root = synthetic_dataroot(SMALL["scenes"], SMALL["samples_per_scene"], SMALL["image_size"], SMALL["seed"])
    root.parent.mkdir(parents=True)
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead = root.parent / f".{root.name}.tmp-{int(gone.stdout)}-abc"
    live = root.parent / f".{root.name}.tmp-{os.getpid()}-def"
    other = (
        root.parent / f".{root.name}x.tmp-{int(gone.stdout)}-ghi"
    )  # another set's: not this one's to judge
    for folder in (dead, live, other):
        (folder / "samples").mkdir(parents=True)
    ensure_synthetic(**SMALL)
    assert sorted(p.name for p in root.parent.iterdir()) == sorted([root.name, live.name, other.name])
