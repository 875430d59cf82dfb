"""The Qwen-VL adapters on tiny random models saved to disk: loading, prompt, layout, M-RoPE, parsing.

Tests taking ``model`` or ``qwen_family`` run on both tiny families (Qwen2.5-VL and Qwen3-VL, conftest's
``qwen_family``); Qwen3-VL's deepstack (beyond where it points) and the refused families are tested in
test_qwen3_vl.py.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import evaluate_config, qwen_adapter_class, qwen_logits, qwen_native_logits
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from vla_autoprune.errors import ModelLoadError
from vla_autoprune.models import QwenVLDrivingAdapter, load
from vla_autoprune.models.chat_adapter import batch_instructions
from vla_autoprune.models.describe import describe
from vla_autoprune.models.qwen_adapter import camera_lines

Batch = Callable[[int], dict[str, Any]]
CONF = Path(__file__).resolve().parents[1] / "conf"


@pytest.fixture(scope="module")
def model(qwen_family: str, qwen_family_folder: Path) -> QwenVLDrivingAdapter:
    model = qwen_adapter_class(qwen_family).from_pretrained(qwen_family_folder)
    model.max_new_tokens = 6
    return model


def test_prepare_matches_the_models_own_forward(model: QwenVLDrivingAdapter, camera_batch: Batch) -> None:
    batch = camera_batch(2)
    inputs = model.prepare(batch)
    assert not inputs.attention_mask.all()  # left padding is exercised
    assert inputs.position_ids is not None and inputs.position_ids.shape[0] == 3
    assert torch.allclose(qwen_logits(model, inputs), qwen_native_logits(model, batch), atol=1e-5)


def test_from_pretrained_round_trip_gives_identical_outputs(
    model: QwenVLDrivingAdapter, camera_batch: Batch, tmp_path: Path
) -> None:
    model.qwen.save_pretrained(tmp_path)
    model.image_processor.save_pretrained(tmp_path)
    model.tokenizer.save_pretrained(tmp_path)
    again = type(model).from_pretrained(tmp_path)
    again.max_new_tokens = model.max_new_tokens
    batch = camera_batch(2)
    assert torch.equal(qwen_logits(model, model.prepare(batch)), qwen_logits(again, again.prepare(batch)))
    assert (
        model.generate_waypoints(model.prepare(batch)).texts
        == again.generate_waypoints(again.prepare(batch)).texts
    )


def test_layout_and_deepstack_point_at_each_cameras_vision_tokens(
    model: QwenVLDrivingAdapter, camera_batch: Batch
) -> None:
    """The layout names each visual token's camera and patch; its embedding (and, with Qwen3-VL, each
    layer's deepstack feature) is that patch's, from the batch's vision run and that image's alone."""
    batch = camera_batch(2)
    inputs = model.prepare(batch)
    layout = inputs.layout
    b, c = batch["images"].shape[:2]
    rows, cols = layout.patch_grid
    assert (rows, cols) == (3, 5)  # 36 x 64 resized to 24 x 40, 4 px patches merged 2 x 2
    encoded = model.image_processor(images=list(batch["images"].flatten(0, 1)), return_tensors="pt")
    features = model.image_features(encoded["pixel_values"], encoded["image_grid_thw"])[0]
    features = features.view(b, c, rows * cols, -1)
    positions = layout.visual_positions()
    assert inputs.position_ids is not None
    for i in range(b):
        for cam in range(c):
            sel = layout.camera_index[i] == cam
            patches = layout.patch_index[i, sel]
            got = inputs.inputs_embeds[i, positions[i, sel]]
            assert torch.equal(got, features[i, cam, patches])
            # the visual encoder run on this one image alone
            alone = model.image_processor(images=[batch["images"][i, cam]], return_tensors="pt")
            own, _, deepstack = model.vision_outputs(alone["pixel_values"], alone["image_grid_thw"])
            assert torch.allclose(got, own[patches], atol=1e-6)
            assert (deepstack is None) == (inputs.deepstack is None)  # Qwen3-VL has them (test_qwen3_vl.py)
            for layer, per_layer in enumerate(deepstack or ()):
                assert inputs.deepstack is not None
                assert torch.allclose(inputs.deepstack[layer][i, sel], per_layer[patches], atol=1e-6)
            # the M-RoPE (h, w) offsets of each token are its patch's row and column
            t, h, w = inputs.position_ids[:, i, positions[i, sel]]
            assert torch.equal(h - t, patches // cols)
            assert torch.equal(w - t, patches % cols)


def test_prompt_names_every_camera_before_its_image(camera_batch: Batch) -> None:
    batch = camera_batch(1)
    lines = camera_lines(list(batch["cameras"]), 2)
    for camera, line in zip(batch["cameras"], lines.splitlines(), strict=True):
        assert line == f"{camera}: <|vision_start|><|image_pad|><|image_pad|><|vision_end|>"
    assert "Command: turn left. Speed: 5.3 m/s." in batch_instructions(batch)[0]


def test_malformed_answers_are_counted_not_raised(model: QwenVLDrivingAdapter, camera_batch: Batch) -> None:
    model.parse_stats.total = model.parse_stats.malformed = 0
    waypoints = model.plan(camera_batch(2))  # a random model answers bytes, never six pairs
    assert waypoints.shape == (2, 6, 2) and bool(waypoints.isnan().all())
    assert (model.parse_stats.total, model.parse_stats.malformed) == (2, 2)


def test_load_describe_and_hydra_know_qwen_folders(
    qwen_family: str, qwen_family_folder: Path, camera_batch: Batch
) -> None:
    folder, adapter = qwen_family_folder, qwen_adapter_class(qwen_family)
    assert type(load(folder)) is adapter
    shape = describe(folder, image_size=(64, 36))
    layout = load(folder).prepare(camera_batch(1)).layout
    assert shape.model_type == qwen_family and shape.num_layers == 4
    assert shape.num_visual(6) == layout.num_visual
    # nuScenes' native 1600 x 900 is shrunk to the 1024-pixel cap: 24 x 40 px -> 3 x 5 tokens
    assert describe(folder).visual_per_camera == 15
    for entry in ("evaluate", "visualize"):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(entry, overrides=[f"model={qwen_family}", f"model.name_or_path={folder}"])
        planner = instantiate(cfg.planner)
        planner.setup()
        assert type(planner.model) is adapter, entry


def test_a_folder_without_its_tokenizer_gives_a_one_line_error(
    qwen_family: str, qwen_family_folder: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "no_tokenizer"
    shutil.copytree(qwen_family_folder, broken)
    (broken / "tokenizer.json").unlink()
    (broken / "tokenizer_config.json").unlink()
    with pytest.raises(ModelLoadError) as err:
        qwen_adapter_class(qwen_family).from_pretrained(broken)
    assert "\n" not in str(err.value)


def test_a_folder_without_its_tokenizer_is_refused_before_any_weight_loads(
    qwen_family: str, qwen_family_folder: Path, tmp_path: Path
) -> None:
    """transformers 5 builds an empty tokenizer for such a folder; the error must name the missing
    tokenizer (not "lacks the Qwen special tokens"), and describe(), which the run calls before the
    data and the weights load, must raise it already."""
    broken = tmp_path / "no_tokenizer"
    shutil.copytree(qwen_family_folder, broken)
    (broken / "tokenizer.json").unlink()
    (broken / "tokenizer_config.json").unlink()
    for call in (qwen_adapter_class(qwen_family).from_pretrained, describe):
        with pytest.raises(ModelLoadError, match=r"has no tokenizer \(none of tokenizer.json") as err:
            call(broken)
        assert str(broken) in str(err.value) and "tokenizer.save_pretrained" in str(err.value)


@pytest.mark.parametrize("content", ["{}", '{"added_tokens": []}', '{"version": '])
def test_an_unreadable_tokenizer_json_is_a_one_line_error_naming_it(
    qwen_folder: Path, tmp_path: Path, content: str
) -> None:
    broken = tmp_path / "bad_tokenizer"
    shutil.copytree(qwen_folder, broken)
    (broken / "tokenizer.json").write_text(content)
    for call in (QwenVLDrivingAdapter.from_pretrained, load, describe):
        with pytest.raises(ModelLoadError, match="is not a readable tokenizer") as err:
            call(broken)
        assert "\n" not in str(err.value) and str(broken / "tokenizer.json") in str(err.value)


def test_another_family_is_refused_with_the_option_that_loads_it(
    qwen_folder: Path, qwen3_folder: Path
) -> None:
    """model=qwen2_5_vl on a Qwen3-VL folder (or on a bundled name): the fix names the model= option."""
    with pytest.raises(ModelLoadError) as err:
        QwenVLDrivingAdapter.from_pretrained(qwen3_folder)
    assert f"model=qwen3_vl model.name_or_path={qwen3_folder}" in str(err.value)
    with pytest.raises(ModelLoadError) as err:
        qwen_adapter_class("qwen3_vl").from_pretrained(qwen_folder)
    assert f"model=qwen2_5_vl model.name_or_path={qwen_folder}" in str(err.value)
    with pytest.raises(ModelLoadError, match="model_type='driving_vla'") as err:
        QwenVLDrivingAdapter.from_pretrained("tiny-drive-vla")
    assert "model=tiny_drive_vla model.name_or_path=tiny-drive-vla" in str(err.value)


@pytest.mark.parametrize("max_new_tokens", [0, -3, 2.5])
def test_a_bad_max_new_tokens_is_refused_before_the_weights_load(
    qwen_folder: Path, tmp_path: Path, max_new_tokens: Any
) -> None:
    """model.max_new_tokens=0 crashed inside generate() with a traceback, after a batch had run."""
    from vla_autoprune.errors import ConfigError

    broken = tmp_path / "cut_weights"  # settings are checked first: the damaged weights are never read
    shutil.copytree(qwen_folder, broken)
    (broken / "model.safetensors").write_bytes(b"")
    with pytest.raises(
        ConfigError, match=rf"max_new_tokens={max_new_tokens!r} must be a positive integer"
    ) as err:
        QwenVLDrivingAdapter.from_pretrained(broken, max_new_tokens=max_new_tokens)
    assert "model.max_new_tokens=128" in str(err.value)
    with pytest.raises(ModelLoadError, match="prompt_template lacks"):
        QwenVLDrivingAdapter.from_pretrained(broken, prompt_template="hello")


def test_loading_logs_the_model_type_and_folder(
    qwen_family: str, qwen_family_folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A run's log says which model it loaded, once, whichever entry point (the adapter or load())."""
    for call in (qwen_adapter_class(qwen_family).from_pretrained, load):
        caplog.clear()
        with caplog.at_level("INFO", logger="vla_autoprune"):
            call(qwen_family_folder)
        lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("loading ")]
        assert lines == [f"loading {qwen_family} model from {qwen_family_folder} (cpu, torch.float32)"]


