"""The embedded default dataset: a synthetic nuScenes-format world, generated once and cached.

The generator (:mod:`data_tools.synthetic_nuscenes`) writes the real nuScenes on-disk format; this
module only decides where it lives and makes concurrent first use safe (several Hydra multirun jobs
may ask for the same dataset at once): each job generates into a private temporary folder and
renames it into place atomically; a job that loses the race discards its copy.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from vla_autoprune.data.nuscenes_dataset import NuScenesDrivingDataset
from vla_autoprune.data.schema import CAMERAS

logger = logging.getLogger(__name__)

SYNTHETIC_VERSION = "v1.0-synthetic"


def default_cache_dir() -> Path:
    """Root for generated datasets: ``$VLA_AUTOPRUNE_CACHE`` or ``~/.cache/vla-autoprune``."""
    env = os.environ.get("VLA_AUTOPRUNE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "vla-autoprune"


def synthetic_dataroot(scenes: int, samples_per_scene: int, image_size: tuple[int, int], seed: int) -> Path:
    """Cache folder for one set of generation arguments (different arguments never collide)."""
    w, h = image_size
    return default_cache_dir() / "synthetic" / f"seed{seed}-{scenes}x{samples_per_scene}-{w}x{h}"


def ensure_synthetic(
    dataroot: str | Path | None = None,
    *,
    scenes: int = 8,
    samples_per_scene: int = 16,
    image_size: tuple[int, int] = (1600, 900),
    seed: int = 0,
) -> Path:
    """Return a dataroot holding the synthetic set, generating it first if it is not there yet.

    Args:
        dataroot: where the dataset lives; None picks :func:`synthetic_dataroot` in the cache.
        scenes, samples_per_scene, image_size, seed: generator arguments (image_size is (W, H)).
    """
    from data_tools.synthetic_nuscenes import generate  # the generator is only needed on first use

    size = (int(image_size[0]), int(image_size[1]))
    root = Path(dataroot) if dataroot else synthetic_dataroot(scenes, samples_per_scene, size, seed)
    if (root / SYNTHETIC_VERSION / "sample.json").is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        logger.info("Generating the synthetic nuScenes set into %s (first use only)", root)
        generate(
            tmp,
            scenes=scenes,
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
    scenes: int = 8,
    samples_per_scene: int = 16,
    image_size: tuple[int, int] = (1600, 900),
    seed: int = 0,
    cameras: tuple[str, ...] = CAMERAS,
    resize: tuple[int, int] | None = None,
) -> NuScenesDrivingDataset:
    """The synthetic nuScenes-format split as a :class:`NuScenesDrivingDataset` (generated on first use).

    Args:
        split: ``train`` or ``val`` (the synthetic set's own scene lists).
        resize: optional (W, H) the dataset resizes images to when loading.
    """
    root = ensure_synthetic(
        dataroot, scenes=scenes, samples_per_scene=samples_per_scene, image_size=image_size, seed=seed
    )
    return NuScenesDrivingDataset(
        root,
        version=SYNTHETIC_VERSION,
        split=split,
        cameras=tuple(cameras),
        image_size=tuple(resize) if resize else None,  # type: ignore[arg-type]
    )
