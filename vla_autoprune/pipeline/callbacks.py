"""Hydra callbacks: after a multirun, merge every job of the sweep into one report."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from vla_autoprune.errors import UserError
from vla_autoprune.pipeline.report_files import write_report

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
