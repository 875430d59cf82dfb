"""Faithful modes keep exactly what each official selection rule keeps (overlap 1.0).

The official rules are re-implemented here in plain torch, from what the layers of a pruned
forward actually received and returned (eager attention, one unpadded sample, as the official
code runs), stage by stage:

- FastV: pkunlp-icler/FastV ``src/transformers/src/transformers/models/llama/modeling_llama.py``
  lines 733-760: layer K-1's eager attention, mean over heads, the last token's row, top
  ``int((1 - R) V)``.
- PyramidDrop: Cooperx521/PyramidDrop ``llava/model/modeling_llama_pdrop.py`` lines 1291-1411:
  layer ``l + 1``'s norm and q/k on layer ``l``'s output, rotary at the current (contiguous) ids,
  causal softmax, the last instruction token's row, mean over heads, top ``int(V lambda^s)``.
- SparseVLM: Gumpest/SparseVLMs ``modelling_sparse_llama.py`` lines 199-204 (raters from the
  input embeddings) and ``score.py`` lines 23-45 (the pruning layer's eager attention, mean over
  heads and raters, top ``min(count, v - 1)``), recycling from lines 280-302.
- FasterVLM: Theia-4869/FasterVLM ``llava/model/llava_arch.py`` lines 141-157: each image's own
  top ``T`` by [CLS] attention.

Which tokens the engine kept is read off the tensors themselves: a kept token's row in layer
``l + 1``'s input is an exact copy of its row in layer ``l``'s output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import (
    build_decoder,
    forward,
    make_inputs,
    sample,
)
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from vla_autoprune import compat
from vla_autoprune.data import NuScenesDrivingDataset
from vla_autoprune.data.collate import collate
from vla_autoprune.models import load
from vla_autoprune.models.base import DecoderInputs
from vla_autoprune.pruning import Pruner, build_pruner, prune
from vla_autoprune.pruning.merging import dpc_knn_merge
from vla_autoprune.pruning.pruners.sparsevlm import SPARSEVLM_TABLE_VISUAL, SPARSEVLM_TABLES, input_raters
from vla_autoprune.pruning.recycling import recycle_count
from vla_autoprune.pruning.stages import spread_layers

pytestmark = pytest.mark.usefixtures("one_thread")

CASES = [("llama", 0, 5), ("llama", 3, 2), ("qwen2", 1, 4), ("qwen2", 2, 5)]  # family, seed, text length


# ------------------------------------------------------------------------------------------------
# What the layers of a pruned forward saw.


@dataclass
class Trace:
    """Per layer: input rows, output rows (before the engine shrinks them), ids, eager attention."""

    inputs: list[torch.Tensor] = field(default_factory=list)  # [K_l, D]
    outputs: list[torch.Tensor] = field(default_factory=list)  # [K_l, D]
    positions: list[torch.Tensor] = field(default_factory=list)  # [K_l]
    attention: list[torch.Tensor] = field(default_factory=list)  # [H, K_l, K_l]


def traced_run(model: nn.Module, pruner: Pruner, inputs: DecoderInputs) -> tuple[Trace, Any]:
    """Run ``pruner`` on one sample, recording what each layer saw (hooks registered first)."""
    trace = Trace()
    handles = []
    for layer in compat.decoder_layers(model):

        def grab(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            trace.inputs.append(args[0][0].detach().clone())
            trace.outputs.append(compat.output_hidden(output)[0].detach().clone())
            trace.positions.append(kwargs["position_ids"][0].clone())

        def grab_attention(module: nn.Module, args: tuple, output: Any) -> None:
            trace.attention.append(output[1][0].detach().clone())

        handles.append(layer.register_forward_hook(grab, with_kwargs=True))
        handles.append(layer.self_attn.register_forward_hook(grab_attention))
    try:
        with prune(model, pruner, inputs) as record:
            forward(model, record.inputs)
    finally:
        for handle in handles:
            handle.remove()
    return trace, record


def matches(previous: torch.Tensor, current: torch.Tensor) -> list[int | None]:
    """For each row of ``current``, the row of ``previous`` it copies exactly (None: a new, merged row)."""
    out: list[int | None] = []
    for row in current:
        equal = torch.nonzero((previous == row).all(dim=1)).flatten().tolist()
        out.append(equal[0] if equal else None)
    return out


def visual_masks(trace: Trace, first: torch.Tensor) -> list[torch.Tensor]:
    """bool ``[K_l]`` per layer: which rows are visual (kept, or merged from visual rows)."""
    masks = [first]
    for layer in range(1, len(trace.inputs)):
        source = matches(trace.outputs[layer - 1], trace.inputs[layer])
        prev = masks[-1]
        masks.append(torch.tensor([True if s is None else bool(prev[s]) for s in source]))
    return masks


def kept_slots(trace: Trace, layer: int, visual: torch.Tensor, merged: int = 0) -> set[int]:
    """Visual rows of layer ``layer``'s output that layer ``layer + 1`` received unchanged.

    The last ``merged`` visual rows it received are merged tokens (placed right after the kept
    ones); a one-member cluster copies its member, so they are left out by place, not by value.
    """
    source = matches(trace.outputs[layer], trace.inputs[layer + 1])
    visual_rows = [s for s in source if s is None or bool(visual[s])]
    kept = visual_rows[: len(visual_rows) - merged]
    assert None not in kept
    return {s for s in kept if s is not None}


def top(scores: torch.Tensor, slots: torch.Tensor, count: int) -> set[int]:
    """The ``count`` slots (of ``slots``) with the highest ``scores`` (one per slot)."""
    return set(slots[scores.topk(count).indices].tolist())


def overlap(a: set[int], b: set[int]) -> float:
    return len(a & b) / max(len(a | b), 1)


# ------------------------------------------------------------------------------------------------
# Re-implementations of the official scoring.


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def pdrop_official_row(
    model: nn.Module, next_layer: nn.Module, hidden: torch.Tensor, positions: torch.Tensor, query: int
) -> torch.Tensor:
    """float ``[K]``: PDrop's score row: ``next_layer``'s norm + q/k on ``hidden`` [K, D], mean over heads."""
    attn = next_layer.self_attn
    head_dim = attn.head_dim
    normed = next_layer.input_layernorm(hidden.unsqueeze(0))
    q = attn.q_proj(normed).view(1, -1, attn.config.num_attention_heads, head_dim).transpose(1, 2)
    k = attn.k_proj(normed).view(1, -1, attn.config.num_key_value_heads, head_dim).transpose(1, 2)
    cos, sin = compat.rotary_embedding(model)(hidden.unsqueeze(0), positions.unsqueeze(0))
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    logits = (q[:, :, query : query + 1] @ k.transpose(-1, -2))[0, :, 0] / math.sqrt(head_dim)  # [H, K]
    n = hidden.shape[0]
    logits = logits.masked_fill(torch.arange(n) > query, -math.inf)  # causal
    return logits.float().softmax(dim=-1).mean(dim=0)


def sparsevlm_official_raters(embeds: torch.Tensor, visual: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """bool ``[T]``: ``softmax_T(V T^T).mean(V) > its mean`` (lines 199-204)."""
    relevance = (embeds[visual] @ embeds[text].T).softmax(dim=1).mean(dim=0)
    return relevance > relevance.mean()


# ------------------------------------------------------------------------------------------------
# FastV.


def check_fastv_faithful(model: nn.Module, inputs: DecoderInputs) -> set[int]:
    """FastV[faithful] on one sample == layer K-1's eager attention, last row, top ``int(V / 2)``."""
    trace, record = traced_run(model, build_pruner("fastv", mode="faithful"), inputs)
    visual = inputs.layout.visual_mask[0]
    slots = torch.nonzero(visual).flatten()
    row = trace.attention[1].mean(dim=0)[-1]  # layer K-1 = 1, mean over heads, the last token's row
    expected = top(row[slots], slots, int((1 - 0.5) * len(slots)))
    got = kept_slots(trace, 1, visual)
    assert overlap(got, expected) == 1.0
    assert record.kept_visual[2] is not None and record.kept_visual[2].shape[1] == len(slots) // 2
    # original ids: the survivors' own positions
    assert trace.positions[2].tolist() == [p for p in range(visual.shape[0]) if not visual[p] or p in got]
    return expected


