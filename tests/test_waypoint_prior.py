"""The waypoint priors: constant speed, and the fitted speed x command map (``command_prior``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from data_tools.train_tiny_vla import fit_command_prior
from vla_autoprune.data.schema import CAMERAS, COMMANDS
from vla_autoprune.models import DrivingVLA, DrivingVLAConfig
from vla_autoprune.models.waypoint_prior import SpeedCommandPrior, constant_speed_rollout

LEFT, STRAIGHT, RIGHT = (COMMANDS.index(c) for c in ("left", "straight", "right"))


def _batch(b: int = 3) -> dict:
    g = torch.Generator().manual_seed(3)
    return {
        "images": torch.randint(0, 256, (b, len(CAMERAS), 3, 96, 96), dtype=torch.uint8, generator=g),
        "cameras": CAMERAS,
        "command": torch.tensor([LEFT, STRAIGHT, RIGHT])[:b],
        "ego_state": torch.tensor([[5.0, 0.0, 0.0], [9.5, 0.0, 0.0], [0.0, 0.0, 0.0]])[:b],
    }


@pytest.fixture(scope="module")
def model() -> DrivingVLA:
    torch.manual_seed(0)
    return DrivingVLA(DrivingVLAConfig(command_prior=True)).eval()


def test_a_new_prior_is_the_constant_speed_rollout() -> None:
    prior = SpeedCommandPrior(len(COMMANDS))
    speed = torch.tensor([0.0, 4.0, 11.5])
    for command in range(len(COMMANDS)):
        out = prior(speed, torch.full((3,), command))
        assert torch.equal(out, constant_speed_rollout(speed))
    # 4 m/s for 0.5 .. 3 s along +x
    assert torch.allclose(constant_speed_rollout(speed)[1, :, 0], 4.0 * 0.5 * torch.arange(1, 7))


def test_a_model_with_an_unfitted_prior_plans_as_the_kinematic_one(model: DrivingVLA) -> None:
    batch = _batch()
    with torch.no_grad():
        with_prior = model.plan(batch)
        prior, model.command_prior = model.command_prior, None
        try:
            kinematic = model.plan(batch)
        finally:
            model.command_prior = prior
    assert torch.equal(with_prior, kinematic)


def test_fit_recovers_a_hand_made_linear_map() -> None:
    g = torch.Generator().manual_seed(0)
    truth = torch.randn(2 * len(COMMANDS), 12, generator=g, dtype=torch.float64)
    speed = torch.rand(40, generator=g) * 12
    command = torch.arange(40) % len(COMMANDS)
    prior = SpeedCommandPrior(len(COMMANDS))
    features = prior.features(speed, command).double()
    trajectory = (features @ truth).view(40, 6, 2).float()
    mask = torch.ones(40, 6, dtype=torch.bool)
    mask[0, 5] = False  # incomplete future: left out of the fit
    trajectory[0] = 1e6
    prior.fit_(speed, command, trajectory, mask)
    assert torch.allclose(prior.weight.T.double(), truth, atol=1e-4)
    assert torch.allclose(prior(speed[1:], command[1:]), trajectory[1:], atol=1e-3)


def test_fit_on_too_few_samples_says_so() -> None:
    prior = SpeedCommandPrior(len(COMMANDS))
    with pytest.raises(ValueError, match="2 samples with a full future cannot fit 6"):
        prior.fit_(
            torch.ones(2), torch.zeros(2, dtype=torch.long), torch.zeros(2, 6, 2), torch.ones(2, 6).bool()
        )


def test_the_fitted_prior_is_mirror_symmetric_frozen_and_survives_save_and_load(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = DrivingVLA(DrivingVLAConfig(command_prior=True)).eval()
    g = torch.Generator().manual_seed(2)
    n = 30
    speed = torch.rand(n, generator=g) * 10 + 2
    command = torch.arange(n) % len(COMMANDS)
    t = 0.5 * torch.arange(1, 7)
    turn = torch.tensor([1.0, 0.0, -1.0])[command] * (0.3 + torch.rand(n, generator=g))  # left bends +y
    trajectory = torch.stack([speed[:, None] * t, turn[:, None] * t**2], -1)
    data = {
        "command": command,
        "ego_state": torch.stack([speed, torch.zeros(n), torch.zeros(n)], 1),
        "gt_trajectory": trajectory,
        "gt_mask": torch.ones(n, 6, dtype=torch.bool),
    }
    fit_command_prior(model, data)
    assert model.command_prior is not None
    assert not any(p.requires_grad for p in model.command_prior.parameters())
    speeds = torch.tensor([6.0, 6.0])
    left, right = model.command_prior(speeds, torch.tensor([LEFT, RIGHT]))
    assert left[-1, 1] > 1.0  # a left turn goes left
    assert torch.allclose(left * torch.tensor([1.0, -1.0]), right, atol=1e-4)
    model.save_pretrained(tmp_path)
    loaded = DrivingVLA.from_pretrained(tmp_path).eval()
    assert loaded.command_prior is not None
    assert torch.equal(loaded.command_prior.weight, model.command_prior.weight)
    batch = _batch()
    with torch.no_grad():
        assert torch.equal(loaded.plan(batch), model.plan(batch))


def test_decode_without_the_command_says_what_is_missing(model: DrivingVLA) -> None:
    inputs = model.prepare(_batch(1))
    with pytest.raises(ValueError, match="'command'"):
        model.decode(inputs.with_(extras={"ego_speed": inputs.extras["ego_speed"]}))
