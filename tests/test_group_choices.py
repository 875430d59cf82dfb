"""A config-group choice that names no yaml is one line before Hydra composes (group_choices.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vla_autoprune.errors import ConfigError
from vla_autoprune.evaluate import config_dir
from vla_autoprune.pipeline.group_choices import check_group_choices

CONF = config_dir()


@pytest.mark.parametrize(
    "argv",
    [
        ["pruner=fastv", "budget=64"],
        ["-m", "pruner=none,fastv,autoprune", "budget=49,96"],
        ["planner=constant_velocity", "model=tiny_drive_vla", "cameras=black", "data=nuscenes"],
        ["~pruner"],  # deleting a group is Hydra's to judge
        ["pruner=${oc.env:PRUNER}"],  # an interpolation resolves later
        ["hydra/launcher=joblib", "budget=bogus"],  # not a group of ours; not a group at all
    ],
)
def test_known_choices_pass(argv: list[str]) -> None:
    check_group_choices(argv, CONF)


@pytest.mark.parametrize(
    ("argv", "group", "said"),
    [
        (["pruner=bogus"], "pruner", "pruner=bogus: there is no pruner config bogus.yaml in "),
        (["-m", "pruner=fastv,bogus", "budget=64"], "pruner", "pruner=bogus: "),
        (["budget=64", "planner=vlaa"], "planner", "planner=vlaa: "),
        (["+pruner@other=nope"], "pruner", "pruner=nope: "),
    ],
)
def test_an_unknown_choice_is_one_line_naming_the_options(argv: list[str], group: str, said: str) -> None:
    with pytest.raises(ConfigError) as err:
        check_group_choices(argv, CONF)
    message = str(err.value)
    assert message.startswith(said) and "\n" not in message
    assert f" in {Path(CONF) / group}; choose one of: " in message
    options = sorted(p.stem for p in (Path(CONF) / group).glob("*.yaml"))
    assert message.endswith(", ".join(options)) and len(options) >= 3


@pytest.mark.parametrize(
    "argv",
    [
        ["pruner=bogus", "--config-dir", "/elsewhere"],  # another folder may hold it: Hydra decides
        ["pruner=bogus", "hydra.searchpath=[file:///elsewhere]"],
        ["pruner=bogus", "budget=[unclosed"],  # Hydra's parser explains a malformed command line
    ],
)
def test_what_hydra_must_judge_is_left_to_it(argv: list[str]) -> None:
    check_group_choices(argv, CONF)