@pytest.mark.parametrize(("family", "seed", "text"), CASES)
def test_fastv_faithful_equals_the_official_rule(family: str, seed: int, text: int) -> None:
    model = build_decoder(family, layers=5, attn="eager", seed=seed)
    inputs = make_inputs(batch=1, text_lengths=(text,), seed=seed + 10)
    expected = check_fastv_faithful(model, inputs)
    if text > 2:  # the matched variant reads every text row: with several it keeps another set here
        with prune(model, build_pruner("fastv", budget=10), inputs) as matched:
            forward(model, matched.inputs)
        slots = torch.nonzero(inputs.layout.visual_mask[0]).flatten()
        assert matched.kept_visual[2] is not None
        assert set(slots[matched.kept_visual[2][0]].tolist()) != expected


# ------------------------------------------------------------------------------------------------
# Hand-worked: a 2-layer Llama whose attention ranks visual tokens by a number we wrote down.

HAND_SCORES = [3, 14, 1, 9, 12, 0, 7, 15, 2, 11, 5, 13, 4, 10, 6, 8]  # c_j of the 16 visual tokens
HAND_TOP8 = [1, 3, 4, 7, 9, 11, 13, 15]  # where c_j >= 8
SLOW = 7  # dims 7 and 15 of head 0: rotary frequency 1e6**(-14/16) ~ 6e-6, no rotation to speak of
ASK = 6  # queries read this dim (text rows carry their sign here), keys read SLOW (visual c_j)
SPARE = 20  # a head-1 dim with a constant 10: keeps RMS norm from erasing c_j's size


