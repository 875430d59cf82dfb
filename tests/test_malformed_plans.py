"""A malformed text answer (a NaN plan) is counted and left out of every figure, never a crash."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from vla_autoprune.data import NuScenesDrivingDataset, collate
from vla_autoprune.pipeline.closed_loop_scores import MALFORMED, ClosedLoopScorer
from vla_autoprune.pipeline.loop import sample_records
from vla_autoprune.pipeline.summary import metric_terms, summarize


def _records(synthetic_root: Path) -> tuple[list[dict[str, Any]], dict[str, Any], torch.Tensor]:
    dataset = NuScenesDrivingDataset(synthetic_root, split="val")
    batch = collate([dataset[0], dataset[1]])
    pred = batch["gt_trajectory"].clone()  # sample 0 plans its ground truth: L2 exactly 0
    pred[1] = float("nan")  # sample 1 answered malformed text
    stats = [{"mi": None}, {"mi": None}]
    return sample_records(batch, [0, 1], pred, stats), batch, pred


def test_malformed_plan_is_recorded_without_metrics(synthetic_root: Path) -> None:
    records, _, _ = _records(synthetic_root)
    good, bad = records
    assert good["malformed"] is False and good["l2"] is not None and max(good["l2"]) == 0.0
    assert bad["malformed"] is True
    assert bad["pred"] is None and bad["l2"] is None and bad["collision"] is None


def test_summary_counts_malformed_and_averages_only_planned_samples(synthetic_root: Path) -> None:
    records, _, _ = _records(synthetic_root)
    summary = summarize(records, {"pruner": "none"})
    assert summary["num_samples"] == 2 and summary["num_malformed"] == 1
    assert all(value == 0.0 for value in summary["l2"]["stp3"].values())  # only the GT plan counts
    num, den = metric_terms(records)["L2 stp3"]
    assert den[1] == 0.0 and not num[1].any() and den[0] > 0  # zero weight in every bootstrap draw


def test_closed_loop_score_marks_malformed_plans_unscored(synthetic_root: Path) -> None:
    records, batch, pred = _records(synthetic_root)
    dataset = NuScenesDrivingDataset(synthetic_root, split="val")
    scorer = ClosedLoopScorer.for_dataset(dataset, [0, 1])
    scored = scorer.score(batch, pred)
    assert scored[1]["pdm_scored"] is False and scored[1]["pdm_problem"] == MALFORMED
    assert all(v is None for v in scored[1]["pdm"].values())
    assert np.isfinite(pred[0].numpy()).all()
