"""The Qwen3-VL adapter and deepstack under pruning, on a tiny random Qwen3VLForConditionalGeneration.

The tiny model (conftest's ``qwen3_folder``: a 3-block vision tower whose blocks all feed deepstack,
so the text model adds vision features after decoder layers 0, 1 and 2; 4 text layers; interleaved
M-RoPE) is saved with its image processor and a byte-level tokenizer into a temporary folder and
loaded back with ``from_pretrained``. References: transformers' own forward (input_ids + pixel_values, deepstack
added by the model), and dropping == masking as in test_qwen_pruning.py.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import ATOL, QWEN3_DEEPSTACK_LAYERS, masked_keys, visible_keys
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from vla_autoprune import compat, compat_qwen
from vla_autoprune.errors import ModelLoadError
from vla_autoprune.models import Qwen3VLDrivingAdapter, QwenVLDrivingAdapter, load
from vla_autoprune.models.base import DecoderInputs
from vla_autoprune.models.chat_adapter import batch_instructions
from vla_autoprune.models.deepstack import deepstack_hooks
from vla_autoprune.models.describe import describe
from vla_autoprune.models.qwen_adapter import camera_lines
from vla_autoprune.pruning import PRUNERS, LayerView, PruningRecord, build_pruner, prune

Batch = Callable[[int], dict[str, Any]]
CONF = Path(__file__).resolve().parents[1] / "conf"
NEW_TOKENS = 5


@pytest.fixture(scope="module")
def model(qwen3_folder: Path) -> Qwen3VLDrivingAdapter:
    model = Qwen3VLDrivingAdapter.from_pretrained(qwen3_folder)
    model.max_new_tokens = NEW_TOKENS
    return model


def prefill_logits(model: QwenVLDrivingAdapter, inputs: DecoderInputs) -> torch.Tensor:
    """Last-position logits of the decoder on ``inputs``; their deepstack (if any) added by hooks."""
    with torch.no_grad(), deepstack_hooks(model.decoder, inputs):
        return model.qwen(
            inputs_embeds=inputs.inputs_embeds,
            attention_mask=inputs.attention_mask,
            position_ids=inputs.position_ids,
        ).logits[:, -1]


def native_logits(model: Qwen3VLDrivingAdapter, batch: dict[str, Any]) -> torch.Tensor:
    """transformers' own path: input_ids + pixel_values; M-RoPE and deepstack done by the model."""
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
        ).logits[:, -1]


@contextmanager
def step_logits(model: QwenVLDrivingAdapter) -> Iterator[list[torch.Tensor]]:
    logits: list[torch.Tensor] = []
    handle = model.qwen.lm_head.register_forward_hook(lambda _m, _a, out: logits.append(out[:, -1].detach()))
    try:
        yield logits
    finally:
        handle.remove()


@contextmanager
def captured_rotary(model: QwenVLDrivingAdapter) -> Iterator[list[torch.Tensor]]:
    """Per layer call, the ``cos`` ``[B, K, d]`` it receives (registered after the engine's hooks)."""
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


# ------------------------------------------------------------------------------ adapter


def test_prepare_with_deepstack_matches_the_models_own_forward(
    model: Qwen3VLDrivingAdapter, camera_batch: Batch
) -> None:
    batch = camera_batch(2)
    inputs = model.prepare(batch)
    assert not inputs.attention_mask.all()  # left padding is exercised
    assert inputs.position_ids is not None and inputs.position_ids.shape[0] == 3
    assert inputs.deepstack is not None and len(inputs.deepstack) == QWEN3_DEEPSTACK_LAYERS
    assert all(
        f.shape == (*inputs.layout.visual_mask.shape[:1], inputs.layout.num_visual, 64)
        for f in inputs.deepstack
    )
    native = native_logits(model, batch)
    assert torch.allclose(prefill_logits(model, inputs), native, atol=1e-5)
    # teeth: without the deepstack features the prefill differs
    assert not torch.allclose(prefill_logits(model, inputs.with_(deepstack=None)), native, atol=1e-3)


