"""Budget arithmetic and its error, in one place.

``budget`` ``B`` is the mean number of visual tokens a decoder layer processes, over all ``L``
layers and counting layer 0 ("actual" accounting), so every pruner can be held to the same number.
In token-layers the budget is ``floor(B * L)``: the total of visual tokens processed, summed over
layers, that a schedule must reach and never exceed.

Every pruner's reachable range comes from :func:`min_budget` (``full_layers`` layers see all ``V``
tokens, every later layer at least one) and is enforced by :func:`check_reachable`, whose message
is the only "budget out of range" message in the project.
"""

from __future__ import annotations

import math
import numbers

from vla_autoprune.errors import ConfigError, NotRunnableError

# Slack for budgets compared in floating point: keeps e.g. 64.0 * 3 from flooring to 191.
BUDGET_SLACK = 1e-9
# The reference's stage 0 keeps min(2.5 B, V) tokens (AUTOPRUNE.md section 6).
STAGE0_BUDGET_MULTIPLE = 2.5


class BudgetError(ConfigError):
    """The budget is not a positive number, or this pruner cannot meet it on this decoder."""


class UnreachableBudgetError(BudgetError, NotRunnableError):
    """A valid budget this pruner cannot meet on this decoder (:func:`check_reachable`)."""


def validate_budget(value: object, who: str) -> None:
    """Raise :class:`BudgetError` unless ``value`` is None or a positive, finite number.

    Hydra passes ``budget=abc`` on as the string ``'abc'``; this names ``budget`` instead of
    failing later inside arithmetic.
    """
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise BudgetError(
            f"{who}: budget={value!r} is not a number; set budget to the mean visual tokens per "
            "decoder layer, e.g. budget=64 (or null to keep every token)"
        )
    if not (math.isfinite(value) and float(value) > 0):
        raise BudgetError(
            f"{who}: budget={value!r} must be a positive, finite number of visual tokens per "
            "decoder layer, e.g. budget=64"
        )


def token_layers(budget: float, num_layers: int) -> int:
    """``floor(B * L)``: the visual token-layers a schedule may process in all."""
    return math.floor(budget * num_layers + BUDGET_SLACK)


def min_budget(num_layers: int, num_visual: int, full_layers: int = 1) -> float:
    """``(full V + (L - full)) / L``: the first ``full_layers`` layers see all ``V``, the rest 1 each.

    ``full_layers=1`` is the usual floor (layer 0 always sees every token, so ``(V + L - 1) / L``);
    ``0`` is a selection before the decoder (down to one token a layer).
    """
    return (full_layers * num_visual + num_layers - full_layers) / num_layers


def stage0_count(budget: float, num_layers: int, num_visual: int, first_layer: int) -> int:
    """Tokens stage 0 keeps: ``min(int(2.5 B), V, room)``, at least 1.

    ``first_layer`` is the layer that first processes the ``v0`` survivors: 1 when stage 0 runs
    after layer 0 (layer 0 then processed all ``V``), 0 when it runs before the decoder. ``room``
    is what the budget leaves once every layer after ``first_layer`` gets one token:
    ``floor(B L) - first_layer * V - (L - 1 - first_layer)``, i.e. ``L - 2`` later layers after an
    in-decoder stage 0 and ``L - 1`` after a pre-decoder one.
    """
    later_layers = num_layers - 1 - first_layer
    room = token_layers(budget, num_layers) - first_layer * num_visual - later_layers
    return max(1, min(int(STAGE0_BUDGET_MULTIPLE * budget), num_visual, room))


def check_reachable(
    budget: float,
    reachable: tuple[float, float],
    num_layers: int,
    num_visual: int,
    who: str,
    hint: str = "",
) -> None:
    """Raise :class:`BudgetError` (one line, naming the reachable range) unless ``lo <= B <= hi``."""
    lo, hi = reachable
    if not lo - BUDGET_SLACK <= budget <= hi + BUDGET_SLACK:
        raise UnreachableBudgetError(
            f"{who}: budget {budget:g} is not reachable with {num_layers} layers and {num_visual} "
            f"visual tokens; choose a budget in [{lo:.4g}, {hi:.4g}]{hint}"
        )
