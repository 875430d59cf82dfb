"""Shared test fixtures."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

#: Small enough to generate in a few seconds on 2 shared cores, big enough for train and val
#: (3 scenes at val_fraction 0.25 -> 1 val scene) and a full 4-past / 6-future window (8 keyframes).
SYNTHETIC_SCENES = 3
SYNTHETIC_SAMPLES_PER_SCENE = 8
SYNTHETIC_IMAGE_SIZE = (192, 108)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic nuScenes-format dataroot (``v1.0-synthetic``), generated once per session.

    Treat it as read-only: tests that damage data must work on a copy.
    """
    from data_tools.synthetic_nuscenes import generate

    return generate(
        tmp_path_factory.mktemp("synthetic_nuscenes"),
        scenes=SYNTHETIC_SCENES,
        samples_per_scene=SYNTHETIC_SAMPLES_PER_SCENE,
        image_size=SYNTHETIC_IMAGE_SIZE,
        seed=0,
    )


# ---------------------------------------------------------------------- tiny LLaVA (models helper)

#: Two 14 px CLIP patches per side: a 2 x 2 grid, 4 visual tokens per camera.
LLAVA_IMAGE_SIZE = 28
LLAVA_PATCH_SIZE = 14


def _char_tokenizer() -> Any:
    """Character-level tokenizer over printable ASCII (+ LLaVA specials), built in code."""
    import string

    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]
    chars = sorted(set(string.printable) - set("\t\r\x0b\x0c"))
    vocab = {tok: i for i, tok in enumerate(specials + chars)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"},
        padding_side="left",
    )


@pytest.fixture(scope="session")
def llava_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random LLaVA-1.5-style model (CLIP vision + 4-layer Llama) and its processor, saved.

    28 px images and 14 px patches: a 2 x 2 patch grid per camera. Treat it as read-only: tests
    that damage files must work on a copy.
    """
    import torch
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    torch.manual_seed(0)
    tokenizer = _char_tokenizer()
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=LLAVA_IMAGE_SIZE,
            patch_size=LLAVA_PATCH_SIZE,
        ),
        text_config=LlamaConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=4,
            num_attention_heads=2,
            num_key_value_heads=1,
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=(LLAVA_IMAGE_SIZE // LLAVA_PATCH_SIZE) ** 2,
        vision_feature_layer=-2,
    )
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(
            size={"shortest_edge": LLAVA_IMAGE_SIZE},
            crop_size={"height": LLAVA_IMAGE_SIZE, "width": LLAVA_IMAGE_SIZE},
        ),
        tokenizer=tokenizer,
        patch_size=LLAVA_PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's [CLS], dropped again by the "default" strategy
    )
    folder = tmp_path_factory.mktemp("tiny_llava")
    LlavaForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def camera_batch() -> Callable[[int], dict[str, Any]]:
    """Factory: a collated batch of ``b <= 4`` samples (six random 36 x 64 cameras, command, ego state)."""
    import torch

    from vla_autoprune.data.schema import CAMERAS, EGO_STATE_FIELDS

    def make(b: int = 2) -> dict[str, Any]:
        g = torch.Generator().manual_seed(1)
        states = [
            {"speed": 5.3, "accel": 0.1, "yaw_rate": 0.01},
            {"speed": 12.0, "accel": -1.0, "yaw_rate": -0.2},
            {"speed": 0.0, "accel": 0.0, "yaw_rate": 0.0},
            {"speed": 3.0, "accel": 0.0, "yaw_rate": 0.0},
        ][:b]
        return {
            "images": torch.randint(0, 256, (b, len(CAMERAS), 3, 36, 64), dtype=torch.uint8, generator=g),
            "cameras": CAMERAS,
            "command": torch.tensor([0, 1, 2, 1][:b]),
            "ego_state": torch.tensor([[s[name] for name in EGO_STATE_FIELDS] for s in states]),
        }

    return make
