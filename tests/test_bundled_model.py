"""The bundled models (the default early-fusion tiny-drive-vla, and the deep-fusion one): small,
honest about what they see, and they really drive from their cameras.

Issue 9's acceptance numbers, checked on held-out scenes (statistical thresholds, not timings):
the first scenes of the default val split (generator seed 0, val stream: never training scenes)
and of the val split of a second seed. ``training.json`` records the same numbers on the full
splits, checked here too. Also: the training recipe is deterministic (two short runs give the same
weights bit for bit) and its mirroring augmentation is right on hand-made values.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import evaluate_config

from data_tools.synthetic.scenario import WORLD_VERSION
from data_tools.synthetic_nuscenes import generate
from data_tools.train_tiny_vla import (
    BUNDLED_CONFIG,
    BUNDLED_LAYERS,
    CAMERA_ABLATIONS,
    CI_PRUNERS,
    EVAL_BATCH,
    ISSUE9_RATIOS,
    TrainArgs,
    load_split,
    mirror,
    ninth_budget,
    planner_metrics,
    predict,
    prepare_all,
    runnable_ci_pruners,
    train_model,
)
from data_tools.yardsticks import blind_predict, constant_velocity
from planners.cameras import ZeroVisualTokens
from vla_autoprune.data import CAMERAS
from vla_autoprune.models import BUNDLED_MODELS, DrivingVLA, DrivingVLAConfig, load
from vla_autoprune.models.loading import DEFAULT_MODEL, resolve_model_path
from vla_autoprune.pruning import build_pruner, run_pruned

#: The default val split's generator settings (conf/data/synthetic.yaml), and the second seed.
SEEDS = (0, 1)
SAMPLES_PER_SCENE = 12
IMAGE_SIZE = (192, 192)
#: Scenes evaluated per seed in CI: the first 12 of the val stream, two of each scenario family.
EVAL_SCENES = 12
MAX_WEIGHTS_BYTES = 50 * 2**20
MIN_TOKENS_PER_CAMERA, MIN_VISUAL_TOKENS = 64, 384
#: Issue 9 acceptance (stp3, @3 s): model L2 <= 0.6 x constant velocity's and <= 0.75 x the blind
#: fit's; images zeroed >= 1.5 x the model's L2; constant velocity collides >= 5 % and the model at
#: most half as often; random pruning at about V/9 visual tokens worsens L2 by >= 15 %.
MAX_L2_VS_CV, MAX_L2_VS_BLIND, MIN_ZEROED_RATIO = 0.6, 0.75, 1.5
MIN_CV_COLLISION, MAX_COLLISION_VS_CV = 0.05, 0.5
MIN_RANDOM_WORSENING = 1.15
#: ... and at about V/9 the 95 % CI of each pruner's L2@3s retention is at most 5 points either side.
MAX_RETENTION_HALF_WIDTH = 5.0


#: The second bundled model: deep fusion (the prompt reads the cameras from decoder layer 1 on), 720
#: training scenes, a scenario-family loss on its vision tower, 12 px patches merged 2 x 2. It beats
#: the camera-free yardsticks and meets every issue-9 check on both held-out seeds (its TRAINING.md).
DEEP_FUSION = "tiny-drive-vla-deep-fusion"


def _record(name: str) -> dict[str, Any]:
    """A bundled model's ``training.json`` (``name``: a bundled name or folder)."""
    return json.loads((resolve_model_path(name) / "training.json").read_text())


@pytest.fixture(scope="module")
def model() -> DrivingVLA:
    loaded = load("tiny-drive-vla")
    assert isinstance(loaded, DrivingVLA)
    return loaded


@pytest.fixture(scope="module")
def record() -> dict[str, Any]:
    return _record("tiny-drive-vla")


