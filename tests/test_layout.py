"""``build_layout``: hand-worked layouts, its errors, and the layouts both driving models build with it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from vla_autoprune.errors import ModelLoadError
from vla_autoprune.models import DrivingVLA, DrivingVLAConfig, LlavaDrivingAdapter
from vla_autoprune.models.driving_vla import sub_config
from vla_autoprune.models.layout import build_layout

Batch = Callable[[int], dict[str, Any]]


def _mask(rows: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """``visual_mask`` and ``attention_mask`` from strings: ``.`` padding, ``t`` text, ``v`` visual."""
    visual = torch.tensor([[c == "v" for c in row] for row in rows])
    real = torch.tensor([[int(c != ".") for c in row] for row in rows])
    return visual, real


def test_two_cameras_separated_by_a_marker() -> None:
    # t m v v m v v t t: the markers (text) split camera 0 (positions 2, 3) and camera 1 (5, 6).
    visual, real = _mask(["ttvvtvvtt"])
    layout = build_layout(visual, real, num_cameras=2, patch_grid=(1, 2))
    assert layout.visual_positions().tolist() == [[2, 3, 5, 6]]
    assert layout.camera_index.tolist() == [[0, 0, 1, 1]]
    assert layout.patch_index.tolist() == [[0, 1, 0, 1]]
    assert layout.text_mask.nonzero()[:, 1].tolist() == [7, 8]
    assert layout.patch_grid == (1, 2) and layout.num_visual == 4


def test_left_padded_batch_with_back_to_back_images() -> None:
    # Row 0: two padding slots, then the two images with nothing between them; row 1 unpadded.
    visual, real = _mask(["..tvvvvt", "tvvtvvtt"])
    layout = build_layout(visual, real, num_cameras=2, patch_grid=(2, 1))
    assert layout.visual_positions().tolist() == [[3, 4, 5, 6], [1, 2, 4, 5]]
    assert layout.camera_index.tolist() == [[0, 0, 1, 1]] * 2
    assert layout.patch_index.tolist() == [[0, 1, 0, 1]] * 2
    assert layout.text_mask.tolist() == [[False] * 7 + [True], [False] * 6 + [True, True]]


def test_right_padding_is_not_text() -> None:
    visual, real = _mask(["tvvvvtt..", "tvvvvtttt"])
    layout = build_layout(visual, real, num_cameras=1, patch_grid=(2, 2))
    assert layout.text_mask.sum(1).tolist() == [2, 4]
    assert layout.patch_index.tolist() == [[0, 1, 2, 3]] * 2


def test_select_keeps_the_provenance_of_the_kept_visual_tokens() -> None:
    visual, real = _mask(["ttvvtvvtt"])
    layout = build_layout(visual, real, num_cameras=2, patch_grid=(1, 2))
    # Keep visual tokens 1 (camera 0, patch 1) and 2 (camera 1, patch 0): positions 3 and 5.
    shorter = layout.select(torch.tensor([[0, 1, 3, 4, 5, 7, 8]]), torch.tensor([[1, 2]]))
    assert shorter.visual_mask.tolist() == [[c == "v" for c in "ttvtvtt"]]
    assert shorter.text_mask.nonzero()[:, 1].tolist() == [5, 6]
    assert shorter.camera_index.tolist() == [[0, 1]] and shorter.patch_index.tolist() == [[1, 0]]
    assert shorter.num_visual == 2 and shorter.patch_grid == (1, 2)


@pytest.mark.parametrize(
    ("rows", "cameras", "grid", "message"),
    [
        (["tvvtvvt"], 3, (1, 2), r"\[4\] image tokens per sample but 3 cameras x 1x2 patches need 6"),
        (["tvvtvvt", "tvvtvtt"], 2, (1, 2), r"\[4, 3\] image tokens"),
        (["tvtvvvt"], 2, (1, 2), "not contiguous"),  # camera 0 split by text: the grid is wrong
        (["tvvtvvt"], 1, (2, 2), "not contiguous"),
    ],
)
def test_mismatched_image_tokens_are_one_line_errors(
    rows: list[str], cameras: int, grid: tuple[int, int], message: str
) -> None:
    visual, real = _mask(rows)
    with pytest.raises(ModelLoadError, match=message) as err:
        build_layout(visual, real, num_cameras=cameras, patch_grid=grid)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------- through both models


def _tokens_by_layout(inputs: Any, num_cameras: int, per_camera: int) -> torch.Tensor:
    """``[B, C, P, D]``: each visual token placed at ``(camera_index, patch_index)`` of the layout."""
    layout = inputs.layout
    b = layout.visual_mask.shape[0]
    tokens = inputs.inputs_embeds[layout.visual_mask].view(b, layout.num_visual, -1)
    out = torch.full((b, num_cameras, per_camera, tokens.shape[-1]), float("nan"))
    rows = torch.arange(b).unsqueeze(1)
    out[rows, layout.camera_index, layout.patch_index] = tokens
    return out


def test_driving_vla_layout_points_at_each_cameras_patches(camera_batch: Batch) -> None:
    torch.manual_seed(0)
    model = DrivingVLA(DrivingVLAConfig()).eval()
    batch = camera_batch(2)
    c = len(batch["cameras"])
    with torch.no_grad():
        inputs = model.prepare(batch)
        features = model.vision_tower(pixel_values=model.preprocess_images(batch["images"])).last_hidden_state
        expected = model.projector(features).view(2, c, model.num_patches, -1)
    assert inputs.layout.patch_grid == model.patch_grid == (6, 6)
    assert torch.allclose(_tokens_by_layout(inputs, c, model.num_patches), expected, atol=1e-6)


def test_llava_layout_points_at_each_cameras_patches(llava_folder: Path, camera_batch: Batch) -> None:
    model = LlavaDrivingAdapter.from_pretrained(llava_folder)
    batch = camera_batch(2)
    c = len(batch["cameras"])
    with torch.no_grad():
        inputs = model.prepare(batch)
        pixels = model.processor.image_processor(list(batch["images"].flatten(0, 1)), return_tensors="pt")
        features = model.llava.model.get_image_features(
            pixel_values=pixels["pixel_values"],
            vision_feature_layer=-2,
            vision_feature_select_strategy="default",
        ).pooler_output
    expected = torch.stack(list(features)).view(2, c, 4, -1)
    assert inputs.layout.patch_grid == (2, 2)
    assert torch.allclose(_tokens_by_layout(inputs, c, 4), expected, atol=1e-6)


def test_llava_processor_and_vision_grid_disagreeing_is_a_model_load_error(
    llava_folder: Path, camera_batch: Batch
) -> None:
    model = LlavaDrivingAdapter.from_pretrained(llava_folder)
    # The processor still expands each <image> to 4 tokens, but a 7 px patch means a 4 x 4 grid.
    sub_config(model.llava.config, "vision_config").patch_size = 7
    with pytest.raises(ModelLoadError, match=r"need 96: the processor's image tokens and the vision config"):
        model.prepare(camera_batch(1))