def test_from_pretrained_round_trip_gives_identical_outputs(
    model: Qwen3VLDrivingAdapter, camera_batch: Batch, tmp_path: Path
) -> None:
    model.qwen.save_pretrained(tmp_path)
    model.image_processor.save_pretrained(tmp_path)
    model.tokenizer.save_pretrained(tmp_path)
    again = Qwen3VLDrivingAdapter.from_pretrained(tmp_path)
    again.max_new_tokens = model.max_new_tokens
    batch = camera_batch(2)
    assert torch.equal(
        prefill_logits(model, model.prepare(batch)), prefill_logits(again, again.prepare(batch))
    )
    assert (
        model.generate_waypoints(model.prepare(batch)).texts
        == again.generate_waypoints(again.prepare(batch)).texts
    )


def test_layout_and_deepstack_point_at_each_cameras_vision_tokens(
    model: Qwen3VLDrivingAdapter, camera_batch: Batch
) -> None:
    batch = camera_batch(2)
    inputs = model.prepare(batch)
    layout = inputs.layout
    b, c = batch["images"].shape[:2]
    rows, cols = layout.patch_grid
    assert (rows, cols) == (3, 5)  # 36 x 64 resized to 24 x 40, 4 px patches merged 2 x 2
    positions = layout.visual_positions()
    assert inputs.position_ids is not None and inputs.deepstack is not None
    for i in range(b):
        for cam in range(c):
            # the visual encoder run on this one image alone
            encoded = model.image_processor(images=[batch["images"][i, cam]], return_tensors="pt")
            features, _, deepstack = model.vision_outputs(encoded["pixel_values"], encoded["image_grid_thw"])
            assert deepstack is not None
            sel = layout.camera_index[i] == cam
            patches = layout.patch_index[i, sel]
            assert torch.allclose(inputs.inputs_embeds[i, positions[i, sel]], features[patches], atol=1e-6)
            for layer, per_layer in enumerate(deepstack):
                assert torch.allclose(inputs.deepstack[layer][i, sel], per_layer[patches], atol=1e-6)
            # the M-RoPE (h, w) offsets of each token are its patch's row and column
            t, h, w = inputs.position_ids[:, i, positions[i, sel]]
            assert torch.equal(h - t, patches // cols)
            assert torch.equal(w - t, patches % cols)


def test_malformed_answers_are_counted_not_raised(model: Qwen3VLDrivingAdapter, camera_batch: Batch) -> None:
    model.parse_stats.total = model.parse_stats.malformed = 0
    waypoints = model.plan(camera_batch(2))  # a random model answers bytes, never six pairs
    assert waypoints.shape == (2, 6, 2) and bool(waypoints.isnan().all())
    assert (model.parse_stats.total, model.parse_stats.malformed) == (2, 2)


def test_load_describe_and_hydra_know_qwen3_folders(qwen3_folder: Path, camera_batch: Batch) -> None:
    assert isinstance(load(qwen3_folder), Qwen3VLDrivingAdapter)
    shape = describe(qwen3_folder, image_size=(64, 36))
    assert shape.model_type == "qwen3_vl" and shape.num_layers == 4
    assert shape.num_visual(6) == load(qwen3_folder).prepare(camera_batch(1)).layout.num_visual
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("evaluate", overrides=["model=qwen3_vl", f"model.name_or_path={qwen3_folder}"])
    planner = instantiate(cfg.planner)
    planner.setup()
    assert isinstance(planner.model, Qwen3VLDrivingAdapter)


def test_other_families_are_refused_in_one_line(qwen3_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="qwen2_5_vl"):  # the Qwen2.5 class does not load Qwen3
        QwenVLDrivingAdapter.from_pretrained(qwen3_folder)
    folder = tmp_path / "qwen3_5"
    shutil.copytree(qwen3_folder, folder)
    config = (folder / "config.json").read_text().replace('"qwen3_vl"', '"qwen3_5"', 1)
    (folder / "config.json").write_text(config)
    for call in (load, describe, Qwen3VLDrivingAdapter.from_pretrained):
        with pytest.raises(compat_qwen.Qwen3VLUnsupportedError) as err:
            call(folder)
        assert "\n" not in str(err.value) and "qwen3_5" in str(err.value)


# ------------------------------------------------------------------------------ pruning


def test_keep_all_equals_unpruned_for_every_pruner(model: Qwen3VLDrivingAdapter, camera_batch: Batch) -> None:
    """The engine's deepstack addition is exact: keeping everything reproduces the unpruned model."""
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
    ("name", "kwargs"),
    [
        ("fastv", {"layer": 1}),
        ("pdrop", {"position_ids": "original"}),
        ("fastervlm", {"position_ids": "original"}),
    ],
)
def test_dropping_equals_masking_and_decode_follows(
    model: Qwen3VLDrivingAdapter, camera_batch: Batch, name: str, kwargs: dict[str, Any]
) -> None:
    """Pruned prefill + generation == the unpruned model (deepstack on every visual token) with the
    dropped tokens masked out of attention; fastv (layer=1) drops before deepstack layer 1, fastervlm
    before the decoder."""
    inputs = model.prepare(camera_batch(2))
    v = inputs.layout.num_visual
    with prune(model.decoder, build_pruner(name, budget=0.5 * v, **kwargs), inputs) as record:
        with step_logits(model) as logits:
            texts = model.generate_waypoints(record.inputs).texts
    assert record.visual_tokens is not None and bool((record.visual_tokens[:, 1] < v).all())
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
                prefill_logits(model, record.inputs)
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
            prefill_logits(model, record.inputs)
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