@pytest.fixture(scope="module", params=SEEDS, ids=[f"seed{s}" for s in SEEDS])
def held_out(
    request: pytest.FixtureRequest, model: DrivingVLA, tmp_path_factory: pytest.TempPathFactory
) -> dict:
    root = tmp_path_factory.mktemp(f"val_seed{request.param}")
    generate(
        root,
        scenes={"val": EVAL_SCENES},
        samples_per_scene=SAMPLES_PER_SCENE,
        image_size=IMAGE_SIZE,
        seed=request.param,
    )
    return load_split(root, "val", model)


def _acceptance(m: dict[str, dict[str, float]]) -> list[str]:
    """The acceptance checks that fail on metrics ``m`` (planner -> ``l2_3s`` / ``col_3s`` ...)."""
    model, cv, blind, zeroed = (
        m[k] for k in ("model", "constant_velocity", "blind_speed_x_command", "model_visual_zeroed")
    )
    checks = {
        "L2 vs constant velocity": model["l2_3s"] <= MAX_L2_VS_CV * cv["l2_3s"],
        "L2 vs blind fit": model["l2_3s"] < blind["l2_3s"],  # the 0.75 x check: test_beats_the_blind_fit...
        "images zeroed": zeroed["l2_3s"] >= MIN_ZEROED_RATIO * model["l2_3s"],
        "constant velocity collides": cv["col_3s"] >= MIN_CV_COLLISION,
        "model collides less": model["col_3s"] <= MAX_COLLISION_VS_CV * cv["col_3s"],
    }
    return [name for name, ok in checks.items() if not ok]


def test_bundled_folder_is_complete_small_and_recorded(record: dict[str, Any]) -> None:
    assert BUNDLED_MODELS == ("tiny-drive-vla", DEEP_FUSION)
    folder = resolve_model_path("tiny-drive-vla")
    assert folder.parts[-2:] == ("assets", "tiny-drive-vla")
    for name in ("config.json", "model.safetensors", "training.json", "TRAINING.md"):
        assert (folder / name).is_file(), name
    assert (folder / "model.safetensors").stat().st_size <= MAX_WEIGHTS_BYTES
    args = record["args"]
    assert "token_drop_prob" not in args and "camera_drop_prob" not in args  # no pruning-robustness trick
    assert set(record["val_stp3"]) == {f"seed{s}_val" for s in SEEDS}
    assert torch.tensor(record["blind_fit_weights"]).shape == (6, 12)


@pytest.mark.parametrize("name", BUNDLED_MODELS)
def test_bundled_models_were_trained_on_this_world(name: str) -> None:
    """A bundled model's recorded numbers and the main job's hold only on the world it learned: a
    change of the generator's :data:`WORLD_VERSION` must come with retrained bundled models."""
    record = _record(name)
    trained_on = record.get("world_version")
    assert trained_on == WORLD_VERSION, (
        f"{name} was trained on synthetic world {trained_on!r}, the generator draws {WORLD_VERSION!r}: "
        f"retrain it with the command in its TRAINING.md"
    )


@pytest.mark.parametrize("name", BUNDLED_MODELS)
def test_recorded_architecture_is_the_saved_one(name: str) -> None:
    """The record's ``config_overrides`` (what a reader rebuilds the recipe from) agree with the
    ``config.json`` the weights were saved with, key by key."""
    overrides = _record(name)["args"]["config_overrides"]
    saved = json.loads((resolve_model_path(name) / "config.json").read_text())
    for part, values in overrides.items():
        for key, value in values.items():
            assert saved[part][key] == value, (
                f"{name}: training.json {part}.{key}={value}, config.json {saved[part][key]}"
            )


@pytest.mark.parametrize("name", BUNDLED_MODELS)
def test_every_reading_of_images_zeroed_is_recorded_and_costs_the_model(name: str) -> None:
    """Issue 9's "images zeroed" has several readings (planners.cameras); each bundled record holds
    all of them on both held-out splits, and each, the in-distribution control too, plans worse
    than the intact model."""
    record = _record(name)
    for split, m in record["val_stp3"].items():
        for key in CAMERA_ABLATIONS:
            assert m[f"model_{key}"]["l2_3s"] > m["model"]["l2_3s"], (name, split, key)


