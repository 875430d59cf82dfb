"""``python -m vla_autoprune.evaluate`` / ``vla-autoprune-evaluate``: evaluate a planner (by default the
bundled VLA under AutoPrune).

Hydra app; see ``conf/evaluate.yaml``. A bare ``-m`` runs the default sweep (pruners x budgets,
``none`` once); ``-m`` with a sweep of its own runs exactly that sweep. A multirun writes a merged
report into the sweep folder.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.plugins import Plugins
from hydra.types import RunMode
from omegaconf import DictConfig

from vla_autoprune.errors import NotRunnableError
from vla_autoprune.pipeline.app import USER_ERRORS, evaluate, model_name, record_skipped
from vla_autoprune.pipeline.callbacks import discard_if_empty
from vla_autoprune.pipeline.group_choices import refuse_unknown_choices

logger = logging.getLogger(__name__)


def config_dir() -> str:
    """The ``conf/`` folder: shipped inside the package when installed, at the repo root in a checkout."""
    packaged = Path(__file__).resolve().with_name("conf")
    return str(packaged if packaged.is_dir() else Path(__file__).resolve().parents[1] / "conf")


def main() -> None:
    """Console entry point: the Hydra app, with the project's sweeper registered.

    Hydra finds sweepers by scanning the ``hydra_plugins`` namespace, which an editable install
    does not expose to that scan; registering the class makes a bare ``-m`` work in every install.
    """
    plugins = Plugins.instance()
    # Imported after Hydra's plugin scan, which re-executes modules it finds already imported (the
    # sweeper's base class would then be a stale copy).
    from hydra_plugins.vla_autoprune_sweeper.default_sweeper import DefaultSweeper

    plugins.register(DefaultSweeper)
    refuse_unknown_choices(sys.argv[1:], config_dir())  # Hydra's own answer is twenty lines
    run_app()


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="evaluate")
def run_app(cfg: DictConfig) -> None:
    """Hydra task: one job = one configuration."""
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        resume = f"hydra.sweep.dir={hydra_cfg.sweep.dir}"
    else:
        resume = f"hydra.run.dir={hydra_cfg.runtime.output_dir}"
    try:
        evaluate(
            cfg,
            hydra_cfg.runtime.output_dir,
            overrides=list(hydra_cfg.overrides.task),
            brief=hydra_cfg.mode == RunMode.MULTIRUN,  # the sweep's merged report has the table
            resume_hint=resume,
            # conf sets hydra.output_subdir: null; the app writes Hydra's record once the run is accepted
            hydra_record={
                "config.yaml": cfg,
                "hydra.yaml": HydraConfig.instance().cfg,
                "overrides.yaml": hydra_cfg.overrides.task,
            },
        )
    except NotRunnableError as err:
        if hydra_cfg.mode != RunMode.MULTIRUN:
            logger.error("error: %s", err)
            discard_if_empty(hydra_cfg.runtime.output_dir)
            sys.exit(2)
        # One impossible cell of a sweep (fastv at a budget out of its reach) must not stop the rest.
        choices = hydra_cfg.runtime.choices
        # the model as run.json and the report's header name it (tiny-drive-vla, or its folder)
        job = {"model": model_name(cfg), "pruner": choices.get("pruner"), "budget": cfg.get("budget")}
        record_skipped(hydra_cfg.runtime.output_dir, err, job, list(hydra_cfg.overrides.task))
    except KeyboardInterrupt:
        # Every finished batch is already on disk (records are appended and fsynced per batch).
        logger.error(
            "interrupted: the finished batches are saved; resume with the same command and %s", resume
        )
        sys.exit(130)
    except USER_ERRORS as err:
        # Bad input is the user's to fix: one line, no traceback. Anything else is a bug and keeps its.
        logger.error("error: %s", err)
        if hydra_cfg.mode != RunMode.MULTIRUN:
            discard_if_empty(hydra_cfg.runtime.output_dir)
        sys.exit(2)


if __name__ == "__main__":
    main()
