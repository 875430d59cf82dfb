"""One evaluation run, from a composed Hydra config to ``summary.json`` (used by ``vla_autoprune.evaluate``).

Order matters for bad input: everything that can be checked cheaply (missing values, device, dtype,
shard, the pruner's fields and its budget against the model's config, the run folder's identity)
is checked before the dataset and the model load, so a bad config is a one-line error that costs
nothing.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import math
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from planners.base import Planner
from planners.cameras import dataset_seen_by
from vla_autoprune.data import collate
from vla_autoprune.data.errors import NuScenesDataError
from vla_autoprune.data.schema import CAMERAS
from vla_autoprune.devices import resolve_device, resolve_dtype
from vla_autoprune.errors import ConfigError, NotRunnableError, UserError
from vla_autoprune.models.describe import ModelShape, describe
from vla_autoprune.models.loading import BUNDLED_MODELS
from vla_autoprune.pipeline.closed_loop_scores import DEFAULT_SCORES, check_scores
from vla_autoprune.pipeline.identity import (
    check_resume,
    data_digest,
    dataset_selection,
    variant,
)
from vla_autoprune.pipeline.loop import run_split, shard_indices
from vla_autoprune.pipeline.merge import samples_digest
from vla_autoprune.pipeline.summary import summarize
from vla_autoprune.pipeline.table import SHORT_COLUMNS, table_rows, to_markdown
from vla_autoprune.pruning.calibration import calibrate_pruner
from vla_autoprune.pruning.options import check_seed
from vla_autoprune.run_files import (
    CONFIG_FILE,
    HYDRA_RECORD_DIR,
    RECORDS_FILE,
    RUN_FILE,
    SKIPPED_FILE,
    SUMMARY_FILE,
    atomic_write_json,
    atomic_write_text,
    read_records,
    run_lock,
)

logger = logging.getLogger(__name__)

#: Bad input a user can fix, reported as one line: the project's :class:`UserError`, and the data
#: layer's own error family (until ``vla_autoprune.data.errors`` derives from ``UserError`` too).
USER_ERRORS: tuple[type[Exception], ...] = (UserError, NuScenesDataError)


def build(node: Any) -> Any:
    """``hydra.utils.instantiate``, re-raising a component's own bad-input error (:data:`USER_ERRORS`) unwrapped."""
    try:
        return instantiate(node)
    except InstantiationException as err:
        cause: BaseException | None = err
        while cause is not None and not isinstance(cause, USER_ERRORS):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        unknown = _unknown_setting(err, node)
        if unknown is not None:
            raise unknown from None
        raise


def _unknown_setting(err: InstantiationException, node: Any) -> ConfigError | None:
    """A one-line error for a setting the component does not take (``+pruner.foo=1``: Hydra
    accepts the key, the constructor refuses it), naming the settings it does take; else None."""
    cause = err.__cause__
    found = (
        re.search(r"unexpected keyword argument '(\w+)'", str(cause))
        if isinstance(cause, TypeError)
        else None
    )
    if found is None or not OmegaConf.is_config(node):
        return None
    # the component that refused it: Hydra names its config path (``full_key: planner.pruner``)
    where = re.search(r"full_key: ([\w.]+)", str(err))
    failed = OmegaConf.select(node._get_root(), where.group(1)) if where else node
    target = OmegaConf.select(failed, "_target_", default=None) if OmegaConf.is_config(failed) else None
    if target is None:
        return None
    try:
        parameters = inspect.signature(get_class(str(target))).parameters
    except (ValueError, ImportError, TypeError):
        return None
    settings = ", ".join(name for name in parameters if name not in ("self", "args", "kwargs"))
    key = f"{where.group(1)}.{found.group(1)}" if where else found.group(1)
    return ConfigError(
        f"{key} is not a setting of {str(target).rsplit('.', 1)[-1]} (its settings: {settings}); "
        "drop that override"
    )