def hand_model() -> nn.Module:
    """Layer 0 passes its input on unchanged; in both layers head 0 scores ``x_ASK(row) * x_SLOW(key)``.

    Heads 1-3 have zero queries (uniform attention, the same for every column), so the mean over
    heads ranks key ``j`` by ``c_j / sqrt(c_j^2 + 100)``, increasing in ``c_j``, for a query row with
    a positive ``ASK`` entry and decreasing for a negative one; non-visual keys score 0.
    """
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=40,
        rope_theta=1e6,
        attn_implementation="eager",
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for i, layer in enumerate(model.model.layers):
            layer.self_attn.q_proj.weight.zero_()
            layer.self_attn.q_proj.weight[SLOW, ASK] = 1.0
            layer.self_attn.k_proj.weight.copy_(torch.eye(64))
            if i == 0:
                layer.self_attn.o_proj.weight.zero_()
                layer.mlp.down_proj.weight.zero_()
    return model


def hand_inputs(query_from_end: int) -> DecoderInputs:
    """Visual token ``j`` carries ``c_j``; the text row ``query_from_end`` from the end asks +30, the others -30."""
    inputs = make_inputs(batch=1, text_lengths=(5,))
    embeds = torch.zeros_like(inputs.inputs_embeds)
    embeds[0, :, SPARE] = 10.0
    embeds[0, inputs.layout.visual_mask[0], SLOW] = torch.tensor(HAND_SCORES, dtype=torch.float32)
    text = torch.nonzero(inputs.layout.text_mask[0]).flatten()
    embeds[0, text, ASK] = -30.0
    embeds[0, text[-1 - query_from_end], ASK] = 30.0
    return inputs.with_(inputs_embeds=embeds)


def test_hand_worked_fastv_and_pdrop_faithful_keep_what_their_query_row_ranks_first() -> None:
    model = hand_model()
    fastv_inputs = hand_inputs(query_from_end=0)  # FastV: the last token
    with prune(model, build_pruner("fastv", mode="faithful", layer=1), fastv_inputs) as faithful:
        forward(model, faithful.inputs)
    with prune(model, build_pruner("fastv", budget=12, layer=1), fastv_inputs) as matched:
        forward(model, matched.inputs)
    assert faithful.kept_visual[1] is not None and faithful.kept_visual[1][0].tolist() == HAND_TOP8
    # every text row: four of five put their visual attention on c_j = 0 (token 5), the last row's
    # least favourite, so the matched variant keeps it
    assert matched.kept_visual[1] is not None and 5 in matched.kept_visual[1][0].tolist()
    # PDrop: the last instruction token, before 2 readout queries (DrivingVLA's action queries)
    pdrop_inputs = hand_inputs(query_from_end=2).with_(readout_tokens=2)
    with prune(model, build_pruner("pdrop", mode="faithful", stages=[0.5]), pdrop_inputs) as pdrop:
        forward(model, pdrop.inputs)
    assert pdrop.kept_visual[1] is not None and pdrop.kept_visual[1][0].tolist() == HAND_TOP8


