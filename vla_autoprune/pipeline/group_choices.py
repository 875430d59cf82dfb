"""Config-group choices on the command line (``pruner=fastv``), checked before Hydra composes.

Hydra's own answer to an unknown choice (``pruner=bogus``) is some twenty lines ending in its config
search path, and exit 1. This check gives the project's one line instead: the choice, the group's
options and where they live, exit 2. It judges only what it can: a command line Hydra cannot parse,
or one that adds config folders (``--config-dir``, ``hydra.searchpath``), is left to Hydra.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from hydra._internal.utils import get_args_parser
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override

from vla_autoprune.errors import ConfigError

logger = logging.getLogger(__name__)


def check_group_choices(argv: Sequence[str], conf_dir: str | Path) -> None:
    """Raise :class:`ConfigError` (one line) for the first config-group choice in ``argv`` (the
    command line, without the program) that names no yaml in ``conf_dir``'s group folders; sweeps
    (``-m pruner=fastv,bogus``) are checked value by value."""
    overrides = _overrides(argv)
    if overrides is None:
        return
    conf = Path(conf_dir)
    groups = {p.name for p in conf.iterdir() if p.is_dir() and p.name != "hydra"}
    for override in overrides:
        group = override.key_or_group
        if group not in groups or override.is_delete():
            continue
        values = (
            list(override.sweep_string_iterator()) if override.is_sweep_override() else [override.value()]
        )
        options = sorted(p.stem for p in (conf / group).glob("*.yaml"))
        for value in values:
            if isinstance(value, str) and "${" not in value and value not in options:
                raise ConfigError(
                    f"{group}={value}: there is no {group} config {value}.yaml in {conf / group}; "
                    f"choose one of: {', '.join(options)}"
                )


def refuse_unknown_choices(argv: Sequence[str], conf_dir: str | Path) -> None:
    """An entry point's first step: exit 2 with one ``error:`` line for an unknown choice
    (:func:`check_group_choices`)."""
    try:
        check_group_choices(argv, conf_dir)
    except ConfigError as err:
        logger.error("error: %s", err)
        sys.exit(2)


def _overrides(argv: Sequence[str]) -> list[Override] | None:
    """Hydra's parsed overrides of ``argv``, or None when the check should stay out of the way."""
    parser = get_args_parser()
    parser.exit_on_error = False
    try:
        args, rest = parser.parse_known_args(list(argv))
        if args.config_dir is not None or args.config_path is not None:
            return None
        overrides = OverridesParser.create().parse_overrides([*args.overrides, *rest])
    except (Exception, SystemExit):  # Hydra's parser says what is wrong with the command line
        return None
    if any(o.key_or_group.startswith("hydra.searchpath") for o in overrides):
        return None
    return overrides