@pytest.mark.parametrize("name", BUNDLED_MODELS)
def test_knowing_the_scenario_family_is_worth_more_than_the_cameras_give(name: str) -> None:
    """The oracle yardstick (the camera-free median told each sample's family, never a model input)
    beats the camera-free median and each bundled model on both held-out splits: what the cameras
    could tell a planner exceeds what these models take from them (README, TRAINING.md)."""
    record = _record(name)
    for split, m in record["val_stp3"].items():
        oracle = m["oracle_family_median"]["l2_3s"]
        assert oracle < m["blind_speed_x_command_median"]["l2_3s"], (name, split)
        assert oracle < m["model"]["l2_3s"], (name, split)


def test_recorded_full_split_numbers_meet_the_acceptance(record: dict[str, Any]) -> None:
    """training.json's numbers on the full held-out val splits of both seeds."""
    for split, metrics in record["val_stp3"].items():
        assert not _acceptance(metrics), (split, _acceptance(metrics), metrics)
        random_ninth = next(v for k, v in metrics.items() if k.startswith("model_random_b"))["l2_3s"]
        assert random_ninth >= MIN_RANDOM_WORSENING * metrics["model"]["l2_3s"], (split, metrics)


def test_beats_the_blind_fit_by_a_quarter_on_the_full_splits(record: dict[str, Any]) -> None:
    """Issue 9's planning check on training.json: model / blind L2@3s = 1.298 / 1.899 = 0.683 (seed 0)
    and 1.346 / 1.866 = 0.721 (seed 1); session 21's weights were a hair short (0.752 / 0.770, then a
    strict xfail), session 20's 0.80 / 0.78, the session-3 ones on 24 px patches 0.86 / 0.85."""
    _check_beats_the_blind_fit_by_a_quarter(record)


def _check_beats_the_blind_fit_by_a_quarter(record: dict[str, Any]) -> None:
    """training.json's L2@3s <= 0.75 x the blind linear fit's on both full held-out splits."""
    for split, m in record["val_stp3"].items():
        ratio = m["model"]["l2_3s"] / m["blind_speed_x_command"]["l2_3s"]
        assert ratio <= MAX_L2_VS_BLIND, (split, ratio)


def test_beats_the_camera_free_median_on_the_full_splits(record: dict[str, Any]) -> None:
    """training.json's stronger camera-free yardstick (``blind_speed_x_command_median``: the median
    future of the 32 train samples of the same command with the nearest speeds): the model's cameras
    must add to what speed and command alone give, on both full held-out splits (1.298 vs 1.552 m and
    1.346 vs 1.705 m; the session-3 weights on 24 px patches lost to it on seed 0, a strict xfail)."""
    for split, m in record["val_stp3"].items():
        assert m["model"]["l2_3s"] < m["blind_speed_x_command_median"]["l2_3s"], split


def test_recorded_retention_intervals_are_narrow_and_random_pruning_hurts(
    model: DrivingVLA, record: dict[str, Any]
) -> None:
    """training.json's L2@3s retention at about V/9 on the full held-out splits (2000 stratified
    scene-bootstrap resamples): every default-sweep pruner's CI half-width <= 5 points, and random
    pruning worsens L2@3s by >= 15 % (retention <= 1 / 1.15) with a CI that excludes 1."""
    _check_retention(record, runnable_ci_pruners(model, ninth_budget(model)))


