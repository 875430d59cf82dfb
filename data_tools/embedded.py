"""The embedded default dataset: a synthetic nuScenes-format world, generated once and cached.

The Hydra config ``conf/data/synthetic.yaml`` targets :func:`synthetic_dataset`, so the library
(``vla_autoprune``) never imports its tools: the generator is wired in by configuration. This
module decides where the set lives and makes concurrent first use safe (several Hydra multirun jobs
may ask for the same set at once): each job generates into a private temporary folder and renames
it into place atomically; a job that loses the race discards its copy.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from data_tools.synthetic.scenario import WORLD_VERSION
from data_tools.synthetic_nuscenes import DEFAULT_VERSION, generate, scene_counts
from vla_autoprune.data.nuscenes_dataset import NuScenesDrivingDataset
from vla_autoprune.data.schema import CAMERAS

logger = logging.getLogger(__name__)

SYNTHETIC_VERSION = DEFAULT_VERSION


def default_cache_dir() -> Path:
    """Root for generated datasets: ``$VLA_AUTOPRUNE_CACHE`` or ``~/.cache/vla-autoprune``."""
    env = os.environ.get("VLA_AUTOPRUNE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "vla-autoprune"


def synthetic_dataroot(
    scenes: int | Mapping[str, int], samples_per_scene: int, image_size: tuple[int, int], seed: int
) -> Path:
    """Cache folder for one set of generation arguments (different arguments never collide)."""
    w, h = image_size
    counts = "-".join(f"{split}{n}" for split, n in scene_counts(scenes).items())
    name = f"{WORLD_VERSION}-seed{seed}-{counts}-{samples_per_scene}kf-{w}x{h}"
    return default_cache_dir() / "synthetic" / name


def ensure_synthetic(
    dataroot: str | Path | None = None,
    *,
    scenes: int | Mapping[str, int] = 8,
    samples_per_scene: int = 16,
    image_size: Sequence[int] = (1600, 900),
    seed: int = 0,
) -> Path:
    """Return a dataroot holding the synthetic set, generating it first if it is not there yet.

    Args:
        dataroot: where the dataset lives; None picks :func:`synthetic_dataroot` in the cache.
        scenes, samples_per_scene, image_size, seed: generator arguments (image_size is (W, H));
            see :func:`data_tools.synthetic_nuscenes.generate`.
    """
    size = (int(image_size[0]), int(image_size[1]))
    counts = scene_counts(scenes)
    root = Path(dataroot) if dataroot else synthetic_dataroot(counts, samples_per_scene, size, seed)
    if (root / SYNTHETIC_VERSION / "sample.json").is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        logger.info("Generating the synthetic nuScenes set into %s (first use only)", root)
        generate(
            tmp,
            scenes=counts,
            samples_per_scene=samples_per_scene,
            image_size=size,
            seed=seed,
            overwrite=True,
        )
        try:
            tmp.rename(root)
        except OSError:
            if not (root / SYNTHETIC_VERSION / "sample.json").is_file():
                raise
            logger.info("Another job generated %s first; using it", root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def synthetic_dataset(
    split: str = "val",
    *,
    dataroot: str | Path | None = None,
    scenes: int | Mapping[str, int] = 8,
    samples_per_scene: int = 16,
    image_size: Sequence[int] = (1600, 900),
    seed: int = 0,
    cameras: Sequence[str] = CAMERAS,
    resize: Sequence[int] | None = None,
    full_future_only: bool = False,
) -> NuScenesDrivingDataset:
    """The synthetic nuScenes-format split as a :class:`NuScenesDrivingDataset` (generated on first use).

    Args:
        split: ``train``, ``val`` or ``test`` (the synthetic set's own, disjoint scene streams).
        scenes: scene count per split (``{"val": 32}``), or a total split into train/val.
        resize: optional (W, H) the dataset decodes images at (JPEG draft decoding + resize).
        full_future_only: keep only samples with a full 3 s future in their scene.
    """
    root = ensure_synthetic(
        dataroot, scenes=scenes, samples_per_scene=samples_per_scene, image_size=image_size, seed=seed
    )
    return NuScenesDrivingDataset(
        root,
        version=SYNTHETIC_VERSION,
        split=split,
        cameras=tuple(cameras),
        image_size=(int(resize[0]), int(resize[1])) if resize else None,
        full_future_only=full_future_only,
    )
