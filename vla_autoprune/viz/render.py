"""A scene's pictures: per sample a layer mosaic PNG per run, the retention curves and the BEV, and
the scene's HTML page."""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from vla_autoprune.errors import ConfigError, DataNotFoundError
from vla_autoprune.run_files import atomic_write_bytes
from vla_autoprune.viz.bev import Trajectory, bev_figure, map_layers
from vla_autoprune.viz.curves import Curve, retention_figure
from vla_autoprune.viz.html import PageSample, page_data, write_page
from vla_autoprune.viz.mosaic import base_panel, draw_layer, geometry_for, layer_stack
from vla_autoprune.viz.persistence import SampleTrace
from vla_autoprune.viz.runs import RunData, safe_name

logger = logging.getLogger(__name__)

#: Collision convention marked in the bird's-eye view (exact box overlap, planners/metrics.py).
BEV_COLLISION = "box"


@dataclass(frozen=True)
class Scene:
    """The samples of one scene to draw, in time order."""

    token: str
    name: str
    sample_tokens: tuple[str, ...]


def _scene_name(dataset: Any, scene_token: str) -> str:
    nusc = getattr(dataset, "nusc", None)
    return str(nusc.get("scene", scene_token)["name"]) if nusc is not None else scene_token[:8]


def select_scenes(
    runs: Sequence[RunData], dataset: Any, scene: str | int | None, sample: str | None
) -> list[Scene]:
    """The scenes to draw from the first run's samples: one sample, one scene, or every scene.

    Args:
        scene: a scene token, a scene name, or an index among the run's scenes (None: all).
        sample: a sample token (then only that sample is drawn).

    Raises:
        DataNotFoundError: the sample or scene is not in the run.
    """
    first = runs[0]
    if sample is not None:
        first.kept.get(str(sample))  # a sample the run did not evaluate: one-line error naming the fix
        record = first.records.get(str(sample))
        if record is None:
            raise DataNotFoundError(f"sample {sample!r} has kept tokens but no record in {first.run_dir}")
        token = record["scene_token"]
        return [Scene(token, _scene_name(dataset, token), (str(sample),))]
    by_scene: dict[str, list[str]] = {}
    for token, record in first.records.items():
        by_scene.setdefault(record["scene_token"], []).append(token)
    scenes = [Scene(t, _scene_name(dataset, t), tuple(s)) for t, s in by_scene.items()]
    if scene is None:
        return scenes
    chosen = [s for i, s in enumerate(scenes) if str(scene) in (s.token, s.name, str(i))]
    if not chosen:
        names = ", ".join(s.name for s in scenes[:5])
        raise DataNotFoundError(
            f"scene {scene!r} is not in run {first.run_dir}; pick one of its scenes by name, token or "
            f"index 0..{len(scenes) - 1} (e.g. scene={scenes[0].name if scenes else 0}; names: {names})"
        )
    return chosen[:1]


