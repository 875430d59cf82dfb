"""Which scene bootstrap a report draws for a run: stratified by scenario family when the data say so.

The synthetic evaluation set fixes each scene's scenario family by design (scene ``i`` has family
``FAMILIES[i % 6]``, as many scenes per family), so a replicate should keep that design: each
family (stratum) draws as many of its own scenes as it holds. Records without a known family (real
nuScenes: ``scenario = "unknown"``), or a family holding a single scene, fall back to the plain
scene bootstrap. A run and every run
compared with it hold the same samples, hence the same scenes and families, and draw the same
weights from one seed: comparisons stay paired.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vla_autoprune.pipeline.bootstrap import check_resamples, cluster_weights, stratified_weights

#: ``scenario`` values that carry no family (the loop writes ``unknown`` when the data have none).
UNKNOWN_SCENARIOS: frozenset[Any] = frozenset({None, "", "unknown"})


@dataclass(frozen=True)
class Run:
    """One configuration: its summary and its records sorted by ``sample_token``."""

    summary: dict[str, Any]
    records: list[dict[str, Any]]

    @classmethod
    def of(cls, summary: dict[str, Any], records: Sequence[dict[str, Any]]) -> Run:
        """A run with its records put in sample-token order."""
        return cls(summary, sorted(records, key=lambda r: r["sample_token"]))

    def same_samples(self, other: Run) -> bool:
        """Whether ``other`` holds the same samples, so the two line up record by record."""
        return [r["sample_token"] for r in self.records] == [r["sample_token"] for r in other.records]


@dataclass(frozen=True)
class Design:
    """How a run's samples are resampled: ``strata`` = (family, scenes) pairs, sorted, for the
    stratified bootstrap; empty for the plain scene bootstrap, with ``reason`` saying why."""

    strata: tuple[tuple[str, int], ...] = ()
    reason: str = ""

    def describe(self) -> str:
        """One phrase for the report header."""
        if not self.strata:
            return f"plain scene bootstrap ({self.reason})"
        counts = ", ".join(f"{name} {scenes}" for name, scenes in self.strata)
        return f"stratified by scenario family, scenes per stratum: {counts}"


def design_of(records: Sequence[dict[str, Any]], stratify: bool = True) -> Design:
    """Stratified when every record has a known ``scenario``, each scene has one and each family
    holds at least two scenes; else plain (a one-scene family would get a zero-width share)."""
    if not stratify:
        return Design(reason="stratification turned off")
    if not records or any(r.get("scenario") in UNKNOWN_SCENARIOS for r in records):
        return Design(reason="some samples have no known scenario family")
    families: dict[str, set[str]] = {}
    for r in records:
        families.setdefault(str(r["scene_token"]), set()).add(str(r["scenario"]))
    mixed = sorted(scene for scene, names in families.items() if len(names) > 1)
    if mixed:
        return Design(reason=f"scene {mixed[0]} holds several scenario families")
    per_family = Counter(next(iter(names)) for names in families.values())
    single = sorted(name for name, scenes in per_family.items() if scenes < 2)
    if single:  # a one-scene stratum is drawn whole every time: it would add no spread at all
        return Design(reason=f"scenario family {single[0]} holds a single scene")
    return Design(strata=tuple(sorted(per_family.items())))


@dataclass(frozen=True)
class Bootstrap:
    """How intervals are drawn: replicates, seed and whether to stratify (the report states all)."""

    resamples: int = 2000
    seed: int = 0
    stratify: bool = True

    def __post_init__(self) -> None:
        check_resamples(self.resamples)  # a bad resamples fails here, once

    def design(self, run: Run) -> Design:
        """The resampling ``run`` gets (see :func:`design_of`)."""
        return design_of(run.records, self.stratify)

    def weights(self, run: Run) -> np.ndarray:
        """float64 [R, S]: bootstrap weights of ``run``'s samples (equal for equal samples)."""
        scenes = [r["scene_token"] for r in run.records]
        if not self.design(run).strata:
            return cluster_weights(scenes, self.resamples, self.seed)
        families = [str(r["scenario"]) for r in run.records]
        return stratified_weights(scenes, families, self.resamples, self.seed)
