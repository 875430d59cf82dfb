"""The newer baselines (issue 15 item 4): VisionZip, VisPruner, DivPrune, DART, Prune2Drive-style.

Each is checked on the tiny real decoders of conftest.py: keep-all equals unpruned, dropping
equals masking (where nothing merges), the budget holds per sample, and each selection rule on
hand-worked cases and against a plain test-side re-implementation.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import (
    ATOL,
    NUM_VISUAL,
    build_decoder,
    forward,
    greedy,
    make_inputs,
    masked_reference,
    sample,
)

from vla_autoprune.errors import ConfigError
from vla_autoprune.models.base import DecoderInputs
from vla_autoprune.pruning import BudgetError, build_pruner, prune
from vla_autoprune.pruning.budget import token_layers
from vla_autoprune.pruning.cameras import camera_quotas
from vla_autoprune.pruning.pruners.dart import pivot_duplicates
from vla_autoprune.pruning.pruners.divprune import max_min_subset
from vla_autoprune.pruning.pruners.fastervlm import MissingSaliencyError
from vla_autoprune.pruning.pruners.visionzip import contextual_merge
from vla_autoprune.pruning.pruners.vispruner import remove_duplicates

pytestmark = pytest.mark.usefixtures("one_thread")

NEW = ("visionzip", "vispruner", "divprune", "dart", "prune2drive")
PRE_DECODER = ("visionzip", "vispruner", "divprune", "prune2drive")
# Pre-decoder pruners whose kept tokens are plain survivors (VisionZip merges unless told not to).
NO_MERGE = {"vispruner": {}, "divprune": {}, "prune2drive": {}, "visionzip": {"contextual_ratio": 0.0}}
LAYERS = 6
PER_CAMERA = NUM_VISUAL // 2  # make_inputs: 2 cameras x 8 tokens


def run(name: str, inputs: DecoderInputs, **kwargs: object) -> tuple:
    """Prune with ``build_pruner(name, **kwargs)`` on a LAYERS-layer decoder: (model, record, logits)."""
    model = build_decoder(layers=LAYERS)
    with prune(model, build_pruner(name, **kwargs), inputs) as record:
        logits = forward(model, record.inputs)
    return model, record, logits


def visual_rows(inputs: DecoderInputs) -> torch.Tensor:
    """float [B, V, D]: the visual embeddings, read the plain way."""
    return torch.stack(
        [inputs.inputs_embeds[b, inputs.layout.visual_mask[b]] for b in range(len(inputs.inputs_embeds))]
    )


def dropped_positions(inputs: DecoderInputs, kept: torch.Tensor) -> torch.Tensor:
    """bool [B, N]: sequence positions of the visual tokens not in ``kept`` [B, n] (-1 padded)."""
    dropped = torch.zeros_like(inputs.layout.visual_mask)
    for b in range(kept.shape[0]):
        gone = torch.ones(NUM_VISUAL, dtype=torch.bool)
        gone[kept[b][kept[b] >= 0]] = False
        dropped[b, inputs.layout.visual_mask[b]] = gone
    return dropped


# ------------------------------------------------------------------------------------------------
# Every new pruner on the engine.


@pytest.mark.parametrize("name", NEW)
def test_keep_all_equals_unpruned(name: str) -> None:
    model = build_decoder(layers=4)
    inputs = make_inputs(batch=2, text_lengths=(5, 3))
    with prune(model, build_pruner(name, budget=NUM_VISUAL), inputs) as record:
        pruned = forward(model, record.inputs)
        tokens = greedy(model, record.inputs)
    assert torch.equal(pruned, forward(model, inputs))
    assert torch.equal(tokens, greedy(model, inputs))
    assert record.visual_tokens is not None and bool((record.visual_tokens == NUM_VISUAL).all())


@pytest.mark.parametrize("name", list(NO_MERGE))
def test_pre_decoder_drop_equals_masking_with_original_ids(name: str) -> None:
    inputs = make_inputs(batch=2, text_lengths=(5, 2))
    model, record, pruned = run(name, inputs, budget=6, position_ids="original", **NO_MERGE[name])
    assert record.preselected is not None and record.preselected.shape == (2, 6)
    remove = masked_reference(model, inputs, -1, dropped_positions(inputs, record.preselected))
    masked = forward(model, inputs)
    remove()
    pruned_text, masked_text = pruned[record.inputs.layout.text_mask], masked[inputs.layout.text_mask]
    torch.testing.assert_close(pruned_text, masked_text, atol=ATOL, rtol=0)
    assert not torch.allclose(pruned_text, forward(model, inputs)[inputs.layout.text_mask], atol=1e-4)


@pytest.mark.parametrize("name", PRE_DECODER)
def test_pre_decoder_default_ids_equal_the_shortened_prompt_as_a_fresh_input(name: str) -> None:
    inputs = make_inputs(batch=2, text_lengths=(5, 2))
    model, record, logits = run(name, inputs, budget=8)  # VisionZip: int(8 * 10 / 64) = 1 contextual
    assert record.position_ids == "contiguous" and record.preselected is not None
    real = record.inputs.attention_mask.bool()
    for b in range(2):
        keep = inputs.attention_mask[b].bool().clone()
        keep[inputs.layout.visual_mask[b]] = torch.zeros(NUM_VISUAL, dtype=torch.bool).scatter(
            0, record.preselected[b], True
        )
        embeds = record.inputs.inputs_embeds[b, real[b]]  # VisionZip's merged values included
        assert torch.equal(embeds, inputs.inputs_embeds[b, keep]) == (name != "visionzip")
        with torch.no_grad():
            fresh = model(inputs_embeds=embeds.unsqueeze(0)).logits[0]
        torch.testing.assert_close(logits[b, real[b]], fresh, atol=ATOL, rtol=0)


def test_dart_drop_equals_masking_after_layer_k_minus_1() -> None:
    inputs = make_inputs(batch=2, text_lengths=(5, 2))
    model, record, pruned = run("dart", inputs, budget=8)
    assert record.visual_tokens is not None
    assert (
        record.visual_tokens[:, :2].eq(NUM_VISUAL).all() and record.visual_tokens[:, 2:].lt(NUM_VISUAL).all()
    )
    remove = masked_reference(model, inputs, 1, dropped_positions(inputs, record.kept_visual[2]))
    masked = forward(model, inputs)
    remove()
    text = inputs.layout.text_mask
    torch.testing.assert_close(pruned[text], masked[text], atol=ATOL, rtol=0)
    assert not torch.allclose(pruned[text], forward(model, inputs)[text], atol=1e-4)


@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("budget", [1.0, 3.5, 7.0, 12.25])
def test_budget_met_per_sample(name: str, budget: float) -> None:
    pruner = build_pruner(name, budget=budget)
    lo, _ = pruner.reachable(LAYERS, NUM_VISUAL)
    if budget < lo:  # DART keeps layers 0..K-1 full; below its floor the error names the range
        with pytest.raises(BudgetError, match=r"choose a budget in \["):
            run(name, make_inputs(batch=3, text_lengths=(5, 1, 3)), budget=budget)
        return
    _, record, _ = run(name, make_inputs(batch=3, text_lengths=(5, 1, 3)), budget=budget)
    assert record.visual_tokens is not None
    total = record.visual_tokens.sum(dim=1)
    assert bool((total <= token_layers(budget, LAYERS)).all()), total
    assert bool((total > (budget - 1) * LAYERS).all()), total  # short by less than a token per layer
    assert torch.equal(total, total[:1].expand_as(total))  # every sample is held to the same number


def test_prune2drive_counts_per_camera_follow_the_view_ratios() -> None:
    for ratios, budget in (([3, 1], 8), ([1, 1], 7), ([0, 1], 5)):
        _, record, _ = run(
            "prune2drive", make_inputs(batch=2, text_lengths=(5, 3)), budget=budget, per_camera=ratios
        )
        assert record.camera_tokens is not None
        expected = camera_quotas(budget, [PER_CAMERA, PER_CAMERA], ratios)
        assert record.camera_tokens.tolist() == [[expected] * LAYERS] * 2, ratios


@pytest.mark.parametrize("name", ["visionzip", "vispruner", "divprune", "dart"])
def test_per_camera_shares_hold_for_every_new_pruner(name: str) -> None:
    _, record, _ = run(name, make_inputs(batch=2, text_lengths=(5, 3)), budget=8, per_camera=[3, 1])
    assert record.camera_tokens is not None and record.visual_tokens is not None
    for b in range(2):
        for layer in range(LAYERS):
            total = int(record.visual_tokens[b, layer])
            if total < NUM_VISUAL:
                expected = camera_quotas(total, [PER_CAMERA, PER_CAMERA], [3, 1])
                assert record.camera_tokens[b, layer].tolist() == expected, (b, layer)
    assert int(record.visual_tokens[:, -1].max()) < NUM_VISUAL


@pytest.mark.parametrize("name", NEW)
def test_a_samples_choice_does_not_depend_on_its_batch(name: str) -> None:
    inputs = make_inputs(batch=3, text_lengths=(5, 2, 4))
    _, batched, _ = run(name, inputs, budget=5)
    for b in range(3):
        _, alone, _ = run(name, sample(inputs, b), budget=5)
        for layer in range(LAYERS):
            mine, kept = alone.kept_visual[layer], batched.kept_visual[layer]
            assert mine is not None and kept is not None
            assert mine[0].tolist() == [v for v in kept[b].tolist() if v >= 0], (b, layer)


# ------------------------------------------------------------------------------------------------
# The selection rules, hand-worked.


def at_angles(degrees: list[float]) -> torch.Tensor:
    """float [M, 2]: unit vectors at the given angles."""
    rad = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    return torch.stack([rad.cos(), rad.sin()], dim=1)


def test_divprune_max_min_subset_by_hand() -> None:
    # Nearest-neighbour distances: 90 deg is the loneliest (its nearest, 10 deg, is 80 deg away).
    # Then 185 deg (95 deg from 90), then 0 deg (90 deg from 90, 175 from 185), then 10 deg.
    points = at_angles([0, 10, 90, 180, 185])
    assert max_min_subset(points, 4).tolist() == [2, 4, 0, 1]
    assert max_min_subset(points, 9).tolist() == [2, 4, 0, 1, 3]  # never re-picks; k capped at M
    assert max_min_subset(points * torch.tensor([3.0, 3.0], dtype=torch.float64), 2).tolist() == [
        2,
        4,
    ]  # cosine
    # Farthest point sampling from a given start (Prune2Drive): 0 deg -> 180 -> 90 (the rest are near).
    assert max_min_subset(points, 3, first=0).tolist() == [0, 3, 2]


def official_divprune(x: torch.Tensor, k: int) -> list[int]:
    """A plain re-implementation of the official greedy loop (vbdi/divprune ``DivPrune``)."""
    unit = x / x.norm(dim=1, keepdim=True)
    dist = 1 - unit @ unit.T
    chosen: list[int] = []
    for i in range(k):
        if i == 0:
            scores = dist.topk(2, dim=0, largest=False).values[1]
        else:
            scores = dist[chosen].min(dim=0).values
        chosen.append(int(scores.argmax()))
    return chosen


def test_divprune_equals_the_official_loop_and_runs_through_the_engine() -> None:
    gen = torch.Generator().manual_seed(3)
    for _ in range(5):
        x = torch.randn(30, 8, generator=gen, dtype=torch.float64)
        assert max_min_subset(x, 12).tolist() == official_divprune(x, 12)
    inputs = make_inputs(batch=2, text_lengths=(5, 3))
    _, record, _ = run("divprune", inputs, budget=5)
    assert record.preselected is not None
    rows = visual_rows(inputs)
    for b in range(2):
        assert record.preselected[b].tolist() == sorted(official_divprune(rows[b].double(), 5))


def test_prune2drive_samples_each_camera_from_its_first_token() -> None:
    inputs = make_inputs(batch=1)
    d = inputs.inputs_embeds.shape[-1]
    rows = torch.zeros(NUM_VISUAL, d)
    # Camera 0: token 5 is opposite token 0, token 3 orthogonal; camera 1: token 8 + 6 is opposite 8.
    rows[:PER_CAMERA, :2] = at_angles([0, 5, 10, 90, 15, 180, 20, 25]).float()
    rows[PER_CAMERA:, :2] = at_angles([30, 35, 40, 45, 50, 55, 210, 60]).float()
    embeds = inputs.inputs_embeds.clone()
    embeds[0, inputs.layout.visual_mask[0]] = rows
    _, record, _ = run("prune2drive", inputs.with_(inputs_embeds=embeds), budget=5, per_camera=[3, 2])
    assert record.preselected is not None and record.preselected[0].tolist() == [0, 3, 5, 8, 14]


def test_vispruner_removes_duplicates_by_hand() -> None:
    # Residual order 0..5: a = [0, 2, 4], b = [1, 3, 5]; 0 ~ 1 and 2 ~ 3 are duplicates, 4 is not.
    unit = F.normalize(at_angles([0, 1, 90, 92, 225, 135]), dim=-1)
    residual = torch.arange(6)
    assert remove_duplicates(unit, residual, 4).tolist() == [4, 1, 3, 5]  # the two duplicates go
    assert remove_duplicates(unit, residual, 6).tolist() == [0, 1, 2, 3, 4, 5]
    assert remove_duplicates(unit, residual, 0).tolist() == []
    # Through the engine: the important half by saliency, then de-duplicated tokens.
    inputs = make_inputs(batch=1)
    saliency = torch.linspace(1, 0, NUM_VISUAL).unsqueeze(0)  # token 0 most salient
    d = inputs.inputs_embeds.shape[-1]
    rows = torch.zeros(NUM_VISUAL, d)
    rows[:, :2] = at_angles([i * 1.0 for i in range(10)] + [90, 91, 180, 181, 270, 271]).float()
    embeds = inputs.inputs_embeds.clone()
    embeds[0, inputs.layout.visual_mask[0]] = rows
    inputs = inputs.with_(inputs_embeds=embeds, vision_saliency=saliency)
    _, record, _ = run("vispruner", inputs, budget=8)
    assert record.preselected is not None
    # int(8 * 0.5) = 4 important tokens: 0..3. Residual 4..15 (by saliency), 4 to keep:
    # round 1 removes min(8, 8) even-position tokens, i.e. all of a = 4, 6, ..., 14, leaving
    # 5, 7, 9, 11, 13, 15; round 2 splits a = [5, 9, 13], b = [7, 11, 15] and removes the two
    # closest to a b token: 5 and 9 (2 deg from 7); 13 (181 deg) is 90 deg from 11 and 15.
    assert record.preselected[0].tolist() == [0, 1, 2, 3, 7, 11, 13, 15]


def test_visionzip_contextual_merge_by_hand() -> None:
    x = torch.tensor([[1.0, 0], [0.9, 0.1], [0, 1], [0, 2], [1, 0.2], [0.1, 1]])
    targets, merged = contextual_merge(x, 2)
    assert targets.tolist() == [0, 3]  # every M // c = 3rd non-dominant token
    # 1 and 4 join target 0 (x-axis), 2 and 5 join target 3 (y-axis); target + mean of its joiners.
    torch.testing.assert_close(merged[0], x[0] + (x[1] + x[4]) / 2)
    torch.testing.assert_close(merged[1], x[3] + (x[2] + x[5]) / 2)
    targets, merged = contextual_merge(x[:1], 1)
    assert targets.tolist() == [0] and torch.equal(merged, x[:1])  # nobody joined: the target alone


def test_visionzip_keeps_dominant_tokens_and_writes_contextual_ones_before_the_decoder() -> None:
    inputs = make_inputs(batch=2, text_lengths=(5, 2))
    gen = torch.Generator().manual_seed(5)
    inputs = inputs.with_(vision_saliency=torch.rand(2, NUM_VISUAL, generator=gen))
    model, record, pruned = run("visionzip", inputs, budget=8, contextual_ratio=0.25, position_ids="original")
    assert record.preselected is not None and record.visual_tokens is not None
    assert record.visual_tokens.eq(8).all()
    rows = visual_rows(inputs)
    expected_embeds = inputs.inputs_embeds.clone()
    for b in range(2):
        dominant = inputs.vision_saliency[b].topk(6).indices  # 8 - int(8 * 0.25)
        rest = [v for v in range(NUM_VISUAL) if v not in dominant.tolist()]  # 10, in order
        targets = rest[0:10:5][:2]
        assert record.preselected[b].tolist() == sorted(dominant.tolist() + targets)
        unit = F.normalize(rows[b], dim=-1)
        for t in targets:
            joined = [
                v
                for v in rest
                if v not in targets and int((unit[v] @ unit[targets].T).argmax()) == targets.index(t)
            ]
            value = rows[b, t] + (rows[b, joined].mean(0) if joined else 0)
            expected_embeds[b, inputs.layout.visual_positions()[b, t]] = value
    # Equals masking the dropped tokens of the prompt whose targets carry the contextual values.
    remove = masked_reference(model, inputs, -1, dropped_positions(inputs, record.preselected))
    masked = forward(model, inputs.with_(inputs_embeds=expected_embeds))
    remove()
    torch.testing.assert_close(
        pruned[record.inputs.layout.text_mask], masked[inputs.layout.text_mask], atol=ATOL, rtol=0
    )


def test_dart_pivots_and_duplicates_by_hand() -> None:
    hidden = torch.zeros(8, 2)
    # visual rows 0..5, text rows 6, 7; pivots: visual 2 and text 7 have the largest key norms
    hidden[[0, 1, 2, 3, 4, 5, 6, 7]] = torch.tensor(
        [[1, 0.1], [-1, 0], [1, 0], [0, -1], [1, 1], [0.9, 0.1], [1, 1], [0, 1]]
    )
    key_norm = torch.tensor([1.0, 2, 9, 1, 1, 1, 3, 5])
    visual, text = torch.arange(6), torch.tensor([6, 7])
    # Pivot 2 (along x) keeps the least similar candidate, 1; pivot 7 (along y) then keeps 3.
    kept = pivot_duplicates(hidden, key_norm, visual, text, 3, pivot_image=1, pivot_text=1)
    assert sorted(kept.tolist()) == [1, 2, 3]
    # Four to keep: 3 left over 2 pivots -> the first pivot (2) takes two, 1 (cos -1) and 3 (cos 0);
    # pivot 7 then takes the candidate least along y: 0 (cos 0.0995 < 0.110 for 5, 0.707 for 4).
    kept = pivot_duplicates(hidden, key_norm, visual, text, 4, pivot_image=1, pivot_text=1)
    assert kept.tolist() == [2, 1, 3, 0]
    # Fewer tokens than image pivots: the top-norm visual tokens alone.
    assert pivot_duplicates(hidden, key_norm, visual, text, 1, pivot_image=4, pivot_text=1).tolist() == [2]


# ------------------------------------------------------------------------------------------------
# Errors.


def test_bad_options_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match="^prune2drive: per_camera=none .* per_camera=uniform"):
        build_pruner("prune2drive", budget=8, per_camera="none")
    with pytest.raises(ConfigError, match="contextual_ratio=1.0 must be in"):
        build_pruner("visionzip", budget=8, contextual_ratio=1.0)
    with pytest.raises(ConfigError, match="important_ratio=-0.1 must be in"):
        build_pruner("vispruner", budget=8, important_ratio=-0.1)
    with pytest.raises(ConfigError, match="at least one pivot"):
        build_pruner("dart", budget=8, pivot_image=0, pivot_text=0)
    with pytest.raises(ConfigError, match="dart is held to the budget only"):
        build_pruner("dart", mode="faithful")
    model = build_decoder(layers=2)
    no_saliency = make_inputs().with_(vision_saliency=None)
    for name in ("visionzip", "vispruner"):
        with (
            pytest.raises(MissingSaliencyError, match="pruner=divprune"),
            prune(model, build_pruner(name, budget=4), no_saliency),
        ):
            pass
    with prune(model, build_pruner("divprune", budget=4), no_saliency) as record:  # needs no saliency
        forward(model, record.inputs)
