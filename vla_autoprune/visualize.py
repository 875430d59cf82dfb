"""``python -m vla_autoprune.visualize`` / ``vla-autoprune-visualize``: draw what a pruner kept.

Hydra app; see ``conf/visualize.yaml``. Given finished run folders (``runs=[...]``, a sweep folder
expands to its runs) it draws their samples; with no runs it evaluates the selected samples live
with the configured planner and pruner first (same config groups as ``vla_autoprune.evaluate``).
Writes one self-contained HTML page per scene and the PNGs under ``png/``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from planners.cameras import dataset_seen_by
from vla_autoprune.errors import DataNotFoundError, UserError
from vla_autoprune.pipeline.loop import run_split
from vla_autoprune.run_files import RUN_FILE, atomic_write_json
from vla_autoprune.viz.render import render_scene, select_scenes
from vla_autoprune.viz.runs import (
    build_dataset,
    dataset_config,
    distinct_labels,
    expand_runs,
    load_run,
)

logger = logging.getLogger(__name__)

LIVE_DIR = "live"


def _build(node: Any) -> Any:
    """``instantiate``, re-raising a component's own one-line :class:`UserError` unwrapped."""
    try:
        return instantiate(node)
    except InstantiationException as err:
        if isinstance(err.__cause__, UserError):
            raise err.__cause__ from None
        raise


def live_indices(dataset: Any, scene: str | int | None, sample: str | None) -> list[int]:
    """Dataset indices to evaluate live: one sample, one scene (token, name or index), or the first scene."""
    tokens = list(dataset.sample_tokens)
    if sample is not None:
        if str(sample) not in tokens:
            raise DataNotFoundError(
                f"sample {sample!r} is not in the dataset's split ({len(tokens)} samples); pick one of "
                f"its samples, e.g. sample={tokens[0]}, or select by scene=<scene name>"
            )
        return [tokens.index(str(sample))]
    nusc = dataset.nusc
    scene_of = dataset.scene_tokens()
    order = list(dict.fromkeys(scene_of))
    names = [nusc.get("scene", t)["name"] for t in order]
    if scene is None:
        wanted = order[0]
    else:
        hits = [t for i, (t, n) in enumerate(zip(order, names, strict=True)) if str(scene) in (t, n, str(i))]
        if not hits:
            raise DataNotFoundError(
                f"scene {scene!r} is not in the dataset's split; pick a scene name, token or index "
                f"0..{len(order) - 1} (e.g. scene={names[0]})"
            )
        wanted = hits[0]
    return [i for i, s in enumerate(scene_of) if s == wanted]


def live_run(cfg: DictConfig, out_dir: Path) -> Path:
    """Evaluate the selected samples with the configured planner into ``out_dir/live``; returns that folder."""
    torch.manual_seed(cfg.seed)  # as evaluate does: a random pruner draws the same tokens
    dataset = _build(cfg.data.dataset)
    indices = live_indices(dataset, cfg.scene, cfg.sample)
    planner = _build(cfg.planner)
    dataset = dataset_seen_by(planner, dataset)
    planner.setup()
    pruner = getattr(planner, "pruner", None)
    run_dir = out_dir / LIVE_DIR
    meta = {
        "planner": planner.name,
        "pruner": pruner.name if pruner is not None else "none",
        "budget": getattr(pruner, "budget", None),
        "data": OmegaConf.to_container(cfg.data.dataset, resolve=True),
    }
    atomic_write_json(run_dir / RUN_FILE, meta)
    run_split(planner, dataset, indices, run_dir, batch_size=cfg.batch_size, resume=False)
    return run_dir


def visualize(cfg: DictConfig, out_dir: str | Path) -> list[Path]:
    """Draw the selected samples of ``cfg.runs`` (or of a live run); returns the HTML pages written."""
    out_dir = Path(out_dir)
    paths = expand_runs(list(cfg.runs)) if cfg.runs else [live_run(cfg, out_dir)]
    runs = [load_run(p) for p in paths]
    distinct_labels(runs)
    dataset = build_dataset(dataset_config(runs[0].run_dir))
    layers = None if cfg.layers is None else list(cfg.layers)
    scene = None if not cfg.runs else cfg.scene  # a live run holds just the selected scene
    pages = [
        render_scene(s, runs, dataset, out_dir, layers, cfg.cell_width)
        for s in select_scenes(runs, dataset, scene, cfg.sample)
    ]
    for page in pages:
        logger.info("open %s", page.resolve().as_uri())
    return pages


def _config_dir() -> str:
    """The ``conf/`` folder: shipped inside the package when installed, at the repo root in a checkout."""
    packaged = Path(__file__).resolve().with_name("conf")
    return str(packaged if packaged.is_dir() else Path(__file__).resolve().parents[1] / "conf")


@hydra.main(version_base="1.3", config_path=_config_dir(), config_name="visualize")
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    try:
        visualize(cfg, cfg.out_dir or HydraConfig.get().runtime.output_dir)
    except UserError as err:
        # Bad input is the user's to fix: one line, no traceback.
        logger.error("error: %s", err)
        sys.exit(2)


if __name__ == "__main__":
    main()
