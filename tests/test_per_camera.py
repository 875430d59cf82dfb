"""Per-camera budgets: ``per_camera: none | uniform | [ratios]`` for every pruner."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import (
    NUM_VISUAL,
    build_decoder,
    forward,
    make_inputs,
)
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from vla_autoprune.errors import ConfigError
from vla_autoprune.pruning import build_pruner, prune
from vla_autoprune.pruning.budget import token_layers
from vla_autoprune.pruning.cameras import camera_choice, camera_quotas

pytestmark = pytest.mark.usefixtures("one_thread")

LAYERS = 8
BUDGET = 8
PER_CAMERA = NUM_VISUAL // 2  # make_inputs: 2 cameras x 8 tokens


def test_quotas_hand_worked() -> None:
    assert camera_quotas(6, [8, 8], [1, 1]) == [3, 3]
    assert camera_quotas(7, [8, 8], [1, 1]) == [4, 3]  # remainder to the larger share, then index
    assert camera_quotas(8, [8, 8], [3, 1]) == [6, 2]
    assert camera_quotas(8, [2, 8], [3, 1]) == [2, 6]  # camera 0 runs out; camera 1 takes the rest
    assert camera_quotas(5, [4, 4, 4], [1, 1, 0]) == [3, 2, 0]  # ratio 0: nothing
    assert camera_quotas(20, [4, 4], [1, 1]) == [4, 4]
    assert camera_quotas(1, [3, 3, 3], [1, 2, 1]) == [0, 1, 0]


def test_camera_choice_takes_each_cameras_own_top_tokens() -> None:
    scores = torch.tensor([[9.0, 8, 7, 6, 1, 2, 3, 4]])
    camera = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1]])
    valid = torch.ones_like(scores, dtype=torch.bool)
    chosen = camera_choice(scores, valid, camera, torch.tensor([4]), [1.0, 1.0])
    assert chosen[0].tolist() == [True, True, False, False, False, False, True, True]
    valid[0, 0] = False  # a filler never counts
    chosen = camera_choice(scores, valid, camera, torch.tensor([4]), [1.0, 1.0])
    assert chosen[0].tolist() == [False, True, True, False, False, False, True, True]


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("fastv", {}),
        ("random", {}),
        ("pdrop", {}),
        ("sparsevlm", {"recycle": False}),
        ("autoprune", {"recycle": False}),
        ("autoprune", {"recycle": False, "stage0": "before"}),
        ("fastervlm", {}),
    ],
)
@pytest.mark.parametrize("per_camera", ["uniform", [3, 1]])
def test_every_pruner_shares_its_kept_tokens_by_camera(name: str, kwargs: dict, per_camera: object) -> None:
    model = build_decoder(layers=LAYERS)
    inputs = make_inputs(batch=2, text_lengths=(5, 3))
    pruner = build_pruner(name, budget=BUDGET, per_camera=per_camera, **kwargs)
    with prune(model, pruner, inputs) as record:
        forward(model, record.inputs)
    assert record.camera_tokens is not None and record.visual_tokens is not None
    assert record.camera_tokens.shape == (2, LAYERS, 2)
    assert torch.equal(record.camera_tokens.sum(-1), record.visual_tokens)  # no merging here
    ratios = [1, 1] if per_camera == "uniform" else per_camera
    for b in range(2):
        for layer in range(LAYERS):
            total = int(record.visual_tokens[b, layer])
            if total < NUM_VISUAL:
                expected = camera_quotas(total, [PER_CAMERA, PER_CAMERA], ratios)  # type: ignore[arg-type]
                assert record.camera_tokens[b, layer].tolist() == expected, (b, layer)
    assert bool((record.visual_tokens.sum(1) <= token_layers(BUDGET, LAYERS)).all())  # budget still met
    assert int(record.visual_tokens[:, -1].max()) < NUM_VISUAL


def test_per_camera_none_lets_cameras_compete_and_is_the_default() -> None:
    model = build_decoder(layers=LAYERS)
    inputs = make_inputs(batch=1)
    saliency = torch.cat([torch.ones(1, PER_CAMERA), torch.zeros(1, PER_CAMERA)], dim=1)
    inputs = inputs.with_(vision_saliency=saliency + torch.rand(1, NUM_VISUAL) * 0.1)
    with prune(model, build_pruner("fastervlm", budget=6), inputs) as compete:
        forward(model, compete.inputs)
    with prune(model, build_pruner("fastervlm", budget=6, per_camera="uniform"), inputs) as shared:
        forward(model, shared.inputs)
    assert compete.camera_tokens is not None and compete.camera_tokens[0, 0].tolist() == [6, 0]
    assert shared.camera_tokens is not None and shared.camera_tokens[0, 0].tolist() == [3, 3]


def test_bad_per_camera_options_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match="per_camera='front' is unknown"):
        build_pruner("fastv", budget=8, per_camera="front")
    with pytest.raises(ConfigError, match="non-negative ratios"):
        build_pruner("fastv", budget=8, per_camera=[1, -1])
    model = build_decoder(layers=4)
    with (
        pytest.raises(ConfigError, match="has 3 ratios but the inputs have 2 cameras"),
        prune(model, build_pruner("fastv", budget=8, per_camera=[1, 1, 1]), make_inputs()),
    ):
        pass
    with pytest.raises(ConfigError, match="already keeps floor"):
        build_pruner("fastervlm", budget=8, mode="faithful", per_camera="uniform")


def test_per_camera_ratios_from_the_command_line_reach_the_pruner() -> None:
    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("evaluate", overrides=["pruner=fastv", "budget=8", "pruner.per_camera=[3,1]"])
    pruner = instantiate(cfg.pruner)
    assert pruner.per_camera == (3.0, 1.0) and pruner.camera_ratios(2) == [3.0, 1.0]
