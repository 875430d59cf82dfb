"""The bundled tiny-drive-vla: it loads, is small, and really drives from its cameras.

Evaluated on a freshly generated synthetic set (a generator seed the model never saw): the model
must beat a constant-velocity baseline and the same model with its visual tokens zeroed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from data_tools.synthetic_nuscenes import generate
from data_tools.train_tiny_vla import constant_velocity, evaluate, load_split, predict
from planners.metrics import l2_at
from vla_autoprune.data import NuScenesDrivingDataset
from vla_autoprune.models import BUNDLED_MODELS, DrivingVLA, load
from vla_autoprune.models.loading import resolve_model_path

#: Unseen generator seed; 6 scenes cover each road turn twice and 14 keyframes per scene leave
#: 8 per scene with the full 3 s future the stp3 L2 needs.
EVAL_SEED = 1234
EVAL_SCENES = 6
EVAL_SAMPLES_PER_SCENE = 14
IMAGE_SIZE = (400, 225)  # the training resolution (W, H)
MAX_WEIGHTS_BYTES = 10 * 2**20
#: "Clearly below": at most this fraction of the reference L2@3s.
CLEAR_MARGIN = 0.8


@pytest.fixture(scope="module")
def model() -> DrivingVLA:
    torch.manual_seed(0)
    loaded = load("tiny-drive-vla")
    assert isinstance(loaded, DrivingVLA)
    return loaded


@pytest.fixture(scope="module")
def fresh_data(model: DrivingVLA, tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    root = tmp_path_factory.mktemp("fresh_synthetic")
    generate(
        root,
        scenes=EVAL_SCENES,
        samples_per_scene=EVAL_SAMPLES_PER_SCENE,
        image_size=IMAGE_SIZE,
        seed=EVAL_SEED,
    )
    parts = [load_split(NuScenesDrivingDataset(root, split=split), model) for split in ("train", "val")]
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def test_bundled_folder_is_complete_and_small() -> None:
    assert BUNDLED_MODELS == ("tiny-drive-vla",)
    folder = resolve_model_path("tiny-drive-vla")
    for name in ("config.json", "model.safetensors", "training.json", "TRAINING.md"):
        assert (folder / name).is_file(), name
    assert (folder / "model.safetensors").stat().st_size < MAX_WEIGHTS_BYTES
    record = json.loads((folder / "training.json").read_text())
    assert {"args", "val_l2_stp3", "train_seconds"} <= set(record)
    assert record["val_l2_stp3"]["model"]["3s"] < record["val_l2_stp3"]["constant_velocity"]["3s"]


def test_bundled_architecture(model: DrivingVLA) -> None:
    text = model.config.text_config
    assert type(model.decoder).__name__ in ("LlamaForCausalLM", "Qwen2ForCausalLM")
    assert text.num_hidden_layers == 8 and text.hidden_size == 128
    assert text.num_key_value_heads < text.num_attention_heads  # GQA
    assert not model.training


def test_beats_constant_velocity_and_needs_its_cameras(model: DrivingVLA, fresh_data: dict) -> None:
    metrics = evaluate(model, fresh_data)
    l2_model = metrics["model"]["3s"]
    assert l2_model < CLEAR_MARGIN * metrics["constant_velocity"]["3s"], metrics
    assert l2_model < CLEAR_MARGIN * metrics["model_visual_zeroed"]["3s"], metrics


def test_survives_dropping_half_the_visual_tokens(model: DrivingVLA, fresh_data: dict) -> None:
    """Pruning-style removal (every other visual token, positions kept) still beats the baseline."""
    gt, mask = fresh_data["gt_trajectory"], fresh_data["gt_mask"]
    with torch.no_grad():
        inputs = model.prepare({**fresh_data, "cameras": model_cameras()})
        visual = inputs.layout.visual_mask
        keep = ~(visual & (visual.long().cumsum(1) % 2 == 0))
        b, d = keep.shape[0], inputs.inputs_embeds.shape[-1]
        shorter = inputs.with_(
            inputs_embeds=inputs.inputs_embeds[keep].view(b, -1, d),
            attention_mask=inputs.attention_mask[keep].view(b, -1),
            position_ids=inputs.position_ids[keep].view(b, -1),
        )
        pruned = model.decode(shorter)
    l2_pruned = l2_at(pruned, gt, mask)["3s"]
    l2_full = l2_at(predict(model, fresh_data), gt, mask)["3s"]
    l2_cv = l2_at(constant_velocity(fresh_data["ego_state"]), gt, mask)["3s"]
    assert l2_pruned < l2_cv, (l2_pruned, l2_full, l2_cv)


def model_cameras() -> tuple[str, ...]:
    from vla_autoprune.data.schema import CAMERAS

    return CAMERAS


def test_resolve_points_into_the_package() -> None:
    folder = resolve_model_path("tiny-drive-vla")
    assert folder.parts[-2:] == ("assets", "tiny-drive-vla")
    assert Path(folder).is_dir()