def test_a_model_config_of_ones_own_sets_the_prompt(
    qwen_folder: Path, camera_batch: Batch, tmp_path: Path
) -> None:
    """The README's recipe: a yaml in conf/model that extends qwen2_5_vl with a multi-line template."""
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    (conf / "model" / "impromptu.yaml").write_text(
        "defaults:\n  - qwen2_5_vl\n  - _self_\n"
        f"name_or_path: {qwen_folder}\n"
        "prompt_template: |\n  <|im_start|>user\n  {images}{instruction}<|im_end|>\n  <|im_start|>assistant\n"
    )
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("evaluate", overrides=["model=impromptu"])
    model = instantiate(cfg.model)(device="cpu", dtype=torch.float32)
    assert (
        model.prompt_template == "<|im_start|>user\n{images}{instruction}<|im_end|>\n<|im_start|>assistant\n"
    )
    default = load(qwen_folder).prepare(camera_batch(1))
    custom = model.prepare(camera_batch(1))
    system = "<|im_start|>system\nYou are a helpful driving assistant.<|im_end|>\n"
    system_line = len(model.tokenizer(system)["input_ids"])  # the part the custom template leaves out
    assert default.inputs_embeds.shape[1] - custom.inputs_embeds.shape[1] == system_line
    assert custom.layout.num_visual == default.layout.num_visual
    with pytest.raises(ModelLoadError, match="instruction"):
        QwenVLDrivingAdapter.from_pretrained(qwen_folder, prompt_template="{images} only")


