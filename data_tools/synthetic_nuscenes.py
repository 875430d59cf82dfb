"""Generate a synthetic driving dataset in the real nuScenes v1.0 on-disk format.

Each scene is a procedural road (straight or bending left/right, 2-3 lanes) with traffic, pedestrians
and an ego that follows its lane and the vehicle ahead (see :mod:`data_tools.synthetic.world`). The
output loads with the unmodified devkit::

    NuScenes(version="v1.0-synthetic", dataroot=DIR)
    NuScenesMap(dataroot=DIR, map_name=<log location>)

Layout: ``DIR/<version>/*.json`` (the 13 schema tables and ``splits.json``), ``DIR/samples/<CHANNEL>/``
(six camera JPEGs and a ``LIDAR_TOP`` ``.pcd.bin`` per keyframe), ``DIR/maps/<token>.png`` (a small
placeholder semantic-prior mask: the vector map below is the map of record) and
``DIR/maps/expansion/<location>.json`` (map expansion v1.3). The tables are written last, into a
temporary folder renamed into place, so an interrupted run never looks complete.

CLI::

    python -m data_tools.synthetic_nuscenes --dataroot DIR [--scenes N] [--samples-per-scene M]
        [--image-size WxH] [--seed S] [--overwrite]
"""

from __future__ import annotations

import argparse
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from data_tools.synthetic.cameras import camera_rig, lidar_sensor
from data_tools.synthetic.map_expansion import MapBuilder
from data_tools.synthetic.scenario import ScenePlan, canvas_size, plan_scene
from data_tools.synthetic.scene_writer import SceneCounts, SensorSetup, write_scene
from data_tools.synthetic.tables import NuScenesTables, write_json
from data_tools.synthetic.world import simulate
from vla_autoprune.data.schema import CATEGORIES

logger = logging.getLogger(__name__)

DEFAULT_VERSION = "v1.0-synthetic"
SPLITS_FILE = "splits.json"
#: Smallest accepted image side (pixels); below this the agents vanish into a few pixels.
MIN_IMAGE_SIDE = 16
#: Side (pixels) of the placeholder semantic-prior PNG each map record points to.
MAP_MASK_PX = 16
#: RNG stream id for the train/val split (scene content uses streams [seed, scene_index]).
SPLIT_STREAM = 2**31 - 1


class GeneratorArgumentError(ValueError):
    """An argument of :func:`generate` is out of range."""


class DatarootNotEmptyError(GeneratorArgumentError):
    """The dataroot holds files and ``overwrite`` was not given."""


@dataclass(frozen=True)
class _Args:
    scenes: int
    samples_per_scene: int
    image_size: tuple[int, int]
    val_fraction: float


def generate(
    dataroot: str | Path,
    *,
    scenes: int = 8,
    samples_per_scene: int = 16,
    image_size: tuple[int, int] = (1600, 900),
    seed: int = 0,
    overwrite: bool = False,
    version: str = DEFAULT_VERSION,
    val_fraction: float = 0.25,
) -> Path:
    """Write a synthetic nuScenes-format dataset into ``dataroot`` and return it.

    :param dataroot: output folder; must be empty or missing unless ``overwrite``.
    :param scenes: number of scenes (>= 1).
    :param samples_per_scene: keyframes per scene (>= 2), 2 Hz.
    :param image_size: camera image size ``(W, H)`` in pixels; intrinsics scale with it.
    :param seed: seeds scene content and tokens; the same arguments give byte-identical tables.
    :param overwrite: replace this generator's outputs (``samples/``, ``maps/``, ``<version>/``).
    :param version: name of the table folder (``NuScenes(version=...)``).
    :param val_fraction: share of scenes listed under ``val`` in ``splits.json`` (0 < f < 1).
    :raises GeneratorArgumentError: bad arguments; ``DatarootNotEmptyError`` for a non-empty folder.
    """
    args = _validate(scenes, samples_per_scene, image_size, val_fraction, version)
    root = Path(dataroot)
    _prepare_dataroot(root, version, overwrite)
    rig = SensorSetup(camera_rig(args.image_size), lidar_sensor())
    for sensor in rig.all:
        (root / "samples" / sensor.channel).mkdir(parents=True, exist_ok=True)
    tables = NuScenesTables(seed, CATEGORIES, rig.all)
    plans = [plan_scene(seed, i, args.samples_per_scene) for i in range(args.scenes)]
    logs: dict[str, list[str]] = {}
    total = SceneCounts()
    for plan in tqdm(plans, desc="scenes", unit="scene", disable=None):
        log_token, counts = write_scene(root, tables, simulate(plan), rig, seed)
        logs.setdefault(plan.location, []).append(log_token)
        total.samples += counts.samples
        total.annotations += counts.annotations
        total.images += counts.images
    _write_maps(root, tables, plans, logs)
    _write_tables(root, version, tables, split_scenes([p.name for p in plans], args.val_fraction, seed))
    size_mb = sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) / 2**20
    logger.info(
        "Wrote %d scenes, %d samples, %d annotations, %d images (%.1f MiB) to %s",
        len(plans), total.samples, total.annotations, total.images, size_mb, root,
    )  # fmt: skip
    return root


