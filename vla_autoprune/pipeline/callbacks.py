"""Hydra callbacks: check that the output folder can be written before anything runs (and, when a
command then fails its checks, remove the folder Hydra made for it), and after a multirun, merge
every job of the sweep into one report."""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from vla_autoprune.errors import ConfigError, UserError
from vla_autoprune.pipeline.report_files import write_report
from vla_autoprune.run_files import HYDRA_RECORD_DIR, LOCK_FILE, check_writable

logger = logging.getLogger(__name__)

#: Output folders this process's Hydra run is making, each with its nearest ancestor that existed
#: before (noted by :class:`OutputFolderCheck` before Hydra creates them): what
#: :func:`discard_if_empty` may remove, and where it stops.
_MADE: dict[Path, Path] = {}


class ReportCallback(Callback):
    """Writes report.md / report.csv / plots into the sweep folder when a multirun ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Inherited, see superclass."""
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.exists():
            return
        try:
            write_report([sweep_dir], sweep_dir)
        except UserError as err:
            logger.error("could not write the sweep report: %s", err)


class OutputFolderCheck(Callback):
    """Refuses, in one line, an output folder that cannot be written, before Hydra creates it (its
    own failure there is a traceback that never names ``hydra.run.dir``)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Inherited, see superclass."""
        _refuse_unwritable(config.hydra.run.dir, "hydra.run.dir")
        folder = Path(config.hydra.run.dir).absolute()
        existing = next(p for p in (folder, *folder.parents) if p.exists())
        if existing != folder:
            _MADE[folder] = existing

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Inherited, see superclass."""
        _refuse_unwritable(config.hydra.sweep.dir, "hydra.sweep.dir")


def _refuse_unwritable(folder: str, key: str) -> None:
    """Exit 2 with one line when ``folder`` cannot be written (:func:`check_writable`)."""
    try:
        check_writable(folder, key)
    except ConfigError as err:
        logger.error("error: %s", err)
        sys.exit(2)


def discard_if_empty(out_dir: str | Path) -> None:
    """Remove a run folder that this command made and that holds nothing of a run (only Hydra's
    ``.hydra/``, its log and the run's lock file), with the parents it made (``outputs/runs/``): a
    command that failed its checks leaves no empty folder behind. A folder that existed before the
    command (a user's own, even empty), or any other content, is kept."""
    out = Path(out_dir).absolute()
    existing = _MADE.get(out)
    if existing is None or not out.is_dir():
        return
    if all(e.name in (HYDRA_RECORD_DIR, LOCK_FILE) or e.suffix == ".log" for e in out.iterdir()):
        shutil.rmtree(out, ignore_errors=True)
        for parent in out.parents:
            if parent == existing:
                break
            try:
                parent.rmdir()  # only an empty folder: another run writing there keeps it
            except OSError:
                break
