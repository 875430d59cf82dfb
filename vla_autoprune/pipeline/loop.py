"""The evaluation loop: batches of a split -> planner -> per-sample metric records on disk.

One loop serves every planner; the only planner-specific part is what
:meth:`planners.base.Planner.plan_with_stats` returns per sample (tokens, FLOPs, MI, ...). A VLA
planner's kept visual tokens go to ``kept/`` (see :mod:`vla_autoprune.viz.persistence`), each
batch's chunk written before its records, so every recorded sample can be drawn. With
``closed_loop_style`` among the ``scores``, each record also holds the sample's PDM score
(:mod:`vla_autoprune.pipeline.closed_loop_scores`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from planners.base import Planner
from planners.metrics import collision_flags, l2_errors
from planners.vla import VLAPlanner
from vla_autoprune.data import collate
from vla_autoprune.pipeline.closed_loop_scores import DEFAULT_SCORES, ClosedLoopScorer, check_scores
from vla_autoprune.pipeline.summary import COLLISION_KEYS
from vla_autoprune.run_files import RECORDS_FILE, RecordWriter, read_records
from vla_autoprune.viz.collect import chunk_from_record, image_region
from vla_autoprune.viz.persistence import KEPT_DIR, write_chunk

logger = logging.getLogger(__name__)


def shard_indices(num_samples: int, shard: int, num_shards: int, limit: int | None = None) -> list[int]:
    """Dataset indices of one shard: every ``num_shards``-th of the split's first ``limit`` samples
    (all with None), so the shards of a limited run split exactly the samples it would evaluate."""
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise ValueError(
            f"shard={shard} of num_shards={num_shards}: need num_shards >= 1 and 0 <= shard < num_shards"
        )
    total = num_samples if limit is None else min(limit, num_samples)
    return list(range(shard, total, num_shards))


def sample_records(
    batch: dict[str, Any], indices: Sequence[int], pred: torch.Tensor, stats: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Per-sample JSON records of one batch: predictions, per-step L2 and collision flags, the
    scenario family and complexity (``"unknown"`` / ``None`` when the batch lacks them), stats.

    A row of ``pred`` [B, 6, 2] holding NaN/inf (a malformed text answer) is recorded with
    ``malformed: true`` and no ``pred`` / ``l2`` / ``collision``: the summaries leave it out of
    every planning figure and count it."""
    pred_np = pred.detach().float().cpu().numpy()
    gt = batch["gt_trajectory"].numpy()
    mask = batch["gt_mask"].numpy().astype(bool)
    # A chat VLA's malformed answer is a NaN plan: no L2 or collision for it, counted instead.
    planned = np.isfinite(pred_np).all(axis=(1, 2))
    safe = np.where(planned[:, None, None], pred_np, 0.0)
    errors = np.asarray(l2_errors(safe, gt))
    flags = {
        key: np.asarray(collision_flags(safe, gt, batch["future_boxes"], batch["future_labels"], key))
        for key in COLLISION_KEYS
    }
    scenarios = batch.get("scenario")
    complexity = batch.get("complexity")
    complexity_np = None if complexity is None else np.asarray(complexity, dtype=np.float64)
    records = []
    for b, index in enumerate(indices):
        record = {
            "index": int(index),
            "sample_token": batch["sample_token"][b],
            "scene_token": batch["scene_token"][b],
            "pred": pred_np[b].round(4).tolist() if planned[b] else None,
            "gt": gt[b].round(4).tolist(),
            "gt_mask": mask[b].tolist(),
            "l2": errors[b].tolist() if planned[b] else None,
            "collision": {key: flags[key][b].tolist() for key in COLLISION_KEYS} if planned[b] else None,
            "malformed": not bool(planned[b]),
            # breakdown keys of the report; absent from a batch (real data without them): unknown
            "scenario": str(scenarios[b]) if scenarios is not None else "unknown",
            "complexity": (
                float(complexity_np[b])
                if complexity_np is not None and np.isfinite(complexity_np[b])
                else None
            ),
        }
        record.update(stats[b])
        records.append(record)
    return records


def run_split(
    planner: Planner,
    dataset: Dataset,
    indices: Sequence[int],
    out_dir: str | Path,
    *,
    batch_size: int = 8,
    num_workers: int = 0,
    resume: bool = True,
    scores: Sequence[str] = DEFAULT_SCORES,
) -> list[dict[str, Any]]:
    """Evaluate ``planner`` on ``dataset[indices]``, appending records to ``out_dir/records.jsonl``.

    With ``resume`` the samples already recorded there are skipped, so a killed run continues where
    it stopped; without it an existing records file and ``kept/`` folder are kept aside (renamed),
    never deleted. A VLA planner's kept tokens go to ``out_dir/kept/`` (one chunk per batch).
    ``scores`` (:data:`~vla_autoprune.pipeline.closed_loop_scores.SCORES`) with ``closed_loop_style``
    adds each sample's PDM score; its maps are checked before the first batch.

    Returns:
        all records of ``indices`` (old and new), sorted by dataset index.
    """
    path = Path(out_dir) / RECORDS_FILE
    scores = check_scores(scores)
    scorer = ClosedLoopScorer.for_dataset(dataset, indices) if "closed_loop_style" in scores else None
    if not resume:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for old in (path, path.with_name(KEPT_DIR)):
            if old.exists():
                backup = old.with_name(f"{old.name}.{stamp}.bak")
                old.rename(backup)
                logger.info("resume=false: kept the previous %s as %s", old.name, backup)
    wanted = set(indices)
    done = {r["index"]: r for r in read_records(path, repair=True) if r["index"] in wanted}
    todo = [i for i in indices if i not in done]
    if done:
        logger.info("Resuming: %d of %d samples already evaluated", len(done), len(indices))
    loader = DataLoader(
        Subset(dataset, todo),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate,
    )
    # logging_redirect_tqdm: a log line during the loop prints above the bar, not glued to it
    with RecordWriter(path) as writer, torch.inference_mode(), logging_redirect_tqdm():
        cursor = 0
        for batch in tqdm(loader, desc=f"eval {planner.name}", unit="batch", leave=False):
            batch_indices = todo[cursor : cursor + len(batch["sample_token"])]
            cursor += len(batch_indices)
            pred, stats = planner.plan_with_stats(batch)
            if isinstance(planner, VLAPlanner) and planner.last_pruning is not None:
                record, layout = planner.last_pruning
                size = (int(batch["images"].shape[-1]), int(batch["images"].shape[-2]))
                region = image_region(planner.model, size)
                write_chunk(out_dir, chunk_from_record(record, layout, batch, batch_indices, region))
            new = sample_records(batch, batch_indices, pred, stats)
            if scorer is not None:
                for sample, pdm in zip(new, scorer.score(batch, pred), strict=True):
                    sample.update(pdm)
            writer.write(new)
            done.update((r["index"], r) for r in new)
    return [done[i] for i in sorted(done)]