def check_config(cfg: DictConfig) -> None:
    """One-line :class:`ConfigError` for values that are missing or out of range (no I/O)."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        example = " (the nuScenes folder, e.g. /data/nuscenes)" if "data.dataset.dataroot" in missing else ""
        raise ConfigError(
            f"{', '.join(missing)} must be set; add {' '.join(f'{k}=...' for k in missing)} to the command"
            + example
        )
    shard, num_shards = cfg.data.shard, cfg.data.num_shards
    if not (isinstance(num_shards, int) and isinstance(shard, int) and 0 <= shard < num_shards):
        raise ConfigError(
            f"data.shard={shard} of data.num_shards={num_shards}: need integers with 0 <= shard < num_shards"
        )
    for key, value in (("limit", cfg.limit), ("batch_size", cfg.batch_size)):
        if value is not None and not (isinstance(value, int) and value > 0):
            every = " (or null: every sample)" if key == "limit" else ""
            raise ConfigError(f"{key}={value!r} must be a positive integer{every}")
    workers = cfg.num_workers
    if not (isinstance(workers, int) and workers >= 0):
        raise ConfigError(f"num_workers={workers!r} must be 0 (load in this process) or a positive integer")
    check_seed(cfg.seed)


def warn_unused_budget(planner: Planner, overrides: Sequence[str]) -> None:
    """Say so when a ``budget=`` (or, for a planner without a pruner, a ``pruner=``) given on the
    command line does not reach a pruner (``none``, a faithful pruner's own rule, a model-free
    planner), instead of ignoring it silently."""
    given = _given("budget", overrides)
    pruner = getattr(planner, "pruner", None)
    if pruner is None:
        choice = [name for name in _given("pruner", overrides) if name != "none"]
        if choice:
            logger.warning("pruner=%s is ignored: planner=%s prunes nothing", choice[-1], planner.name)
    if not given or (pruner is not None and pruner.budget is not None):
        return
    if pruner is None:
        why = "this planner prunes nothing"
    elif pruner.name == "none":
        why = "pruner=none keeps every visual token"
    else:
        why = f"{pruner.label} prunes by its own rule; pruner={pruner.name} is its budget-matched form"
    logger.warning(
        "budget=%s is ignored: %s (the record reports the tokens actually processed)", given[-1], why
    )


def _given(key: str, overrides: Sequence[str]) -> list[str]:
    """The values the command line gave ``key`` (``key=v``, ``+key=v``, ``++key=v``), in order."""
    return [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0].lstrip("+~") == key]


def model_name(cfg: DictConfig) -> str | None:
    """The model the planner loads (bundled name, or an absolute folder path); None for model-free planners."""
    name = OmegaConf.select(cfg, "planner.model.name_or_path", default=None)
    if name is None:
        return None
    return str(name) if str(name) in BUNDLED_MODELS else str(Path(str(name)).expanduser().resolve())


def checked_planner(cfg: DictConfig) -> tuple[Planner, torch.device, ModelShape | None]:
    """The configured planner as ``evaluate`` and the viewer's live run take it, before any data or
    weights load: device and dtype checked, the planner built (weights load later, in setup()), its
    model folder checked (:meth:`Planner.check_before_loading`), its budget checked against the
    model's config (:func:`check_budget_before_loading`) and the model's calibration handed to its
    pruner. Returns it with the device and the model's shape (None for a model-free planner)."""
    device = resolve_device(cfg.device)
    resolve_dtype(cfg.dtype)
    planner: Planner = build(cfg.planner)
    planner.check_before_loading()
    shape = check_budget_before_loading(cfg, planner)
    adopt_model_calibration(cfg, planner)
    return planner, device, shape


def check_budget_before_loading(cfg: DictConfig, planner: Planner) -> ModelShape | None:
    """The pruner's budget against the model's depth and visual tokens, from its config.json alone;
    raises :class:`~vla_autoprune.errors.NotRunnableError`. Returns the model's shape (None for a
    planner without a pruner or a model).

    Also refuses a pruner that would rank visual tokens by the text's attention at a layer where a
    deep-fusion model's text cannot see them (every score 0).
    """
    pruner = getattr(planner, "pruner", None)
    model = model_name(cfg)
    if pruner is None or model is None:
        return None
    size = OmegaConf.select(cfg, "data.dataset.image_size", default=None)
    shape = describe(model, image_size=tuple(size) if size is not None else None)  # type: ignore[arg-type]
    cameras = OmegaConf.select(cfg, "data.dataset.cameras", default=None) or CAMERAS
    num_visual = shape.num_visual(len(cameras))
    pruner.check_budget(shape.num_layers, num_visual)
    first = shape.text_sees_visual_from
    ranked = pruner.blind_text_layer(shape.num_layers, num_visual, first)
    if ranked is not None:
        budget = f"budget {pruner.budget:g}" if pruner.budget is not None else "its settings"
        lowest = pruner.lowest_budget_seeing(shape.num_layers, num_visual, first)
        fix = f"use a budget of at least {lowest:g}" if lowest is not None else "no budget helps"
        raise NotRunnableError(
            f"{pruner.label} at {budget} ranks visual tokens by the text's attention at decoder layer "
            f"{ranked}, but {Path(str(model)).name} reads its cameras only from layer {first} on "
            f"(vision_from_layer={first}), so every score would be 0; {fix}, or use random, fastervlm "
            "or autoprune (stage0 reference)"
        )
    return shape


