"""Calibrate AutoPrune's MI -> slope map for one model on training scenes.

    python -m data_tools.calibrate_autoprune --model tiny-drive-vla --write

AutoPrune turns the mutual information (MI) between the text and the visual tokens into a slope,
``k = max(k0 - gamma * MI, 0)``. The paper's ``k0 = 0.4``, ``gamma = 0.2`` were set on LLaVA-1.5;
the bundled models' text attends far more to its cameras (MI about 3-6 summed over heads), so
every slope clamps at 0 and AutoPrune's curve is the same flat curve for every scene. This script
measures MI the way the pruner does (at its reference layer, over the stage-0 survivors of
``--budget``) on the synthetic *train* split (never a val scene) or a nuScenes train split, fits
``k0`` and ``gamma`` so that the slope is ``--k-max`` at MI's 5th percentile and 0 at its 95th
(:func:`~vla_autoprune.pruning.autoprune_math.calibrate_slope`), prints MI and k per scenario
family under both maps, and with ``--write`` records them in the model folder's
``pruning_calibration.json``, which the main job hands to AutoPrune when its config leaves ``k0``
and ``gamma`` unset.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from data_tools.embedded import synthetic_dataset
from vla_autoprune.cli import OneLineParser
from vla_autoprune.data import CAMERAS, NuScenesDrivingDataset, collate
from vla_autoprune.errors import UserError
from vla_autoprune.models import load
from vla_autoprune.models.describe import describe
from vla_autoprune.models.loading import resolve_model_path
from vla_autoprune.pruning import autoprune_math as ap
from vla_autoprune.pruning import build_pruner, run_pruned
from vla_autoprune.pruning.calibration import write_calibration

logger = logging.getLogger(__name__)


def dataset_batches(dataset: Any, batch_size: int) -> Iterator[dict[str, Any]]:
    """Collated batches of ``dataset`` in order, with a progress bar."""
    for start in tqdm(range(0, len(dataset), batch_size), desc="MI", unit="batch"):
        yield collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])


def measure_mi(
    model: Any, batches: Iterable[dict[str, Any]], budget: float, head_reduce: str
) -> tuple[torch.Tensor, list[str]]:
    """float64 ``[N]`` MI of every sample of ``batches`` under AutoPrune at ``budget`` (as the pruner
    measures it: MI does not depend on ``k0`` and ``gamma``), and each sample's scenario family
    (``""`` when the data has none)."""
    pruner = build_pruner("autoprune", budget=budget, head_reduce=head_reduce)
    mi: list[torch.Tensor] = []
    families: list[str] = []
    for batch in batches:
        _, record = run_pruned(model, batch, pruner)
        mi.append(record.stats["mi"].double())
        families += list(batch.get("scenario") or [""] * len(record.stats["mi"]))
    return torch.cat(mi), families


def calibration_entry(
    mi: torch.Tensor, head_reduce: str, k_max: float, budget: float, data: dict[str, Any], command: str
) -> dict[str, Any]:
    """The ``pruning_calibration.json`` entry for AutoPrune fitted to ``mi`` ``[N]``."""
    k0, gamma = ap.calibrate_slope(mi, k_max)
    low, high = ap.CALIBRATION_QUANTILES
    q = torch.quantile(mi, torch.tensor([low, 0.5, high], dtype=torch.float64)).tolist()
    return {
        "head_reduce": head_reduce,
        "k0": round(k0, 6),
        "gamma": round(gamma, 6),
        "k_max": k_max,
        "mi_quantiles": {f"{p:g}": round(v, 6) for p, v in zip((low, 0.5, high), q, strict=True)},
        "budget": budget,
        "samples": len(mi),
        "data": data,
        "command": command,
    }


def family_table(mi: torch.Tensor, families: list[str], constants: dict[str, tuple[float, float]]) -> str:
    """Markdown: per family, samples, mean MI and mean k under each ``(k0, gamma)`` in ``constants``."""
    rows: dict[str, list[int]] = defaultdict(list)
    for i, family in enumerate(families):
        rows[family or "all"].append(i)
    head = "| family | samples | MI | " + " | ".join(f"k ({name})" for name in constants) + " |"
    lines = [head, "|" + "---|" * (3 + len(constants))]
    for family, index in sorted(rows.items()):
        values = mi[index]
        ks = [float(ap.slope(values, *kg).mean()) for kg in constants.values()]
        lines.append(
            f"| {family} | {len(index)} | {float(values.mean()):.3f} | "
            + " | ".join(f"{k:.3f}" for k in ks)
            + " |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = OneLineParser(
        prog="python -m data_tools.calibrate_autoprune", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--model", default="tiny-drive-vla", help="bundled model name or saved folder")
    parser.add_argument(
        "--budget", type=float, default=None, help="AutoPrune budget MI is measured at (default V/4)"
    )
    parser.add_argument("--head-reduce", default="sum", choices=("sum", "mean"))
    parser.add_argument("--k-max", type=float, default=ap.DEFAULT_K0, help="slope at MI's low quantile")
    parser.add_argument(
        "--scenes", type=int, default=48, help="synthetic train scenes (ignored with --dataroot)"
    )
    parser.add_argument("--samples-per-scene", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0, help="synthetic generator seed")
    parser.add_argument(
        "--dataroot", type=Path, default=None, help="a nuScenes dataroot: use its train split"
    )
    parser.add_argument("--version", default="v1.0-trainval", help="nuScenes version with --dataroot")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--write", action="store_true", help="record the result in the model folder")
    args = parser.parse_args(argv)
    # checked before the model loads and minutes of data are generated
    at_least = {"--batch-size": (args.batch_size, 1), "--scenes": (args.scenes, 1)}
    at_least |= {"--samples-per-scene": (args.samples_per_scene, 2), "--threads": (args.threads, 1)}
    for flag, (value, low) in at_least.items():
        if value is not None and value < low:
            parser.error(f"{flag} must be at least {low}, got {value}")
    if not args.k_max > 0:
        parser.error(f"--k-max must be > 0, got {args.k_max}; the paper's is {ap.DEFAULT_K0}")
    if args.budget is not None and not 0 < args.budget < float("inf"):
        parser.error(
            f"--budget must be a positive number of visual tokens, got {args.budget}; omit it for V/4"
        )
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """CLI entry point: measure, fit, print and (``--write``) record; returns the entry."""
    args = parse_args(argv)  # its usage errors log one plain line, so logging is set up after it
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load(args.model)
    height, width = getattr(model, "image_size", (900, 1600))
    num_visual = describe(args.model, image_size=(width, height)).num_visual(len(CAMERAS))
    budget = args.budget if args.budget is not None else num_visual / 4
    if args.dataroot is not None:
        dataset: Any = NuScenesDrivingDataset(
            args.dataroot, args.version, "train", image_size=(width, height)
        )
        data = {"dataroot": str(args.dataroot), "version": args.version, "split": "train"}
    else:
        dataset = synthetic_dataset(
            "train",
            scenes={"train": args.scenes},
            samples_per_scene=args.samples_per_scene,
            image_size=(width, height),
            seed=args.seed,
        )
        data = {"synthetic_seed": args.seed, "split": "train", "scenes": args.scenes}
    mi, families = measure_mi(model, dataset_batches(dataset, args.batch_size), budget, args.head_reduce)
    command = "python -m data_tools.calibrate_autoprune " + shlex.join(sys.argv[1:] if argv is None else argv)
    entry = calibration_entry(mi, args.head_reduce, args.k_max, budget, data, command)
    q = list(entry["mi_quantiles"].values())
    constants = {"paper": (ap.DEFAULT_K0, ap.DEFAULT_GAMMA), "calibrated": (entry["k0"], entry["gamma"])}
    logger.info(
        "%s: MI %.3f / %.3f / %.3f (5th / 50th / 95th percentile, %d train samples, budget %g) -> "
        "k = max(%.4g - %.4g MI, 0)\n%s",
        args.model,
        *q,
        len(mi),
        budget,
        entry["k0"],
        entry["gamma"],
        family_table(mi, families, constants),
    )
    if args.write:
        path = write_calibration(resolve_model_path(args.model), "autoprune", entry)
        logger.info("wrote %s", path)
    return entry


def cli(argv: Sequence[str] | None = None) -> int:
    """:func:`main` with bad input and Ctrl-C answered in one line; returns the exit status."""
    try:
        main(argv)
    except UserError as err:  # bad input is the user's to fix: one line, no traceback
        logger.error("error: %s", err)
        return 2
    except KeyboardInterrupt:
        logger.error("interrupted: nothing was written (the model folder is written only at the end)")
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(cli())
