"""Shared test fixtures and helpers (test modules never import each other: tests/test_layout_of_tests.py)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import pytest
import torch
from torch import nn
from transformers import GenerationMixin, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from vla_autoprune import compat
from vla_autoprune.models.base import DecoderInputs
from vla_autoprune.models.layout import TokenLayout
from vla_autoprune.pruning import PruningRecord

#: Small enough to generate in a few seconds on 2 shared cores, big enough for train and val
#: (3 scenes at val_fraction 0.25 -> 1 val scene) and a full 4-past / 6-future window (8 keyframes).
SYNTHETIC_SCENES = 3
SYNTHETIC_SAMPLES_PER_SCENE = 8
SYNTHETIC_IMAGE_SIZE = (192, 108)


#: The project's Hydra configs (conf/).
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def synthetic_overrides(root: Path) -> list[str]:
    """Overrides that point ``data=synthetic`` at the generated set in ``root`` with the arguments
    it was generated with (its ``generator.json``), as an explicit dataroot must be requested."""
    from data_tools.synthetic_nuscenes import read_manifest

    recorded = read_manifest(root)
    if recorded is None:  # not a generated set (a missing or real nuScenes dataroot): only the path
        return [f"data.dataset.dataroot={root}"]
    scenes = ",".join(f"{split}:{n}" for split, n in recorded["scenes"].items())
    width, height = recorded["image_size"]
    return [
        f"data.dataset.dataroot={root}",
        "~data.dataset.scenes",
        f"+data.dataset.scenes={{{scenes}}}",
        f"data.dataset.samples_per_scene={recorded['samples_per_scene']}",
        f"data.dataset.image_size=[{width},{height}]",
        f"data.dataset.seed={recorded['seed']}",
    ]


def evaluate_config(root: Path, *overrides: str) -> Any:
    """The ``evaluate`` config on the dataroot ``root``, every keyframe (not only those with a full
    3 s future: the fixtures' short scenes test what happens at scene ends), on the CPU."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(
            "evaluate",
            overrides=[
                *synthetic_overrides(root),
                "data.dataset.full_future_only=false",
                "device=cpu",
                *overrides,
            ],
        )


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


# ---------------------------------------------------------------------- tiny Qwen-VL (models helper)

#: 4 px patches merged 2 x 2; 36 x 64 cameras are resized to 24 x 40 (max 1024 px): 3 x 5 tokens each.
QWEN_PATCH_SIZE = 4
QWEN_MERGE_SIZE = 2
QWEN_MAX_PIXELS = 1024

#: The tiny Qwen-VL families: each name is both the ``config.json`` model_type and the conf/model option.
QWEN_FAMILIES = ("qwen2_5_vl", "qwen3_vl")

#: Qwen3-VL: vision blocks 0..2 feed deepstack: the text model adds vision features after decoder layers 0..2.
QWEN3_DEEPSTACK_LAYERS = 3


def _qwen_tokenizer() -> Any:
    """A byte-level BPE tokenizer (no merges: one token per byte) plus the Qwen chat special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from vla_autoprune.compat_qwen import SPECIAL_TOKENS

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<|endoftext|>", eos_token="<|im_end|>", padding_side="left"
    )
    fast.add_special_tokens({"additional_special_tokens": [*SPECIAL_TOKENS, "<|video_pad|>"]})
    return fast


def build_tiny_qwen(folder: Path, family: str = "qwen2_5_vl", seed: int = 0) -> Path:
    """Save a tiny random Qwen-VL of ``family`` (one of :data:`QWEN_FAMILIES`) with its image processor
    and tokenizer into ``folder``.

    Both: 4 text layers (GQA, 4 query / 2 KV heads), M-RoPE sections [2, 3, 3], 4 px patches merged 2 x 2.
    ``qwen2_5_vl``: ``Qwen2_5_VLForConditionalGeneration`` with a 2-block windowed vision tower (block 1
    full attention). ``qwen3_vl``: ``Qwen3VLForConditionalGeneration`` with a 3-block vision tower whose
    every block feeds deepstack, and interleaved M-RoPE.
    """
    import torch
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
    )
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tokenizer = _qwen_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    vision: dict[str, Any] = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "patch_size": QWEN_PATCH_SIZE,
        "spatial_merge_size": QWEN_MERGE_SIZE,
        "temporal_patch_size": 2,
        "out_hidden_size": 64,
    }
    text: dict[str, Any] = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": len(tokenizer),
        "max_position_embeddings": 4096,
        "pad_token_id": tokenizer.pad_token_id,
    }
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
    if family == "qwen2_5_vl":
        config_class, model_class = Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
        vision |= {"depth": 2, "window_size": 16, "fullatt_block_indexes": [1]}
        text |= {"bos_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
    elif family == "qwen3_vl":
        config_class, model_class = Qwen3VLConfig, Qwen3VLForConditionalGeneration
        vision |= {
            "depth": QWEN3_DEEPSTACK_LAYERS,
            "num_position_embeddings": 16,  # a 4 x 4 learned grid, interpolated to each image
            "deepstack_visual_indexes": list(range(QWEN3_DEEPSTACK_LAYERS)),
        }
        text |= {"head_dim": 16}
        rope |= {"mrope_interleaved": True}
    else:
        raise ValueError(f"unknown Qwen-VL family {family!r}; expected one of {QWEN_FAMILIES}")
    config = config_class(
        vision_config=vision,
        text_config={**text, "rope_parameters": rope},
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    torch.manual_seed(seed)
    model = model_class(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    Qwen2VLImageProcessorPil(
        patch_size=QWEN_PATCH_SIZE,
        merge_size=QWEN_MERGE_SIZE,
        temporal_patch_size=2,
        min_pixels=64,
        max_pixels=QWEN_MAX_PIXELS,
    ).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def qwen_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2.5-VL model + image processor + tokenizer, saved. Treat it as read-only."""
    return build_tiny_qwen(tmp_path_factory.mktemp("tiny_qwen2_5_vl"), "qwen2_5_vl")


