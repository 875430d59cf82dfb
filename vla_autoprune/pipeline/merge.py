"""Combine run folders (shards of one evaluation, runs of a sweep) into one summary per configuration.

Every run folder holds ``run.json`` (what was run) and ``records.jsonl`` (per-sample results).
Runs that differ only in their shard are one configuration (:func:`config_key`, defined in
:mod:`vla_autoprune.pipeline.identity`): their records are concatenated (deduplicated by dataset
index) and summarised again, so a sharded evaluation reports exactly what one unsharded run would.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from vla_autoprune.errors import DataNotFoundError
from vla_autoprune.pipeline.identity import PER_JOB_KEYS, config_key
from vla_autoprune.pipeline.summary import summarize
from vla_autoprune.run_files import RECORDS_FILE, RUN_FILE, SKIPPED_FILE, read_records

logger = logging.getLogger(__name__)

__all__ = ["config_key", "find_runs", "find_skipped", "merge_runs", "samples_digest"]


def find_runs(roots: Iterable[str | Path]) -> list[Path]:
    """Run folders (holding ``run.json``) under any of ``roots``, sorted."""
    runs: set[Path] = set()
    for root in roots:
        root = Path(root)
        if not root.exists():
            raise DataNotFoundError(f"{root} does not exist; pass a run or sweep output folder")
        runs.update(p.parent for p in root.rglob(RUN_FILE))
    return sorted(runs)


def find_skipped(roots: Iterable[str | Path]) -> list[tuple[Path, dict[str, Any]]]:
    """``(job folder, skipped.json)`` of every multirun job under ``roots`` that was not runnable, sorted."""
    found = {p.parent: p for root in roots for p in Path(root).rglob(SKIPPED_FILE)}
    return [(folder, json.loads(found[folder].read_text())) for folder in sorted(found)]


def samples_digest(records: Iterable[dict[str, Any]]) -> str:
    """Short hash of the evaluated sample tokens: equal digests mean the same samples."""
    tokens = sorted(r["sample_token"] for r in records)
    return hashlib.sha1("\n".join(tokens).encode()).hexdigest()[:12]


def merge_runs(runs: Iterable[Path]) -> list[dict[str, Any]]:
    """One summary per configuration found in ``runs`` (shards merged)."""
    groups: dict[str, dict[str, Any]] = {}
    for run in runs:
        meta = json.loads((run / RUN_FILE).read_text())
        group = groups.setdefault(
            config_key(meta), {"meta": meta, "records": {}, "wall": 0.0, "devices": set()}
        )
        for record in read_records(run / RECORDS_FILE):
            group["records"][record["index"]] = record
        group["wall"] += float(meta.get("wall_time_s") or 0.0)
        group["devices"].add(str(meta.get("device")))
    summaries = []
    for group in groups.values():
        meta = {k: v for k, v in group["meta"].items() if k not in PER_JOB_KEYS}
        meta["wall_time_s"] = group["wall"]
        meta["device"] = ",".join(sorted(group["devices"]))
        records = list(group["records"].values())
        summary = summarize(records, meta)
        summary["samples_digest"] = samples_digest(records)
        summaries.append(summary)
    return summaries
