"""LlavaDrivingAdapter on a tiny randomly initialised LLaVA, and the strict waypoint parser."""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import assert_one_line_load_error

from vla_autoprune.data.schema import CAMERAS
from vla_autoprune.models import DrivingVLA, DrivingVLAConfig, LlavaDrivingAdapter, load
from vla_autoprune.models.driving_vla import cls_attention
from vla_autoprune.models.llava_adapter import NotALlavaFolderError
from vla_autoprune.models.waypoint_text import (
    ParseStats,
    format_waypoints,
    parse_waypoint_batch,
    parse_waypoints,
)

Batch = Callable[[int], dict[str, Any]]
GRID = (2, 2)  # the llava_folder fixture (conftest): 28 px images, 14 px patches
NUM_PATCHES = GRID[0] * GRID[1]


# ---------------------------------------------------------------------- parser


def test_parse_good_answer() -> None:
    parsed = parse_waypoints(" [(1, 2), (3.5, -4), (-0.25, 6), (7, 8), (9, 10), (11.0, +12)]\n")
    assert parsed.ok
    expected = torch.tensor([[1, 2], [3.5, -4], [-0.25, 6], [7, 8], [9, 10], [11, 12]], dtype=torch.float32)
    assert torch.equal(parsed.waypoints, expected)


def test_format_then_parse_round_trips() -> None:
    wp = torch.tensor([[1.234, -0.5], [2, 0], [3, 0.01], [4, 0], [5, -7.125], [6, 0]])
    parsed = parse_waypoints(format_waypoints(wp))
    assert parsed.ok
    assert torch.allclose(parsed.waypoints, wp, atol=0.006)  # 2 decimals


@pytest.mark.parametrize(
    "text",
    [
        "[(1,2)]",  # too few pairs
        "garbage",
        "",
        "[(nan, 1), (2, 3), (4, 5), (6, 7), (8, 9), (10, 11)]",
        "[(1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14)]",  # seven pairs
        "[(1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12)] and then some",
        "[(1e3, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12)]",
        "[(1, 2) (3, 4), (5, 6), (7, 8), (9, 10), (11, 12)]",
    ],
)
def test_parse_rejects_malformed(text: str) -> None:
    parsed = parse_waypoints(text)
    assert not parsed.ok
    assert parsed.waypoints.shape == (6, 2) and torch.isnan(parsed.waypoints).all()


def test_batch_parse_counts_malformed() -> None:
    good = format_waypoints(torch.arange(12.0).view(6, 2))
    waypoints, ok = parse_waypoint_batch([good, "garbage", "[(1,2)]"])
    assert ok.tolist() == [True, False, False]
    assert torch.equal(waypoints[0], torch.arange(12.0).view(6, 2))
    assert torch.isnan(waypoints[1:]).all()
    stats = ParseStats()
    stats.update(ok)
    assert (stats.total, stats.malformed) == (3, 2) and math.isclose(stats.malformed_rate, 2 / 3)


# ---------------------------------------------------------------------- adapter


def test_load_dispatches_to_llava_adapter(llava_folder: Path) -> None:
    assert isinstance(load(llava_folder), LlavaDrivingAdapter)


def test_prepare_layout_and_image_features(llava_folder: Path, camera_batch: Batch) -> None:
    model = LlavaDrivingAdapter.from_pretrained(llava_folder)
    batch = camera_batch(2)
    inputs = model.prepare(batch)
    layout = inputs.layout
    assert layout.patch_grid == GRID
    assert layout.num_visual == len(CAMERAS) * NUM_PATCHES
    assert (layout.visual_mask.sum(1) == layout.num_visual).all()
    # Left padding: the last position of every sample is real, and text queries follow the images.
    assert inputs.attention_mask[:, -1].all()
    assert (layout.text_mask.long().argmax(1) > layout.visual_positions().amax(1)).all()
    # The visual positions hold the projected features of that camera, in camera order.
    pixels = model.processor.image_processor(list(batch["images"].flatten(0, 1)), return_tensors="pt")
    feats = model.llava.model.get_image_features(
        pixel_values=pixels["pixel_values"], vision_feature_layer=-2, vision_feature_select_strategy="default"
    ).pooler_output
    feats = torch.stack(list(feats)).view(2, len(CAMERAS), NUM_PATCHES, -1)
    got = inputs.inputs_embeds[layout.visual_mask].view(2, len(CAMERAS), NUM_PATCHES, -1)
    assert torch.allclose(got, feats, atol=1e-6)
    cam = layout.camera_index.view(2, len(CAMERAS), NUM_PATCHES)
    assert (cam == torch.arange(len(CAMERAS)).view(1, -1, 1)).all()


def test_saliency_is_cls_attention_of_the_feature_layer(llava_folder: Path, camera_batch: Batch) -> None:
    model = LlavaDrivingAdapter.from_pretrained(llava_folder)
    batch = camera_batch(1)
    inputs = model.prepare(batch)
    pixels = model.processor.image_processor(list(batch["images"][0]), return_tensors="pt")["pixel_values"]
    tower = model.llava.model.vision_tower
    hidden = tower(pixel_values=pixels, output_hidden_states=True).hidden_states[-3]  # input of layers[-2]
    expected = cls_attention(tower.encoder.layers[-2].self_attn, tower.encoder.layers[-2].layer_norm1(hidden))
    assert inputs.vision_saliency is not None
    assert torch.allclose(inputs.vision_saliency.view(len(CAMERAS), -1), expected[:, 1:], atol=1e-6)


