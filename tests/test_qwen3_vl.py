"""Qwen3-VL specifics on a tiny random Qwen3VLForConditionalGeneration: deepstack, unpruned and under
pruning, and the refusal of the families the adapters do not support.

The tiny model (conftest's ``qwen3_folder``: a 3-block vision tower whose blocks all feed deepstack,
so the text model adds vision features after decoder layers 0, 1 and 2; 4 text layers; interleaved
M-RoPE) is saved with its image processor and a byte-level tokenizer into a temporary folder and
loaded back with ``from_pretrained``. What Qwen3-VL shares with Qwen2.5-VL (prompt, layout, M-RoPE,
round trip, parsing, dropping == masking, rope_deltas, per-sample schedules, ...) runs on both families
in test_qwen_adapter.py and test_qwen_pruning.py.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import QWEN3_DEEPSTACK_LAYERS, kept_sources, qwen_logits, qwen_native_logits

from vla_autoprune import compat, compat_qwen
from vla_autoprune.errors import ModelLoadError
from vla_autoprune.models import Qwen3VLDrivingAdapter, QwenVLDrivingAdapter, load
from vla_autoprune.models.describe import describe
from vla_autoprune.pruning import PRUNERS, LayerView, build_pruner, prune

Batch = Callable[[int], dict[str, Any]]


@pytest.fixture(scope="module")
def model(qwen3_folder: Path) -> Qwen3VLDrivingAdapter:
    return Qwen3VLDrivingAdapter.from_pretrained(qwen3_folder)


# ------------------------------------------------------------------------------ adapter


def test_prepare_carries_the_deepstack_features_the_model_adds(
    model: Qwen3VLDrivingAdapter, camera_batch: Batch
) -> None:
    """One feature tensor per deepstack layer (each camera's, test_qwen_adapter.py); with them the
    prefill is the model's own forward, without them it is not."""
    batch = camera_batch(2)
    inputs = model.prepare(batch)
    assert inputs.deepstack is not None and len(inputs.deepstack) == QWEN3_DEEPSTACK_LAYERS
    assert all(
        f.shape == (*inputs.layout.visual_mask.shape[:1], inputs.layout.num_visual, 64)
        for f in inputs.deepstack
    )
    native = qwen_native_logits(model, batch)
    assert torch.allclose(qwen_logits(model, inputs), native, atol=1e-5)
    # teeth: without the deepstack features the prefill differs
    assert not torch.allclose(
        qwen_logits(model, inputs.with_(deepstack=None))[:, -1], native[:, -1], atol=1e-3
    )


def test_other_families_are_refused_in_one_line(
    qwen_folder: Path, qwen3_folder: Path, tmp_path: Path
) -> None:
    with pytest.raises(ModelLoadError, match="qwen2_5_vl"):  # the Qwen2.5 class does not load Qwen3
        QwenVLDrivingAdapter.from_pretrained(qwen3_folder)
    # MoE (FLOPs) and Qwen3.5 (linear attention): refused by name, whichever class or entry point
    for source, refused in ((qwen_folder, "qwen3_vl_moe"), (qwen3_folder, "qwen3_5")):
        folder = tmp_path / refused
        shutil.copytree(source, folder)
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "model_type": refused}))
        for call in (
            load,
            describe,
            QwenVLDrivingAdapter.from_pretrained,
            Qwen3VLDrivingAdapter.from_pretrained,
        ):
            with pytest.raises(compat_qwen.Qwen3VLUnsupportedError, match="not supported") as err:
                call(folder)
            assert "\n" not in str(err.value) and refused in str(err.value)


# ------------------------------------------------------------------------------ pruning