def test_each_layer_gets_the_original_mrope_rows_of_its_survivors(
    model: Qwen3VLDrivingAdapter, camera_batch: Batch
) -> None:
    inputs = model.prepare(camera_batch(2))
    assert inputs.position_ids is not None
    rotary = compat.rotary_embedding(model.decoder)
    full_cos, _ = rotary(inputs.inputs_embeds, inputs.position_ids)  # [B, N, d], interleaved (t, h, w)
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


@pytest.mark.parametrize("name", ["fastv", "fastervlm"])  # pruned in the decoder / before it (shorter)
def test_rope_deltas_continue_a_pruned_prefill(
    model: Qwen3VLDrivingAdapter, camera_batch: Batch, name: str
) -> None:
    """A decode step without position ids (cache length + rope_deltas) == one with explicit ``last + 1``."""
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
    assert int(model.qwen.model.rope_deltas) + lengths[0] == int(inputs.position_ids.max()) + 1


def test_batch_equals_one_by_one_with_per_sample_autoprune_schedules(
    model: Qwen3VLDrivingAdapter, camera_batch: Batch
) -> None:
    batch = camera_batch(2)
    inputs = model.prepare(batch)
    v = inputs.layout.num_visual
    # This random model's MI is ~0.64 for both rows: k = max(k0 - gamma MI, 0) with a steep gamma
    # and k0 just above 0.65 gamma gives the rows slopes 0.1 and 1.9, hence different schedules.
    options: dict[str, Any] = {"budget": 0.85 * v, "recycle": False, "k0": 65.4, "gamma": 100.0}
    with prune(model.decoder, build_pruner("autoprune", **options), inputs) as record:
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


def test_vision_saliency_without_windows_sums_to_one_per_camera(
    model: Qwen3VLDrivingAdapter, camera_batch: Batch
) -> None:
    inputs = model.prepare(camera_batch(2))
    saliency = inputs.vision_saliency
    assert saliency is not None and saliency.shape == (2, inputs.layout.num_visual)
    per_camera = saliency.view(2, 6, -1).sum(-1)
    assert torch.allclose(per_camera, torch.ones_like(per_camera), atol=1e-5)
