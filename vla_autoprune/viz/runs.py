"""Finished run folders as the viewer reads them: identity, records and kept tokens by sample token."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from vla_autoprune.errors import ConfigError, DataNotFoundError
from vla_autoprune.run_files import CONFIG_FILE, RECORDS_FILE, RUN_FILE, read_records
from vla_autoprune.viz.persistence import KEPT_DIR, KeptStore

logger = logging.getLogger(__name__)


@dataclass
class RunData:
    """One finished (or live) run: what it is, its per-sample records and kept tokens."""

    run_dir: Path
    meta: dict[str, Any]
    records: dict[str, dict[str, Any]]  # by sample token, in dataset-index order
    kept: KeptStore
    alias: str | None = None  # set when two runs would otherwise share a label

    @property
    def budget(self) -> float | None:
        """The run's budget (None for an unpruned run)."""
        budget = self.meta.get("budget")
        return None if budget is None else float(budget)

    @property
    def variant(self) -> list[str]:
        """The overrides that make this run a variant (run.json ``variant``), one per item."""
        return str(self.meta.get("variant") or "").split()

    @property
    def label(self) -> str:
        """Short name: pruner label (or planner), budget and variant, e.g. ``pdrop[faithful] b64``."""
        return self.alias or self.labelled(self.variant)

    def labelled(self, variant: Sequence[str]) -> str:
        """:attr:`label` with ``variant`` in place of the run's own."""
        meta = self.meta
        name = str(meta.get("pruner_label") or meta.get("pruner") or meta.get("planner") or self.run_dir.name)
        parts = [name] + ([f"b{self.budget:g}"] if self.budget is not None else [])
        return " ".join([*parts, *variant])


def load_run(run_dir: str | Path) -> RunData:
    """Read a run folder (``run.json``, ``records.jsonl``, ``kept/``).

    Raises:
        DataNotFoundError: the folder, its records or its kept tokens are missing.
    """
    run_dir = Path(run_dir)
    if not (run_dir / RECORDS_FILE).is_file():
        raise DataNotFoundError(
            f"{run_dir} holds no {RECORDS_FILE}; pass the folder of a finished evaluation run "
            "(runs=[outputs/runs/<run>]) or a sweep folder holding runs"
        )
    meta = json.loads((run_dir / RUN_FILE).read_text()) if (run_dir / RUN_FILE).is_file() else {}
    records = {
        r["sample_token"]: r for r in sorted(read_records(run_dir / RECORDS_FILE), key=lambda r: r["index"])
    }
    return RunData(run_dir, meta, records, KeptStore(run_dir))


def distinct_labels(runs: Sequence[RunData]) -> None:
    """Label compared runs by what tells them apart: variant items every run shares (the same data
    selection, say) name no difference and are left out; runs that still share a label get the
    alias ``<label> (<folder name>)``."""
    shared = set.intersection(*(set(r.variant) for r in runs)) if len(runs) > 1 else set()
    for run in runs:
        run.alias = run.labelled([v for v in run.variant if v not in shared])
    labels = [r.label for r in runs]
    for run in runs:
        if labels.count(run.label) > 1:
            run.alias = f"{run.label} ({run.run_dir.name})"


def expand_runs(paths: Sequence[str | Path]) -> list[Path]:
    """Run folders from ``paths``: each a run folder, or a sweep folder whose sub-folders are runs;
    each run once, in the order first given."""
    out: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.is_dir():
            raise DataNotFoundError(f"run folder {path} does not exist; pass runs=[<run or sweep folder>]")
        if (path / RECORDS_FILE).is_file():
            out.append(path)
            continue
        children = sorted(p.parent for p in path.glob(f"*/{RECORDS_FILE}"))
        if not children:
            raise DataNotFoundError(
                f"{path} holds no {RECORDS_FILE}, nor do its sub-folders; pass an evaluation run "
                "folder or a sweep folder"
            )
        # In a sweep, runs without token files (e.g. planner=constant_velocity) are left out.
        drawable = [c for c in children if (c / KEPT_DIR).is_dir()]
        for child in sorted(set(children) - set(drawable)):
            logger.info("skipping %s: it has no %s/ token files", child, KEPT_DIR)
        out.extend(drawable if drawable else children[:1])  # none: load_run names the problem
    # A run named twice (a sweep and one of its runs, say) is drawn once: twice, it would share a
    # label, a mosaic file and a place in the page's run selector.
    first: dict[Path, Path] = {}
    for path in out:
        first.setdefault(path.resolve(), path)
    unique = list(first.values())
    if len(unique) < len(out):
        logger.info("drawing each run once: %d of the runs given were named twice", len(out) - len(unique))
    return unique


def dataset_config(run_dir: Path) -> Any:
    """The dataset node a run evaluated (``run.json``'s ``data``, else ``config.yaml``'s ``data.dataset``)."""
    meta_path, config_path = run_dir / RUN_FILE, run_dir / CONFIG_FILE
    if meta_path.is_file():
        data = json.loads(meta_path.read_text()).get("data")
        if isinstance(data, dict) and "_target_" in data:
            return OmegaConf.create(data)
    if config_path.is_file():
        node = OmegaConf.select(OmegaConf.load(config_path), "data.dataset")
        if node is not None:
            return node
    raise ConfigError(
        f"{run_dir} records no dataset ({RUN_FILE} 'data' or {CONFIG_FILE} 'data.dataset'); "
        "evaluate it again with vla_autoprune.evaluate, which writes both"
    )


#: Dataset settings that choose which samples a run evaluated, not what a sample's images and boxes are.
SELECTION_ONLY = ("full_future_only",)


def check_same_data(runs: Sequence[RunData]) -> None:
    """A one-line :class:`ConfigError` when the runs were evaluated on different data: the page draws
    every run on the first run's images and boxes, which would then not be what the others saw."""
    first = _data_settings(runs[0].run_dir)
    for run in runs[1:]:
        other = _data_settings(run.run_dir)
        differ = [
            f"{k} {first.get(k)!r} vs {other.get(k)!r}"
            for k in sorted(first.keys() | other.keys())
            if first.get(k) != other.get(k)
        ]
        if differ:
            raise ConfigError(
                f"{runs[0].run_dir} and {run.run_dir} were evaluated on different data ({'; '.join(differ)}); "
                "draw them on separate pages"
            )


def _data_settings(run_dir: Path) -> dict[str, Any]:
    """The run's dataset node as a dict, without the settings that only select samples."""
    node = OmegaConf.to_container(dataset_config(run_dir), resolve=True)
    assert isinstance(node, dict)  # a dataset node is a mapping (dataset_config)
    return {str(k): v for k, v in node.items() if k not in SELECTION_ONLY}


def safe_name(text: str) -> str:
    """``text`` as a file name (letters, digits, ``-_.`` only)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "run"