@pytest.fixture(scope="session")
def qwen3_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen3-VL model + image processor + tokenizer, saved. Treat it as read-only."""
    return build_tiny_qwen(tmp_path_factory.mktemp("tiny_qwen3_vl"), "qwen3_vl")


@pytest.fixture(scope="module", params=QWEN_FAMILIES)
def qwen_family(request: pytest.FixtureRequest) -> str:
    """A Qwen-VL family: a test or fixture that uses it runs once per family. A family-specific test
    narrows it with ``@pytest.mark.parametrize("qwen_family", [...], indirect=True)``."""
    return cast(str, request.param)


@pytest.fixture(scope="module")
def qwen_family_folder(qwen_family: str, request: pytest.FixtureRequest) -> Path:
    """The saved tiny model of ``qwen_family`` (``qwen_folder`` or ``qwen3_folder``). Read-only."""
    fixture = {"qwen2_5_vl": "qwen_folder", "qwen3_vl": "qwen3_folder"}[qwen_family]
    return cast(Path, request.getfixturevalue(fixture))


def qwen_adapter_class(family: str) -> Any:
    """The adapter class that loads a ``family`` folder (``QwenVLDrivingAdapter`` or its Qwen3 subclass)."""
    from vla_autoprune.models import Qwen3VLDrivingAdapter, QwenVLDrivingAdapter

    return {"qwen2_5_vl": QwenVLDrivingAdapter, "qwen3_vl": Qwen3VLDrivingAdapter}[family]


def qwen_logits(model: Any, inputs: DecoderInputs) -> torch.Tensor:
    """Logits ``[B, N, vocab]`` of a Qwen adapter's model on prepared ``inputs``; their deepstack
    features (Qwen3-VL; none for Qwen2.5-VL) added by hooks, as the adapter's decode adds them."""
    from vla_autoprune.models.deepstack import deepstack_hooks

    with torch.no_grad(), deepstack_hooks(model.decoder, inputs):
        return model.qwen(
            inputs_embeds=inputs.inputs_embeds,
            attention_mask=inputs.attention_mask,
            position_ids=inputs.position_ids,
        ).logits


def qwen_native_logits(model: Any, batch: dict[str, Any]) -> torch.Tensor:
    """Logits ``[B, N, vocab]`` of transformers' own path for a Qwen adapter's prompts: input_ids +
    pixel_values, M-RoPE (and deepstack) computed by the model itself."""
    from vla_autoprune import compat_qwen
    from vla_autoprune.models.chat_adapter import batch_instructions
    from vla_autoprune.models.qwen_adapter import camera_lines

    encoded = model.image_processor(images=list(batch["images"].flatten(0, 1)), return_tensors="pt")
    grid = compat_qwen.merged_grid(encoded["image_grid_thw"], model.merge_size)
    lines = camera_lines(list(batch["cameras"]), grid[0] * grid[1])
    prompts = [model.prompt_template.format(images=lines, instruction=t) for t in batch_instructions(batch)]
    tokens = model.tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
    with torch.no_grad():
        return model.qwen(
            input_ids=tokens["input_ids"],
            attention_mask=tokens["attention_mask"],
            pixel_values=encoded["pixel_values"],
            image_grid_thw=encoded["image_grid_thw"],
            mm_token_type_ids=(tokens["input_ids"] == model.qwen.config.image_token_id).int(),
        ).logits


