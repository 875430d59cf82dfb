"""The ``scores`` choice of an evaluation and the closed-loop-style PDM score of each planned batch.

``scores`` names what the loop records per sample: ``open_loop`` (L2 and collision, always on:
every table builds on them) and ``closed_loop_style`` (NAVSIM's PDM score of a pseudo-simulated
plan, ``docs/CLOSED-LOOP.md``). The latter needs the map expansion of every log location in the
selection; a missing map is a one-line error raised before the loop starts.

A sample is scored only when its log holds the full 3 s ahead (``gt_mask`` all true, the same
samples the ``stp3`` convention counts: later the logged agents are unknown) and the map has a
drivable area and a lane near the ego; any other sample is recorded with ``pdm_scored`` false and
the reason in ``pdm_problem``, never dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from planners.closed_loop import DEFAULT_CONFIG, SCORE_KEYS, PDMConfig, SceneGeometry, pdm_score
from planners.closed_loop.map_geometry import check_maps, load_map, scene_geometry
from vla_autoprune.errors import ConfigError, DataNotFoundError

logger = logging.getLogger(__name__)

#: The score families an evaluation can record, and the default (both).
SCORES: tuple[str, ...] = ("open_loop", "closed_loop_style")
DEFAULT_SCORES: tuple[str, ...] = SCORES
#: Per-sample values stored under a record's ``"pdm"`` key (None where not scored).
PDM_RECORD_KEYS: tuple[str, ...] = (*SCORE_KEYS, "progress_m", "reference_progress_m", "tracking_error_m")
#: ``pdm_problem`` of a sample whose log ends within the plan's horizon.
SHORT_LOG = "the log ends within 3 s (agents unknown later)"
MALFORMED = "malformed answer (no plan)"


def check_scores(scores: Sequence[str]) -> tuple[str, ...]:
    """``scores`` as a tuple of known names including ``open_loop``, or a one-line ConfigError."""
    names = (scores,) if isinstance(scores, str) else tuple(str(s) for s in scores)
    unknown = [s for s in names if s not in SCORES]
    if unknown or "open_loop" not in names:
        raise ConfigError(
            f"scores={list(names)}: use a list of {list(SCORES)} that includes open_loop "
            "(e.g. scores=[open_loop,closed_loop_style])"
        )
    return names


class ClosedLoopScorer:
    """PDM scores of planned batches, with one ``NuScenesMap`` loaded per location on first use.

    :param dataroot: the nuScenes folder holding ``maps/expansion/``.
    :param locations: every map location the evaluation will meet (checked now, loaded lazily).
    :param config: thresholds of the score (``PDMConfig``).
    :raises DataNotFoundError: a location has no map expansion file (one line naming the path).
    """

    def __init__(self, dataroot: str | Path, locations: Sequence[str], config: PDMConfig = DEFAULT_CONFIG):
        check_maps(dataroot, locations)
        self.dataroot = Path(dataroot)
        self.config = config
        self._maps: dict[str, Any] = {}

    @classmethod
    def for_dataset(cls, dataset: Any, indices: Sequence[int]) -> ClosedLoopScorer:
        """A scorer for ``dataset[indices]`` (a ``NuScenesDrivingDataset``: its dataroot and map locations)."""
        if not (hasattr(dataset, "map_locations") and hasattr(dataset, "dataroot")):
            raise ConfigError(
                f"closed_loop_style scores need a NuScenesDrivingDataset (maps, agent tracks), got "
                f"{type(dataset).__name__}; set scores=[open_loop]"
            )
        every = dataset.map_locations()
        try:
            return cls(dataset.dataroot, sorted({every[i] for i in indices}))
        except DataNotFoundError as err:
            raise DataNotFoundError(f"{err}, or set scores=[open_loop]") from None

    def _map(self, location: str) -> Any:
        if location not in self._maps:
            logger.info("Loading the %s map expansion for closed-loop-style scoring", location)
            self._maps[location] = load_map(self.dataroot, location)
        return self._maps[location]

    def scene(self, location: str, pose: np.ndarray, route: np.ndarray) -> SceneGeometry:
        """Map geometry around one ego pose (float [3] global x, y, yaw); ``route``: float [M, 2]
        ego-frame logged future, used to pick the reference lane at forks."""
        x, y, yaw = (float(v) for v in pose)
        return scene_geometry(self._map(location), (x, y, yaw), route=route)

    def score(self, batch: dict[str, Any], pred: torch.Tensor) -> list[dict[str, Any]]:
        """Per sample: ``{"pdm": {key: float | None}, "pdm_scored": bool, "pdm_problem": str | None}``.

        :param batch: collated batch with ``gt_trajectory``, ``gt_mask``, ``ego_state``,
            ``agent_boxes`` [B, 7, A, 5], ``agent_valid`` [B, 7, A], ``agent_labels`` [B, A],
            ``map_location`` (B) and ``ego_pose`` [B, 3] (``schema.py``).
        :param pred: float [B, 6, 2] planned waypoints.
        A plan holding NaN or inf (a malformed text answer) is unscored, with that reason.
        """
        gt = batch["gt_trajectory"].numpy().astype(np.float64)
        finite = np.isfinite(pred.detach().float().cpu().numpy()).all(axis=(1, 2))
        full = batch["gt_mask"].numpy().astype(bool).all(axis=1)
        problems: list[str | None] = [
            None if ok and plan else (MALFORMED if not plan else SHORT_LOG)
            for ok, plan in zip(full, finite, strict=True)
        ]
        full = full & finite
        out: list[dict[str, Any]] = [{"pdm": dict.fromkeys(PDM_RECORD_KEYS)} for _ in problems]
        idx = np.flatnonzero(full)
        if idx.size:
            poses = batch["ego_pose"].numpy()
            scenes = [self.scene(batch["map_location"][b], poses[b], gt[b]) for b in idx]
            problems_idx = [s.problem() for s in scenes]
            values = pdm_score(
                pred.detach().float().cpu().numpy()[idx],
                batch["ego_state"].numpy()[idx],
                batch["agent_boxes"].numpy()[idx],
                batch["agent_valid"].numpy()[idx],
                batch["agent_labels"].numpy()[idx],
                scenes,
                self.config,
            )
            for j, b in enumerate(idx):
                problems[b] = problems_idx[j]
                if values["scored"][j]:
                    out[b]["pdm"] = {key: round(float(values[key][j]), 4) for key in PDM_RECORD_KEYS}
        for record, problem in zip(out, problems, strict=True):
            record["pdm_scored"] = problem is None
            record["pdm_problem"] = problem
        return out
