"""Camera ablations (planners/cameras.py): what each replaces, that intact changes nothing, and the
report's ablated-vs-intact comparison, on the synthetic world and the bundled model."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SYNTHETIC_IMAGE_SIZE, SYNTHETIC_SAMPLES_PER_SCENE, SYNTHETIC_SCENES, evaluate_config

from data_tools.embedded import synthetic_dataset
from planners.cameras import (
    ConstantImages,
    Intact,
    OtherSceneCameras,
    ZeroVisualTokens,
    dataset_seen_by,
    other_scene_donors,
)
from planners.vla import VLAPlanner
from vla_autoprune.data import collate
from vla_autoprune.errors import ConfigError
from vla_autoprune.models import load
from vla_autoprune.pipeline.app import evaluate
from vla_autoprune.pipeline.camera_reliance import camera_rows, split_planner
from vla_autoprune.pipeline.identity import variant
from vla_autoprune.pipeline.report_files import load_runs, write_report
from vla_autoprune.pipeline.resampling import Bootstrap


@pytest.fixture(scope="module")
def model():
    return load("tiny-drive-vla")


@pytest.fixture(scope="module")
def train_split(synthetic_root: Path):
    """The fixture world's train split: two scenes (the val split has one)."""
    return synthetic_dataset(
        "train",
        dataroot=synthetic_root,
        scenes=SYNTHETIC_SCENES,
        samples_per_scene=SYNTHETIC_SAMPLES_PER_SCENE,
        image_size=SYNTHETIC_IMAGE_SIZE,
    )


def test_other_scene_donors_hand_worked() -> None:
    scenes = ["a", "a", "a", "b", "b", "c"]
    donors = other_scene_donors(scenes, seed=0)
    scene_of = np.array(scenes)
    assert (scene_of[donors] != scene_of).all()  # nobody keeps its own scene's cameras
    # each scene takes all its cameras from one other scene, and each scene gives to exactly one
    given = {s: set(scene_of[donors[scene_of == s]]) for s in "abc"}
    assert all(len(v) == 1 for v in given.values())
    assert sorted(next(iter(v)) for v in given.values()) == ["a", "b", "c"]
    # the k-th sample of a scene takes the donor scene's k-th, its last when the donor is shorter
    first = {s: int(np.flatnonzero(scene_of == s)[0]) for s in "abc"}
    length = {s: int((scene_of == s).sum()) for s in "abc"}
    for s in "abc":
        d = next(iter(given[s]))
        for k, index in enumerate(np.flatnonzero(scene_of == s)):
            assert donors[index] == first[d] + min(k, length[d] - 1)
    assert (other_scene_donors(scenes, seed=0) == donors).all()  # seeded


def test_other_scene_needs_two_scenes() -> None:
    with pytest.raises(ConfigError, match="at least 2 scenes; the evaluated data holds 1"):
        other_scene_donors(["a", "a"], seed=0)


@pytest.mark.parametrize("value", [-1, 256, 1.5])
def test_constant_images_refuses_a_bad_pixel_value(value) -> None:
    with pytest.raises(ConfigError, match="must be an integer pixel value in 0..255"):
        ConstantImages(value, "bad")


def test_constant_images_replace_only_the_images(train_split) -> None:
    seen = ConstantImages(128, "grey").dataset(train_split)
    item, original = seen[3], train_split[3]
    assert (item["images"] == 128).all() and item["images"].dtype == torch.uint8
    assert (original["images"] != 128).any()
    for key in ("gt_trajectory", "ego_state", "future_boxes", "intrinsics"):
        assert torch.equal(item[key], original[key])
    assert item["sample_token"] == original["sample_token"]
    # the wrapped dataset's attributes stay reachable (the closed-loop scorer reads them)
    assert len(seen) == len(train_split) and seen.dataroot == train_split.dataroot
    assert seen.map_locations() == train_split.map_locations()


def test_other_scene_cameras_are_another_scenes_real_images(train_split) -> None:
    seen = OtherSceneCameras(seed=0).dataset(train_split)
    scenes = train_split.scene_tokens()
    donors = other_scene_donors(scenes, seed=0)
    for index in (0, len(train_split) - 1):
        item = seen[index]
        assert scenes[donors[index]] != scenes[index]
        assert torch.equal(item["images"], train_split[int(donors[index])]["images"])
        assert not torch.equal(item["images"], train_split[index]["images"])
        assert item["scene_token"] == scenes[index]  # everything else stays the sample's own


def test_intact_planner_is_the_plain_planner(model, train_split) -> None:
    batch = collate([train_split[i] for i in range(3)])
    plain = VLAPlanner(model)
    intact = VLAPlanner(model, cameras=Intact())
    assert intact.name == "vla" and dataset_seen_by(intact, train_split) is train_split
    assert torch.equal(plain(batch), intact(batch))


def test_zero_tokens_is_the_training_records_zeroed_model(model, train_split) -> None:
    """The planner's zero_tokens plan == decoding the prepared input with every visual embedding 0
    (what the training script's ``model_visual_zeroed`` row measures), and differs from intact."""
    batch = collate([train_split[i] for i in range(3)])
    planner = VLAPlanner(model, cameras=ZeroVisualTokens())
    assert planner.name == "vla[zero_tokens]"
    with torch.inference_mode():
        inputs = model.prepare(batch)
        zeroed = ZeroVisualTokens().inputs(inputs)
        visual = inputs.layout.visual_mask
        assert (zeroed.inputs_embeds[visual] == 0).all()
        assert torch.equal(zeroed.inputs_embeds[~visual], inputs.inputs_embeds[~visual])
        reference = model.decode(
            inputs.with_(inputs_embeds=inputs.inputs_embeds.masked_fill(visual[..., None], 0))
        )
    assert torch.equal(planner(batch), reference.float())
    assert not torch.equal(planner(batch), VLAPlanner(model)(batch))


