"""The bundled tiny-drive-vla: it loads, is small, and really drives from its cameras.

Evaluated on a freshly generated synthetic set (a generator seed the model never saw): the model
must beat a constant-velocity baseline clearly, and beat the same model with its visual tokens
zeroed. Also checks the training recipe's mirroring augmentation on hand-made values.
"""

from __future__ import annotations

import json

import pytest
import torch

from data_tools.synthetic_nuscenes import generate
from data_tools.train_tiny_vla import constant_velocity, evaluate, load_split, mirror
from planners.metrics import l2_at
from vla_autoprune.data import CAMERAS, NuScenesDrivingDataset
from vla_autoprune.models import BUNDLED_MODELS, DrivingVLA, load
from vla_autoprune.models.loading import resolve_model_path

#: Unseen generator seed; 12 scenes cover every (road turn, lead behaviour) pairing once and 12
#: keyframes per scene (as in training) leave 6 per scene with the full 3 s future stp3 L2 needs.
EVAL_SEED = 1234
EVAL_SCENES = 12
EVAL_SAMPLES_PER_SCENE = 12
IMAGE_SIZE = (400, 225)  # the training resolution (W, H)
MAX_WEIGHTS_BYTES = 10 * 2**20
#: "Clearly below" constant velocity: at most this fraction of its L2@3s.
CV_MARGIN = 0.8
#: Zeroing the visual tokens must cost at least this fraction of the model's L2@3s.
ZEROED_MARGIN = 0.95


@pytest.fixture(scope="module")
def model() -> DrivingVLA:
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
    assert folder.parts[-2:] == ("assets", "tiny-drive-vla")
    for name in ("config.json", "model.safetensors", "training.json", "TRAINING.md"):
        assert (folder / name).is_file(), name
    assert (folder / "model.safetensors").stat().st_size < MAX_WEIGHTS_BYTES
    record = json.loads((folder / "training.json").read_text())
    assert {"args", "val_l2_stp3", "train_seconds"} <= set(record)
    val = record["val_l2_stp3"]
    assert val["model"]["3s"] < val["constant_velocity"]["3s"]


def test_bundled_architecture(model: DrivingVLA) -> None:
    text = model.config.text_config
    assert type(model.decoder).__name__ in ("LlamaForCausalLM", "Qwen2ForCausalLM")
    assert text.num_hidden_layers == 8 and text.hidden_size == 128
    assert text.num_key_value_heads < text.num_attention_heads  # GQA
    assert not model.training


def test_beats_constant_velocity_and_needs_its_cameras(model: DrivingVLA, fresh_data: dict) -> None:
    metrics = evaluate(model, fresh_data)
    l2_model = metrics["model"]["3s"]
    assert l2_model < CV_MARGIN * metrics["constant_velocity"]["3s"], metrics
    assert l2_model < ZEROED_MARGIN * metrics["model_visual_zeroed"]["3s"], metrics


def test_survives_dropping_half_the_visual_tokens(model: DrivingVLA, fresh_data: dict) -> None:
    """Pruning-style removal (every other visual token, positions kept) still beats the baseline."""
    with torch.no_grad():
        inputs = model.prepare({**fresh_data, "cameras": CAMERAS})
        visual = inputs.layout.visual_mask
        keep = ~(visual & (visual.long().cumsum(1) % 2 == 0))
        b, d = keep.shape[0], inputs.inputs_embeds.shape[-1]
        shorter = inputs.with_(
            inputs_embeds=inputs.inputs_embeds[keep].view(b, -1, d),
            attention_mask=inputs.attention_mask[keep].view(b, -1),
            position_ids=inputs.position_ids[keep].view(b, -1),
        )
        pruned = model.decode(shorter)
    gt, mask = fresh_data["gt_trajectory"], fresh_data["gt_mask"]
    l2_pruned = l2_at(pruned, gt, mask)["3s"]
    l2_cv = l2_at(constant_velocity(fresh_data["ego_state"]), gt, mask)["3s"]
    assert l2_pruned < CV_MARGIN * l2_cv, (l2_pruned, l2_cv)


def test_mirror_swaps_sides() -> None:
    images = torch.arange(6).view(1, 6, 1, 1, 1).expand(2, 6, 3, 1, 2).clone()
    images[..., 1] += 10  # right pixel column differs from the left one
    batch = {
        "images": images,
        "command": torch.tensor([0, 0]),
        "ego_state": torch.tensor([[5.0, 1.0, 0.2], [5.0, 1.0, 0.2]]),
        "gt_trajectory": torch.tensor([[[1.0, 2.0]] * 6] * 2),
        "gt_mask": torch.ones(2, 6, dtype=torch.bool),
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
