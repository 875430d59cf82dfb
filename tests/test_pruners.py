"""Each pruner keeps what its rule says, on tiny random Llama / Qwen2 decoders."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from conftest import (
    ATOL,
    HIDDEN,
    NUM_VISUAL,
    build_decoder,
    forward,
    greedy,
    make_inputs,
    sample,
)
from torch import nn

from vla_autoprune import compat
from vla_autoprune.errors import ConfigError
from vla_autoprune.models.base import DecoderInputs, DrivingModel
from vla_autoprune.pruning import (
    AutoPrunePruner,
    FasterVLMPruner,
    MissingSaliencyError,
    build_pruner,
    prune,
    run_pruned,
)
from vla_autoprune.pruning import autoprune_math as ap
from vla_autoprune.pruning.scores import text_visual_attention

pytestmark = pytest.mark.usefixtures("one_thread")

# Random tiny decoders have MI ~0.01-0.03 bits; a steep gamma spreads k over samples (ragged schedules).
GAMMA_SPREAD = 15.0


def capture_layer_inputs(model: nn.Module, layer: int) -> tuple[dict[str, Any], Any]:
    """Pre-hook storing what ``layer`` receives (first call only); returns (store, handle)."""
    store: dict[str, Any] = {}

    def grab(module: nn.Module, args: tuple, kwargs: dict) -> None:
        if not store:
            store.update(hidden=args[0], kwargs=kwargs, module=module)

    return store, compat.decoder_layers(model)[layer].register_forward_pre_hook(grab, with_kwargs=True)


def unpruned_attention(model: nn.Module, inputs: Any, layer: int) -> torch.Tensor:
    """Text -> visual attention ``[B, H, T, V]`` at ``layer`` of an unpruned forward."""
    store, handle = capture_layer_inputs(model, layer)
    forward(model, inputs)
    handle.remove()
    layout = inputs.layout
    rows = [torch.nonzero(r).flatten() for r in layout.text_mask]
    width = max(len(r) for r in rows)  # ragged text: pad with the last row (ignored via text_valid)
    text_rows = torch.stack([torch.cat([r, r[-1:].expand(width - len(r))]) for r in rows])
    with torch.no_grad():
        return text_visual_attention(
            store["module"],
            store["hidden"],
            store["kwargs"]["position_embeddings"],
            store["kwargs"]["attention_mask"],
            text_rows,
            layout.visual_positions(),
        )


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_fastv_keeps_top_text_attention_at_layer_k_minus_1(family: str) -> None:
    model = build_decoder(family, layers=4)
    inputs = make_inputs(batch=2)
    pruner = build_pruner("fastv", budget=10)
    start, count = pruner.plan(4, NUM_VISUAL)
    assert (start, count) == (2, 4)  # 2 * 16 + 2 * 4 = 40 = 10 * 4
    with prune(model, pruner, inputs) as record:
        forward(model, record.inputs)
    scores = unpruned_attention(model, inputs, start - 1).mean(dim=(1, 2))
    expected = scores.topk(count, dim=1).indices.sort(dim=1).values
    assert torch.equal(record.kept_visual[start], expected)


def test_pdrop_ranks_by_last_text_token_in_a_pyramid() -> None:
    model = build_decoder("qwen2", layers=8)
    inputs = make_inputs(batch=1)
    pruner = build_pruner("pdrop", budget=8)
    with prune(model, pruner, inputs) as record:
        forward(model, record.inputs)
    assert record.visual_tokens is not None
    counts = record.visual_tokens[0].tolist()
    assert pruner.starts(8) == [2, 4, 6]
    assert counts[:2] == [16, 16] and counts[2] > counts[4] > counts[6] >= 1  # geometric stages
    scores = unpruned_attention(model, inputs, 1).mean(dim=1)[:, -1]  # last text query
    expected = scores.topk(counts[2], dim=1).indices.sort(dim=1).values
    assert torch.equal(record.kept_visual[2], expected)


def test_fastervlm_keeps_top_saliency_before_the_decoder() -> None:
    model = build_decoder()
    inputs = make_inputs(batch=2)
    with prune(model, FasterVLMPruner(budget=5.7), inputs) as record:
        logits = forward(model, record.inputs)
    expected = inputs.vision_saliency.topk(5, dim=1).indices.sort(dim=1).values  # type: ignore[union-attr]
    assert torch.equal(record.preselected, expected)  # type: ignore[arg-type]
    assert all(torch.equal(k, expected) for k in record.kept_visual)  # type: ignore[arg-type]
    assert logits.shape[1] == inputs.inputs_embeds.shape[1] - NUM_VISUAL + 5
    with (
        pytest.raises(MissingSaliencyError, match="vision_saliency"),
        prune(model, FasterVLMPruner(budget=5), inputs.with_(vision_saliency=None)),
    ):
        pass


def test_random_is_seeded() -> None:
    model = build_decoder()
    inputs = make_inputs(batch=2)

    def kept(seed: int) -> torch.Tensor:
        with prune(model, build_pruner("random", budget=8, seed=seed), inputs) as record:
            forward(model, record.inputs)
        assert record.kept_visual[3] is not None
        return record.kept_visual[3]

    assert torch.equal(kept(0), kept(0))
    assert not torch.equal(kept(0), kept(1))
    for bad in ("abc", 1.5, -1, True):  # "abc" hashed into some draw and ran
        with pytest.raises(ConfigError, match=r"seed=.* must be a non-negative integer"):
            build_pruner("random", budget=8, seed=bad)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_autoprune_mi_and_schedule_follow_the_math(family: str) -> None:
    model = build_decoder(family, layers=8)
    inputs = make_inputs(batch=2, text_lengths=(5, 3))
    pruner = AutoPrunePruner(budget=6, stage0="none")
    with prune(model, pruner, inputs) as record:
        forward(model, record.inputs)
    # stage0="none": MI is measured at layer 0 over every visual token.
    attn = unpruned_attention(model, inputs, 0)
    text_valid = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    mi = ap.mutual_information(attn, "sum", text_valid=text_valid)
    assert record.schedule is not None
    assert torch.allclose(record.stats["mi"], mi, atol=1e-5)
    assert torch.allclose(record.stats["k"], ap.slope(mi), atol=1e-6)
    expected = ap.retention_schedule(record.stats["k"].double(), 6, 8, NUM_VISUAL, stage0="none")
    assert torch.equal(record.schedule, expected)
    assert record.visual_tokens is not None
    assert torch.equal(record.visual_tokens[:, 1:], expected[:, :-1])  # measured == scheduled
    assert int(record.merged_tokens.sum()) > 0  # type: ignore[union-attr]


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_autoprune_ragged_batch_equals_one_by_one(family: str) -> None:
    model = build_decoder(family, layers=8)
    inputs = make_inputs(batch=3, text_lengths=(5, 1, 3), seed=4)
    with prune(model, AutoPrunePruner(budget=8, stage0="none", gamma=GAMMA_SPREAD), inputs) as record:
        logits = forward(model, record.inputs)
    assert record.visual_tokens is not None and record.merged_tokens is not None
    assert len({tuple(row) for row in record.visual_tokens.tolist()}) > 1  # really ragged
    for b in range(3):
        with prune(
            model, AutoPrunePruner(budget=8, stage0="none", gamma=GAMMA_SPREAD), sample(inputs, b)
        ) as single:
            one = forward(model, single.inputs)
        real = inputs.attention_mask[b].bool()
        assert torch.allclose(logits[b, real], one[0], atol=ATOL)
        assert single.visual_tokens is not None and single.merged_tokens is not None
        assert torch.equal(single.visual_tokens[0], record.visual_tokens[b])
        assert torch.equal(single.merged_tokens[0], record.merged_tokens[b])


def test_autoprune_reference_accounting_reproduces_the_reference_schedule() -> None:
    model = build_decoder(layers=8)
    inputs = make_inputs(batch=1)
    pruner = AutoPrunePruner(budget=4, accounting="reference")
    with prune(model, pruner, inputs) as record:
        forward(model, record.inputs)
    assert record.accounting == "reference" and record.schedule is not None
    expected = ap.reference_schedule(float(record.stats["k"][0]), 4, 8, NUM_VISUAL)
    assert record.schedule[0].tolist() == expected
    assert record.visual_tokens is not None
    assert record.visual_tokens[0].tolist() == [NUM_VISUAL, *expected[:-1]]


def test_autoprune_stage0_uses_saliency_and_merges_after_kept_tokens() -> None:
    model = build_decoder(layers=8)
    inputs = make_inputs(batch=1)
    saliency = torch.zeros(1, NUM_VISUAL)
    saliency[0, :4] = 10.0  # overwhelms the text term: stage 0 must keep tokens 0..3
    with prune(model, AutoPrunePruner(budget=4), inputs.with_(vision_saliency=saliency)) as record:
        forward(model, record.inputs)
    assert record.visual_tokens is not None and record.merged_tokens is not None
    v0 = int(record.visual_tokens[0, 1])
    assert v0 == 10  # min(int(2.5 B), V, room for one token on layers 2..7) = min(10, 16, 32 - 16 - 6)
    assert set(range(4)) <= set(record.kept_visual[1][0].tolist())  # type: ignore[index]
    assert v0 == len(record.kept_visual[1][0])  # type: ignore[index]
    merged_layers = record.merged_tokens[0].nonzero().flatten().tolist()
    assert merged_layers and min(merged_layers) >= 2  # stage 0 (after layer 0) does not recycle


@pytest.mark.parametrize("name", ["autoprune", "sparsevlm"])
def test_recycled_tokens_sit_right_after_the_kept_visual_tokens(name: str) -> None:
    model = build_decoder(layers=4)
    inputs = make_inputs(batch=1)
    pruner = build_pruner(name, budget=10, position_ids="original")  # ids then show where tokens sit
    seen: list[torch.Tensor] = []
    with prune(model, pruner, inputs) as record:
        handle = compat.decoder_layers(model)[3].register_forward_pre_hook(
            lambda m, a, k: seen.append(k["position_ids"][0]), with_kwargs=True
        )
        forward(model, record.inputs)
        handle.remove()
    assert record.merged_tokens is not None and record.kept_visual[3] is not None
    merged, kept = int(record.merged_tokens[0, 3]), record.kept_visual[3][0]
    assert merged >= 1
    visual_pos = inputs.layout.visual_positions()[0]
    positions = seen[0].tolist()  # original position ids: B = 1, no padding, so = sequence index
    text = int(inputs.layout.text_mask.sum())
    # Sequence: [prefix][kept camera 0][marker][kept camera 1][merged][text].
    n = inputs.inputs_embeds.shape[1]
    assert positions[-text:] == list(range(n - text, n))
    tail = positions[len(positions) - text - merged : len(positions) - text]
    assert set(tail) <= set(visual_pos.tolist())  # merged tokens take a member's (visual) position
    body = positions[: len(positions) - text - merged]
    assert [p for p in body if p in set(visual_pos.tolist())] == visual_pos[kept].tolist()
    assert len(positions) == inputs.inputs_embeds.shape[1] - NUM_VISUAL + len(kept) + merged


def test_keep_all_random_and_sparsevlm_generate_like_unpruned() -> None:
    model = build_decoder("qwen2", layers=4)
    inputs = make_inputs(batch=2, text_lengths=(5, 4))
    for name in ("random", "sparsevlm", "none"):
        with prune(model, build_pruner(name, budget=NUM_VISUAL), inputs) as record:
            tokens = greedy(model, record.inputs, steps=3)
        assert torch.equal(tokens, greedy(model, inputs, steps=3)), name


def test_invalid_hyperparameters_are_one_line_errors() -> None:
    for name, kwargs, match in (
        ("autoprune", {"stage0": "later"}, "stage0='later' is unknown"),
        ("autoprune", {"accounting": "reference", "stage0": "none"}, "accounting='reference'"),
        ("pdrop", {"budget": 8, "ratio": 0.5}, "not both"),
        ("fastv", {"layer": 0}, "layer=0"),
        ("fastv", {"budget": -1}, "positive"),
        ("fastv", {"position_ids": "shifted"}, "position_ids='shifted'"),
    ):
        with pytest.raises(ValueError, match=match) as err:
            build_pruner(name, **kwargs)
        assert "\n" not in str(err.value)


class TinyDrivingModel(DrivingModel):
    """A DrivingModel around a plain causal LM: waypoints from the last two hidden states."""

    def __init__(self) -> None:
        super().__init__()
        self.lm = build_decoder("llama", layers=4)
        self.head = nn.Linear(2 * HIDDEN, 12)

    @property
    def decoder(self) -> nn.Module:
        return self.lm

    def prepare(self, batch: dict[str, Any]) -> DecoderInputs:
        return batch["inputs"]

    def decode(self, inputs: DecoderInputs) -> torch.Tensor:
        out = self.lm.model(
            inputs_embeds=inputs.inputs_embeds,
            attention_mask=inputs.attention_mask,
            position_ids=inputs.position_ids,
            use_cache=False,
        )
        return self.head(out.last_hidden_state[:, -2:].flatten(1)).view(-1, 6, 2)


@pytest.mark.parametrize("name", ["none", "fastervlm", "autoprune"])
def test_run_pruned_plans_with_the_record_inputs(name: str) -> None:
    model = TinyDrivingModel().eval()
    batch = {"inputs": make_inputs(batch=2, text_lengths=(5, 3))}
    budget = None if name == "none" else 6
    waypoints, record = run_pruned(model, batch, build_pruner(name, budget=budget))
    assert waypoints.shape == (2, 6, 2) and bool(torch.isfinite(waypoints).all())
    with torch.no_grad():
        unpruned = model.plan(batch)
    if name == "none":
        assert torch.equal(waypoints, unpruned)
    else:
        assert not torch.allclose(waypoints, unpruned)
        assert bool((record.mean_visual_tokens() <= 6 + 1).all())
    if name == "fastervlm":
        assert record.inputs.inputs_embeds.shape[1] == batch["inputs"].inputs_embeds.shape[1] - NUM_VISUAL + 6