def adopt_model_calibration(cfg: DictConfig, planner: Planner) -> None:
    """Hand the pruner the constants measured for this model (``pruning_calibration.json``,
    :mod:`vla_autoprune.pruning.calibration`), before the run's identity is written."""
    pruner = getattr(planner, "pruner", None)
    model = model_name(cfg)
    if pruner is not None and model is not None:
        calibrate_pruner(pruner, model)


def record_skipped(
    out_dir: str | Path, err: NotRunnableError, job: dict[str, Any], overrides: Sequence[str]
) -> None:
    """Write why this multirun job did not run (:data:`SKIPPED_FILE`: ``job``, e.g. its model,
    pruner and budget, the reason and the job's overrides); the sweep's report lists it."""
    logger.error("not run (the sweep goes on; report.md lists it): %s", err)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / SKIPPED_FILE, {**job, "reason": str(err), "overrides": list(overrides)})


def run_meta(
    cfg: DictConfig, planner: Planner, device: torch.device, out_dir: Path, overrides: Sequence[str] = ()
) -> dict[str, Any]:
    """What this run is (written to run.json; configurations are told apart by it, see ``identity``)."""
    pruner = getattr(planner, "pruner", None)
    selection = dataset_selection(OmegaConf.to_container(cfg.data.dataset, resolve=True))  # type: ignore[arg-type]
    return {
        "planner": planner.name,
        "pruner": pruner.name if pruner is not None else "none",
        # What tables show: the registry name plus its variant, e.g. ``pdrop[faithful]``.
        "pruner_label": pruner.label if pruner is not None else "none",
        "position_ids": getattr(pruner, "position_ids", None),
        "budget": getattr(pruner, "budget", None),
        "pruner_config": dataclasses.asdict(pruner) if dataclasses.is_dataclass(pruner) else None,  # type: ignore[arg-type]
        "accounting": getattr(pruner, "accounting", "actual"),
        "model": model_name(cfg),
        "data": selection,
        "data_digest": data_digest(selection, cfg.data.shard, cfg.data.num_shards, cfg.limit),
        "variant": variant(overrides),
        "dtype": cfg.dtype,
        "limit": cfg.limit,
        "seed": cfg.seed,
        "shard": cfg.data.shard,
        "num_shards": cfg.data.num_shards,
        "device": str(device),
        "output_dir": str(out_dir),
    }


