"""One evaluation run, from a composed Hydra config to ``summary.json`` (used by ``vla_autoprune.evaluate``).

Order matters for bad input: everything that can be checked cheaply (device, dataroot, split,
shard, pruner name and budget) is checked before the first sample is evaluated, so a bad config is a
one-line error that costs nothing.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from planners.base import Planner
from vla_autoprune.data import collate
from vla_autoprune.devices import resolve_device, resolve_dtype
from vla_autoprune.pipeline.loop import run_split, shard_indices
from vla_autoprune.pipeline.merge import RUN_FILE, samples_digest
from vla_autoprune.pipeline.results import atomic_write_json
from vla_autoprune.pipeline.summary import summarize
from vla_autoprune.pipeline.table import SHORT_COLUMNS, table_rows, to_markdown

logger = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"


def build(node: Any) -> Any:
    """``hydra.utils.instantiate``, re-raising a component's own bad-input error (one line) unwrapped."""
    try:
        return instantiate(node)
    except InstantiationException as err:
        if isinstance(err.__cause__, (ValueError, FileNotFoundError, KeyError)):
            raise err.__cause__ from None
        raise


def run_meta(cfg: DictConfig, planner: Planner, device: torch.device, out_dir: Path) -> dict[str, Any]:
    """What this run is (written to run.json; configurations are told apart by it)."""
    pruner = getattr(planner, "pruner", None)
    pruner_name = pruner.name if pruner is not None else "none"
    return {
        "planner": planner.name,
        "pruner": pruner_name,
        "budget": cfg.budget if pruner_name != "none" else None,
        "accounting": getattr(pruner, "accounting", "actual"),
        "model": OmegaConf.select(cfg, "model.name_or_path"),
        "data": OmegaConf.to_container(cfg.data.dataset, resolve=True),
        "dtype": cfg.dtype,
        "limit": cfg.limit,
        "shard": cfg.data.shard,
        "num_shards": cfg.data.num_shards,
        "device": str(device),
        "output_dir": str(out_dir),
    }


def evaluate(cfg: DictConfig, out_dir: str | Path) -> dict[str, Any]:
    """Run one configuration end to end; returns the summary (also written to ``out_dir``)."""
    out_dir = Path(out_dir)
    started = time.perf_counter()
    device = resolve_device(cfg.device)
    resolve_dtype(cfg.dtype)  # a bad dtype fails here, before the dataset and model load
    torch.manual_seed(cfg.seed)
    dataset = build(cfg.data.dataset)
    indices = shard_indices(len(dataset), cfg.data.shard, cfg.data.num_shards, cfg.limit)
    if not indices:
        raise ValueError(
            f"shard {cfg.data.shard} of {cfg.data.num_shards} (limit={cfg.limit}) selects no sample"
        )
    planner: Planner = build(cfg.planner)
    planner.setup()
    planner.validate(collate([dataset[indices[0]]]))
    meta = run_meta(cfg, planner, device, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    previous = out_dir / RUN_FILE
    if previous.exists() and cfg.resume:
        old = json.loads(previous.read_text())
        if {k: old.get(k) for k in ("planner", "pruner", "budget")} != {
            k: meta[k] for k in ("planner", "pruner", "budget")
        }:
            raise ValueError(
                f"{out_dir} holds a run of another configuration; pick a new output dir or resume=false"
            )
    atomic_write_json(out_dir / RUN_FILE, meta)
    OmegaConf.save(cfg, out_dir / "config.yaml", resolve=True)
    records = run_split(
        planner,
        dataset,
        indices,
        out_dir,
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
        resume=cfg.resume,
    )
    meta["wall_time_s"] = time.perf_counter() - started
    atomic_write_json(out_dir / RUN_FILE, meta)
    summary = summarize(records, meta)
    summary["samples_digest"] = samples_digest(records)
    atomic_write_json(out_dir / SUMMARY_FILE, summary)
    logger.info("%s\n%s", out_dir / SUMMARY_FILE, to_markdown(table_rows([summary]), SHORT_COLUMNS))
    return summary