def test_grey_images_are_zero_pixel_values_for_siglip_normalisation(model, train_split) -> None:
    """What conf/cameras/grey.yaml says: on the bundled model mid-grey is pixel_values = 0 to 1/255."""
    grey = ConstantImages(128, "grey").dataset(train_split)
    pixels = model.preprocess_images(collate([grey[0]])["images"])
    assert pixels.abs().max() <= 1.0 / 255 + 1e-6


def test_camera_ablation_is_the_planner_not_a_variant() -> None:
    assert variant(["cameras=grey", "pruner=none"]) == ""
    assert variant(["cameras=grey", "cameras.value=64"]) == "cameras.value=64"
    assert split_planner("vla[grey]") == ("vla", "grey") and split_planner("vla") == ("vla", None)


def test_unpruned_zeroed_cameras_hurt_and_the_report_says_so(synthetic_root: Path, tmp_path: Path) -> None:
    """Through the Hydra app: intact and ablated runs, each ablated one compared with the intact one
    of the same pruner and budget, paired; the ratio's point estimate is the summaries' ratio."""
    sweep = tmp_path / "sweep"
    for cameras in ("intact", "zero_tokens", "black"):
        for pruner in ("none", "random"):
            cfg = evaluate_config(synthetic_root, f"cameras={cameras}", f"pruner={pruner}", "budget=96")
            evaluate(cfg, sweep / f"{cameras}-{pruner}", overrides=[f"cameras={cameras}", f"pruner={pruner}"])
    runs = load_runs([sweep])
    rows = camera_rows(runs, Bootstrap(resamples=200, seed=0))
    assert sorted((r["cameras"], r["pruner"]) for r in rows) == [
        ("black", "none"),
        ("black", "random"),
        ("zero_tokens", "none"),
        ("zero_tokens", "random"),
    ]
    by_name = {(r.summary["planner"], r.summary["pruner"]): r.summary for r in runs}
    for row in rows:
        ablated = by_name[(f"vla[{row['cameras']}]", row["pruner"])]["l2"]["stp3"]["3s"]
        intact = by_name[("vla", row["pruner"])]["l2"]["stp3"]["3s"]
        ratio = row["L2@3s stp3 ablated/intact"]
        assert ratio == pytest.approx(ablated / intact)
        assert row["L2@3s stp3 ablated/intact lo"] <= ratio <= row["L2@3s stp3 ablated/intact hi"]
    zeroed = next(r for r in rows if r["cameras"] == "zero_tokens" and r["pruner"] == "none")
    assert zeroed["L2@3s stp3 ablated/intact"] != pytest.approx(1.0)
    out = tmp_path / "report"
    write_report([sweep], out, resamples=200)
    text = (out / "report.md").read_text()
    assert "## What the cameras are worth" in text and "vla[zero_tokens]" in text
    table = list(csv.DictReader(io.StringIO((out / "cameras.csv").read_text())))
    assert len(table) == 4
    # a report of intact runs only has no camera section, and drops an earlier report's cameras.csv
    write_report([sweep / "intact-none", sweep / "intact-random"], out, resamples=200)
    assert "What the cameras are worth" not in (out / "report.md").read_text()
    assert not (out / "cameras.csv").exists()


def test_pruned_ablated_run_pairs_with_its_own_unpruned_run(synthetic_root: Path, tmp_path: Path) -> None:
    """In the results table a pruned run under ablated cameras is retained against the unpruned run
    under the same cameras, never against intact cameras."""
    from vla_autoprune.pipeline.table import find_baseline

    sweep = tmp_path / "sweep"
    for cameras in ("intact", "grey"):
        for pruner in ("none", "fastv"):
            cfg = evaluate_config(
                synthetic_root, f"cameras={cameras}", f"pruner={pruner}", "budget=96", "limit=4"
            )
            evaluate(cfg, sweep / f"{cameras}-{pruner}", overrides=[f"cameras={cameras}", f"pruner={pruner}"])
    summaries = [r.summary for r in load_runs([sweep])]
    grey_fastv = next(s for s in summaries if s["planner"] == "vla[grey]" and s["pruner"] == "fastv")
    base = find_baseline(grey_fastv, summaries)
    assert base is not None and base["planner"] == "vla[grey]" and base["pruner"] == "none"


@pytest.mark.parametrize(
    "cameras", [ConstantImages(0, "black"), OtherSceneCameras(seed=3)], ids=["black", "other"]
)
def test_split_in_memory_sees_what_the_dataset_sees(train_split, cameras) -> None:
    """The training script's in-memory ablation (split_images) gives each sample the images the
    main job's dataset wrapper gives it."""
    images = torch.stack([train_split[i]["images"] for i in range(len(train_split))])
    replaced = cameras.split_images(images, train_split.scene_tokens())
    seen = cameras.dataset(train_split)
    for index in range(len(train_split)):
        assert torch.equal(replaced[index], seen[index]["images"]), index