def test_deepstack_after_pruning_adds_exactly_the_survivors_features(
    model: Qwen3VLDrivingAdapter, camera_batch: Batch
) -> None:
    """FastV (K = 1) drops after layer 0; layer 1's output then gets ``deepstack[1]`` of the
    survivors, each at its own slot, and nothing elsewhere (a hand computation)."""
    inputs = model.prepare(camera_batch(2))
    assert inputs.deepstack is not None
    layer1 = compat.decoder_layers(model.decoder)[1]
    seen: dict[str, torch.Tensor] = {}
    # registered before prune(): runs before the engine's hooks (raw output); after: after them
    before = layer1.register_forward_hook(lambda _m, _a, out: seen.update(raw=compat.output_hidden(out)))
    try:
        pruner = build_pruner("fastv", budget=0.5 * inputs.layout.num_visual, layer=1)
        with prune(model.decoder, pruner, inputs) as record:
            after = layer1.register_forward_hook(
                lambda _m, _a, out: seen.update(added=compat.output_hidden(out))
            )
            try:
                qwen_logits(model, record.inputs)
            finally:
                after.remove()
    finally:
        before.remove()
    assert record.seq_len is not None and record.seq_len[1] == record.seq_len[2] < record.seq_len[0]
    src = kept_sources(inputs, record, 1)  # the input positions of layer 1's slots
    kept = record.kept_visual[1]
    assert kept is not None and bool((kept >= 0).all())
    expected = torch.zeros_like(seen["raw"])
    for b in range(src.shape[0]):
        slots = inputs.layout.visual_mask[b, src[b]].nonzero().squeeze(1)  # visual slots, in order
        expected[b, slots] = inputs.deepstack[1][b, kept[b]]
    assert torch.equal(seen["added"], seen["raw"] + expected)  # one addition, as the model's own
    assert torch.allclose(seen["added"] - seen["raw"], expected, atol=1e-6)
    assert bool((expected.abs().sum(-1) > 0).sum(-1).eq(kept.shape[1]).all())  # a feature per survivor


def test_a_merged_token_gets_the_deepstack_feature_of_its_representative(
    model: Qwen3VLDrivingAdapter, camera_batch: Batch
) -> None:
    """AutoPrune with recycling merges dropped tokens after layer 1; at layer 2 every visual slot (kept,
    merged or filler) gets ``deepstack[2]`` of the token whose M-RoPE row it carries (for a merged
    token, its representative's), found here by matching the cos rows the layer receives. What the
    pruner sees at layer 2 (``view.output``, before it prunes again) is that sum."""
    inputs = model.prepare(camera_batch(2))
    assert inputs.deepstack is not None and inputs.position_ids is not None
    full_cos, _ = compat.rotary_embedding(model.decoder)(inputs.inputs_embeds, inputs.position_ids)
    seen: dict[str, torch.Tensor] = {}

    class Spy(PRUNERS["autoprune"]):  # type: ignore[misc,valid-type]
        def schedule(self, view: LayerView) -> torch.Tensor:
            if view.layer_idx == 2:
                seen.update(added=view.output, cos=view.position_embeddings[0])
            return super().schedule(view)

    layer2 = compat.decoder_layers(model.decoder)[2]
    # registered before prune(): runs before the engine's hooks, so it sees the raw layer output
    before = layer2.register_forward_hook(lambda _m, _a, out: seen.update(raw=compat.output_hidden(out)))
    try:
        with prune(model.decoder, Spy(budget=0.6 * inputs.layout.num_visual), inputs) as record:
            qwen_logits(model, record.inputs)
    finally:
        before.remove()
    assert record.merged_tokens is not None and bool((record.merged_tokens[:, 2] > 0).all())
    expected = torch.zeros_like(seen["raw"])
    positions = inputs.layout.visual_positions()
    for b in range(expected.shape[0]):
        visual_cos = full_cos[b, positions[b]]  # [V, d]
        match = (seen["cos"][b].unsqueeze(1) == visual_cos.unsqueeze(0)).all(-1)  # [K, V]
        assert bool((match.sum(1) <= 1).all())  # M-RoPE rows are unique per token
        slot, token = match.nonzero(as_tuple=True)
        expected[b, slot] = inputs.deepstack[2][b, token]
        assert len(slot) >= int(record.visual_tokens[b, 2])  # type: ignore[index]
    assert torch.equal(seen["added"], seen["raw"] + expected)