def png_bytes(fig: Figure) -> bytes:
    """A matplotlib figure as PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _trajectories(runs: Sequence[RunData], token: str) -> list[Trajectory]:
    first = next(r.records[token] for r in runs if token in r.records)
    mask = np.asarray(first["gt_mask"], dtype=bool)
    out = [Trajectory("ground truth", np.asarray(first["gt"], dtype=np.float64)[mask])]
    for run in runs:
        record = run.records.get(token)
        if record is not None and record.get("pred") is not None:  # malformed answers have no plan
            hits = record.get("collision", {}).get(BEV_COLLISION)
            out.append(
                Trajectory(
                    run.label,
                    np.asarray(record["pred"], dtype=np.float64),
                    None if hits is None else np.asarray(hits),
                )
            )
    return out


@dataclass
class SamplePictures:
    """What :func:`draw_sample` made: the page's sample and each run's layer-mosaic image."""

    page: PageSample
    mosaics: dict[str, Any]  # run label -> PIL image (the chosen layers, stacked)


def draw_sample(
    runs: Sequence[RunData], dataset: Any, token: str, layers: Sequence[int] | None, cell_width: int
) -> SamplePictures:
    """Every picture of one sample (from the dataset item the runs evaluated, and their traces)."""
    holders = [r for r in runs if token in r.records and token in r.kept]
    if not holders:
        raise DataNotFoundError(f"no run holds sample {token!r}")
    record = holders[0].records[token]
    item = dataset[record["index"]]
    if item["sample_token"] != token:
        raise ConfigError(
            f"the dataset's sample {record['index']} is {item['sample_token']}, the run recorded {token}: "
            "the run was evaluated on other data; restore that dataroot"
        )
    traces: dict[str, SampleTrace] = {r.label: r.kept.get(token) for r in holders}
    ref = next(iter(traces.values()))
    images = dict(zip(item["cameras"], item["images"].numpy().transpose(0, 2, 3, 1), strict=True))
    cam_images = [images[c] for c in ref.cameras]
    h, w = cam_images[0].shape[:2]
    geometry = geometry_for(ref, (w, h), cell_width)
    panel = base_panel(cam_images, geometry)
    chosen = list(range(ref.num_layers)) if layers is None else [int(i) for i in layers]
    bad = [i for i in chosen if not 0 <= i < ref.num_layers]
    if bad:
        raise ConfigError(f"layers={bad} are out of range: the model has layers 0..{ref.num_layers - 1}")
    mosaics = {
        label: layer_stack(
            [draw_layer(panel, geometry, t, i) for i in chosen], [f"{label}  layer {i}" for i in chosen]
        )
        for label, t in traces.items()
    }
    curves = [
        Curve(
            r.label,
            traces[r.label].visual_tokens,
            traces[r.label].merged_tokens,
            r.budget,
            traces[r.label].mi,
            traces[r.label].k,
        )
        for r in holders
    ]
    nusc = getattr(dataset, "nusc", None)
    bev = bev_figure(
        _trajectories(holders, token),
        item["future_boxes"].numpy(),
        item["future_labels"].numpy(),
        map_layers(nusc, token) if nusc is not None else None,
        title=f"sample {token[:8]}",
    )
    page = PageSample(
        token=token,
        title=f"sample {record['index']} ({token})",
        panel=panel,
        boxes=geometry.token_boxes(ref),
        curve_png=png_bytes(retention_figure(curves, ref.num_visual)),
        bev_png=png_bytes(bev),
    )
    return SamplePictures(page, mosaics)


def image_bytes(image: Any) -> bytes:
    """A PIL image as PNG bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def render_scene(
    scene: Scene,
    runs: Sequence[RunData],
    dataset: Any,
    out_dir: str | Path,
    layers: Sequence[int] | None = None,
    cell_width: int = 288,
    progress: tqdm | None = None,
) -> Path:
    """Write the scene's PNGs (``png/<scene>/<nn>_<token>/``) and its page ``<scene>.html``; returns the page.

    Every file is written atomically (a killed run leaves whole files or none); ``progress`` is
    advanced by one per sample drawn.
    """
    out_dir = Path(out_dir)
    page, pngs = out_dir / f"{safe_name(scene.name)}.html", out_dir / "png" / safe_name(scene.name)
    if page.exists() or pngs.exists():
        logger.warning("replacing %s and %s/ (drawn earlier)", page, pngs)
    samples, written = [], set[Path]()
    for n, token in enumerate(scene.sample_tokens):
        pictures = draw_sample(runs, dataset, token, layers, cell_width)
        folder = pngs / f"{n:02d}_{token[:8]}"
        files = {folder / "retention.png": pictures.page.curve_png, folder / "bev.png": pictures.page.bev_png}
        for label, image in pictures.mosaics.items():
            files[folder / f"mosaic_{safe_name(label)}.png"] = image_bytes(image)
        for path, data in files.items():
            atomic_write_bytes(path, data)
        written.update(files)
        samples.append(pictures.page)
        if progress is not None:
            progress.update()
    traces = [(r.label, {t: r.kept.get(t) for t in scene.sample_tokens if t in r.kept}) for r in runs]
    write_page(page, page_data(f"scene {scene.name}", samples, traces))
    _remove_stale(pngs, written)
    return page


def _remove_stale(pngs: Path, written: set[Path]) -> None:
    """Once a scene is drawn again, the PNGs of an earlier drawing it did not write again (runs or
    samples not drawn this time), and the sample folders they leave empty."""
    for path in sorted(pngs.glob("*/*.png")):
        if path not in written:
            path.unlink(missing_ok=True)
    for folder in pngs.iterdir():
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def render_scenes(
    scenes: Sequence[Scene],
    runs: Sequence[RunData],
    dataset: Any,
    out_dir: str | Path,
    layers: Sequence[int] | None = None,
    cell_width: int = 288,
) -> list[Path]:
    """:func:`render_scene` for each scene, with a progress bar over samples and a line per page."""
    pages = []
    total = sum(len(s.sample_tokens) for s in scenes)
    with logging_redirect_tqdm(), tqdm(total=total, desc="draw", unit="sample", leave=False) as bar:
        for i, scene in enumerate(scenes):
            page = render_scene(scene, runs, dataset, out_dir, layers, cell_width, bar)
            pages.append(page)
            logger.info(
                "wrote %s (scene %d of %d: %d samples, %d runs)",
                page,
                i + 1,
                len(scenes),
                len(scene.sample_tokens),
                len(runs),
            )
    return pages
