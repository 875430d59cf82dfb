"""Hydra callbacks: check that the output folder can be written before anything runs, and after a
multirun, merge every job of the sweep into one report."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from vla_autoprune.errors import ConfigError, UserError
from vla_autoprune.pipeline.report_files import write_report
from vla_autoprune.run_files import check_writable

logger = logging.getLogger(__name__)


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