def kept_sources(inputs: DecoderInputs, record: PruningRecord, layer: int) -> torch.Tensor:
    """int64 ``[B, K]``: input positions entering ``layer`` (all non-visual + the kept visual ones)."""
    layout = inputs.layout
    kept = record.kept_visual[layer]
    assert kept is not None
    rows = []
    for b in range(kept.shape[0]):
        keep = ~layout.visual_mask[b].clone()
        keep[layout.visual_positions()[b, kept[b][kept[b] >= 0]]] = True
        rows.append(keep.nonzero().squeeze(1))
    return torch.stack(rows)


#: The answer the "answering" tiny Qwen is trained to give, whatever it sees.
QWEN_ANSWER = [[1.0, 0.0], [2.0, 0.1], [3.0, 0.2], [4.0, 0.3], [5.0, 0.4], [6.0, 0.5]]
#: Fitting the tiny Qwen to that answer: stop once the teacher-forced loss is below this.
QWEN_FIT_LOSS, QWEN_FIT_MAX_STEPS = 0.01, 600


@pytest.fixture(scope="session")
def qwen_answering_folder(
    qwen_folder: Path, camera_batch: Callable[[int], dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The tiny Qwen2.5-VL, fitted (teacher forcing, Adam until the loss is small) to answer :data:`QWEN_ANSWER`
    as text then ``<|im_end|>`` to the prompts of ``camera_batch(3)``, so the well-formed path runs."""
    import torch

    from vla_autoprune.models import QwenVLDrivingAdapter, format_waypoints

    model = QwenVLDrivingAdapter.from_pretrained(qwen_folder)
    tokenizer = model.tokenizer
    answer = tokenizer(format_waypoints(torch.tensor(QWEN_ANSWER)) + "<|im_end|>", return_tensors="pt")
    answer_ids = answer["input_ids"]  # [1, A]
    with torch.no_grad():
        inputs = model.prepare(camera_batch(3))
    b, a = inputs.inputs_embeds.shape[0], answer_ids.shape[1]
    assert inputs.position_ids is not None
    positions = torch.cat(
        [inputs.position_ids, inputs.position_ids[..., -1:] + 1 + torch.arange(a).view(1, 1, a)], dim=-1
    )
    mask = torch.cat([inputs.attention_mask, torch.ones(b, a, dtype=torch.long)], dim=1)
    ids = answer_ids.expand(b, -1)
    # The input embeddings stay frozen: the prepared prompt embeddings must stay what the model sees.
    embeddings = model.qwen.get_input_embeddings().weight
    language = model.qwen.model.language_model
    params = [
        p for p in [*language.layers.parameters(), *language.norm.parameters(), model.qwen.lm_head.weight]
    ]
    optimizer = torch.optim.Adam([p for p in params if p is not embeddings], lr=3e-3)
    model.qwen.train()
    n = inputs.inputs_embeds.shape[1]
    answer_embeds = model.qwen.get_input_embeddings()(ids).detach()
    embeds = torch.cat([inputs.inputs_embeds, answer_embeds], dim=1)
    # Fit until the teacher-forced loss is small (at lr 1e-2 and a fixed 200 steps the loss
    # oscillated between 0.05 and 0.8 on some CPUs, and the answers came out malformed).
    for _ in range(QWEN_FIT_MAX_STEPS):
        logits = model.qwen(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).logits
        loss = torch.nn.functional.cross_entropy(logits[:, n - 1 : -1].flatten(0, 1), ids.flatten())
        if float(loss.detach()) < QWEN_FIT_LOSS:
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    else:
        raise RuntimeError(f"the tiny Qwen did not fit its answer: loss {float(loss):.3f} >= {QWEN_FIT_LOSS}")
    model.qwen.eval()
    folder = tmp_path_factory.mktemp("tiny_qwen2_5_vl_answering")
    model.qwen.save_pretrained(folder)
    model.image_processor.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# ---------------------------------------------------------------------- tiny decoders (engine tests)
# Plain transformers causal LMs and left-padded DecoderInputs for the pruning-engine tests; import
# the functions and constants with ``from conftest import ...``.

HIDDEN = 64  # tiny decoders: fast on 2 shared CPU cores
VOCAB = 40
PREFIX = 3  # instruction tokens before the visual block
NUM_VISUAL = 16
NUM_TEXT = 5  # text queries after the visual block (longest prompt)
ATOL = 1e-5  # fp32: equivalent computations differ by ~1e-7; pruning itself moves outputs ~1e-3


def build_decoder(family: str = "llama", layers: int = 4, attn: str = "sdpa", seed: int = 0) -> nn.Module:
    """A tiny randomly initialised causal LM (Qwen2 with GQA: 4 query heads share 2 KV heads)."""
    torch.manual_seed(seed)
    common: dict[str, Any] = dict(
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=256,
        attn_implementation=attn,
    )
    if family == "llama":
        model: nn.Module = LlamaForCausalLM(LlamaConfig(**common))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(use_sliding_window=False, **common))
    return model.eval()


def make_inputs(
    batch: int = 1,
    text_lengths: tuple[int, ...] | None = None,
    num_visual: int = NUM_VISUAL,
    seed: int = 1,
) -> DecoderInputs:
    """Left-padded inputs: [pad][prefix][camera 0][marker][camera 1][text], text length per sample.

    The camera marker between the two cameras' visual tokens makes the visual positions
    non-contiguous, as in DrivingVLA's prompt.
    """
    gen = torch.Generator().manual_seed(seed)
    lengths = text_lengths or (NUM_TEXT,) * batch
    half = num_visual // 2
    n = PREFIX + num_visual + 1 + max(lengths)
    mask = torch.zeros(batch, n, dtype=torch.long)
    visual = torch.zeros(batch, n, dtype=torch.bool)
    text = torch.zeros(batch, n, dtype=torch.bool)
    for b, t in enumerate(lengths):
        first = n - t - num_visual - 1  # first visual position
        mask[b, first - PREFIX :] = 1
        visual[b, first : first + half] = True
        visual[b, first + half + 1 : first + num_visual + 1] = True
        text[b, n - t :] = True
    layout = TokenLayout(
        visual_mask=visual,
        text_mask=text,
        camera_index=torch.arange(num_visual).div(half, rounding_mode="floor").expand(batch, -1),
        patch_index=torch.arange(num_visual).remainder(half).expand(batch, -1),
        patch_grid=(2, half // 2),
    )
    return DecoderInputs(
        inputs_embeds=torch.randn(batch, n, HIDDEN, generator=gen),
        attention_mask=mask,
        position_ids=(mask.cumsum(1) - 1).clamp(min=0),  # what generate() uses for left padding
        layout=layout,
        vision_saliency=torch.rand(batch, num_visual, generator=gen),
    )


def forward(model: nn.Module, inputs: DecoderInputs) -> torch.Tensor:
    """Logits ``[B, N, vocab]`` of a plain forward on ``inputs``."""
    with torch.no_grad():
        return model(
            inputs_embeds=inputs.inputs_embeds,
            attention_mask=inputs.attention_mask,
            position_ids=inputs.position_ids,
        ).logits


def greedy(model: nn.Module, inputs: DecoderInputs, steps: int = 4) -> torch.Tensor:
    """Greedy ``generate()`` tokens ``[B, steps]`` from embeddings."""
    with torch.no_grad():
        return cast(GenerationMixin, model).generate(
            inputs_embeds=inputs.inputs_embeds,
            attention_mask=inputs.attention_mask,
            max_new_tokens=steps,
            min_new_tokens=steps,
            do_sample=False,
            pad_token_id=0,
        )


def sample(inputs: DecoderInputs, b: int) -> DecoderInputs:
    """Sample ``b`` of a left-padded batch, without its padding."""
    keep = inputs.attention_mask[b].bool()
    layout = inputs.layout
    return DecoderInputs(
        inputs_embeds=inputs.inputs_embeds[b : b + 1, keep],
        attention_mask=inputs.attention_mask[b : b + 1, keep],
        position_ids=None if inputs.position_ids is None else inputs.position_ids[b : b + 1, keep],
        layout=TokenLayout(
            visual_mask=layout.visual_mask[b : b + 1, keep],
            text_mask=layout.text_mask[b : b + 1, keep],
            camera_index=layout.camera_index[b : b + 1],
            patch_index=layout.patch_index[b : b + 1],
            patch_grid=layout.patch_grid,
        ),
        vision_saliency=None if inputs.vision_saliency is None else inputs.vision_saliency[b : b + 1],
    )


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny tensors: one intra-op thread avoids oversubscribing the shared cores (several x faster).

    Not autouse: a module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ---------------------------------------------------------------------- masked-attention references
# Dropping == masking (docs/ENGINE-NOTES.md): a pruned run is checked against the unpruned sequence
# with the dropped tokens masked out of attention.


def masked_reference(
    model: nn.Module, inputs: DecoderInputs, drop_after: int, dropped: torch.Tensor
) -> Callable[[], None]:
    """Hooks making layers > ``drop_after`` unable to attend to positions ``dropped`` (bool [B, N]).

    Returns the function that removes them.
    """
    layers = compat.decoder_layers(model)
    n = dropped.shape[1]
    real = inputs.attention_mask.bool()

    def pre(i: int, module: nn.Module, args: tuple, kwargs: dict) -> tuple:
        hidden = args[0]
        b, q = hidden.shape[:2]
        past = compat.cache_length(kwargs.get("cache"), i)
        kv = past + q
        rows = past + torch.arange(q)
        allowed = torch.arange(kv).view(1, -1) <= rows.view(-1, 1)  # [q, kv] causal
        keys = torch.ones(b, kv, dtype=torch.bool)
        keys[:, :n] = real & ~dropped
        if kv > n:
            keys[:, n:] = True
        mask = (allowed & keys[:, None, None, :]) | (torch.arange(kv).view(1, -1) == rows.view(-1, 1))
        encoded = compat.bool_to_mask_like(
            mask, kwargs.get("attention_mask"), hidden.dtype
        )  # eager: additive
        return args, {**kwargs, "attention_mask": encoded}

    handles = [
        layer.register_forward_pre_hook(lambda m, a, k, i=i: pre(i, m, a, k), with_kwargs=True)
        for i, layer in enumerate(layers)
        if i > drop_after
    ]

    def remove() -> None:
        for handle in handles:
            handle.remove()

    return remove


def visible_keys(inputs: DecoderInputs, record: PruningRecord) -> list[torch.Tensor]:
    """Per decoder layer: bool ``[B, N]``, the prompt positions that layer attended to when pruned.

    Every non-visual position, plus the visual tokens the record says entered that layer.
    """
    layout = inputs.layout
    visual_pos = layout.visual_positions()  # [B, V]
    masks = []
    for kept in record.kept_visual:
        visible = ~layout.visual_mask.clone()
        assert kept is not None
        for b in range(visible.shape[0]):
            visible[b, visual_pos[b, kept[b][kept[b] >= 0]]] = True
        masks.append(visible)
    return masks


@contextmanager
def masked_keys(decoder: nn.Module, visible: list[torch.Tensor], real: torch.Tensor) -> Iterator[None]:
    """While active, layer ``l`` attends only to prompt positions ``visible[l]`` (and new tokens).

    ``real`` bool ``[B, N]`` is the prompt's attention mask. Each layer's mask is rebuilt from
    scratch as causal AND visible keys (OR the diagonal, so no row is empty), encoded as the model
    encodes its own (bool for SDPA, additive for eager).
    """
    n = real.shape[1]

    def pre(i: int, _module: nn.Module, args: tuple, kwargs: dict) -> tuple:
        hidden = args[0]
        b, q = hidden.shape[:2]
        past = compat.cache_length(kwargs.get("cache"), i)
        kv = past + q
        rows = past + torch.arange(q)
        causal = torch.arange(kv).view(1, -1) <= rows.view(-1, 1)  # [q, kv]
        keys = torch.ones(b, kv, dtype=torch.bool)
        keys[:, :n] = real & visible[i]
        allowed = (causal & keys[:, None, None, :]) | (torch.arange(kv).view(1, -1) == rows.view(-1, 1))
        mask = compat.bool_to_mask_like(allowed, kwargs.get("attention_mask"), hidden.dtype)
        return args, {**kwargs, "attention_mask": mask}

    handles = [
        layer.register_forward_pre_hook(lambda m, a, k, i=i: pre(i, m, a, k), with_kwargs=True)
        for i, layer in enumerate(compat.decoder_layers(decoder))
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def assert_one_line_load_error(folder: Path, file: str, says: str, before_loading: bool = True) -> None:
    """``models.load(folder)`` raises a one-line ModelLoadError naming ``folder / file``, saying
    ``says`` and giving the fix (re-save with ``save_pretrained``); with ``before_loading``, so does
    the check a run makes before its data and weights load (``check_factory`` of the config's partial)."""
    from vla_autoprune.errors import ModelLoadError
    from vla_autoprune.models import load
    from vla_autoprune.models.loading import check_factory

    calls = [lambda: load(folder)]
    if before_loading:
        calls.append(lambda: check_factory(functools.partial(load, name_or_path=str(folder))))
    for call in calls:
        with pytest.raises(ModelLoadError) as err:
            call()
        message = str(err.value)
        assert "\n" not in message
        assert str(folder / file) in message and says in message
        assert "save_pretrained" in message  # the fix