def test_generate_end_to_end_counts_malformed(llava_folder: Path, camera_batch: Batch) -> None:
    model = LlavaDrivingAdapter.from_pretrained(llava_folder)
    model.max_new_tokens = 8  # random weights never answer well; keep the run short
    waypoints = model.plan(camera_batch(2))
    assert waypoints.shape == (2, 6, 2) and waypoints.dtype == torch.float32
    # A random model babbles: every answer is malformed, NaN, and counted.
    assert torch.isnan(waypoints).all()
    assert (model.parse_stats.total, model.parse_stats.malformed) == (2, 2)


def test_generate_matches_per_sample_runs(llava_folder: Path, camera_batch: Batch) -> None:
    model = LlavaDrivingAdapter.from_pretrained(llava_folder)
    model.max_new_tokens = 6
    batch = camera_batch(2)
    joint = model.generate_waypoints(model.prepare(batch)).texts
    single = [
        model.generate_waypoints(
            model.prepare({k: (v[i : i + 1] if torch.is_tensor(v) else v) for k, v in batch.items()})
        ).texts[0]
        for i in range(2)
    ]
    assert joint == single


# ---------------------------------------------------------------------- load errors


def _damaged_copy(folder: Path, tmp_path: Path, harm: Callable[[Path], object]) -> Path:
    copy = tmp_path / "llava"
    shutil.copytree(folder, copy)
    harm(copy)
    return copy


def _cut(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _drop_tokenizer(folder: Path) -> None:
    (folder / "tokenizer.json").unlink()
    (folder / "tokenizer_config.json").unlink()


@pytest.mark.parametrize(
    ("harm", "file", "says"),
    [
        (lambda d: _cut(d / "model.safetensors"), "model.safetensors", "is truncated or corrupt"),
        (lambda d: _cut(d / "config.json"), "config.json", "is not valid JSON"),
        (lambda d: (d / "config.json").unlink(), "config.json", "not found"),
        (lambda d: (d / "processor_config.json").unlink(), "", "has no loadable processor"),
        (_drop_tokenizer, "", "has no tokenizer (none of tokenizer.json"),
        (lambda d: (d / "tokenizer.json").write_text("{}"), "tokenizer.json", "is not a readable tokenizer"),
        (lambda d: _cut(d / "tokenizer.json"), "tokenizer.json", "is not a readable tokenizer"),
    ],
    ids=[
        "weights cut in half",
        "config cut in half",
        "no config",
        "no processor",
        "no tokenizer",
        "tokenizer.json not a tokenizer",
        "tokenizer.json cut in half",
    ],
)
def test_damaged_copy_of_a_saved_llava_is_a_one_line_model_load_error(
    llava_folder: Path, tmp_path: Path, harm: Callable[[Path], object], file: str, says: str
) -> None:
    folder = _damaged_copy(llava_folder, tmp_path, harm)
    # only the processor is read by the loader alone (its files are checked as transformers loads it)
    assert_one_line_load_error(folder, file, says, before_loading=says != "has no loadable processor")


def test_check_factory_runs_the_loaders_own_check_before_any_weight(llava_folder: Path) -> None:
    """A model config's partial is checked as its loader will check it; other callables pass."""
    import functools

    from vla_autoprune.errors import ConfigError
    from vla_autoprune.models.loading import check_factory

    check_factory(functools.partial(LlavaDrivingAdapter.from_pretrained, folder=str(llava_folder)))
    with pytest.raises(NotALlavaFolderError, match="model_type='driving_vla'"):
        check_factory(functools.partial(LlavaDrivingAdapter.from_pretrained, folder="tiny-drive-vla"))
    with pytest.raises(
        ConfigError, match=r"^model.max_new_tokens is not a setting of load \(its settings: name_or_path\)"
    ):
        check_factory(functools.partial(load, name_or_path=str(llava_folder), max_new_tokens=4))

    def custom(device: str = "cpu", dtype: object = None, **settings: object) -> None: ...

    check_factory(functools.partial(custom, anything=1))  # a loader of the user's own: not ours to judge
    check_factory(lambda device, dtype: None)


def test_adapter_refuses_a_folder_that_is_not_llava(tmp_path: Path) -> None:
    DrivingVLA(DrivingVLAConfig()).save_pretrained(tmp_path)
    with pytest.raises(
        NotALlavaFolderError, match=r"model_type='driving_vla', not 'llava'; load it with load\(\)"
    ):
        LlavaDrivingAdapter.from_pretrained(tmp_path)


def test_adapter_refusal_names_the_command_line_option_that_loads_the_folder(tmp_path: Path) -> None:
    DrivingVLA(DrivingVLAConfig()).save_pretrained(tmp_path)
    with pytest.raises(NotALlavaFolderError) as err:
        LlavaDrivingAdapter.from_pretrained(tmp_path)
    assert f"model=tiny_drive_vla model.name_or_path={tmp_path}" in str(err.value)
    with pytest.raises(NotALlavaFolderError, match="model_type='driving_vla'"):
        LlavaDrivingAdapter.from_pretrained("tiny-drive-vla")  # a bundled name resolves to its folder


def test_loading_logs_the_model_type_and_folder_once(
    llava_folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for call in (LlavaDrivingAdapter.from_pretrained, load):
        caplog.clear()
        with caplog.at_level("INFO", logger="vla_autoprune"):
            call(llava_folder)
        lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("loading ")]
        assert lines == [f"loading llava model from {llava_folder} (cpu, torch.float32)"]