def _check_retention(record: dict[str, Any], runnable: list[str]) -> None:
    """Every default-sweep pruner's recorded retention CI half-width <= 5 points on both splits,
    and random pruning at about V/9 worsens L2@3s by >= 15 % with a CI that excludes 1;
    ``runnable``: the pruners the model can run there (all must be recorded)."""
    assert set(record["retention_l2_3s"]) == {f"seed{s}_val" for s in SEEDS}
    for split, runs in record["retention_l2_3s"].items():
        # Every CI pruner the model can run (FastV at V/9 cannot rank on a deep-fusion model's blind
        # layer 0: not measured since session 12; older records still list what it measured then).
        assert set(runnable) <= {name.rsplit("_b", 1)[0] for name in runs} <= set(CI_PRUNERS), split
        for name, r in runs.items():
            assert r["low"] <= r["retention"] <= r["high"], (split, name, r)
            assert (r["high"] - r["low"]) / 2 <= MAX_RETENTION_HALF_WIDTH, (split, name, r)
        random = next(r for name, r in runs.items() if name.startswith("random_b"))
        assert random["retention"] <= 100.0 / MIN_RANDOM_WORSENING and random["high"] < 100.0, (split, random)


def test_bundled_architecture(model: DrivingVLA) -> None:
    text = model.config.text_config
    assert type(model.decoder).__name__ in ("LlamaForCausalLM", "Qwen2ForCausalLM")
    assert text.num_hidden_layers == BUNDLED_LAYERS and text.hidden_size == 128
    assert text.num_key_value_heads < text.num_attention_heads  # GQA
    assert (
        model.num_patches >= MIN_TOKENS_PER_CAMERA and model.num_patches * len(CAMERAS) >= MIN_VISUAL_TOKENS
    )
    assert list(model.config.ego_state_fields) == ["speed"]  # no accel / yaw rate giving the future away
    assert not model.training


def _held_out_metrics(
    model: DrivingVLA, record: dict[str, Any], held_out: dict
) -> dict[str, dict[str, float]]:
    """:func:`_acceptance`'s planners measured on ``held_out``: the model, its images zeroed, constant
    velocity and the blind fit recorded in ``record``."""
    blind = torch.tensor(record["blind_fit_weights"], dtype=torch.float64)
    return {
        "model": planner_metrics(predict(model, held_out), held_out),
        "model_visual_zeroed": planner_metrics(
            predict(model, held_out, cameras=ZeroVisualTokens()), held_out
        ),
        "constant_velocity": planner_metrics(constant_velocity(held_out["ego_state"]), held_out),
        "blind_speed_x_command": planner_metrics(blind_predict(blind, held_out), held_out),
    }


def _check_few_scenes(metrics: dict[str, dict[str, float]]) -> None:
    """:func:`_acceptance` re-measured on :data:`EVAL_SCENES` val scenes: every check but the
    collision ratio, which so few scenes do not resolve (the full-split tests require it), and the
    model must still collide less than constant velocity."""
    assert set(_acceptance(metrics)) <= {"model collides less"}, (_acceptance(metrics), metrics)
    assert metrics["model"]["col_3s"] < metrics["constant_velocity"]["col_3s"], metrics


def test_acceptance_on_held_out_scenes(model: DrivingVLA, record: dict[str, Any], held_out: dict) -> None:
    """The recorded checks re-measured on the first 12 val scenes of both seeds (:func:`_check_few_scenes`).
    On seed 1's the model collides in 7.2 % of future steps against constant velocity's 13.7 % (0.53
    x, more than the half the full-split test requires, where it is 3.2 % against 11.8 %); seed 0's
    give 1.9 % against 14.3 %."""
    _check_few_scenes(_held_out_metrics(model, record, held_out))


