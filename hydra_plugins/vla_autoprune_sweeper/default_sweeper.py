"""Hydra's basic sweeper plus a default sweep that only a bare ``-m`` runs.

Hydra merges ``hydra.sweeper.params`` into every multirun, so a default sweep placed there is
added to whatever the user sweeps (``-m data.shard=0,1,2,3`` became 4 shards x the default's 10
jobs). This sweeper keeps the basic sweeper's behaviour (cartesian product of the command line's
sweeps and ``params``) and runs ``default_sweep`` only when the command line sweeps nothing and
sets none of the default sweep's keys: a bare ``-m`` (plain overrides such as ``device=cuda`` are
applied to every job of it).

``default_sweep`` is a list of parameter sets; each set is a cartesian product in the basic
sweeper's syntax, and the sets are run one after another, so a configuration that has no budget
(``pruner: none``) runs once::

    default_sweep:
      - {pruner: none}
      - {pruner: "random,fastv", budget: "32,64"}

A sweep of the user's own runs exactly what it asks for, except that ``pruner=none`` (which has no
budget) runs once per other setting however many budgets the sweep names: ``-m
pruner=none,fastv budget=49,96`` is 3 jobs, not 4 (the second ``none`` would repeat the first).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override

logger = logging.getLogger(__name__)


class DefaultSweeper(BasicSweeper):
    """:class:`BasicSweeper` whose ``default_sweep`` stands in for an empty command-line sweep."""

    def __init__(
        self,
        max_batch_size: int | None = None,
        params: Mapping[str, str] | None = None,
        default_sweep: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        super().__init__(max_batch_size=max_batch_size, params=dict(params) if params else None)
        self.default_sweep = [{str(k): str(v) for k, v in item.items()} for item in default_sweep or []]

    def default_keys(self) -> set[str]:
        """Keys the default sweep sets; an override of any of them (or below them) replaces the sweep."""
        return {key for item in self.default_sweep for key in item}

    def uses_default(self, overrides: Sequence[Override]) -> bool:
        """True when ``overrides`` (params + command line) sweep nothing and leave the default's keys alone."""
        if not self.default_sweep:
            return False
        keys = self.default_keys()
        for override in overrides:
            key = override.key_or_group
            if override.is_sweep_override() or key in keys or key.split(".")[0] in keys:
                return False
        return True

    def default_jobs(self, overrides: Sequence[Override]) -> list[list[str]]:
        """The default sweep's jobs, each with the plain ``overrides`` appended."""
        parser = OverridesParser.create()
        jobs: list[list[str]] = []
        for item in self.default_sweep:
            params = parser.parse_overrides([f"{key}={value}" for key, value in item.items()])
            (batch,) = BasicSweeper.split_arguments([*params, *overrides], None)
            jobs.extend(batch)
        return jobs

    def split_arguments(  # type: ignore[override]
        self, overrides: list[Override], max_batch_size: int | None
    ) -> list[list[list[str]]]:
        """Inherited, see superclass; a bare ``-m`` gets :meth:`default_jobs`."""
        if not self.uses_default(overrides):
            (jobs,) = BasicSweeper.split_arguments(overrides, None)
            return list(BasicSweeper.split_overrides_to_chunks(once_without_budget(jobs), max_batch_size))
        jobs = self.default_jobs(overrides)
        logger.info(
            "Bare -m: running the default sweep (%d jobs); sweep a key yourself to replace it", len(jobs)
        )
        return list(BasicSweeper.split_overrides_to_chunks(jobs, max_batch_size))


def once_without_budget(jobs: Sequence[Sequence[str]]) -> list[list[str]]:
    """``jobs`` less each ``pruner=none`` job that differs from an earlier one only in ``budget``
    (``none`` keeps every token, so its budget changes nothing), logged."""
    seen: set[tuple[str, ...]] = set()
    kept: list[list[str]] = []
    for job in jobs:
        if "pruner=none" in job:
            rest = tuple(o for o in job if o.split("=", 1)[0].lstrip("+~") != "budget")
            if rest in seen:
                continue
            seen.add(rest)
        kept.append(list(job))
    if len(kept) < len(jobs):
        logger.info(
            "pruner=none has no budget: it runs once per other setting (%d repeat jobs left out)",
            len(jobs) - len(kept),
        )
    return kept
