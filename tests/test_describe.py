"""models.describe: decoder depth and visual tokens from config.json agree with the loaded models."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    SiglipVisionConfig,
)

from vla_autoprune.compat import decoder_layers
from vla_autoprune.data import NuScenesDrivingDataset, collate
from vla_autoprune.errors import DataNotFoundError, ModelLoadError
from vla_autoprune.models import load
from vla_autoprune.models.describe import describe
from vla_autoprune.models.loading import resolve_model_path


def test_bundled_model_matches_its_real_layout(synthetic_root: Path) -> None:
    shape = describe("tiny-drive-vla")
    model = load("tiny-drive-vla")
    batch = collate([NuScenesDrivingDataset(synthetic_root, split="val")[0]])
    with torch.inference_mode():
        inputs = model.prepare(batch)
    assert shape.model_type == "driving_vla"
    assert shape.num_layers == len(decoder_layers(model.decoder))
    assert shape.num_visual(len(batch["cameras"])) == inputs.layout.num_visual


def test_reads_only_the_config(tmp_path: Path) -> None:
    shutil.copy(resolve_model_path("tiny-drive-vla") / "config.json", tmp_path / "config.json")
    assert describe(tmp_path) == describe("tiny-drive-vla")  # no weights in tmp_path


def _llava(vision: CLIPVisionConfig | SiglipVisionConfig, strategy: str) -> LlavaForConditionalGeneration:
    text = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=40,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=39,
        vision_feature_layer=-2,
        vision_feature_select_strategy=strategy,
    )
    torch.manual_seed(0)
    return LlavaForConditionalGeneration(config).eval()


_TOWER = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}


@pytest.mark.parametrize(
    ("vision", "strategy"),
    [
        (CLIPVisionConfig(image_size=28, patch_size=14, **_TOWER), "default"),  # drops [CLS]
        (CLIPVisionConfig(image_size=28, patch_size=14, **_TOWER), "full"),  # keeps [CLS]
        (SiglipVisionConfig(image_size=32, patch_size=8, **_TOWER), "full"),  # no [CLS]
    ],
)
def test_llava_folder_matches_the_features_llava_merges(
    tmp_path: Path, vision: CLIPVisionConfig | SiglipVisionConfig, strategy: str
) -> None:
    llava = _llava(vision, strategy)
    llava.save_pretrained(tmp_path)
    size = vision.image_size
    with torch.inference_mode():
        features = llava.model.get_image_features(
            pixel_values=torch.zeros(2, 3, size, size),
            vision_feature_layer=llava.config.vision_feature_layer,
            vision_feature_select_strategy=strategy,
        ).pooler_output
    shape = describe(tmp_path)
    assert shape.model_type == "llava"
    assert shape.num_layers == len(decoder_layers(llava)) == 3
    assert shape.visual_per_camera == features[0].shape[0]


def test_bad_folders_are_one_line_user_errors(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match="config.json not found"):
        describe(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": ')
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        describe(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ModelLoadError, match="model_type='bert'"):
        describe(tmp_path)