def test_evaluation_reuses_the_vision_tower_without_changing_a_plan(
    model: DrivingVLA, held_out: dict
) -> None:
    """:func:`predict` on :func:`prepare_all`'s inputs makes the plans it makes from the images, bit
    for bit, pruned (AutoPrune: MI, schedule and merging) and with the visual tokens zeroed, over
    more than one batch (the last one short); an ablation that replaces the images runs the tower on
    them instead of reusing the recorded ones."""
    count = 2 * EVAL_BATCH + 3
    data = {k: v[:count] for k, v in held_out.items() if isinstance(v, torch.Tensor)}
    prepared = prepare_all(model, data)
    assert len(prepared) == 3
    pruner = build_pruner("autoprune", budget=ninth_budget(model))
    for kwargs in ({}, {"pruner": pruner}, {"cameras": CAMERA_ABLATIONS["visual_zeroed"]}):
        assert torch.equal(predict(model, data, prepared=prepared, **kwargs), predict(model, data, **kwargs))
    black = CAMERA_ABLATIONS["images_black"]
    from_black = predict(model, data, cameras=black, prepared=prepared)
    assert torch.equal(from_black, predict(model, data, cameras=black))
    assert not torch.equal(from_black, predict(model, data, prepared=prepared))


def test_random_pruning_at_a_ninth_of_the_tokens_hurts(model: DrivingVLA, held_out: dict) -> None:
    """Without pruning-robustness training, random pruning to about V/9 tokens costs >= 15 % L2@3s."""
    budget = ninth_budget(model)  # 49 of 384: V/9 = 43 is below the reachable V/L = 48
    pruner = build_pruner("random", budget=budget)
    preds = []
    n = len(held_out["command"])
    for start in range(0, n, EVAL_BATCH):
        index = torch.arange(start, min(start + EVAL_BATCH, n))
        batch = {
            **{k: v[index] for k, v in held_out.items() if isinstance(v, torch.Tensor)},
            "cameras": CAMERAS,
        }
        preds.append(run_pruned(model, batch, pruner)[0])
    pruned = planner_metrics(torch.cat(preds), held_out)["l2_3s"]
    unpruned = planner_metrics(predict(model, held_out), held_out)["l2_3s"]
    assert pruned >= MIN_RANDOM_WORSENING * unpruned, (budget, pruned, unpruned)


@pytest.mark.parametrize(
    ("patch_weight", "vision_from_layer", "family_weight", "average_last"),
    [(0.0, 0, 0.0, 0.0), (1.0, 0, 0.0, 0.0), (0.0, 1, 0.0, 0.0), (0.0, 1, 1.0, 0.0), (0.0, 0, 1.0, 1.0)],
)
def test_training_is_bit_reproducible(
    synthetic_root: Path,
    patch_weight: float,
    vision_from_layer: int,
    family_weight: float,
    average_last: float,
) -> None:
    """Two short runs of the recipe from the same seed give identical weights (CPU, same threads),
    with and without the per-patch perception loss, with deep fusion, with the family loss, and
    with the stage-2 weight average."""
    torch.use_deterministic_algorithms(True)
    try:
        states = []
        for _ in range(2):
            torch.manual_seed(0)
            model = DrivingVLA(DrivingVLAConfig(**BUNDLED_CONFIG, vision_from_layer=vision_from_layer))
            data = load_split(synthetic_root, "train", model, with_patch_labels=patch_weight > 0)
            args = TrainArgs(
                out=Path("unused"),
                vision_steps=3,
                steps=2,
                batch_size=4,
                warmup_steps=1,
                patch_weight=patch_weight,
                family_weight=family_weight,
                average_last=average_last,
            )
            train_model(model, data, args)
            states.append({k: v.clone() for k, v in model.state_dict().items()})
    finally:
        torch.use_deterministic_algorithms(False)
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    torch.manual_seed(0)
    untrained = DrivingVLA(DrivingVLAConfig(**BUNDLED_CONFIG)).state_dict()
    assert not torch.equal(states[0]["action_queries"], untrained["action_queries"])  # it did train


# ---------------------------------------------------------------------- the deep-fusion model


@pytest.fixture(scope="module")
def deep_fusion() -> DrivingVLA:
    loaded = load(DEEP_FUSION)
    assert isinstance(loaded, DrivingVLA)
    return loaded


@pytest.fixture(scope="module")
def deep_record() -> dict[str, Any]:
    return _record(DEEP_FUSION)


