"""One pruner registry: every yaml of ``conf/pruner/`` and every registered pruner builds and runs.

The yamls go through Hydra's own compose + instantiate, as ``vla_autoprune.evaluate`` does.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import (
    NUM_VISUAL,
    build_decoder,
    forward,
    make_inputs,
)
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from vla_autoprune.errors import ConfigError
from vla_autoprune.pruning import PRUNERS, BudgetError, Pruner, build_pruner, prune, register_pruner
from vla_autoprune.pruning.budget import token_layers
from vla_autoprune.pruning.pruners.fastv import FastVPruner

pytestmark = pytest.mark.usefixtures("one_thread")

CONF = Path(__file__).resolve().parents[1] / "conf"
YAMLS = sorted(path.stem for path in (CONF / "pruner").glob("*.yaml"))
LAYERS = 8
# Reachable by every pruner on LAYERS layers and NUM_VISUAL tokens (PDrop's floor is the highest:
# layers 0 and 1 see all 16 tokens, so (2 * 16 + 6) / 8 = 4.75), and below NUM_VISUAL.
LEGAL_BUDGET = 10
FAITHFUL_SUFFIX = "_faithful"  # conf/pruner/<name>_faithful.yaml: the official variant of <name>


def run_and_check(pruner: Pruner, batch: int = 2) -> None:
    """Run ``pruner`` on a tiny decoder and check the budget (never above ``floor(B * L)``)."""
    model = build_decoder(layers=LAYERS)
    inputs = make_inputs(batch=batch, text_lengths=(5, 3)[:batch])
    pruner.check_budget(LAYERS, NUM_VISUAL)
    with prune(model, pruner, inputs) as record:
        forward(model, record.inputs)
    assert record.visual_tokens is not None
    total = record.visual_tokens.sum(dim=1)
    if pruner.budget is None:
        assert bool((total == NUM_VISUAL * LAYERS).all())
    else:
        assert bool((total <= token_layers(pruner.budget, LAYERS)).all()), (pruner, total)


FAITHFUL = sorted(n for n in YAMLS if n.endswith(FAITHFUL_SUFFIX))


def test_every_registered_pruner_has_a_yaml_and_every_yaml_a_pruner() -> None:
    assert sorted(n for n in YAMLS if n not in FAITHFUL) == sorted(PRUNERS)
    assert FAITHFUL == sorted(f"{n}{FAITHFUL_SUFFIX}" for n in ("fastervlm", "fastv", "pdrop", "sparsevlm"))


@pytest.mark.parametrize("name", FAITHFUL)
def test_every_faithful_yaml_instantiates_the_official_variant(name: str) -> None:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("evaluate", overrides=[f"pruner={name}", f"budget={LEGAL_BUDGET}"])
    pruner = instantiate(cfg.pruner)
    base = name.removesuffix(FAITHFUL_SUFFIX)
    assert type(pruner) is PRUNERS[base] and pruner.label == f"{base}[faithful]"
    # Only FasterVLM's official knob is the count itself; the others keep the paper's counts.
    assert pruner.budget == (LEGAL_BUDGET if base == "fastervlm" else None)
    model = build_decoder(layers=LAYERS)
    with prune(model, pruner, make_inputs(batch=2, text_lengths=(5, 3))) as record:
        forward(model, record.inputs)
    assert record.visual_tokens is not None and int(record.visual_tokens[:, -1].max()) < NUM_VISUAL


@pytest.mark.parametrize("name", [n for n in YAMLS if n not in FAITHFUL])
def test_every_yaml_instantiates_through_hydra_and_runs(name: str) -> None:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("evaluate", overrides=[f"pruner={name}", f"budget={LEGAL_BUDGET}"])
    pruner = instantiate(cfg.pruner)
    assert type(pruner) is PRUNERS[name] and pruner.name == name
    assert pruner.budget == (None if name == "none" else LEGAL_BUDGET)
    run_and_check(pruner)


@pytest.mark.parametrize("name", [n for n in YAMLS if n != "none" and n not in FAITHFUL])
def test_non_numeric_budget_on_the_command_line_fails_when_the_pruner_is_built(name: str) -> None:
    # Hydra hands `budget=abc` over as the str 'abc'; the pipeline unwraps Hydra's wrapper.
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("evaluate", overrides=[f"pruner={name}", "budget=abc"])
    with pytest.raises(InstantiationException) as err:
        instantiate(cfg.pruner)
    cause = err.value.__cause__
    assert isinstance(cause, BudgetError) and str(cause).startswith(f"{name}: budget='abc' is not a number")


@pytest.mark.parametrize("name", sorted(PRUNERS))
def test_every_registry_entry_builds_and_runs_at_a_legal_budget(name: str) -> None:
    lo, hi = build_pruner(name).reachable(LAYERS, NUM_VISUAL)
    for budget in sorted({lo, (lo + hi) / 2, hi}):
        run_and_check(build_pruner(name, budget=budget))


def test_registering_needs_an_own_and_unique_name() -> None:
    class Unnamed(FastVPruner):  # inherits "fastv" but does not set its own name
        pass

    class Clash(FastVPruner):
        name = "fastv"

    with pytest.raises(TypeError, match="must set its own `name`"):
        register_pruner(Unnamed)
    with pytest.raises(TypeError, match="'fastv' is taken by FastVPruner"):
        register_pruner(Clash)
    assert PRUNERS["fastv"] is FastVPruner
    with pytest.raises(TypeError):
        PRUNERS["fastv"] = Clash  # type: ignore[index]  # read-only view


@pytest.mark.parametrize("name", ["fastv", "pdrop", "sparsevlm"])
def test_faithful_with_a_budget_is_a_one_line_error_naming_the_fix(name: str) -> None:
    with pytest.raises(
        ConfigError, match=f"^{name}: mode=faithful keeps the paper's counts .* budget=null"
    ) as err:
        build_pruner(name, budget=8, mode="faithful")
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="mode='exact' is unknown"):
        build_pruner(name, budget=8, mode="exact")
