"""The pruners' string options as ``Literal`` types, and their one check; and the seed check (the
run's ``seed``, which the random pruner draws from).

Hydra hands options over as plain strings, so a pruner checks each one once, when it is
constructed, with :func:`check_choice`; past that point the ``Literal`` types let mypy check
every caller.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from vla_autoprune.errors import ConfigError

PositionIds = Literal["original", "contiguous"]
Accounting = Literal["actual", "reference"]
Stage0 = Literal["reference", "none", "before"]
HeadReduce = Literal["sum", "mean", "sum_over_T"]
# A baseline's variant: its official selection rule and counts, or the same family held to a budget.
Mode = Literal["matched", "faithful"]

POSITION_MODES: tuple[str, ...] = get_args(PositionIds)
ACCOUNTINGS: tuple[str, ...] = get_args(Accounting)
STAGE0_MODES: tuple[str, ...] = get_args(Stage0)
HEAD_REDUCTIONS: tuple[str, ...] = get_args(HeadReduce)
MODES: tuple[str, ...] = get_args(Mode)


def variant_label(name: str, mode: str) -> str:
    """The name reports show for a baseline's variant, e.g. ``pdrop[faithful]``, ``fastv[matched]``."""
    return f"{name}[{mode}]"


def no_budget_when_faithful(who: str, mode: str, budget: float | None, knob: str) -> None:
    """Raise :class:`ConfigError` for a faithful variant given a budget: its paper's ``knob`` sets the counts."""
    if mode == "faithful" and budget is not None:
        raise ConfigError(
            f"{who}: mode=faithful keeps the paper's counts ({knob}), so it takes no budget; "
            "set budget=null (pruner=<name>_faithful does) or use mode=matched"
        )


def check_choice(label: str, value: object, allowed: Any, who: str = "") -> None:
    """Raise :class:`ConfigError` unless ``value`` is one of ``allowed`` (a tuple or a ``Literal``).

    Args:
        label: the option's name, as the user writes it (``stage0``).
        value: what the user gave.
        allowed: the accepted values, or the ``Literal`` alias that lists them.
        who: prefix naming the component (``autoprune``), or empty.
    """
    choices = get_args(allowed) or tuple(allowed)
    if value not in choices:
        prefix = f"{who}: " if who else ""
        raise ConfigError(f"{prefix}{label}={value!r} is unknown; use one of {choices}")


def check_seed(seed: object, who: str = "") -> None:
    """Raise :class:`ConfigError` unless ``seed`` is a non-negative integer: ``torch.manual_seed``
    takes ``1.5`` silently and fails on ``abc`` with a traceback, and a string hashed into the random
    pruner's draws would run and record a seed no one chose. ``who``: prefix naming the component."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        prefix = f"{who}: " if who else ""
        raise ConfigError(f"{prefix}seed={seed!r} must be a non-negative integer, e.g. seed=0")
