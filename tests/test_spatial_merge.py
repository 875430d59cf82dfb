"""DrivingVLA's spatial merge: m x m blocks of fine patches become one visual token (Qwen2-VL style)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from data_tools.train_tiny_vla import effective_overrides, model_config, parse_args, reproduce_command
from vla_autoprune.data.schema import CAMERAS
from vla_autoprune.errors import ConfigError
from vla_autoprune.models import DrivingVLA, DrivingVLAConfig
from vla_autoprune.models.describe import describe
from vla_autoprune.models.driving_vla import merge_patches
from vla_autoprune.pruning.registry import build_pruner
from vla_autoprune.pruning.run import run_pruned

_TOWER = {
    "model_type": "siglip_vision_model",
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
}


def _config(patch_size: int, merge: int, image_size: int = 64) -> DrivingVLAConfig:
    vision = {**_TOWER, "image_size": image_size, "patch_size": patch_size}
    return DrivingVLAConfig(vision_config=vision, spatial_merge_size=merge)


def _batch(b: int = 2) -> dict:
    g = torch.Generator().manual_seed(3)
    return {
        "images": torch.randint(0, 256, (b, len(CAMERAS), 3, 64, 64), dtype=torch.uint8, generator=g),
        "cameras": CAMERAS,
        "command": torch.tensor([0, 2])[:b],
        "ego_state": torch.tensor([[5.3, 0.1, 0.01], [12.25, -1.0, -0.2]])[:b],
    }


@pytest.fixture(scope="module")
def merged() -> DrivingVLA:
    torch.manual_seed(0)
    return DrivingVLA(_config(patch_size=8, merge=2)).eval()  # 8 x 8 patches -> 4 x 4 tokens


def test_merge_patches_concatenates_each_block_row_major() -> None:
    features = torch.arange(16.0).view(1, 16, 1)  # a 4 x 4 grid, patch i has feature i
    merged = merge_patches(features, (4, 4), 2)
    assert merged[0].tolist() == [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]
    wide = torch.arange(32.0).view(1, 16, 2)  # features stay together, patch by patch
    assert merge_patches(wide, (4, 4), 2)[0, 3].tolist() == [20, 21, 22, 23, 28, 29, 30, 31]
    assert merge_patches(features, (4, 4), 1) is features


def test_merged_tokens_are_the_projected_blocks_of_the_towers_patches(merged: DrivingVLA) -> None:
    batch = _batch()
    with torch.no_grad():
        inputs = merged.prepare(batch)
        pixels = merged.preprocess_images(batch["images"])
        patches = merged.vision_tower(pixel_values=pixels).last_hidden_state  # [B * C, 64, 32]
        expected = merged.projector(merge_patches(patches, (8, 8), 2))  # [B * C, 16, D]
    layout = inputs.layout
    assert layout.patch_grid == (4, 4) and layout.num_visual == len(CAMERAS) * 16
    assert merged.projector.linear_1.in_features == 4 * 32
    got = inputs.inputs_embeds[layout.visual_mask].view(2 * len(CAMERAS), 16, -1)
    assert torch.allclose(got, expected, atol=1e-6)
    # a merged token's saliency is its four patches' pooling-head attention: each camera still sums to 1
    assert inputs.vision_saliency is not None
    per_camera = inputs.vision_saliency.view(2, len(CAMERAS), 16).sum(-1)
    assert torch.allclose(per_camera, torch.ones_like(per_camera), atol=1e-5)


def test_a_merge_that_does_not_divide_the_patch_grid_is_a_config_error() -> None:
    for merge in (3, 0):
        with pytest.raises(
            ConfigError, match=rf"spatial_merge_size={merge} must be an int >= 1 dividing the 8 x 8"
        ):
            DrivingVLA(_config(patch_size=8, merge=merge))


def test_merged_model_round_trips_and_describes_its_token_count(merged: DrivingVLA, tmp_path: Path) -> None:
    merged.save_pretrained(tmp_path)
    again = DrivingVLA.from_pretrained(tmp_path).eval()
    assert again.config.spatial_merge_size == 2
    with torch.no_grad():
        assert torch.equal(merged.plan(_batch()), again.plan(_batch()))
    assert describe(tmp_path).visual_per_camera == 16


def test_pruning_a_merged_model_keeps_all_or_prunes_by_merged_saliency(merged: DrivingVLA) -> None:
    batch = _batch()
    v = len(CAMERAS) * 16
    with torch.no_grad():
        plain = merged.plan(batch)
    kept_all, _ = run_pruned(merged, batch, build_pruner("autoprune", budget=float(v)))
    assert torch.equal(kept_all, plain)
    _, record = run_pruned(merged, batch, build_pruner("fastervlm", budget=12.0))
    assert record.visual_tokens is not None and (record.visual_tokens == 12).all()


def test_training_flags_build_the_merged_architecture() -> None:
    args = parse_args(["--out", "m", "--patch-size", "12", "--spatial-merge", "2"])
    config = model_config(args)
    assert config.spatial_merge_size == 2 and config.vision_config.patch_size == 12
    assert DrivingVLA(config).patch_grid == (8, 8)  # 192 px: 16 x 16 patches, 64 tokens per camera
    assert "--patch-size 12 --spatial-merge 2" in reproduce_command(args)
    assert "--patch-size" not in reproduce_command(parse_args(["--out", "m"]))
    # the record's architecture names the patch size that was trained, not the 24 px default
    assert effective_overrides(args)["vision_config"]["patch_size"] == 12
    assert args.config_overrides["vision_config"]["patch_size"] == 24  # the defaults are left alone
