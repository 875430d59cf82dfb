"""DrivingVLA: save/load, padding invariance, token layout, saliency, dtypes, and ``load``."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_load_error
from transformers.utils import logging as hf_logging

from vla_autoprune.data.schema import CAMERAS
from vla_autoprune.errors import ConfigError, DataError, DataNotFoundError
from vla_autoprune.models import DrivingVLA, DrivingVLAConfig, UnknownModelError, UnsupportedModelError, load
from vla_autoprune.models.driving_vla import cls_attention
from vla_autoprune.models.loading import resolve_model_path
from vla_autoprune.models.prompt import PromptTokenizer, build_prompt_ids, ego_text, spell_number

NUM_PATCHES = 36  # default tiny config: 96 px images, 16 px patches -> 6 x 6


def _batch(b: int = 2, cameras: tuple[str, ...] = CAMERAS) -> dict:
    g = torch.Generator().manual_seed(1)
    ego = torch.tensor([[5.3, 0.1, 0.01], [12.25, -1.0, -0.2], [0.0, 0.0, 0.0]])
    return {
        "images": torch.randint(0, 256, (b, len(cameras), 3, 45, 80), dtype=torch.uint8, generator=g),
        "cameras": cameras,
        "command": torch.tensor([0, 1, 2])[:b],
        "ego_state": ego[:b],
    }


def _sample(batch: dict, i: int) -> dict:
    return {k: (v[i : i + 1] if torch.is_tensor(v) else v) for k, v in batch.items()}


@pytest.fixture(scope="module")
def model() -> DrivingVLA:
    torch.manual_seed(0)
    return DrivingVLA(DrivingVLAConfig()).eval()


def test_prompt_spells_numbers_and_differs_in_length() -> None:
    assert spell_number(-1.25, 2) == "- 1 . 2 5"
    assert spell_number(-0.04, 1) == "0 . 0"  # no "-0.0"
    assert ego_text([12.25, -1.0, 0.0]) == "speed 1 2 . 2 accel - 1 . 0 yaw 0 . 0 0 <ego>"
    assert ego_text([12.25, -1.0, 0.0], ("speed",)) == "speed 1 2 . 2 <ego>"
    with pytest.raises(ConfigError, match="ego_state_fields"):
        ego_text([1.0, 0.0, 0.0], ("jerk",))
    tok = PromptTokenizer()
    ids = build_prompt_ids(tok, CAMERAS, torch.tensor([0, 1]), torch.tensor([[5.0, 0, 0], [12.0, 0, 0]]))
    assert len(ids.suffixes[0]) + 1 == len(ids.suffixes[1])  # "5.0" vs "12.0"
    assert tok.decode(ids.suffixes[0]).startswith("command : turn left .")
    assert tok.unk_id not in ids.prefix + ids.suffixes[0] + ids.suffixes[1]


def test_unknown_camera_and_small_vocab_are_rejected(model: DrivingVLA) -> None:
    with pytest.raises(DataError, match="unknown cameras"):
        model.prepare(_batch(1, cameras=("CAM_FRONT", "CAM_ROOF", *CAMERAS[2:])))
    with pytest.raises(DataError, match=r"batch\['ego_state'\] must be \[B, 3\]"):
        model.prepare({**_batch(1), "ego_state": torch.zeros(1, 2)})
    with pytest.raises(ConfigError, match="vocab_size"):
        DrivingVLA(DrivingVLAConfig(text_config={"model_type": "llama", "vocab_size": 8, "hidden_size": 32}))


def test_layout_counts_follow_the_vision_config() -> None:
    config = DrivingVLAConfig(
        vision_config={
            "model_type": "siglip_vision_model",
            "image_size": 64,
            "patch_size": 16,
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
        }
    )
    inputs = DrivingVLA(config).eval().prepare(_batch(1, cameras=CAMERAS[:2]))
    layout = inputs.layout
    assert layout.patch_grid == (4, 4)
    assert layout.num_visual == 2 * 16
    assert layout.camera_index.tolist() == [[0] * 16 + [1] * 16]
    assert layout.patch_index.tolist() == [list(range(16)) * 2]
    assert inputs.vision_saliency is not None and inputs.vision_saliency.shape == (1, 32)


def test_visual_positions_hold_that_cameras_projected_tokens(model: DrivingVLA) -> None:
    batch = _batch()
    with torch.no_grad():
        inputs = model.prepare(batch)
        pixels = model.preprocess_images(batch["images"])  # [B * C, 3, 96, 96]
        expected = model.projector(model.vision_tower(pixel_values=pixels).last_hidden_state)
    layout = inputs.layout
    got = inputs.inputs_embeds[layout.visual_mask].view(2, len(CAMERAS), NUM_PATCHES, -1)
    assert torch.allclose(got, expected.view(2, len(CAMERAS), NUM_PATCHES, -1), atol=1e-6)
    assert (layout.camera_index.view(2, len(CAMERAS), NUM_PATCHES) == torch.arange(6).view(1, 6, 1)).all()
    # Each camera block is preceded by that camera's marker token.
    tok = model.tokenizer
    embed = model.language_model.get_input_embeddings().weight
    first = layout.visual_positions().view(2, len(CAMERAS), NUM_PATCHES)[:, :, 0]
    for c, camera in enumerate(CAMERAS):
        marker = inputs.inputs_embeds[torch.arange(2), first[:, c] - 1]
        assert torch.equal(marker, embed[tok.token_id(f"<{camera}>")].expand(2, -1))


def test_text_mask_is_everything_real_after_the_visual_block(model: DrivingVLA) -> None:
    inputs = model.prepare(_batch())
    layout = inputs.layout
    last_visual = layout.visual_positions()[:, -1]
    n = layout.text_mask.shape[1]
    for b in range(2):
        assert layout.text_mask[b].nonzero().flatten().tolist() == list(range(int(last_visual[b]) + 1, n))
    # Left padding: the shorter prompt (5.3 m/s vs 12.25 m/s) is padded at the front only.
    assert inputs.attention_mask[0, 0] == 0 and inputs.attention_mask[:, -1].all()
    assert inputs.attention_mask[1].all()


def test_batch_of_two_equals_two_batches_of_one(model: DrivingVLA) -> None:
    batch = _batch()
    with torch.no_grad():
        joint = model.plan(batch)
        single = torch.cat([model.plan(_sample(batch, i)) for i in range(2)])
    assert joint.shape == (2, 6, 2) and joint.dtype == torch.float32
    assert torch.allclose(joint, single, atol=1e-5)
    assert not torch.allclose(joint[0], joint[1], atol=1e-3)


def test_decode_uses_only_its_inputs_dropping_equals_masking(model: DrivingVLA) -> None:
    """Shorter inputs (visual tokens removed, original positions) == the same tokens masked out."""
    inputs = model.prepare(_batch())
    visual = inputs.layout.visual_mask
    drop = visual & (torch.arange(visual.shape[1]) % 3 == 0)  # same count per sample
    keep = ~drop
    b = visual.shape[0]
    assert inputs.position_ids is not None
    shorter = inputs.with_(
        inputs_embeds=inputs.inputs_embeds[keep].view(b, -1, inputs.inputs_embeds.shape[-1]),
        attention_mask=inputs.attention_mask[keep].view(b, -1),
        position_ids=inputs.position_ids[keep].view(b, -1),
        layout=None,  # decode must not need the (now stale) layout
    )
    masked = inputs.with_(attention_mask=inputs.attention_mask * keep)
    with torch.no_grad():
        full, short, mask = model.decode(inputs), model.decode(shorter), model.decode(masked)
    assert torch.allclose(short, mask, atol=1e-5)
    assert not torch.allclose(short, full, atol=1e-4)  # dropping tokens does change the answer


def test_kinematic_prior_is_a_constant_speed_rollout(model: DrivingVLA) -> None:
    head = model.waypoint_head.fc_out
    saved = head.weight.detach().clone(), head.bias.detach().clone()
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        try:
            out = model.plan(_batch())
        finally:
            head.weight.copy_(saved[0])
            head.bias.copy_(saved[1])
    # 5.3 m/s and 12.25 m/s straight ahead, sampled every 0.5 s; y stays 0.
    t = torch.arange(1, 7) * 0.5
    assert torch.allclose(out[0], torch.stack([5.3 * t, torch.zeros(6)], -1))
    assert torch.allclose(out[1], torch.stack([12.25 * t, torch.zeros(6)], -1))


def test_decode_without_extras_says_what_is_missing(model: DrivingVLA) -> None:
    inputs = model.prepare(_batch(1))
    with pytest.raises(ValueError, match="ego_speed"):
        model.decode(inputs.with_(extras=None))


def test_from_pretrained_round_trip_is_identical(model: DrivingVLA, tmp_path: Path) -> None:
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    reloaded = DrivingVLA.from_pretrained(tmp_path).eval()
    batch = _batch()
    with torch.no_grad():
        assert torch.equal(model.plan(batch), reloaded.plan(batch))
        assert torch.equal(model.plan(batch), load(tmp_path).plan(batch))


def test_bf16_runs_close_to_fp32(model: DrivingVLA, tmp_path: Path) -> None:
    model.save_pretrained(tmp_path)
    bf16 = load(tmp_path, dtype=torch.bfloat16)
    assert next(bf16.parameters()).dtype == torch.bfloat16
    batch = _batch()
    with torch.no_grad():
        inputs = bf16.prepare(batch)
        out = bf16.decode(inputs)
        ref = model.plan(batch)
    assert inputs.inputs_embeds.dtype == torch.bfloat16
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert torch.allclose(out, ref, atol=0.1 * float(ref.abs().max()))


def test_siglip_saliency_equals_the_pooling_heads_attention(model: DrivingVLA) -> None:
    batch = _batch(1)
    with torch.no_grad():
        inputs = model.prepare(batch)
        hidden = model.vision_tower(pixel_values=model.preprocess_images(batch["images"])).last_hidden_state
        head = model.vision_tower.head
        _, weights = head.attention(head.probe.expand(len(CAMERAS), -1, -1), hidden, hidden)  # [C, 1, P]
    assert inputs.vision_saliency is not None
    assert torch.allclose(inputs.vision_saliency.view(len(CAMERAS), -1), weights[:, 0], atol=1e-6)
    assert torch.allclose(inputs.vision_saliency.sum(1), torch.tensor(float(len(CAMERAS))))


def test_clip_vision_and_qwen2_decoder() -> None:
    config = DrivingVLAConfig(
        vision_config={
            "model_type": "clip_vision_model",
            "image_size": 32,
            "patch_size": 16,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
        },
        text_config={
            "model_type": "qwen2",
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "vocab_size": 64,
        },
    )
    model = DrivingVLA(config).eval()
    assert type(model.decoder).__name__ == "Qwen2ForCausalLM"
    batch = _batch()
    with torch.no_grad():
        inputs = model.prepare(batch)
        out = model.decode(inputs)
        single = torch.cat([model.plan(_sample(batch, i)) for i in range(2)])
        tower = model.vision_tower
        pixels = model.preprocess_images(batch["images"])
        hidden = tower(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
        last = tower.encoder.layers[-1]
        expected = cls_attention(last.self_attn, last.layer_norm1(hidden))[:, 1:]
    assert inputs.layout.num_visual == len(CAMERAS) * 4  # [CLS] is not a visual token
    assert torch.allclose(out, single, atol=1e-5)
    assert torch.allclose(inputs.vision_saliency.view(2 * len(CAMERAS), 4), expected, atol=1e-6)


def test_load_unknown_name_lists_bundled_models() -> None:
    with pytest.raises(UnknownModelError, match=r"unknown model 'nope'.*tiny-drive-vla.*folder") as err:
        load("nope")
    assert isinstance(err.value, DataNotFoundError)


def test_a_model_path_that_does_not_exist_says_so(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_model"
    for name in (str(missing), "./no_such_model", "models/no_such_model"):
        with pytest.raises(UnknownModelError, match="no such folder") as err:
            load(name)
        assert "does not exist" in str(err.value) and "save_pretrained" in str(err.value)
    assert str(missing) in str(pytest.raises(UnknownModelError, load, missing).value)


def test_a_file_instead_of_its_model_folder_names_the_folder(tmp_path: Path) -> None:
    from vla_autoprune.models.describe import describe

    DrivingVLA(DrivingVLAConfig()).save_pretrained(tmp_path)
    for call in (load, describe, resolve_model_path):
        with pytest.raises(UnknownModelError, match="is a file, not a model folder") as err:
            call(tmp_path / "config.json")
        assert f"(e.g. {tmp_path.resolve()})" in str(err.value) and "\n" not in str(err.value)


def test_describe_of_a_config_that_is_not_an_object_is_a_one_line_error(tmp_path: Path) -> None:
    from vla_autoprune.errors import ModelLoadError
    from vla_autoprune.models.describe import describe

    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ModelLoadError, match="holds a list, not a JSON object") as err:
        describe(tmp_path)
    assert str(tmp_path / "config.json") in str(err.value) and "save_pretrained" in str(err.value)


def test_describe_of_an_unsupported_type_gives_the_fix(tmp_path: Path) -> None:
    from vla_autoprune.errors import ModelLoadError
    from vla_autoprune.models.describe import describe

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gemma3"}))
    with pytest.raises(ModelLoadError, match=r"model_type='gemma3'.*: pass a DrivingVLA, LLaVA, Qwen2.5-VL"):
        describe(tmp_path)


@pytest.mark.parametrize("bar_enabled", [True, False])
def test_loading_the_bundled_model_draws_no_bar_and_restores_the_setting(
    bar_enabled: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    """transformers' "Loading weights" bar is clutter for a model that loads in milliseconds (one per
    job of the main job's multirun); the user's own bar setting survives the load."""
    was = hf_logging.is_progress_bar_enabled()
    (hf_logging.enable_progress_bar if bar_enabled else hf_logging.disable_progress_bar)()
    try:
        load()
        assert hf_logging.is_progress_bar_enabled() is bar_enabled
        assert "Loading weights" not in capsys.readouterr().err
    finally:
        (hf_logging.enable_progress_bar if was else hf_logging.disable_progress_bar)()


def _truncate(path: Path, size: int) -> None:
    path.write_bytes(path.read_bytes()[:size])


#: Damage done to a copy of the bundled model folder -> (file the error must name, what it must say).
DAMAGE: dict[str, tuple[Callable[[Path], object], str, str]] = {
    "weights cut in half": (
        lambda d: _truncate(d / "model.safetensors", (d / "model.safetensors").stat().st_size // 2),
        "model.safetensors",
        "is truncated or corrupt",
    ),
    "weights cut to 4 bytes": (
        lambda d: _truncate(d / "model.safetensors", 4),
        "model.safetensors",
        "is truncated or corrupt",
    ),
    "no weights": (lambda d: (d / "model.safetensors").unlink(), "", "has no weights"),
    "no config": (lambda d: (d / "config.json").unlink(), "config.json", "not found"),
    "config cut short": (lambda d: _truncate(d / "config.json", 100), "config.json", "is not valid JSON"),
    "config not an object": (lambda d: (d / "config.json").write_text("[1, 2]"), "config.json", "not a JSON"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_copy_of_the_bundled_model_is_a_one_line_model_load_error(
    damage: str, tmp_path: Path
) -> None:
    folder = tmp_path / "tiny-drive-vla"
    shutil.copytree(resolve_model_path("tiny-drive-vla"), folder)
    load(folder)  # the intact copy loads
    harm, file, says = DAMAGE[damage]
    harm(folder)
    assert_one_line_load_error(folder, file, says)


def test_unsupported_model_type_names_the_supported_ones(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(UnsupportedModelError, match=r"model_type='bert'.*'driving_vla', 'llava'"):
        load(tmp_path)
