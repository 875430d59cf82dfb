"""Deep fusion (``DrivingVLAConfig.vision_from_layer``): the prompt reads the cameras only from a
given decoder layer on, also under every pruner; nothing else changes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from vla_autoprune import compat
from vla_autoprune.errors import ConfigError
from vla_autoprune.models import DrivingVLA, DrivingVLAConfig
from vla_autoprune.models.driving_vla import TINY_TEXT_CONFIG
from vla_autoprune.models.fusion import fusion_mask
from vla_autoprune.pruning import build_pruner, run_pruned

pytestmark = pytest.mark.usefixtures("one_thread")

LAYERS = 4
Batches = Callable[[int], dict[str, Any]]


def _model(first: int, attn: str = "sdpa") -> DrivingVLA:
    torch.manual_seed(0)
    config = DrivingVLAConfig(
        vision_from_layer=first,
        text_config={
            **TINY_TEXT_CONFIG,
            "model_type": "llama",
            "num_hidden_layers": LAYERS,
            "attn_implementation": attn,
        },
    )
    return DrivingVLA(config).eval()


def _layer0_output(model: DrivingVLA, inputs: Any) -> torch.Tensor:
    store: list[torch.Tensor] = []
    layer = compat.decoder_layers(model.language_model)[0]
    handle = layer.register_forward_hook(lambda m, a, out: store.append(compat.output_hidden(out)))
    try:
        with torch.no_grad():
            model.decode(inputs)
    finally:
        handle.remove()
    return store[0]


def test_fusion_mask_blocks_only_non_visual_rows_from_visual_columns() -> None:
    visual = torch.tensor([[False, True, True, False, False]])
    allowed = torch.ones(5, 5, dtype=torch.bool).tril().expand(1, 1, 5, 5)
    got = fusion_mask(allowed, visual)[0, 0].int()
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0],  # visual rows still read the text before them and each other
            [1, 1, 1, 0, 0],
            [1, 0, 0, 1, 0],  # text after the cameras: not the visual columns
            [1, 0, 0, 1, 1],
        ]
    )
    assert torch.equal(got, expected)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_layer_zero_text_ignores_the_cameras_and_later_layers_read_them(
    attn: str, camera_batch: Batches
) -> None:
    model = _model(first=1, attn=attn)
    inputs = model.prepare(camera_batch())
    visual = inputs.layout.visual_mask
    other = inputs.with_(inputs_embeds=inputs.inputs_embeds + 3.0 * visual.unsqueeze(-1))
    before, after = _layer0_output(model, inputs), _layer0_output(model, other)
    text = ~visual & inputs.attention_mask.bool()
    assert torch.equal(before[text], after[text])  # bit for bit: layer 0's text never saw them
    assert not torch.allclose(before[visual], after[visual])
    with torch.no_grad():
        assert not torch.allclose(model.decode(inputs), model.decode(other), atol=1e-4)  # read later
    plain = _model(first=0, attn=attn)
    plain_text = (_layer0_output(plain, inputs) - _layer0_output(plain, other))[text]
    assert plain_text.abs().max() > 1e-4  # early fusion: layer 0's text reads the cameras
    assert all(not layer._forward_pre_hooks for layer in compat.decoder_layers(model.language_model))


def test_padded_batch_equals_one_by_one(camera_batch: Batches) -> None:
    model = _model(first=2)
    batch = camera_batch(3)
    with torch.no_grad():
        joint = model.plan(batch)
        single = torch.cat(
            [
                model.plan({k: (v[i : i + 1] if torch.is_tensor(v) else v) for k, v in batch.items()})
                for i in range(3)
            ]
        )
    assert torch.allclose(joint, single, atol=1e-5)


@pytest.mark.parametrize("name", ["random", "fastv", "autoprune", "fastervlm", "pdrop", "sparsevlm"])
def test_pruners_run_on_a_deep_fusion_model_and_keep_all_is_unpruned(
    name: str, camera_batch: Batches
) -> None:
    model = _model(first=1)
    batch = camera_batch()
    with torch.no_grad():
        unpruned = model.plan(batch)
        visual = model.prepare(batch).layout.num_visual
        keep_all, _ = run_pruned(model, batch, build_pruner(name, budget=visual))
        # 0.6 V: FastV keeps K = 2 (at V / 2 it would rank by layer 0's blind text, refused below)
        # pdrop, sparsevlm: first stage at layer 2 of 4 (by default at layer 1, ranking at layer 0)
        staged = {"stages": [0.5, 0.75]} if name in ("pdrop", "sparsevlm") else {}
        pruned, record = run_pruned(model, batch, build_pruner(name, budget=0.6 * visual, **staged))
    assert torch.allclose(keep_all, unpruned, atol=1e-5)
    assert torch.isfinite(pruned).all() and not torch.allclose(pruned, unpruned, atol=1e-4)
    assert record.mean_visual_tokens is not None


def test_pruning_before_the_fusion_layer_is_a_clear_error(camera_batch: Batches) -> None:
    model = _model(first=3)
    batch = camera_batch()
    with pytest.raises(ConfigError, match="reads the cameras only from layer 3"):
        run_pruned(model, batch, build_pruner("random", budget=150))  # drops from layer 1


def test_ranking_by_text_attention_where_the_text_is_blind_is_a_clear_error(camera_batch: Batches) -> None:
    """FastV at a budget that makes it score at layer 0, and AutoPrune measuring MI at layer 0,
    would rank by all-zero scores (the top-k then keeps the first tokens): refused, naming why."""
    model = _model(first=1)
    batch = camera_batch()
    visual = model.prepare(batch).layout.num_visual
    fastv = build_pruner("fastv", budget=visual / 3)
    assert fastv.plan(LAYERS, visual)[0] == 1  # K lowered to 1: ranks by layer 0's text rows
    assert fastv.text_ranked_from(LAYERS, visual) == 0
    with pytest.raises(
        ConfigError, match=r"fastv\[matched\]: ranks visual tokens by the text's attention at decoder layer 0"
    ):
        run_pruned(model, batch, fastv)
    with pytest.raises(ConfigError, match="vision_from_layer=1"):
        run_pruned(model, batch, build_pruner("autoprune", budget=visual / 2, stage0="none"))
    layers = compat.decoder_layers(model.language_model)
    assert all(not (layer._forward_hooks or layer._forward_pre_hooks) for layer in layers)  # all removed
    for name in ("random", "dart"):  # rank after layer 0 without the text's attention: allowed
        assert build_pruner(name, budget=visual / 3).text_ranked_from(LAYERS, visual) is None
        run_pruned(model, batch, build_pruner(name, budget=visual / 3))
    # Early fusion: the same pruners rank at layer 0 as before.
    plain = _model(first=0)
    run_pruned(plain, batch, build_pruner("fastv", budget=visual / 3))
    run_pruned(plain, batch, build_pruner("autoprune", budget=visual / 2, stage0="none"))


def test_autoprune_stage0_ranks_by_saliency_alone_where_the_text_is_blind(camera_batch: Batches) -> None:
    """On a deep-fusion model stage 0 (after layer 0) keeps the top tokens by vision saliency."""
    model = _model(first=1)
    batch = camera_batch()
    inputs = model.prepare(batch)
    visual = inputs.layout.num_visual
    pruner = build_pruner("autoprune", budget=visual / 3)
    kept: list[torch.Tensor] = []
    original = pruner.score

    def spy(view: Any) -> torch.Tensor:
        scores = original(view)
        if view.layer_idx == 0:
            kept.append(scores)
        return scores

    pruner.score = spy  # type: ignore[method-assign]
    with torch.no_grad():
        run_pruned(model, batch, pruner)
    assert inputs.vision_saliency is not None
    assert torch.equal(kept[0], inputs.vision_saliency.float())


def test_out_of_range_layer_and_missing_layout_are_config_errors(camera_batch: Batches) -> None:
    with pytest.raises(ConfigError, match="vision_from_layer=4 is outside"):
        _model(first=LAYERS)
    model = _model(first=1)
    inputs = model.prepare(camera_batch())
    with pytest.raises(ConfigError, match="needs inputs.layout"):
        model.decode(inputs.with_(layout=None))


@pytest.mark.parametrize(
    ("name", "kwargs", "lowest"),
    [("fastv", {}, 96.75), ("pdrop", {}, 96.75), ("autoprune", {"stage0": "none"}, None)],
)
def test_the_refusal_names_the_lowest_budget_that_ranks_where_the_text_sees(
    name: str, kwargs: dict[str, Any], lowest: float | None
) -> None:
    """8 layers x 384 tokens, text from layer 1: K = 2 needs (2 x 384 + 6) / 8; MI at layer 0 never moves."""
    pruner = build_pruner(name, budget=49, **kwargs)
    assert pruner.blind_text_layer(8, 384, 1) == 0 and pruner.blind_text_layer(8, 384, 0) is None
    assert pruner.lowest_budget_seeing(8, 384, 1) == lowest
