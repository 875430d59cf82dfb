"""``python -m vla_autoprune.visualize`` / ``vla-autoprune-visualize``: draw what a pruner kept.

Hydra app; see ``conf/visualize.yaml``. Given finished run folders (``runs=[...]``, a sweep folder
expands to its runs) it draws their samples; with no runs it evaluates the selected samples live
with the configured planner and pruner first (same config groups and checks as
``vla_autoprune.evaluate``). Writes one self-contained HTML page per scene and the PNGs under ``png/``.

Bad input (an unknown config choice, run, scene, sample or layer, an out-of-reach budget, an
unwritable ``out_dir``) is one ``error:`` line and exit status 2, before the model loads.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from planners.cameras import dataset_seen_by
from vla_autoprune.errors import ConfigError, DataNotFoundError
from vla_autoprune.pipeline.app import (
    USER_ERRORS,
    build,
    checked_planner,
    model_name,
)
from vla_autoprune.pipeline.callbacks import discard_if_empty
from vla_autoprune.pipeline.group_choices import refuse_unknown_choices
from vla_autoprune.pipeline.loop import run_split
from vla_autoprune.pruning.options import check_seed
from vla_autoprune.run_files import RUN_FILE, atomic_write_json, check_writable
from vla_autoprune.viz.render import render_scenes, select_scenes
from vla_autoprune.viz.runs import (
    RunData,
    check_same_data,
    dataset_config,
    distinct_labels,
    expand_runs,
    load_run,
)

logger = logging.getLogger(__name__)

LIVE_DIR = "live"


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


def chosen_layers(layers: Any) -> list[int] | None:
    """``cfg.layers`` as a list of ints (None: every layer); a one-line error for anything else."""
    if layers is None:
        return None
    values = list(layers) if OmegaConf.is_list(layers) or isinstance(layers, list | tuple) else [layers]
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ConfigError(f"layers={layers!r} must be a list of decoder layers, e.g. layers=[0,2,4], or null")
    return [int(v) for v in values]


def check_layers(layers: Sequence[int] | None, num_layers: int) -> None:
    """A one-line error for layers the model does not have."""
    bad = [i for i in layers or () if not 0 <= i < num_layers]
    if bad:
        raise ConfigError(f"layers={bad} are out of range: the model has layers 0..{num_layers - 1}")


def check_settings(cfg: DictConfig) -> None:
    """The viewer's own settings, before anything loads: positive integers where they must be, and
    the live run's seed."""
    for key, default in (("cell_width", 288), ("batch_size", 8)):
        value = cfg.get(key)
        if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
            raise ConfigError(f"{key}={value!r} must be a positive integer (default: {key}={default})")
    check_seed(cfg.get("seed"))


def live_run(cfg: DictConfig, out_dir: Path, layers: Sequence[int] | None = None) -> Path:
    """Evaluate the selected samples with the configured planner into ``out_dir/live``; returns that folder.

    Everything ``vla_autoprune.evaluate`` checks before loading (device, dtype, the pruner's
    settings and budget against the model's config, ``layers``) is checked here before the
    dataset and the model load; the pruner gets the model's calibration, as in ``evaluate``.
    """
    planner, _, shape = checked_planner(cfg)
    pruner = getattr(planner, "pruner", None)  # the VLA planner's; model-free planners have none
    if shape is None or pruner is None:
        raise ConfigError(
            f"planner={planner.name} has no visual tokens to draw; use planner=vla (the default)"
        )
    check_layers(layers, shape.num_layers)
    torch.manual_seed(cfg.seed)  # as evaluate does: a random pruner draws the same tokens
    dataset = build(cfg.data.dataset)
    indices = live_indices(dataset, cfg.scene, cfg.sample)
    dataset = dataset_seen_by(planner, dataset)
    planner.setup()
    run_dir = out_dir / LIVE_DIR
    meta = {
        "planner": planner.name,
        "pruner": pruner.name,
        "pruner_label": pruner.label,  # as evaluate records it, e.g. fastv[matched]
        "budget": getattr(pruner, "budget", None),
        "model": model_name(cfg),
        "data": OmegaConf.to_container(cfg.data.dataset, resolve=True),
    }
    atomic_write_json(run_dir / RUN_FILE, meta)
    run_split(planner, dataset, indices, run_dir, batch_size=cfg.batch_size, resume=False)
    return run_dir


def _num_layers(run: RunData) -> int:
    """Decoder layers of a run's model, from its first recorded trace."""
    tokens = run.kept.tokens()
    return run.kept.get(tokens[0]).num_layers if tokens else 0


def visualize(cfg: DictConfig, out_dir: str | Path) -> list[Path]:
    """Draw the selected samples of ``cfg.runs`` (or of a live run); returns the HTML pages written."""
    out_dir = Path(out_dir)
    check_writable(out_dir, "out_dir")
    check_settings(cfg)
    layers = chosen_layers(cfg.layers)
    if cfg.runs:
        runs = [load_run(p) for p in expand_runs(list(cfg.runs))]
        check_layers(layers, _num_layers(runs[0]))
    else:
        runs = [load_run(live_run(cfg, out_dir, layers))]
    check_same_data(runs)
    distinct_labels(runs)
    dataset = build(dataset_config(runs[0].run_dir))  # a dataset's own bad-input error: one line
    scene = None if not cfg.runs else cfg.scene  # a live run holds just the selected scene
    pages = render_scenes(
        select_scenes(runs, dataset, scene, cfg.sample), runs, dataset, out_dir, layers, cfg.cell_width
    )
    for page in pages:
        logger.info("open %s", page.resolve().as_uri())
    return pages


def _config_dir() -> str:
    """The ``conf/`` folder: shipped inside the package when installed, at the repo root in a checkout."""
    packaged = Path(__file__).resolve().with_name("conf")
    return str(packaged if packaged.is_dir() else Path(__file__).resolve().parents[1] / "conf")


def main() -> None:
    """Console entry point: config-group choices checked first (Hydra's own answer to an unknown
    one is twenty lines), then the Hydra app."""
    refuse_unknown_choices(sys.argv[1:], _config_dir())  # Hydra's own answer is twenty lines
    run_app()


@hydra.main(version_base="1.3", config_path=_config_dir(), config_name="visualize")
def run_app(cfg: DictConfig) -> None:
    """Hydra task: draw, with bad input and Ctrl-C answered in one line."""
    hydra_dir = HydraConfig.get().runtime.output_dir
    out_dir = cfg.out_dir or hydra_dir
    try:
        visualize(cfg, out_dir)
        if Path(out_dir).absolute() != Path(hydra_dir).absolute():
            # out_dir= holds the drawings: no outputs/viz/<time>/ with a log alone is left
            discard_if_empty(hydra_dir)
    except KeyboardInterrupt:
        # Every file is written atomically: what is there is complete, the rest was never started.
        logger.error(
            "interrupted: the pages and PNGs in %s are complete; run the command again to draw all", out_dir
        )
        sys.exit(130)
    except USER_ERRORS as err:
        # Bad input is the user's to fix: one line, no traceback.
        logger.error("error: %s", err)
        discard_if_empty(hydra_dir)  # no empty output folder left behind
        sys.exit(2)


if __name__ == "__main__":
    main()