def test_well_formed_answers_parse(qwen_answering_folder: Path, camera_batch: Batch) -> None:
    from conftest import QWEN_ANSWER

    model = QwenVLDrivingAdapter.from_pretrained(qwen_answering_folder)
    model.parse_stats.total = model.parse_stats.malformed = 0
    waypoints = model.plan(camera_batch(3))  # the prompts it was fitted on
    assert (model.parse_stats.total, model.parse_stats.malformed) == (3, 0)
    assert torch.allclose(waypoints, torch.tensor(QWEN_ANSWER).expand(3, -1, -1))


def test_evaluate_runs_a_qwen_folder_end_to_end(
    qwen_family: str, qwen_family_folder: Path, synthetic_root: Path, tmp_path: Path
) -> None:
    from vla_autoprune.pipeline.app import evaluate

    overrides = [
        "batch_size=3",
        "limit=3",
        f"model={qwen_family}",
        f"model.name_or_path={qwen_family_folder}",
        "model.max_new_tokens=4",  # a random model: every answer is malformed
        "pruner=fastv",
        "budget=48",
    ]
    summary = evaluate(evaluate_config(synthetic_root, *overrides), tmp_path / "run")
    # a random model answers malformed text: every sample is counted, none crashes the run
    assert summary["num_samples"] == 3 and summary["num_malformed"] == 3
