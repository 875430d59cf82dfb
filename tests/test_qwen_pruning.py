"""Pruning under M-RoPE: the engine on unmodified Qwen2.5-VL and Qwen3-VL models (3-D position ids).

Every test that is not marked otherwise runs on both tiny families (conftest's ``qwen_family``);
Qwen3-VL's deepstack under pruning is tested in test_qwen3_vl.py. References as in
test_llava_pruning.py (helpers in conftest.py): the unpruned sequence with, per layer, the visual
tokens that layer did not get masked out of attention (dropping == masking).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import ATOL, kept_sources, masked_keys, qwen_adapter_class, qwen_logits, visible_keys

from vla_autoprune import compat
from vla_autoprune.compat_qwen import last_full_attention
from vla_autoprune.models import QwenVLDrivingAdapter
from vla_autoprune.models.base import DecoderInputs
from vla_autoprune.models.qwen_saliency import received_attention
from vla_autoprune.pruning import PRUNERS, build_pruner, prune

Batch = Callable[[int], dict[str, Any]]
NEW_TOKENS = 5

#: AutoPrune slope options (k = max(k0 - gamma MI, 0)) that give the two rows of ``camera_batch(2)``
#: different schedules, tuned to each random model's MI.
AUTOPRUNE_SLOPES: dict[str, dict[str, float]] = {
    # MI barely varies: a steep slope in MI (k0 = 0, gamma = 5) makes it matter.
    "qwen2_5_vl": {"k0": 0.0, "gamma": 5.0},
    # MI is ~0.64 for both rows: a steep gamma and k0 just above 0.65 gamma give slopes 0.1 and 1.9.
    "qwen3_vl": {"k0": 65.4, "gamma": 100.0},
}


@pytest.fixture(scope="module")
def model(qwen_family: str, qwen_family_folder: Path) -> QwenVLDrivingAdapter:
    model = qwen_adapter_class(qwen_family).from_pretrained(qwen_family_folder)
    model.max_new_tokens = NEW_TOKENS
    return model


def prefill_logits(model: QwenVLDrivingAdapter, inputs: DecoderInputs) -> torch.Tensor:
    """Last-position logits of the decoder on ``inputs`` (deepstack, if any, added by hooks)."""
    return qwen_logits(model, inputs)[:, -1]


@contextmanager
def step_logits(model: QwenVLDrivingAdapter) -> Iterator[list[torch.Tensor]]:
    """Per forward (prefill, then each decode step), the last-position logits ``[B, vocab]``."""
    logits: list[torch.Tensor] = []
    handle = model.qwen.lm_head.register_forward_hook(lambda _m, _a, out: logits.append(out[:, -1].detach()))
    try:
        yield logits
    finally:
        handle.remove()


@contextmanager
def captured_rotary(model: QwenVLDrivingAdapter) -> Iterator[list[torch.Tensor]]:
    """Per layer call, the ``cos`` ``[B, K, d]`` it receives (hooks run after the engine's)."""
    seen: list[torch.Tensor] = []
    handles = [
        layer.register_forward_pre_hook(
            lambda _m, _a, kw: seen.append(kw[compat.KW_POS_EMB][0].detach()), with_kwargs=True
        )
        for layer in compat.decoder_layers(model.decoder)
    ]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def test_keep_all_equals_unpruned_for_every_pruner(model: QwenVLDrivingAdapter, camera_batch: Batch) -> None:
    """Keeping everything reproduces the unpruned model (with Qwen3-VL: the engine's deepstack addition
    is exact)."""
    inputs = model.prepare(camera_batch(2))
    reference = prefill_logits(model, inputs)
    ref_texts = model.generate_waypoints(inputs).texts
    for name in sorted(PRUNERS):
        pruner = build_pruner(name, budget=float(inputs.layout.num_visual))
        with prune(model.decoder, pruner, inputs) as record:
            assert record.inputs.deepstack is None  # the engine adds them, not the caller
            logits = prefill_logits(model, record.inputs)
        assert torch.equal(logits, reference), name
        with prune(model.decoder, pruner, inputs) as record:
            assert model.generate_waypoints(record.inputs).texts == ref_texts, name


@pytest.mark.parametrize(
    ("name", "kwargs", "reduced_from"),
    [
        ("fastv", {}, -1),
        ("fastv", {"layer": 1}, 1),
        ("pdrop", {"position_ids": "original"}, 1),
        ("fastervlm", {"position_ids": "original"}, 1),
    ],
    ids=["fastv", "fastv-layer1", "pdrop", "fastervlm"],
)
def test_dropping_equals_masking_and_decode_follows(
    model: QwenVLDrivingAdapter, camera_batch: Batch, name: str, kwargs: dict[str, Any], reduced_from: int
) -> None:
    """Pruned prefill + generation == the unpruned model (with Qwen3-VL: deepstack on every visual
    token) with the dropped tokens masked out of attention. Layers ``reduced_from..`` see fewer visual
    tokens: fastv (layer=1) and pdrop drop before Qwen3-VL's deepstack layer 1, fastervlm before the
    decoder."""
    inputs = model.prepare(camera_batch(2))
    v = inputs.layout.num_visual
    with prune(model.decoder, build_pruner(name, budget=0.5 * v, **kwargs), inputs) as record:
        with step_logits(model) as logits:
            texts = model.generate_waypoints(record.inputs).texts
    assert record.visual_tokens is not None and bool((record.visual_tokens[:, reduced_from:] < v).all())
    with masked_keys(model.decoder, visible_keys(inputs, record), inputs.attention_mask.bool()):
        with step_logits(model) as masked:
            masked_texts = model.generate_waypoints(inputs).texts
    with step_logits(model) as unpruned:
        model.generate_waypoints(inputs)
    pruned_l, masked_l = torch.stack(logits), torch.stack(masked)
    assert pruned_l.shape == (NEW_TOKENS, 2, pruned_l.shape[-1])
    assert torch.allclose(pruned_l, masked_l, atol=ATOL)
    assert texts == masked_texts
    assert bool(((pruned_l[0] - torch.stack(unpruned)[0]).abs().amax(-1) > 100 * ATOL).all())  # teeth


def test_each_layer_gets_the_original_mrope_rows_of_its_survivors(
    model: QwenVLDrivingAdapter, camera_batch: Batch
) -> None:
    inputs = model.prepare(camera_batch(2))
    assert inputs.position_ids is not None
    rotary = compat.rotary_embedding(model.decoder)
    full_cos, _ = rotary(
        inputs.inputs_embeds, inputs.position_ids
    )  # [B, N, d], (t, h, w) recomposed (Qwen3: interleaved)
    v = inputs.layout.num_visual
    with prune(
        model.decoder, build_pruner("pdrop", budget=0.4 * v, position_ids="original"), inputs
    ) as record:
        with captured_rotary(model) as seen:
            prefill_logits(model, record.inputs)
    assert record.seq_len is not None and len(set(record.seq_len.tolist())) > 2  # several stages
    for layer, cos in enumerate(seen):
        src = kept_sources(inputs, record, layer)
        expected = full_cos.gather(1, src.unsqueeze(-1).expand(-1, -1, full_cos.shape[-1]))
        assert torch.equal(cos.expand_as(expected), expected), layer


def test_contiguous_numbers_survivors_like_text_on_all_three_axes(
    model: QwenVLDrivingAdapter, camera_batch: Batch
) -> None:
    inputs = model.prepare(camera_batch(1))  # one row: no padding, first real id 0
    rotary = compat.rotary_embedding(model.decoder)
    v = inputs.layout.num_visual
    with prune(
        model.decoder, build_pruner("fastv", budget=0.5 * v, position_ids="contiguous"), inputs
    ) as record:
        with captured_rotary(model) as seen:
            prefill_logits(model, record.inputs)
    assert record.seq_len is not None
    pruned_layers = [i for i, n in enumerate(record.seq_len.tolist()) if n < inputs.attention_mask.shape[1]]
    assert pruned_layers
    for layer in pruned_layers:
        k = seen[layer].shape[1]
        ids = torch.arange(k).view(1, 1, k).expand(3, 1, k)
        assert torch.allclose(seen[layer], rotary(inputs.inputs_embeds[:, :k], ids)[0])


@pytest.mark.parametrize("name", ["fastv", "fastervlm"])  # pruned in the decoder / before it (shorter)
def test_rope_deltas_continue_a_pruned_prefill(
    model: QwenVLDrivingAdapter, camera_batch: Batch, name: str
) -> None:
    """A decode step without position ids (cache length + rope_deltas) == one with explicit ``last + 1``.

    One row (no padding): transformers' own no-ids path with a 2-D mask numbers the whole mask.
    """
    inputs = model.prepare(camera_batch(1))
    assert inputs.position_ids is not None
    v = inputs.layout.num_visual
    nxt = model.qwen.get_input_embeddings()(torch.tensor([[65]]))
    outs = []
    for position_ids in (inputs.position_ids[..., -1:] + 1, None):
        model.qwen.model.rope_deltas = None
        pruner = build_pruner(name, budget=0.5 * v, position_ids="original")
        with prune(model.decoder, pruner, inputs) as record, torch.no_grad():
            model.generate_kwargs(record.inputs)  # sets rope_deltas for these inputs
            out = model.qwen(
                inputs_embeds=record.inputs.inputs_embeds,
                position_ids=record.inputs.position_ids,
                use_cache=True,
            )
            lengths = [out.cache.get_seq_length(i) for i in range(4)]
            step = model.qwen(inputs_embeds=nxt, cache=out.cache, position_ids=position_ids)
            outs.append(step.logits[:, -1])
    assert lengths[-1] < inputs.attention_mask.shape[1]  # the cache holds the pruned prefill
    assert torch.allclose(outs[0], outs[1], atol=ATOL)
    # and rope_deltas is what the M-RoPE ids imply: the next id is max id + 1 at layer 0's cache length
    assert int(model.qwen.model.rope_deltas) + lengths[0] == int(inputs.position_ids.max()) + 1


def test_batch_equals_one_by_one_with_per_sample_autoprune_schedules(
    model: QwenVLDrivingAdapter, qwen_family: str, camera_batch: Batch
) -> None:
    batch = camera_batch(2)
    inputs = model.prepare(batch)
    v = inputs.layout.num_visual
    options: dict[str, Any] = {"budget": 0.85 * v, "recycle": False, **AUTOPRUNE_SLOPES[qwen_family]}
    pruner = build_pruner("autoprune", **options)
    with prune(model.decoder, pruner, inputs) as record:
        batched = prefill_logits(model, record.inputs)
    assert record.schedule is not None
    assert not torch.equal(record.schedule[0], record.schedule[1])  # ragged: per-sample schedules
    for i in range(2):
        single = {k: (val[i : i + 1] if isinstance(val, torch.Tensor) else val) for k, val in batch.items()}
        one = model.prepare(single)
        with prune(model.decoder, build_pruner("autoprune", **options), one) as rec:
            alone = prefill_logits(model, rec.inputs)
        assert rec.schedule is not None and torch.equal(rec.schedule[0], record.schedule[i])
        assert torch.allclose(alone[0], batched[i], atol=ATOL)


def test_vision_saliency_sums_to_one_per_camera(model: QwenVLDrivingAdapter, camera_batch: Batch) -> None:
    """Per image it is a distribution over its tokens (Qwen3-VL's tower has no windows to undo)."""
    inputs = model.prepare(camera_batch(2))
    saliency = inputs.vision_saliency
    assert saliency is not None and saliency.shape == (2, inputs.layout.num_visual)
    per_camera = saliency.view(2, 6, -1).sum(-1)
    assert torch.allclose(per_camera, torch.ones_like(per_camera), atol=1e-5)


@pytest.mark.parametrize("qwen_family", ["qwen2_5_vl"], indirect=True)  # windowed vision tower
def test_vision_saliency_is_each_merged_tokens_received_attention(
    model: QwenVLDrivingAdapter, camera_batch: Batch
) -> None:
    """In the merger's output order: Qwen2.5-VL's window permutation undone."""
    batch = camera_batch(2)
    inputs = model.prepare(batch)
    saliency = inputs.vision_saliency
    assert saliency is not None
    # The window permutation, found independently: where each merger output row lands in the output.
    visual = model.qwen.model.visual
    encoded = model.image_processor(images=list(batch["images"].flatten(0, 1)), return_tensors="pt")
    window_rows: list[torch.Tensor] = []  # the merger's output, still in window order
    handle = visual.merger.register_forward_hook(lambda _m, _a, out: window_rows.append(out.detach()))
    try:
        natural = model.image_features(encoded["pixel_values"], encoded["image_grid_thw"])[0]
    finally:
        handle.remove()
    distance = torch.cdist(natural, window_rows[0], compute_mode="donot_use_mm_for_euclid_dist")
    order = distance.argmin(dim=1)
    assert bool((distance.min(dim=1).values < 1e-6).all()) and len(set(order.tolist())) == len(order)
    assert not torch.equal(order, torch.arange(len(order)))  # the tiny tower does permute (2 x 2 windows)
    attention = last_full_attention(visual)
    captured: dict[str, Any] = {}
    hook = attention.register_forward_pre_hook(
        lambda _m, args, kwargs: captured.update(hidden=args[0], **kwargs), with_kwargs=True
    )
    try:
        model.image_features(encoded["pixel_values"], encoded["image_grid_thw"])
    finally:
        hook.remove()
    per_patch = received_attention(
        attention, captured["hidden"], captured["cu_seqlens"], captured["position_embeddings"]
    )
    per_window_token = per_patch.view(-1, 4).sum(1)
    assert torch.allclose(saliency.flatten(), per_window_token[order], atol=1e-6)


def test_fastervlm_keeps_the_most_salient_tokens_and_decodes_like_masking(
    model: QwenVLDrivingAdapter, camera_batch: Batch
) -> None:
    inputs = model.prepare(camera_batch(2))
    assert inputs.vision_saliency is not None
    count = 20
    pruner = build_pruner("fastervlm", budget=float(count), position_ids="original")
    with prune(model.decoder, pruner, inputs) as record:
        with step_logits(model) as logits:
            texts = model.generate_waypoints(record.inputs).texts
    assert record.preselected is not None and record.preselected.shape == (2, count)
    top = inputs.vision_saliency.topk(count, dim=1).indices.sort(dim=1).values
    assert torch.equal(record.preselected, top)
    short = record.inputs.position_ids
    assert short is not None and short.shape == (3, 2, record.inputs.attention_mask.shape[1])
    with masked_keys(model.decoder, visible_keys(inputs, record), inputs.attention_mask.bool()):
        with step_logits(model) as masked:
            masked_texts = model.generate_waypoints(inputs).texts
    assert torch.allclose(torch.stack(logits), torch.stack(masked), atol=ATOL)
    assert texts == masked_texts
    # contiguous: the shortened prompt is numbered 0.. over its real tokens on all three axes
    with prune(model.decoder, build_pruner("fastervlm", budget=float(count)), inputs) as record:
        ids = record.inputs.position_ids
        real = record.inputs.attention_mask
    assert ids is not None
    expected = ((real.cumsum(1) - 1).clamp(min=0)).expand(3, -1, -1)
    assert torch.equal(ids, expected)