def test_the_main_job_and_load_default_to_the_same_model(tmp_path: Path) -> None:
    """The README's main job (``evaluate``'s config) and ``load()`` use the same default model: the
    early-fusion one, on which every default-sweep pruner ranks by a signal the model used (on the
    deep-fusion model layer 0's text attention to the cameras is zero, so FastV at 49 and 96 keeps
    the first tokens: README, Models)."""
    assert DEFAULT_MODEL == "tiny-drive-vla"
    assert evaluate_config(tmp_path).model.name_or_path == DEFAULT_MODEL


def test_deep_fusion_folder_is_small_and_its_recipe_is_recorded(
    deep_fusion: DrivingVLA, deep_record: dict[str, Any]
) -> None:
    folder = resolve_model_path(DEEP_FUSION)
    assert (folder / "model.safetensors").stat().st_size <= MAX_WEIGHTS_BYTES
    assert deep_fusion.config.vision_from_layer == 1
    assert deep_fusion.config.text_config.num_hidden_layers == BUNDLED_LAYERS
    assert deep_fusion.num_patches * len(CAMERAS) >= MIN_VISUAL_TOKENS
    args = deep_record["args"]
    assert args["vision_from_layer"] == 1 and "token_drop_prob" not in args
    expected = f"--out vla_autoprune/assets/{DEEP_FUSION} --seed 0 --steps {args['steps']}"
    assert expected in deep_record["command"] and "--vision-from-layer 1" in deep_record["command"]
    assert f"--train-scenes {args['train_scenes']}" in (folder / "TRAINING.md").read_text()


def test_deep_fusion_beats_the_camera_free_yardsticks_on_the_full_splits(
    deep_fusion: DrivingVLA, deep_record: dict[str, Any]
) -> None:
    """What makes it worth shipping: unlike the default model it plans better than every camera-free
    yardstick on both held-out splits, and it meets every issue-9 check (since session 19's 12 px
    patches merged 2 x 2): random pruning at about V/9 worsens L2@3s by >= 15 % with a CI
    excluding 1, and every listed pruner's retention CI half-width is <= 5 points."""
    assert set(deep_record["val_stp3"]) == {f"seed{s}_val" for s in SEEDS}
    for split, m in deep_record["val_stp3"].items():
        assert _acceptance(m) == [], (split, _acceptance(m), m)
        assert m["model"]["l2_3s"] < m["blind_speed_x_command_median"]["l2_3s"], split
        assert m["model_visual_zeroed"]["l2_3s"] > m["model"]["l2_3s"], split
    _check_retention(deep_record, runnable_ci_pruners(deep_fusion, ninth_budget(deep_fusion)))


#: The deep-fusion model on the full held-out splits: visual tokens zeroed give L2@3s 2.170 / 2.173 m
#: against the model's 1.202 / 1.294 (1.81 / 1.68 x). Session 11's weights (24 px patches) gave
#: 1.42 / 1.35 x, short of issue 9's 1.5 x, and were a strict xfail here.
def test_deep_fusion_zeroed_images_cost_half_its_l2(deep_record: dict[str, Any]) -> None:
    for split, m in deep_record["val_stp3"].items():
        assert m["model_visual_zeroed"]["l2_3s"] >= MIN_ZEROED_RATIO * m["model"]["l2_3s"], split


#: 1.202 / 1.899 = 0.633 on seed 0, 1.294 / 1.866 = 0.694 on seed 1 (session 11's weights: 0.735 /
#: 0.802, a strict xfail here).
def test_deep_fusion_beats_the_blind_fit_by_a_quarter_on_the_full_splits(deep_record: dict[str, Any]) -> None:
    _check_beats_the_blind_fit_by_a_quarter(deep_record)