# ------------------------------------------------------------------------------------------------
# PyramidDrop.


def check_pdrop_faithful(model: nn.Module, inputs: DecoderInputs, readout: int = 0) -> list[int]:
    """PDrop[faithful] on one sample == the official stage-by-stage rule; returns the visual counts."""
    pruner = build_pruner("pdrop", mode="faithful")
    trace, record = traced_run(model, pruner, inputs)
    visual = visual_masks(trace, inputs.layout.visual_mask[0])
    num_visual = int(visual[0].sum())
    layers = compat.decoder_layers(model)
    for stage, start in enumerate(pruner.starts(len(layers))):  # 8 layers: [2, 4, 6]
        layer = start - 1
        n = trace.outputs[layer].shape[0]
        assert trace.positions[layer].tolist() == list(range(n))  # contiguous ids, as the official code
        query = n - 1 - readout  # the last instruction token
        row = pdrop_official_row(model, layers[start], trace.outputs[layer], trace.positions[layer], query)
        slots = torch.nonzero(visual[layer]).flatten()
        expected = top(row[slots], slots, int(num_visual * 0.5 ** (stage + 1)))
        assert overlap(kept_slots(trace, layer, visual[layer]), expected) == 1.0, stage
    assert record.visual_tokens is not None
    return record.visual_tokens[0].tolist()


@pytest.mark.parametrize(("family", "seed", "text"), CASES)
def test_pdrop_faithful_equals_the_official_rule(family: str, seed: int, text: int) -> None:
    model = build_decoder(family, layers=8, attn="eager", seed=seed)
    inputs = make_inputs(batch=1, text_lengths=(text,), seed=seed + 10)
    assert check_pdrop_faithful(model, inputs) == [16, 16, 8, 8, 4, 4, 2, 2]


def test_pdrop_faithful_queries_the_last_instruction_token_before_readout_queries() -> None:
    model = build_decoder("llama", layers=4, attn="eager")
    inputs = make_inputs(batch=1, text_lengths=(5,)).with_(readout_tokens=3)
    trace, _ = traced_run(model, build_pruner("pdrop", mode="faithful", stages=[0.5]), inputs)
    visual = inputs.layout.visual_mask[0]
    slots = torch.nonzero(visual).flatten()
    n = trace.outputs[1].shape[0]
    row = pdrop_official_row(
        model, compat.decoder_layers(model)[2], trace.outputs[1], trace.positions[1], n - 4
    )
    expected = top(row[slots], slots, 8)
    assert overlap(kept_slots(trace, 1, visual), expected) == 1.0
    last = pdrop_official_row(
        model, compat.decoder_layers(model)[2], trace.outputs[1], trace.positions[1], n - 1
    )
    assert top(last[slots], slots, 8) != expected  # the query row matters on this input


# ------------------------------------------------------------------------------------------------
# SparseVLM.


def test_sparsevlm_raters_on_hand_made_embeddings() -> None:
    """Hand-worked: visual tokens point along e0; text rows 0 and 2 align with them, row 1 does not."""
    inputs = make_inputs(batch=1, text_lengths=(3,))
    embeds = torch.zeros_like(inputs.inputs_embeds)
    visual, text = inputs.layout.visual_mask[0], inputs.layout.text_mask[0]
    embeds[0, visual, 0] = 1.0
    embeds[0, torch.nonzero(text).flatten(), 0] = torch.tensor([2.0, -2.0, 1.0])
    # softmax_T of [2, -2, 1] for every visual token: [0.72, 0.01, 0.27]; mean 1/3 -> only row 0
    expected = [True, False, False]
    assert sparsevlm_official_raters(embeds[0], visual, text).tolist() == expected
    model = build_decoder("llama", layers=4, attn="eager")
    seen: list[torch.Tensor] = []
    pruner = build_pruner("sparsevlm", mode="faithful")
    original = pruner.score

    def spy(view: Any) -> torch.Tensor:
        seen.append(input_raters(view))
        return original(view)

    object.__setattr__(pruner, "score", spy)
    with prune(model, pruner, inputs.with_(inputs_embeds=embeds)) as record:
        forward(model, record.inputs)
    assert seen and seen[0][0].tolist() == expected


