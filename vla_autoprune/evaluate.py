"""``python -m vla_autoprune.evaluate``: evaluate a planner (by default the bundled VLA under AutoPrune).

Hydra app; see ``conf/evaluate.yaml``. ``-m`` runs the default sweep (pruners x budgets) and writes a
merged report into the sweep folder.
"""

from __future__ import annotations

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from vla_autoprune.pipeline.app import evaluate

logger = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    """Hydra entry point: one job = one configuration."""
    try:
        evaluate(cfg, HydraConfig.get().runtime.output_dir)
    except (ValueError, FileNotFoundError, KeyError) as err:
        # Bad input is the user's to fix: one line, no traceback.
        logger.error("error: %s", err)
        sys.exit(2)


if __name__ == "__main__":
    main()
