"""What makes two evaluation runs the same configuration (run.json, the merge key, the resume check).

A run is identified by everything that changes its numbers: the planner, every field of the
instantiated pruner, the model, the dataset selection, dtype, limit and seed, and the ``variant``
(the command-line overrides that are not the pruner/budget choice, shard keys or execution
settings). Shards of one configuration differ only in the per-job keys below, so the merge groups
them; the resume check also compares the shard (through ``data_digest``), so a folder is only ever
continued by the job that started it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser

from vla_autoprune.errors import ConfigError

#: run.json keys that differ between the shards or reruns of one configuration.
PER_JOB_KEYS: tuple[str, ...] = ("shard", "num_shards", "data_digest", "wall_time_s", "output_dir", "device")
#: run.json keys a resumed job may change (a rerun on another device continues the same run).
_RESUMABLE_KEYS: tuple[str, ...] = ("wall_time_s", "output_dir", "device")

#: Override keys that are not part of ``variant``: the pruner/budget choice, the planner and its
#: camera ablation (in the planner's name, ``vla[black]``) have their own run.json fields, shard keys are per job, the rest only change how a run executes.
_NOT_VARIANT = frozenset(
    {
        "pruner",
        "budget",
        "pruner.budget",
        "planner",
        "cameras",
        "data.shard",
        "data.num_shards",
        "device",
        "batch_size",
        "num_workers",
        "resume",
    }
)


def dataset_selection(dataset: dict[str, Any]) -> dict[str, Any]:
    """The dataset config as run.json records it: a relative or ``~`` dataroot made absolute."""
    selection = dict(dataset)
    if selection.get("dataroot") is not None:
        selection["dataroot"] = str(Path(str(selection["dataroot"])).expanduser().resolve())
    return selection


def data_digest(selection: dict[str, Any], shard: int, num_shards: int, limit: int | None) -> str:
    """Short hash of which samples a job evaluates: dataset selection (dataroot, version, split, ...),
    shard and limit."""
    text = json.dumps(
        {"dataset": selection, "shard": shard, "num_shards": num_shards, "limit": limit},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def variant(overrides: Sequence[str]) -> str:
    """The task overrides that make this run a variant (e.g. ``pruner.stage0=before``), sorted; "" if none."""
    kept = []
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        key = override.key_or_group
        if key in _NOT_VARIANT or key.startswith(("hydra.", "hydra/")) or key == "hydra":
            continue
        kept.append(override.input_line or override.get_key_element())
    return " ".join(sorted(kept))


def config_key(meta: dict[str, Any]) -> str:
    """A stable identity of a configuration: its run.json without the per-job keys."""
    identity = {k: v for k, v in meta.items() if k not in PER_JOB_KEYS}
    return json.dumps(identity, sort_keys=True, default=str)


def check_resume(previous: dict[str, Any], current: dict[str, Any], out_dir: Path) -> None:
    """Raise a one-line :class:`ConfigError` naming both runs if ``out_dir`` holds another run."""
    old, new = _flat(previous), _flat(current)
    differing = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    differing = [k for k in differing if k.split(".")[0] not in _RESUMABLE_KEYS]
    if not differing:
        return
    raise ConfigError(
        f"{out_dir} holds another run ({_show(old, differing)}) than this one ({_show(new, differing)}); "
        "use a new hydra.run.dir / hydra.sweep.dir, or resume=false to start this folder over"
    )


def _flat(meta: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts flattened to dotted keys (``pruner_config.stage0``)."""
    out: dict[str, Any] = {}
    for key, value in meta.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _show(flat: dict[str, Any], keys: Sequence[str]) -> str:
    return ", ".join(f"{k}={flat.get(k)!r}" for k in keys)
