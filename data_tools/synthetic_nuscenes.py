"""Generate a synthetic driving dataset in the real nuScenes v1.0 on-disk format.

Each scene is a procedural road (straight or bending left/right, 2-3 lanes) with traffic, pedestrians
and one scenario family (traffic light, crossing pedestrian, braking lead, stopped vehicle, cut-in,
easy; see :mod:`data_tools.synthetic.events`); the ego follows its lane and reacts to what its cameras
show (see :mod:`data_tools.synthetic.world`). Train, val and test scenes come from separate random
streams, so they never share a scene. The output loads with the unmodified devkit::

    NuScenes(version="v1.0-synthetic", dataroot=DIR)
    NuScenesMap(dataroot=DIR, map_name=<log location>)

Layout: ``DIR/<version>/*.json`` (the 13 schema tables, ``splits.json``, ``scenarios.json``: each
sample's scenario family and complexity, and ``generator.json``: the generation arguments, see
:func:`read_manifest`; the devkit ignores both side files), ``DIR/samples/<CHANNEL>/``
(six camera JPEGs and a ``LIDAR_TOP`` ``.pcd.bin`` per keyframe), ``DIR/maps/<token>.png`` (a small
placeholder semantic-prior mask: the vector map below is the map of record) and
``DIR/maps/expansion/<location>.json`` (map expansion v1.3). The tables are written last, into a
temporary folder renamed into place, so an interrupted run never looks complete.

CLI::

    python -m data_tools.synthetic_nuscenes --dataroot DIR [--scenes N | --train-scenes N
        --val-scenes N --test-scenes N] [--samples-per-scene M] [--image-size WxH] [--seed S] [--overwrite]
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from data_tools.synthetic.cameras import camera_rig, lidar_sensor
from data_tools.synthetic.map_expansion import MapBuilder
from data_tools.synthetic.scenario import (
    LOCATIONS,
    SPLIT_IDS,
    WORLD_VERSION,
    ScenePlan,
    canvas_size,
    plan_scene,
)
from data_tools.synthetic.scene_writer import SceneCounts, SensorSetup, write_scene
from data_tools.synthetic.tables import NuScenesTables, write_json
from data_tools.synthetic.world import simulate
from vla_autoprune.cli import OneLineParser
from vla_autoprune.data.schema import CATEGORIES
from vla_autoprune.errors import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_VERSION = "v1.0-synthetic"
SPLITS_FILE = "splits.json"
#: Side file next to the tables: per sample its scenario family and complexity (devkit ignores it).
SCENARIOS_FILE = "scenarios.json"
#: Side file next to the tables: the arguments the set was generated with (:func:`manifest`).
MANIFEST_FILE = "generator.json"
#: Smallest accepted image side (pixels); below this the agents vanish into a few pixels.
MIN_IMAGE_SIDE = 16
#: Side (pixels) of the placeholder semantic-prior PNG each map record points to.
MAP_MASK_PX = 16
#: Written into a dataroot before anything else: marks ``samples/`` and ``maps/`` there as this
#: generator's, which ``overwrite`` may delete (never a real nuScenes folder's own images).
MARKER_FILE = ".synthetic-nuscenes"


#: How the errors of :func:`generate` say to fix an argument, per argument: this module's command
#: line flags (another front end, e.g. the Hydra config, passes its own ``fixes``).
CLI_FIXES: Mapping[str, str] = {
    "scenes": "pass --scenes 1 or more",
    "samples_per_scene": "pass --samples-per-scene 2 or more",
    "image_size": "pass e.g. --image-size 1600x900",
}


class GeneratorArgumentError(ConfigError):
    """An argument of :func:`generate` is out of range (a one-line :class:`ConfigError`)."""


class DatarootNotEmptyError(GeneratorArgumentError):
    """The dataroot holds files and ``overwrite`` was not given."""


@dataclass(frozen=True)
class _Args:
    scenes: dict[str, int]
    samples_per_scene: int
    image_size: tuple[int, int]
    val_fraction: float


def generate(
    dataroot: str | Path,
    *,
    scenes: int | Mapping[str, int] = 8,
    samples_per_scene: int = 16,
    image_size: tuple[int, int] = (1600, 900),
    seed: int = 0,
    overwrite: bool = False,
    version: str = DEFAULT_VERSION,
    val_fraction: float = 0.25,
    fixes: Mapping[str, str] = CLI_FIXES,
) -> Path:
    """Write a synthetic nuScenes-format dataset into ``dataroot`` and return it.

    :param dataroot: output folder; must be empty or missing unless ``overwrite``.
    :param scenes: scenes per split (``{"train": 96, "val": 32}``; splits ``train``/``val``/``test``),
        or a total that :func:`scene_counts` divides into train and val by ``val_fraction``.
    :param samples_per_scene: keyframes per scene (>= 2), 2 Hz.
    :param image_size: camera image size ``(W, H)`` in pixels; intrinsics scale with it.
    :param seed: seeds scene content and tokens; the same arguments give byte-identical files.
    :param overwrite: replace this generator's outputs (``samples/``, ``maps/``, ``<version>/``).
    :param version: name of the table folder (``NuScenes(version=...)``).
    :param val_fraction: share of an int ``scenes`` in val (0 < f < 1).
    :param fixes: how a bad-argument error says to fix ``scenes``, ``samples_per_scene`` and
        ``image_size`` (default: this module's command line flags, :data:`CLI_FIXES`).
    :raises GeneratorArgumentError: bad arguments; ``DatarootNotEmptyError`` for a non-empty folder.
    """
    args = _validate(scenes, samples_per_scene, image_size, val_fraction, version, fixes)
    root = Path(dataroot)
    _prepare_dataroot(root, version, overwrite)
    rig = SensorSetup(camera_rig(args.image_size), lidar_sensor())
    for sensor in rig.all:
        (root / "samples" / sensor.channel).mkdir(parents=True, exist_ok=True)
    tables = NuScenesTables(seed, CATEGORIES, rig.all)
    plans = plan_scenes(seed, args.scenes, args.samples_per_scene)
    logs: dict[str, list[str]] = {}
    total = SceneCounts()
    for plan in tqdm(plans, desc="scenes", unit="scene", disable=None):
        log_token, counts = write_scene(root, tables, simulate(plan), rig, seed)
        logs.setdefault(plan.location, []).append(log_token)
        total.samples += counts.samples
        total.annotations += counts.annotations
        total.images += counts.images
        total.sample_info.update(counts.sample_info)
    _write_maps(root, tables, plans, logs)
    splits = {split: [p.name for p in plans if p.split == split] for split in args.scenes}
    families = {p.name: p.family for p in plans}
    side_files = {
        SPLITS_FILE: splits,
        SCENARIOS_FILE: {"scenes": families, "samples": total.sample_info},
        MANIFEST_FILE: manifest(args.scenes, args.samples_per_scene, args.image_size, seed),
    }
    _write_tables(root, version, tables, side_files)
    size_mb = sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) / 2**20
    logger.info(
        "Wrote %d scenes, %d samples, %d annotations, %d images (%.1f MiB) to %s",
        len(plans), total.samples, total.annotations, total.images, size_mb, root,
    )  # fmt: skip
    return root


def manifest(
    scenes: Mapping[str, int], samples_per_scene: int, image_size: tuple[int, int], seed: int
) -> dict[str, Any]:
    """What ``generator.json`` records: every argument the content depends on (no paths, no times,
    so the same arguments still give byte-identical files). ``scenes`` is per split, as
    :func:`scene_counts` returns it."""
    return {
        "world_version": WORLD_VERSION,
        "seed": int(seed),
        "scenes": {split: int(n) for split, n in scenes.items()},
        "samples_per_scene": int(samples_per_scene),
        "image_size": [int(image_size[0]), int(image_size[1])],
    }


def read_manifest(dataroot: str | Path, version: str = DEFAULT_VERSION) -> dict[str, Any] | None:
    """The generation arguments recorded in ``<dataroot>/<version>/generator.json`` (see
    :func:`manifest`), or None when the set has none (generated before it was written) or it is
    unreadable."""
    path = Path(dataroot) / version / MANIFEST_FILE
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return recorded if isinstance(recorded, dict) else None


def cli_command(
    dataroot: str | Path,
    scenes: Mapping[str, int],
    samples_per_scene: int,
    image_size: tuple[int, int],
    seed: int,
) -> str:
    """The ``python -m data_tools.synthetic_nuscenes`` command that generates exactly these arguments."""
    parts = ["python -m data_tools.synthetic_nuscenes", "--dataroot", shlex.quote(str(dataroot))]
    for split, count in scenes.items():
        parts += [f"--{split}-scenes", str(int(count))]
    parts += ["--samples-per-scene", str(int(samples_per_scene))]
    parts += ["--image-size", f"{int(image_size[0])}x{int(image_size[1])}", "--seed", str(int(seed))]
    return " ".join(parts)


def scene_counts(scenes: int | Mapping[str, int], val_fraction: float = 0.25) -> dict[str, int]:
    """Scenes per split, in ``train, val, test`` order, zero counts dropped.

    An int ``n`` means ``n`` scenes in all: about ``val_fraction`` of them (at least one when
    ``n >= 2``) in val, the rest in train.
    """
    if isinstance(scenes, Mapping):
        unknown = sorted(set(scenes) - set(SPLIT_IDS))
        if unknown:
            raise GeneratorArgumentError(f"unknown split(s) {unknown} in scenes; use {sorted(SPLIT_IDS)}")
        return {split: int(scenes[split]) for split in SPLIT_IDS if int(scenes.get(split, 0)) != 0}
    count = int(scenes)
    n_val = 0 if count < 2 else min(count - 1, max(1, round(val_fraction * count)))
    return {split: n for split, n in (("train", count - n_val), ("val", n_val)) if n}


def plan_scenes(seed: int, counts: Mapping[str, int], samples_per_scene: int) -> list[ScenePlan]:
    """Every scene of every split, each placed on its own slot of its location's map canvas."""
    plans: list[ScenePlan] = []
    slots = dict.fromkeys(LOCATIONS, 0)
    for split, count in counts.items():
        for index in range(count):
            draft = plan_scene(seed, split, index, samples_per_scene)
            plans.append(plan_scene(seed, split, index, samples_per_scene, slots[draft.location]))
            slots[draft.location] += 1
    return plans


def _validate(
    scenes: int | Mapping[str, int],
    samples: int,
    image_size: tuple[int, int],
    val_fraction: float,
    version: str,
    fixes: Mapping[str, str] = CLI_FIXES,
) -> _Args:
    if not 0.0 < float(val_fraction) < 1.0:
        raise GeneratorArgumentError(f"val_fraction must be in (0, 1), got {val_fraction}; try 0.25")
    counts = scene_counts(scenes, val_fraction)
    if any(n < 0 for n in counts.values()) or sum(counts.values()) < 1:
        raise GeneratorArgumentError(
            f"scenes must be >= 1 in all (none negative), got {scenes}; {fixes['scenes']}"
        )
    if int(samples) < 2:
        raise GeneratorArgumentError(
            f"samples_per_scene must be >= 2, got {samples}; {fixes['samples_per_scene']}"
        )
    if len(image_size) != 2 or min(int(v) for v in image_size) < MIN_IMAGE_SIDE:
        raise GeneratorArgumentError(
            f"image_size must be (W, H) with both >= {MIN_IMAGE_SIDE}, got {tuple(image_size)}; "
            f"{fixes['image_size']}"
        )
    if not version or Path(version).name != version:
        raise GeneratorArgumentError(
            f"version must be a plain folder name, got {version!r}; try {DEFAULT_VERSION}"
        )
    return _Args(counts, int(samples), (int(image_size[0]), int(image_size[1])), float(val_fraction))


def _prepare_dataroot(root: Path, version: str, overwrite: bool) -> None:
    """Make ``root`` ready: refuse a non-empty folder unless ``overwrite``, then drop our old outputs
    (only where this generator wrote them: :data:`MARKER_FILE` or ``<version>/generator.json``)."""
    if root.exists() and not root.is_dir():
        raise GeneratorArgumentError(f"dataroot {root} is a file; pass a folder path")
    if root.is_dir() and any(root.iterdir()):
        if not overwrite:
            raise DatarootNotEmptyError(
                f"dataroot {root} is not empty; pass --overwrite (overwrite=True) or an empty folder"
            )
        ours = (root / MARKER_FILE).is_file() or (root / version / MANIFEST_FILE).is_file()
        names = (version, _partial_name(version), "samples", "maps")
        theirs = [name for name in names if (root / name).exists()]
        if theirs and not ours:
            raise DatarootNotEmptyError(
                f"dataroot {root} holds {', '.join(f'{n}/' for n in theirs)} that this generator did not "
                f"write (no {MARKER_FILE} or {version}/{MANIFEST_FILE}), which --overwrite would delete; "
                "pass an empty or new folder, or remove them yourself"
            )
        # Only our own outputs go: the tables first, so a crash from here on never looks complete.
        for name in theirs:
            shutil.rmtree(root / name)
    try:
        root.mkdir(parents=True, exist_ok=True)
        (root / MARKER_FILE).write_text("samples/ and maps/ here: python -m data_tools.synthetic_nuscenes\n")
    except OSError as err:
        raise GeneratorArgumentError(
            f"cannot write to dataroot {root} ({err.strerror or err}); pass a writable folder"
        ) from None


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
            builder.add_scenario(plan)
        canvas = canvas_size(len(here), plans[0].num_samples)
        write_json(root / "maps" / "expansion" / f"{location}.json", builder.to_json(canvas))


def _write_tables(root: Path, version: str, tables: NuScenesTables, side_files: dict[str, object]) -> None:
    """Write the tables and side files (name -> payload) into a hidden folder, then rename it to
    ``<version>``."""
    partial = root / _partial_name(version)
    if partial.exists():
        shutil.rmtree(partial)
    tables.write(partial)
    for name, payload in side_files.items():
        write_json(partial / name, payload)
    partial.rename(root / version)


def _image_size(text: str) -> tuple[int, int]:
    """argparse type for ``WxH``."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"image size must look like 1600x900, got {text!r}") from None
    return width, height


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="python -m data_tools.synthetic_nuscenes",
        description="Generate a synthetic dataset in the nuScenes v1.0 format.",
    )
    parser.add_argument("--dataroot", required=True, type=Path, help="output folder")
    parser.add_argument("--scenes", type=int, default=8, help="scenes in all, split into train/val")
    for split in SPLIT_IDS:
        parser.add_argument(
            f"--{split}-scenes", type=int, default=None, help=f"scenes in {split} (overrides --scenes)"
        )
    parser.add_argument("--samples-per-scene", type=int, default=16)
    parser.add_argument("--image-size", type=_image_size, default=(1600, 900), help="WxH, default 1600x900")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace this generator's earlier outputs in a non-empty dataroot (never files it did not write)",
    )
    parser.add_argument("--version", default=DEFAULT_VERSION, help="table folder name")
    parser.add_argument("--val-fraction", type=float, default=0.25)
    return parser


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the process exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        per_split = {split: getattr(args, f"{split}_scenes") for split in SPLIT_IDS}
        chosen = {split: n for split, n in per_split.items() if n is not None}
        generate(
            args.dataroot,
            scenes=chosen or args.scenes,
            samples_per_scene=args.samples_per_scene,
            image_size=args.image_size,
            seed=args.seed,
            overwrite=args.overwrite,
            version=args.version,
            val_fraction=args.val_fraction,
        )
    except GeneratorArgumentError as err:
        logger.error("error: %s", err)
        return 2
    except KeyboardInterrupt:
        # The tables are written last (renamed into place): an interrupted set never looks complete.
        logger.error(
            "interrupted: %s holds a partial set without its tables (not loadable); rerun the command "
            "with --overwrite to replace it",
            args.dataroot,
        )
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
