"""Combine run folders (shards of one evaluation, runs of a sweep) into one summary per configuration.

Every run folder holds ``run.json`` (what was run) and ``records.jsonl`` (per-sample results).
Runs that differ only in their shard are one configuration (:func:`config_key`, defined in
:mod:`vla_autoprune.pipeline.identity`): their records are concatenated (deduplicated by dataset
index, with a warning naming the folders that overlap) and summarised again, so a sharded
evaluation reports exactly what one unsharded run would.

Reading never changes a run folder: a run may still be appending to its records while a report
is made, so a torn last line is skipped here, not truncated away (that is the run's own job when
it resumes).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vla_autoprune.errors import DataError, DataNotFoundError
from vla_autoprune.pipeline.identity import PER_JOB_KEYS, config_key
from vla_autoprune.pipeline.summary import summarize
from vla_autoprune.run_files import (
    RECORDS_FILE,
    RUN_FILE,
    SKIPPED_FILE,
    SUMMARY_FILE,
    scan_records,
    warn_torn,
)

logger = logging.getLogger(__name__)

__all__ = [
    "Merged",
    "config_key",
    "find_runs",
    "find_skipped",
    "group_runs",
    "merge_group",
    "merge_runs",
    "read_json",
    "read_run_records",
    "samples_digest",
]


def find_runs(roots: Iterable[str | Path]) -> list[Path]:
    """Run folders (holding ``run.json``) under any of ``roots``, resolved (a folder named twice,
    e.g. relative and absolute, is one run), sorted."""
    runs: set[Path] = set()
    for root in roots:
        root = Path(root)
        if not root.exists():
            raise DataNotFoundError(f"{root} does not exist; pass a run or sweep output folder")
        runs.update(p.parent.resolve() for p in root.rglob(RUN_FILE))
    return sorted(runs)


def find_skipped(roots: Iterable[str | Path]) -> list[tuple[Path, dict[str, Any]]]:
    """``(job folder, skipped.json)`` of every multirun job under ``roots`` that was not runnable,
    resolved (each once), sorted."""
    found = {p.parent.resolve(): p for root in roots for p in Path(root).rglob(SKIPPED_FILE)}
    return [(folder, read_json(found[folder])) for folder in sorted(found)]


def read_json(path: Path) -> dict[str, Any]:
    """A run folder's JSON document; a one-line :class:`DataError` when it is not valid JSON."""
    try:
        document = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(
            f"{path} is not valid JSON ({err}); restore it, or move its folder out of the report's folders"
        ) from None
    if not isinstance(document, dict):
        raise DataError(
            f"{path} is not a JSON object; restore it, or move its folder out of the report's folders"
        )
    return document


def read_run_records(path: str | Path) -> tuple[list[dict[str, Any]], bool]:
    """The records of a ``records.jsonl`` without touching the file, and whether its last line was
    torn (a run writing, or killed mid-write: that line is skipped, never truncated away)."""
    records, torn_at = scan_records(
        path, "restore the file, or move its run folder out of the report's folders"
    )
    if torn_at is not None:
        warn_torn(path)
    return records, torn_at is not None


@dataclass(frozen=True)
class Merged:
    """One configuration merged from its folders: the summary, its records (one per dataset
    index, in index order) and the folders that hold no finished run (no ``summary.json``, a
    summary of other samples, or a torn last record)."""

    summary: dict[str, Any]
    records: list[dict[str, Any]]
    unfinished: tuple[Path, ...]


def _finished(folder: Path, records: Sequence[dict[str, Any]], torn: bool) -> bool:
    """Whether ``folder`` holds a run that ended: its summary counts exactly its records."""
    path = folder / SUMMARY_FILE
    if torn or not path.is_file():
        return False
    try:
        summary = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(summary, dict) and summary.get("num_samples") == len(records)


def merge_group(folders: Sequence[Path]) -> Merged:
    """Merge the folders of one configuration (equal :func:`config_key`); a sample recorded in
    several folders (overlapping shards, one run passed in two sweeps) is counted once, from the
    first folder in ``folders`` order, with a warning naming the folders."""
    metas = [read_json(folder / RUN_FILE) for folder in folders]
    records: dict[int, dict[str, Any]] = {}
    owner: dict[int, Path] = {}
    overlaps: dict[tuple[Path, Path], int] = {}
    unfinished, wall, devices = [], 0.0, set()
    for folder, folder_meta in zip(folders, metas, strict=True):
        found, torn = read_run_records(folder / RECORDS_FILE)
        if not _finished(folder, found, torn):
            unfinished.append(folder)
        for record in found:
            index = record["index"]
            if index in records:
                pair = (owner[index], folder)
                overlaps[pair] = overlaps.get(pair, 0) + 1
                continue
            records[index], owner[index] = record, folder
        wall += float(folder_meta.get("wall_time_s") or 0.0)
        devices.add(str(folder_meta.get("device")))
    for (first, other), count in overlaps.items():
        logger.warning(
            "%d samples are recorded in both %s and %s (one configuration run twice, or overlapping "
            "shards): each is counted once, from %s",
            count,
            first,
            other,
            first,
        )
    merged_meta = {k: v for k, v in metas[0].items() if k not in PER_JOB_KEYS}
    merged_meta["wall_time_s"] = wall
    merged_meta["device"] = ",".join(sorted(devices))
    ordered = [records[i] for i in sorted(records)]
    summary = summarize(ordered, merged_meta)
    summary["samples_digest"] = samples_digest(ordered)
    return Merged(summary, ordered, tuple(unfinished))


def group_runs(runs: Iterable[Path]) -> list[list[Path]]:
    """Run folders grouped by configuration (:func:`config_key`), in first-seen order."""
    groups: dict[str, list[Path]] = {}
    for run in runs:
        groups.setdefault(config_key(read_json(run / RUN_FILE)), []).append(run)
    return list(groups.values())


def samples_digest(records: Iterable[dict[str, Any]]) -> str:
    """Short hash of the evaluated sample tokens: equal digests mean the same samples."""
    tokens = sorted(r["sample_token"] for r in records)
    return hashlib.sha1("\n".join(tokens).encode()).hexdigest()[:12]


def merge_runs(runs: Iterable[Path]) -> list[dict[str, Any]]:
    """One summary per configuration found in ``runs`` (shards merged, see :func:`merge_group`)."""
    return [merge_group(folders).summary for folders in group_runs(runs)]