def evaluate(
    cfg: DictConfig,
    out_dir: str | Path,
    overrides: Sequence[str] = (),
    brief: bool = False,
    resume_hint: str | None = None,
    hydra_record: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Run one configuration end to end; returns the summary (also written to ``out_dir``).

    Args:
        cfg: the composed ``evaluate`` config.
        out_dir: the run folder; with ``cfg.resume`` a folder holding this same run is continued.
        overrides: the job's task overrides (``HydraConfig.get().overrides.task``), for ``variant``.
        brief: log the result as one line (a sweep's job: the merged report has the table), not
            as a table.
        resume_hint: how to resume this run (``hydra.run.dir=...``), logged once the configuration
            and the data have passed their checks, before the model loads.
        hydra_record: Hydra's record of the job (file name -> config node, e.g. ``overrides.yaml``),
            written to ``out_dir/.hydra/`` once the run is accepted. The entry point sets
            ``hydra.output_subdir: null`` and hands it here: Hydra writes it before any check, so a
            resume refused for another configuration would overwrite the record of the run the
            folder holds.
    """
    out_dir = Path(out_dir)
    started = time.perf_counter()
    check_config(cfg)
    scores = check_scores(OmegaConf.select(cfg, "scores", default=DEFAULT_SCORES))
    planner, device, _ = checked_planner(cfg)
    warn_unused_budget(planner, overrides)
    with run_lock(out_dir):  # one process at a time appends to a run folder
        (out_dir / SKIPPED_FILE).unlink(missing_ok=True)  # an earlier attempt of this job was not runnable
        meta = run_meta(cfg, planner, device, out_dir, overrides)
        previous = _previous_meta(out_dir, cfg.resume)
        if previous is not None:
            check_resume(previous, meta, out_dir)
        torch.manual_seed(cfg.seed)
        dataset = dataset_seen_by(planner, build(cfg.data.dataset))
        indices = shard_indices(len(dataset), cfg.data.shard, cfg.data.num_shards, cfg.limit)
        if not indices:
            raise ConfigError(
                f"data.shard={cfg.data.shard} of {cfg.data.num_shards} (limit={cfg.limit}) selects no sample of "
                f"{len(dataset)}; use fewer shards"
            )
        todo = _not_yet_recorded(out_dir, indices) if cfg.resume else list(indices)
        if resume_hint and todo:
            logger.info("to resume after an interruption, rerun with %s", resume_hint)
        if todo:
            planner.setup()
            planner.validate(collate([dataset[todo[0]]]))
        past_time = float((previous or {}).get("wall_time_s") or 0.0)
        if previous is not None and "wall_time_s" in previous:
            meta["wall_time_s"] = previous["wall_time_s"]
        atomic_write_json(out_dir / RUN_FILE, meta)  # the folder exists: run_lock made it
        OmegaConf.save(cfg, out_dir / CONFIG_FILE, resolve=True)
        for name, node in (hydra_record or {}).items():
            (out_dir / HYDRA_RECORD_DIR).mkdir(exist_ok=True)
            atomic_write_text(out_dir / HYDRA_RECORD_DIR / name, OmegaConf.to_yaml(node))
        records = run_split(
            planner,
            dataset,
            indices,
            out_dir,
            batch_size=cfg.batch_size,
            num_workers=cfg.num_workers,
            resume=cfg.resume,
            scores=scores,
        )
        # Time spent evaluating, summed over the sessions that finished; a rerun with nothing left to do
        # keeps the recorded time rather than replacing it with the time of the skip.
        meta["wall_time_s"] = past_time + (time.perf_counter() - started if todo else 0.0)
        atomic_write_json(out_dir / RUN_FILE, meta)
        summary = summarize(records, meta)
        summary["samples_digest"] = samples_digest(records)
        atomic_write_json(out_dir / SUMMARY_FILE, summary)
        if brief:
            logger.info("%s: %s", out_dir / SUMMARY_FILE, one_line(summary))
        else:
            logger.info("%s\n%s", out_dir / SUMMARY_FILE, to_markdown(table_rows([summary]), SHORT_COLUMNS))
        return summary


def one_line(summary: dict[str, Any]) -> str:
    """A run's headline figures in one line, e.g. for each job of a sweep (whose merged report has
    the table): ``vla autoprune @ 49: L2@3s 1.718 m, Col@3s 4.0 % (stp3), 864 samples``."""
    row = table_rows([summary])[0]
    budget = f" @ {row['budget']:g}" if isinstance(row.get("budget"), int | float) else ""
    l2, col = row.get("L2@3s stp3"), row.get("Col@3s stp3")
    if isinstance(l2, float) and isinstance(col, float) and math.isfinite(l2) and math.isfinite(col):
        figures = f"L2@3s {l2:.3f} m, Col@3s {100 * col:.1f} % (stp3)"
    else:
        figures = "no planned sample with a full 3 s future"
    return f"{row['planner']} {row['pruner']}{budget}: {figures}, {row['samples']} samples"


def _previous_meta(out_dir: Path, resume: bool) -> dict[str, Any] | None:
    """run.json of the run this job continues (None: a fresh folder, or ``resume=false``)."""
    path = out_dir / RUN_FILE
    if not resume or not path.is_file():
        return None
    try:
        previous: dict[str, Any] = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path} is not valid JSON ({err}); rerun with resume=false") from None
    return previous


def _not_yet_recorded(out_dir: Path, indices: Sequence[int]) -> list[int]:
    """``indices`` without a record in ``out_dir/records.jsonl`` yet."""
    done = {r["index"] for r in read_records(out_dir / RECORDS_FILE, repair=True)}
    return [i for i in indices if i not in done]