def split_scenes(names: list[str], val_fraction: float, seed: int) -> dict[str, list[str]]:
    """``{"train": [...], "val": [...]}``: about ``val_fraction`` of the scenes in val, chosen with
    the seed, and at least one scene in each split when there are two or more scenes."""
    count = len(names)
    n_val = 0 if count < 2 else min(count - 1, max(1, round(val_fraction * count)))
    rng = np.random.default_rng([seed, SPLIT_STREAM])
    val = set(rng.choice(count, size=n_val, replace=False).tolist())
    return {
        "train": [n for i, n in enumerate(names) if i not in val],
        "val": [n for i, n in enumerate(names) if i in val],
    }


def _validate(
    scenes: int, samples: int, image_size: tuple[int, int], val_fraction: float, version: str
) -> _Args:
    if int(scenes) < 1:
        raise GeneratorArgumentError(f"scenes must be >= 1, got {scenes}; pass --scenes 1 or more")
    if int(samples) < 2:
        raise GeneratorArgumentError(
            f"samples_per_scene must be >= 2, got {samples}; pass --samples-per-scene 2 or more"
        )
    if len(image_size) != 2 or min(int(v) for v in image_size) < MIN_IMAGE_SIDE:
        raise GeneratorArgumentError(
            f"image_size must be (W, H) with both >= {MIN_IMAGE_SIDE}, got {image_size}; "
            "pass e.g. --image-size 1600x900"
        )
    if not 0.0 < float(val_fraction) < 1.0:
        raise GeneratorArgumentError(f"val_fraction must be in (0, 1), got {val_fraction}; try 0.25")
    if not version or Path(version).name != version:
        raise GeneratorArgumentError(
            f"version must be a plain folder name, got {version!r}; try {DEFAULT_VERSION}"
        )
    return _Args(int(scenes), int(samples), (int(image_size[0]), int(image_size[1])), float(val_fraction))


def _prepare_dataroot(root: Path, version: str, overwrite: bool) -> None:
    """Make ``root`` ready: refuse a non-empty folder unless ``overwrite``, then drop our old outputs."""
    if root.exists() and not root.is_dir():
        raise GeneratorArgumentError(f"dataroot {root} is a file; pass a folder path")
    if root.is_dir() and any(root.iterdir()):
        if not overwrite:
            raise DatarootNotEmptyError(
                f"dataroot {root} is not empty; pass --overwrite (overwrite=True) or an empty folder"
            )
        # Only our own outputs go: the tables first, so a crash from here on never looks complete.
        for name in (version, _partial_name(version), "samples", "maps"):
            if (root / name).exists():
                shutil.rmtree(root / name)
    root.mkdir(parents=True, exist_ok=True)


def _partial_name(version: str) -> str:
    return f".{version}.partial"


def _write_maps(
    root: Path, tables: NuScenesTables, plans: list[ScenePlan], logs: dict[str, list[str]]
) -> None:
    """Map records with placeholder masks, and one map-expansion JSON per location."""
    (root / "maps" / "expansion").mkdir(parents=True, exist_ok=True)
    for location in sorted(logs):
        mask_file = tables.add_map(location, logs[location])
        if not cv2.imwrite(str(root / mask_file), np.zeros((MAP_MASK_PX, MAP_MASK_PX), dtype=np.uint8)):
            raise OSError(f"could not write the map mask {root / mask_file}")
        builder = MapBuilder(tables.token, location)
        here = [p for p in plans if p.location == location]
        for plan in here:
            builder.add_road(plan.name, plan.road)
        canvas = canvas_size(len(here), plans[0].num_samples)
        write_json(root / "maps" / "expansion" / f"{location}.json", builder.to_json(canvas))


def _write_tables(root: Path, version: str, tables: NuScenesTables, splits: dict[str, list[str]]) -> None:
    """Write the tables and splits into a hidden folder, then rename it to ``<version>``."""
    partial = root / _partial_name(version)
    if partial.exists():
        shutil.rmtree(partial)
    tables.write(partial)
    write_json(partial / SPLITS_FILE, splits)
    partial.rename(root / version)


def _image_size(text: str) -> tuple[int, int]:
    """argparse type for ``WxH``."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"image size must look like 1600x900, got {text!r}") from None
    return width, height


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m data_tools.synthetic_nuscenes",
        description="Generate a synthetic dataset in the nuScenes v1.0 format.",
    )
    parser.add_argument("--dataroot", required=True, type=Path, help="output folder")
    parser.add_argument("--scenes", type=int, default=8)
    parser.add_argument("--samples-per-scene", type=int, default=16)
    parser.add_argument("--image-size", type=_image_size, default=(1600, 900), help="WxH, default 1600x900")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace outputs in a non-empty dataroot")
    parser.add_argument("--version", default=DEFAULT_VERSION, help="table folder name")
    parser.add_argument("--val-fraction", type=float, default=0.25)
    return parser


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the process exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        generate(
            args.dataroot,
            scenes=args.scenes,
            samples_per_scene=args.samples_per_scene,
            image_size=args.image_size,
            seed=args.seed,
            overwrite=args.overwrite,
            version=args.version,
            val_fraction=args.val_fraction,
        )
    except GeneratorArgumentError as err:
        logger.error("%s", err)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