def test_deep_fusion_on_held_out_scenes(
    deep_fusion: DrivingVLA, deep_record: dict[str, Any], held_out: dict
) -> None:
    """Re-measured on the first 12 val scenes of both seeds: every acceptance check but the collision
    ratio, images zeroed included (about 1.6 x on both). On so few scenes the ratio is noise: seed
    1's first 12 give the model 7.2 % against constant velocity's 13.7 % (0.53 x), its full split
    2.5 % against 11.8 % (the full-split test above requires <= half). Session 11's weights met the
    collision ratio here but not images zeroed."""
    _check_few_scenes(_held_out_metrics(deep_fusion, deep_record, held_out))


def test_mirror_swaps_sides() -> None:
    images = torch.arange(6).view(1, 6, 1, 1, 1).expand(2, 6, 3, 1, 2).clone()
    images[..., 1] += 10  # right pixel column differs from the left one
    batch = {
        "images": images,
        "command": torch.tensor([0, 0]),
        "ego_state": torch.tensor([[5.0, 1.0, 0.2], [5.0, 1.0, 0.2]]),
        "gt_trajectory": torch.tensor([[[1.0, 2.0]] * 6] * 2),
        "gt_mask": torch.ones(2, 6, dtype=torch.bool),
        "future_boxes": torch.tensor([[[[3.0, 1.5, 2.0, 4.0, 0.3]]] * 6] * 2),
    }
    out = mirror(batch, torch.tensor([True, False]))
    # Slot CAM_FRONT_RIGHT (1) now shows CAM_FRONT_LEFT (2), flipped left-right.
    assert out["images"][0, 1, 0, 0].tolist() == [12, 2]
    assert out["images"][0, 0, 0, 0].tolist() == [10, 0]
    assert torch.equal(out["images"][1], images[1])
    assert out["command"].tolist() == [2, 0]  # left -> right
    assert out["gt_trajectory"][0, 0].tolist() == [1.0, -2.0]
    assert out["ego_state"][0].tolist() == pytest.approx([5.0, 1.0, -0.2])
    assert out["ego_state"][1].tolist() == pytest.approx([5.0, 1.0, 0.2])
    assert out["future_boxes"][0, 0, 0].tolist() == pytest.approx([3.0, -1.5, 2.0, 4.0, -0.3])
    assert out["future_boxes"][1, 0, 0].tolist() == pytest.approx([3.0, 1.5, 2.0, 4.0, 0.3])


def test_fastv_at_a_ninth_is_not_measured_on_the_deep_fusion_model(
    model: DrivingVLA, deep_fusion: DrivingVLA
) -> None:
    """At 49 on 8 layers FastV ranks by layer 0's text, which the deep-fusion model leaves blind."""
    assert runnable_ci_pruners(model, ninth_budget(model)) == list(CI_PRUNERS)
    assert runnable_ci_pruners(deep_fusion, ninth_budget(deep_fusion)) == [
        name for name in CI_PRUNERS if name != "fastv"
    ]


@pytest.mark.parametrize("folder", [DEFAULT_MODEL, DEEP_FUSION])
def test_recorded_issue9_ratios_carry_intervals_around_the_recorded_metrics(folder: str) -> None:
    """training.json's issue-9 ratios (A / B L2@3s, paired scene-bootstrap 95 % CI) agree with the
    recorded L2@3s of A and B on each full held-out split, and each interval holds its ratio."""
    record = _record(folder)
    assert set(record["ratios_l2_3s"]) == {f"seed{s}_val" for s in SEEDS}
    for split, rows in record["ratios_l2_3s"].items():
        assert list(rows) == [f"{a} / {b}" for a, b, _ in ISSUE9_RATIOS], split
        metrics = record["val_stp3"][split]
        for label, r in rows.items():
            a, b = label.split(" / ")
            assert r["ratio"] == pytest.approx(metrics[a]["l2_3s"] / metrics[b]["l2_3s"], rel=1e-3), (
                split,
                label,
            )
            assert r["low"] <= r["ratio"] <= r["high"], (split, label, r)