def sparsevlm_expected_counts(num_visual: int, retain: int) -> list[tuple[int, int]]:
    """(kept, merged) per stage from the official table, scaled to ``num_visual`` (hand-checkable)."""
    current, out = num_visual, []
    for count in SPARSEVLM_TABLES[retain]:
        keep = max(1, min(count * num_visual // SPARSEVLM_TABLE_VISUAL, current - 1))
        merged = recycle_count(current - keep)
        out.append((keep, merged))
        current = keep + merged
    return out


def test_sparsevlm_faithful_counts_follow_the_scaled_table() -> None:
    # 192 -> (300, 200, 110) of 576; for V = 16: int(300*16/576) = 8, then 5, then 3.
    # Recycling: 8 dropped -> m = int(2.4) + 1 = 3 -> 1 cluster; 4 -> 2 -> 1; 3 -> 1 -> 1.
    assert sparsevlm_expected_counts(16, 192) == [(8, 1), (5, 1), (3, 1)]
    pruner = build_pruner("sparsevlm", mode="faithful")
    plan = pruner.faithful_plan(8, 16)
    assert list(zip(plan.kept, plan.merged, strict=True)) == [(8, 1), (5, 1), (3, 1)]
    assert plan.handed_on == [9, 6, 4]


def check_sparsevlm_faithful(model: nn.Module, inputs: DecoderInputs) -> None:
    """SparseVLM[faithful] on one sample == raters from the embeddings + each layer's eager attention."""
    pruner = build_pruner("sparsevlm", mode="faithful")
    trace, record = traced_run(model, pruner, inputs)
    layout = inputs.layout
    text = int(layout.text_mask.sum())
    raters = sparsevlm_official_raters(inputs.inputs_embeds[0], layout.visual_mask[0], layout.text_mask[0])
    if not bool(raters.any()):
        raters = torch.ones_like(raters)
    visual = visual_masks(trace, layout.visual_mask[0])
    counts = sparsevlm_expected_counts(int(visual[0].sum()), 192)
    for stage, start in enumerate(pruner.starts(len(compat.decoder_layers(model)))):  # 8: after 0, 1, 3
        layer = start - 1
        n = trace.outputs[layer].shape[0]
        assert trace.positions[layer].tolist() == list(range(n))  # contiguous ids
        text_rows = torch.arange(n - text, n)[raters]  # text is last; merged tokens sit before it
        row = trace.attention[layer].mean(dim=0)[text_rows].mean(dim=0)  # eager, heads then raters
        slots = torch.nonzero(visual[layer]).flatten()
        keep, merged = counts[stage]
        expected = top(row[slots], slots, min(keep, len(slots) - 1))
        assert overlap(kept_slots(trace, layer, visual[layer], merged), expected) == 1.0, stage
        assert int(visual[layer + 1].sum()) == keep + merged
    assert record.merged_tokens is not None and record.merged_tokens[0, -1] >= 1


@pytest.mark.parametrize(("family", "seed", "text"), CASES)
def test_sparsevlm_faithful_equals_the_official_rule(family: str, seed: int, text: int) -> None:
    model = build_decoder(family, layers=8, attn="eager", seed=seed)
    check_sparsevlm_faithful(model, make_inputs(batch=1, text_lengths=(text,), seed=seed + 10))


# ------------------------------------------------------------------------------------------------
# The bundled tiny-drive-vla (216 visual tokens, camera markers, 6 action queries), eager attention.


@pytest.fixture(scope="module")
def bundled_sample(synthetic_root: Path) -> tuple[nn.Module, DecoderInputs]:
    model = load("tiny-drive-vla")
    model.decoder.set_attn_implementation("eager")
    dataset = NuScenesDrivingDataset(synthetic_root, split="val")
    with torch.no_grad():
        inputs = model.prepare(collate([dataset[0]]))
    return model.decoder, inputs


def test_faithful_modes_on_the_bundled_model(bundled_sample: tuple[nn.Module, DecoderInputs]) -> None:
    decoder, inputs = bundled_sample
    readout = inputs.readout_tokens
    assert readout > 0  # DrivingVLA's action queries end the prompt
    v = inputs.layout.num_visual
    num_layers = len(compat.decoder_layers(decoder))
    # PDrop's paper setting: stages at 1/4, 1/2, 3/4 of depth, each keeping half of the last.
    starts = spread_layers(num_layers, (0.25, 0.5, 0.75))
    expected = [
        v if layer < starts[0] else v // 2 ** sum(layer >= s for s in starts) for layer in range(num_layers)
    ]
    with torch.no_grad():
        check_fastv_faithful(decoder, inputs)
        assert check_pdrop_faithful(decoder, inputs, readout=readout) == expected
        check_sparsevlm_faithful(decoder, inputs)


# ------------------------------------------------------------------------------------------------
# FasterVLM.


def test_fastervlm_faithful_keeps_each_cameras_own_top_tokens_hand_worked() -> None:
    inputs = make_inputs(batch=1)  # 2 cameras x 8 tokens
    saliency = torch.tensor([[9.0, 1, 2, 3, 4, 5, 6, 7, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]])
    inputs = inputs.with_(vision_saliency=saliency)
    model = build_decoder("llama", layers=4, attn="eager")
    with prune(model, build_pruner("fastervlm", budget=6, mode="faithful"), inputs) as record:
        forward(model, record.inputs)
    # 3 per camera: camera 0's 9, 7, 6 (tokens 0, 7, 6), camera 1's 0.8, 0.7, 0.6 (tokens 15, 14, 13)
    assert record.preselected is not None and record.preselected[0].tolist() == [0, 6, 7, 13, 14, 15]
    with prune(model, build_pruner("fastervlm", budget=6), inputs) as matched:
        forward(model, matched.inputs)
    assert matched.preselected is not None and matched.preselected[0].tolist() == [0, 3, 4, 5, 6, 7]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fastervlm_faithful_equals_the_official_rule_on_random_saliency(seed: int) -> None:
    inputs = make_inputs(batch=3, text_lengths=(5, 2, 4), seed=seed)
    model = build_decoder("qwen2", layers=4, attn="eager", seed=seed)
    with prune(model, build_pruner("fastervlm", budget=7, mode="faithful"), inputs) as record:
        forward(model, record.inputs)
    assert inputs.vision_saliency is not None and record.preselected is not None
    for b in range(3):
        per_image = inputs.vision_saliency[b].view(2, 8)  # the official loop: each image alone
        expected = set((per_image.topk(7 // 2, dim=1).indices + torch.tensor([[0], [8]])).flatten().tolist())
        assert overlap(set(record.preselected[b].tolist()), expected) == 1.0


# ------------------------------------------------------------------------------------------------
# Batches: a faithful rule applied to a padded batch keeps what it keeps for each sample alone.


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("fastv", {}),
        ("pdrop", {}),
        ("sparsevlm", {}),
        ("fastervlm", {"budget": 6}),
    ],
)
def test_faithful_batch_equals_one_by_one(name: str, kwargs: dict[str, Any]) -> None:
    model = build_decoder("qwen2", layers=8, attn="eager", seed=4)
    inputs = make_inputs(batch=3, text_lengths=(5, 2, 4), seed=5)
    pruner = build_pruner(name, mode="faithful", **kwargs)
    with prune(model, pruner, inputs) as batched:
        forward(model, batched.inputs)
    for b in range(3):
        with prune(model, pruner, sample(inputs, b)) as alone:
            forward(model, alone.inputs)
        for layer in range(8):
            got, want = batched.kept_visual[layer], alone.kept_visual[layer]
            assert got is not None and want is not None
            assert got[b][got[b] >= 0].tolist() == want[0].tolist(), (name, b, layer)


# ------------------------------------------------------------------------------------------------
# DPC-kNN with k = the cluster count (SparseVLM utils.py lines 179-239, without the density noise).


def official_cluster_and_merge(x: torch.Tensor, cluster_num: int) -> torch.Tensor:
    """``[C, D]`` merged tokens of ``x`` [N, D], in the official centre order (noise left out)."""
    dist = torch.cdist(x, x) / x.shape[-1] ** 0.5
    nearest = dist.topk(cluster_num, dim=-1, largest=False).values
    density = (-(nearest**2).mean(dim=-1)).exp()
    denser = (density[None, :] > density[:, None]).float()
    parent_dist = (dist * denser + dist.max() * (1 - denser)).min(dim=-1).values
    centres = (parent_dist * density).topk(cluster_num).indices
    assign = dist[centres].argmin(dim=0)
    assign[centres] = torch.arange(cluster_num)
    return torch.stack([x[assign == c].mean(dim=0) for c in range(cluster_num)])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_merging_with_k_equal_to_the_cluster_count_equals_the_official_code(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 23, 16, generator=gen, dtype=torch.float64)
    clusters = torch.tensor([3, 1, 8])
    merged, _ = dpc_knn_merge(x, clusters, k=clusters)
    for b in range(3):
        c = int(clusters[b])
        torch.testing.assert_close(merged[b, :c], official_cluster_and_merge(x[b], c))
        alone, _ = dpc_knn_merge(x[b : b + 1], c, k=c)  # per-sample k == the int k for that sample
        torch.testing.assert_close(alone[0], merged[b, :c])
    five, _ = dpc_knn_merge(x, clusters, k=5)
    assert not torch.allclose(five, merged)  # k matters on this input


# ------------------------------------------------------------------------------------------------
# Scoring cost: recorded apart from the decoder's FLOPs.


def test_scoring_flops_are_the_recomputed_rows_and_keys() -> None:
    model = build_decoder("qwen2", layers=4)
    inputs = make_inputs(batch=2, text_lengths=(5, 2))
    hidden, heads, kv_heads, head_dim = 64, 4, 2, 16
    q_width, kv_width = heads * head_dim, kv_heads * head_dim

    def macs(rows: int, keys: int) -> int:
        return rows * hidden * q_width + keys * hidden * kv_width + rows * keys * q_width

    real = inputs.attention_mask.sum(dim=1).tolist()  # [24, 21]: keys of layer K-1 = 1 (no drop yet)
    with prune(model, build_pruner("fastv", budget=10), inputs) as matched:
        forward(model, matched.inputs)
    assert matched.scoring_flops is not None and matched.flops is not None
    assert matched.scoring_flops.tolist() == [macs(5, real[0]), macs(2, real[1])]  # every text row
    with prune(model, build_pruner("fastv", mode="faithful"), inputs) as faithful:
        forward(model, faithful.inputs)
    assert faithful.scoring_flops is not None
    assert faithful.scoring_flops.tolist() == [macs(1, real[0]), macs(1, real[1])]  # the last row only
    assert bool((matched.scoring_flops < matched.flops // 10).all())  # small next to the decoder's
    for name, kwargs in [("none", {}), ("random", {"budget": 10}), ("fastervlm", {"budget": 6})]:
        with prune(model, build_pruner(name, **kwargs), inputs) as free:
            forward(model, free.inputs)
        assert free.scoring_flops is not None and free.scoring_flops.tolist() == [0, 0], name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("layout", ["heads_last", "contiguous"])
def test_full_width_rotary_equals_the_generic_formula(dtype, layout):
    """The full-width RoPE path gives ``x cos + rotate_half(x) sin`` bit for bit, in the same strides."""
    gen = torch.Generator().manual_seed(3)
    b, n, h, hd = 2, 11, 4, 16
    x = torch.randn(b, n, h * hd, generator=gen).to(dtype).view(b, n, h, hd).transpose(1, 2)
    if layout == "contiguous":
        x = x.contiguous()
    cos, sin = (torch.randn(b, n, hd, generator=gen).to(dtype) for _ in range(2))
    c, s = cos.unsqueeze(1), sin.unsqueeze(1)
    half = hd // 2
    expected = x * c + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * s
    got = compat.apply_rotary(x, cos, sin)
    assert torch.equal(got, expected)
    assert got.stride() == (x * c).stride()
