"""The pruning engine on plain transformers decoders (tiny random Llama and Qwen2/GQA).

The decoder and input builders live in conftest.py.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
import torch
from conftest import (
    ATOL,
    HIDDEN,
    NUM_VISUAL,
    VOCAB,
    build_decoder,
    forward,
    greedy,
    make_inputs,
    masked_reference,
    sample,
)
from torch import nn
from transformers import Qwen2Config, Qwen2ForCausalLM

from vla_autoprune import compat
from vla_autoprune.indexing import gather_rows, scatter_rows_
from vla_autoprune.models.base import DecoderInputs
from vla_autoprune.pruning import PRUNERS, LayerView, Pruner, PruningRecord, build_pruner, prune
from vla_autoprune.pruning.pruners.autoprune import AutoPrunePruner
from vla_autoprune.pruning.recycling import split_handed_on
from vla_autoprune.pruning.scores import attention_macs, attention_macs_host, text_visual_attention
from vla_autoprune.pruning.slots import Dropper

FAMILIES = ("llama", "qwen2")

pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass
class FixedPruner(Pruner):
    """Test pruner: a given per-sample schedule and, optionally, given scores."""

    name = "fixed"
    counts: torch.Tensor | None = None  # [B, L]
    scores: torch.Tensor | None = None  # [B, V]

    def schedule(self, view: LayerView) -> torch.Tensor:
        assert self.counts is not None
        return self.counts

    def score(self, view: LayerView) -> torch.Tensor:
        if self.scores is None:
            return view.text_attention()
        return self.scores.gather(1, view.visual_index)


# ------------------------------------------------------------------------------------------------
# A reference that keeps every token but masks the dropped ones out of attention.


def fixed_drop(
    inputs: DecoderInputs, layers: int, drop_after: int, keep: int
) -> tuple[FixedPruner, torch.Tensor]:
    """A pruner keeping ``keep`` random-scored visual tokens after ``drop_after``, and the dropped mask."""
    b = inputs.inputs_embeds.shape[0]
    scores = torch.rand(b, NUM_VISUAL, generator=torch.Generator().manual_seed(7))
    counts = torch.full((b, layers), NUM_VISUAL)
    counts[:, drop_after:] = keep
    dropped_visual = torch.ones(b, NUM_VISUAL, dtype=torch.bool).scatter(1, scores.topk(keep).indices, False)
    dropped = torch.zeros_like(inputs.layout.visual_mask)
    dropped[inputs.layout.visual_mask] = dropped_visual.flatten()
    return FixedPruner(counts=counts, scores=scores), dropped


# ------------------------------------------------------------------------------------------------
# Tests.


def _hook_count(model: nn.Module) -> int:
    return sum(
        len(layer._forward_pre_hooks) + len(layer._forward_hooks) for layer in compat.decoder_layers(model)
    )


def test_hooks_removed_after_exit_and_after_exception() -> None:
    model = build_decoder()
    inputs = make_inputs()
    with prune(model, build_pruner("fastv", budget=8), inputs) as record:
        assert _hook_count(model) == 2 * 4
        forward(model, record.inputs)
    assert _hook_count(model) == 0
    with pytest.raises(RuntimeError, match="boom"), prune(model, build_pruner("fastv", budget=8), inputs):
        raise RuntimeError("boom")
    assert _hook_count(model) == 0
    # The capture hooks on each layer's input_layernorm and k_proj are gone as well.
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


@dataclass
class ReuseCheckPruner(FixedPruner):
    """Scores from the layer's captured projections, checked against a full recomputation."""

    checked: list[int] | None = None

    def score(self, view: LayerView) -> torch.Tensor:
        assert view.projected is not None and self.checked is not None
        attn = view.layer.self_attn
        normed = view.layer.input_layernorm(view.hidden)
        args = (view.position_embeddings, view.attention_mask, view.text_slots, view.visual_slots)
        # The captured tensors are the layer's projections of all its input rows, bit for bit ...
        own = text_visual_attention(
            view.layer, view.hidden, *args, projected=(attn.q_proj(normed), attn.k_proj(normed))
        )
        assert torch.equal(view.attention(), own)
        # ... and agree with projecting the text rows alone (BLAS may differ in the last bit).
        rows_only = text_visual_attention(view.layer, view.hidden, *args)
        torch.testing.assert_close(view.attention(), rows_only, rtol=1e-5, atol=1e-6)
        self.checked.append(view.layer_idx)
        return view.text_attention()


@pytest.mark.parametrize("family", FAMILIES)
def test_scoring_reuses_the_layers_own_projections_bit_for_bit(family: str) -> None:
    model = build_decoder(family)
    inputs = make_inputs(batch=2, text_lengths=(5, 3))
    counts = torch.tensor([[12, 7, 5, 5], [10, 10, 4, 4]])
    pruner = ReuseCheckPruner(counts=counts, checked=[])
    with torch.no_grad(), prune(model, pruner, inputs) as record:
        forward(model, record.inputs)
    assert pruner.checked == [0, 1, 2]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", ["autoprune", "fastv", "pdrop", "sparsevlm"])
def test_keep_all_equals_unpruned(family: str, name: str) -> None:
    model = build_decoder(family)
    inputs = make_inputs(batch=2, text_lengths=(5, 3))
    pruner = build_pruner(name, budget=NUM_VISUAL)
    with prune(model, pruner, inputs) as record:
        pruned = forward(model, record.inputs)
        tokens = greedy(model, record.inputs)
    assert torch.equal(pruned, forward(model, inputs))
    assert torch.equal(tokens, greedy(model, inputs))
    assert record.visual_tokens is not None and bool((record.visual_tokens == NUM_VISUAL).all())


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("drop_after", [0, 2])
def test_dropping_equals_masking(family: str, attn: str, drop_after: int) -> None:
    model = build_decoder(family, layers=4, attn=attn)
    inputs = make_inputs(batch=2, text_lengths=(5, 2))
    pruner, dropped = fixed_drop(inputs, 4, drop_after, keep=6)
    with prune(model, pruner, inputs) as record:
        pruned = forward(model, record.inputs)
        pruned_tokens = greedy(model, record.inputs)
    remove = masked_reference(model, inputs, drop_after, dropped)
    masked = forward(model, inputs)
    masked_tokens = greedy(model, inputs)
    remove()
    text = inputs.layout.text_mask
    assert torch.allclose(pruned[text], masked[text], atol=ATOL)
    assert not torch.allclose(pruned[text], forward(model, inputs)[text], atol=1e-4)  # the test has teeth
    assert torch.equal(pruned_tokens, masked_tokens)
    assert record.visual_tokens is not None
    assert (
        record.visual_tokens[:, drop_after + 1 :].eq(6).all()
        and record.visual_tokens[:, 0].eq(NUM_VISUAL).all()
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_score_block_equals_eager_attentions(family: str) -> None:
    sdpa = build_decoder(family, layers=2)
    eager = build_decoder(family, layers=2, attn="eager")
    inputs = make_inputs(batch=2, text_lengths=(5, 3))
    captured: dict[str, Any] = {}

    def grab(module: nn.Module, args: tuple, kwargs: dict) -> None:
        captured.update(hidden=args[0], kwargs=kwargs)

    handle = compat.decoder_layers(sdpa)[1].register_forward_pre_hook(grab, with_kwargs=True)
    forward(sdpa, inputs)
    handle.remove()
    layout = inputs.layout
    text_rows = torch.stack([torch.nonzero(r).flatten()[-3:] for r in layout.text_mask])  # 3 rows each
    visual_cols = layout.visual_positions()
    with torch.no_grad():
        block = text_visual_attention(
            compat.decoder_layers(sdpa)[1],
            captured["hidden"],
            captured["kwargs"]["position_embeddings"],
            captured["kwargs"]["attention_mask"],
            text_rows,
            visual_cols,
        )
        attn = eager(
            inputs_embeds=inputs.inputs_embeds,
            attention_mask=inputs.attention_mask,
            position_ids=inputs.position_ids,
            output_attentions=True,
        ).attentions[1]
    rows = attn.gather(2, text_rows[:, None, :, None].expand(-1, attn.shape[1], -1, attn.shape[-1]))
    expected = rows.gather(3, visual_cols[:, None, None, :].expand(-1, attn.shape[1], rows.shape[2], -1))
    assert block.shape == (2, 4, 3, NUM_VISUAL)
    assert torch.allclose(block, expected, atol=1e-6)
    assert float(block.sum(-1).max()) < 1.0  # NOT renormalised over the visual columns
    # A padding row (sample 1 is left padded) as a filler query row: zeros, never NaN.
    with torch.no_grad():
        padded = text_visual_attention(
            compat.decoder_layers(sdpa)[1],
            captured["hidden"],
            captured["kwargs"]["position_embeddings"],
            captured["kwargs"]["attention_mask"],
            torch.zeros_like(text_rows),
            visual_cols,
        )
    assert bool(torch.isfinite(padded).all()) and float(padded[1].abs().max()) == 0.0


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("lengths", [(5, 2, 4), (4, 4, 4)], ids=["padded", "unpadded"])
def test_ragged_batch_equals_one_by_one(family: str, lengths: tuple[int, ...]) -> None:
    # Unpadded: the model passes no mask (SDPA is_causal); fillers still need the engine's own mask.
    model = build_decoder(family, layers=4)
    inputs = make_inputs(batch=3, text_lengths=lengths)
    counts = torch.tensor([[16, 10, 4, 4], [16, 6, 6, 2], [16, 16, 12, 1]])
    scores = torch.rand(3, NUM_VISUAL, generator=torch.Generator().manual_seed(3))
    with prune(model, FixedPruner(counts=counts, scores=scores), inputs) as record:
        batch_logits = forward(model, record.inputs)
        batch_tokens = greedy(model, record.inputs)
    assert record.visual_tokens is not None
    assert record.visual_tokens.tolist() == [[16, 16, 10, 4], [16, 16, 6, 6], [16, 16, 16, 12]]
    for b in range(3):
        one = sample(inputs, b)
        pruner = FixedPruner(counts=counts[b : b + 1], scores=scores[b : b + 1])
        with prune(model, pruner, one) as single:
            logits = forward(model, single.inputs)
            tokens = greedy(model, single.inputs)
        real = inputs.attention_mask[b].bool()
        assert torch.allclose(batch_logits[b, real], logits[0], atol=ATOL)
        assert torch.equal(batch_tokens[b], tokens[0])
        assert single.visual_tokens is not None and torch.equal(
            single.visual_tokens[0], record.visual_tokens[b]
        )


def test_record_counts_equal_tensor_sizes_seen_by_layers() -> None:
    model = build_decoder("qwen2", layers=6)
    inputs = make_inputs()
    seen: list[tuple[int, int]] = []

    def observe(module: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = args[0]
        cos = kwargs["position_embeddings"][0]
        assert cos.shape[1] == hidden.shape[1] == kwargs["position_ids"].shape[1]
        seen.append((hidden.shape[1], cos.shape[1]))

    record = _run_observing(model, build_pruner("autoprune", budget=7), inputs, observe)
    assert record.seq_len is not None and record.visual_tokens is not None and record.tokens is not None
    assert [s for s, _ in seen] == record.seq_len.tolist()
    non_visual = inputs.inputs_embeds.shape[1] - NUM_VISUAL
    assert (record.tokens[0] - non_visual).tolist() == record.visual_tokens[0].tolist()
    assert record.seq_len.tolist() == record.tokens[0].tolist()  # B=1: no padding, no fillers
    assert record.flops is not None and record.flops[0] < build_flops_unpruned(model, inputs)


def _run_observing(
    model: nn.Module, pruner: Pruner, inputs: DecoderInputs, observe: Callable
) -> PruningRecord:
    """One pruned forward with ``observe`` as a forward pre-hook (with kwargs) on every decoder layer."""
    with prune(model, pruner, inputs) as record:
        handles = [
            layer.register_forward_pre_hook(observe, with_kwargs=True)
            for layer in compat.decoder_layers(model)
        ]
        try:
            forward(model, record.inputs)
        finally:
            for h in handles:
                h.remove()
    return record


def test_record_counts_equal_a_count_of_what_the_layers_saw_on_a_padded_merging_batch() -> None:
    # Visual and real-token counts are kept on the host (from each row's live visual tokens); check
    # them against the hidden states each layer received, on padded rows with recycled tokens.
    model = build_decoder("llama", layers=6)
    inputs = make_inputs(batch=3, text_lengths=(5, 2, 4))
    seen: list[int] = []

    def observe(module: nn.Module, args: tuple, kwargs: dict) -> None:
        seen.append(args[0].shape[1])

    record = _run_observing(model, build_pruner("autoprune", budget=8, stage0="none"), inputs, observe)
    assert record.visual_tokens is not None and record.tokens is not None and record.merged_tokens is not None
    assert int(record.merged_tokens.sum()) > 0  # the case has teeth: some layer recycles
    real_non_visual = (inputs.attention_mask.bool() & ~inputs.layout.visual_mask.bool()).sum(1)
    for layer, kept in enumerate(record.kept_visual):
        assert kept is not None
        original = (kept >= 0).sum(1)
        assert torch.equal(record.visual_tokens[:, layer], original + record.merged_tokens[:, layer])
        assert torch.equal(record.tokens[:, layer], real_non_visual + record.visual_tokens[:, layer])
    assert record.seq_len is not None and record.seq_len.tolist() == seen


def test_scoring_macs_on_the_host_equal_the_tensor_count() -> None:
    model = build_decoder("qwen2", layers=2)  # GQA: query and key widths differ
    layer = compat.decoder_layers(model)[0]
    rows, keys = [5, 2, 0], [40, 31, 7]
    expected = attention_macs(layer, torch.tensor(rows), torch.tensor(keys)).tolist()
    assert attention_macs_host(layer, rows, keys) == expected


def test_keep_all_schedules_reuse_the_previous_answer() -> None:
    # A new tensor at every layer would cost the engine a copy to the host per layer.
    model = build_decoder("llama", layers=4)
    answers: list[torch.Tensor] = []
    pruner = build_pruner("none")
    original = pruner.schedule

    def spy(view: LayerView) -> torch.Tensor:
        answers.append(original(view))
        return answers[-1]

    pruner.schedule = spy  # type: ignore[method-assign]
    with prune(model, pruner, make_inputs(batch=2)) as record:
        forward(model, record.inputs)
    assert len(answers) == 3 and all(a is answers[0] for a in answers)
    assert answers[0].tolist() == [[NUM_VISUAL] * 4] * 2


def build_flops_unpruned(model: nn.Module, inputs: DecoderInputs) -> int:
    with prune(model, build_pruner("none"), inputs) as record:
        forward(model, record.inputs)
    assert record.flops is not None
    return int(record.flops[0])


def test_contiguous_positions_renumber_survivors_and_generate() -> None:
    model = build_decoder(layers=4)
    inputs = make_inputs(batch=1)
    seen: list[list[int]] = []
    pruner = build_pruner("fastv", budget=8, position_ids="contiguous")
    with prune(model, pruner, inputs) as record:
        handle = compat.decoder_layers(model)[3].register_forward_pre_hook(
            lambda m, a, k: seen.append(k["position_ids"][0].tolist()), with_kwargs=True
        )
        forward(model, record.inputs)
        tokens = greedy(model, record.inputs, steps=3)
        handle.remove()
    n_kept = int(record.seq_len[3]) if record.seq_len is not None else -1
    assert seen[0] == list(range(n_kept)) and n_kept < inputs.inputs_embeds.shape[1]
    assert seen[1] == seen[0]  # generate()'s prefill
    assert seen[2:] == [[n_kept], [n_kept + 1]]  # its decode steps continue the renumbered sequence
    assert tokens.shape == (1, 3)


@pytest.mark.parametrize("family", FAMILIES)
def test_contiguous_preselection_equals_the_shortened_prompt_as_a_fresh_input(family: str) -> None:
    """Pre-decoder selection with contiguous ids: positions 0..n-1, logits == the short prompt alone."""
    model = build_decoder(family, layers=4)
    inputs = make_inputs(batch=3, text_lengths=(5, 2, 4))
    pruner = build_pruner("fastervlm", budget=6, position_ids="contiguous")
    seen: list[torch.Tensor] = []
    with prune(model, pruner, inputs) as record:
        handle = compat.decoder_layers(model)[0].register_forward_pre_hook(
            lambda m, a, k: seen.append(k["position_ids"]), with_kwargs=True
        )
        logits = forward(model, record.inputs)
        handle.remove()
    preselected = record.preselected
    assert record.position_ids == "contiguous" and preselected is not None
    real = record.inputs.attention_mask.bool()
    for b in range(3):
        n = int(real[b].sum())
        assert seen[0][b, real[b]].tolist() == list(range(n))  # 0..n-1 over the kept sequence
        # The same prompt with the dropped visual tokens deleted, run on its own (no padding, no ids).
        drop = torch.zeros(NUM_VISUAL, dtype=torch.bool).scatter(0, preselected[b], True)
        keep = inputs.attention_mask[b].bool().clone()
        keep[inputs.layout.visual_mask[b]] = drop
        with torch.no_grad():
            fresh = model(inputs_embeds=inputs.inputs_embeds[b : b + 1, keep]).logits[0]
        torch.testing.assert_close(logits[b, real[b]], fresh, atol=ATOL, rtol=0)
    # Original ids keep the gaps, and the gaps change the output.
    with prune(model, build_pruner("fastervlm", budget=6, position_ids="original"), inputs) as gapped:
        gapped_logits = forward(model, gapped.inputs)
    assert gapped.position_ids == "original"
    assert float((gapped_logits[real] - logits[real]).abs().max()) > 10 * ATOL


def test_contiguous_ids_stay_contiguous_after_pre_and_in_decoder_drops() -> None:
    """AutoPrune with stage 0 before the decoder: every layer sees ids 0..k-1 over its k tokens."""
    model = build_decoder(layers=6)
    inputs = make_inputs(batch=1)
    pruner = build_pruner("autoprune", budget=6, stage0="before", position_ids="contiguous")
    seen: list[list[int]] = []
    with prune(model, pruner, inputs) as record:
        handles = [
            layer.register_forward_pre_hook(
                lambda m, a, k: seen.append(k["position_ids"][0].tolist()), with_kwargs=True
            )
            for layer in compat.decoder_layers(model)
        ]
        forward(model, record.inputs)
        for handle in handles:
            handle.remove()
    assert record.preselected is not None and record.seq_len is not None
    assert int(record.seq_len[-1]) < int(record.seq_len[0]) < inputs.inputs_embeds.shape[1]
    assert seen == [list(range(int(k))) for k in record.seq_len]


def test_output_restored_to_input_length() -> None:
    model = build_decoder()
    inputs = make_inputs(batch=2, text_lengths=(4, 5))
    with prune(model, build_pruner("fastv", budget=6), inputs) as record:
        logits = forward(model, record.inputs)
    assert logits.shape[:2] == inputs.inputs_embeds.shape[:2]
    assert record.kept_visual[3] is not None and record.kept_visual[3].shape == (
        2,
        int(record.visual_tokens[0, 3]),
    )  # type: ignore[index]


def test_sliding_window_shorter_than_the_prefill_is_refused() -> None:
    torch.manual_seed(0)
    config = Qwen2Config(
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        use_sliding_window=True,
        sliding_window=8,
        max_window_layers=0,
    )
    model = Qwen2ForCausalLM(config).eval()
    inputs = make_inputs()
    with (
        pytest.raises(compat.UnsupportedDecoderError, match="sliding window"),
        prune(model, build_pruner("fastv", budget=10), inputs) as record,
    ):
        forward(model, record.inputs)


def test_wrong_inputs_and_unknown_pruner_errors() -> None:
    model = build_decoder()
    inputs = make_inputs(batch=1)
    other = make_inputs(batch=1, text_lengths=(2,))
    with (
        pytest.raises(ValueError, match="run the decoder on record.inputs"),
        prune(model, build_pruner("fastv", budget=8), inputs),
    ):
        forward(model, other)
    with pytest.raises(ValueError, match=re.escape("known pruners: " + ", ".join(sorted(PRUNERS)))):
        build_pruner("fastvv", budget=8)


@dataclass
class SplitCheckPruner(AutoPrunePruner):
    """AutoPrune checking that the engine's host counts are what the layer really processed."""

    checked: list[int] = field(default_factory=list)

    def split(self, view: LayerView, hand_on: list[int]) -> tuple[list[int], list[int]]:
        kept, merged = super().split(view, hand_on)
        assert view.alive_host == view.alive().tolist()  # host bookkeeping == the device's slots
        stage0 = view.layer_idx == 0 and self.stage0 != "none"
        assert (kept, merged) == split_handed_on(view.alive().tolist(), hand_on, self.recycle and not stage0)
        self.checked.append(view.layer_idx)
        return kept, merged


@pytest.mark.parametrize("stage0", ["reference", "none", "before"])
@pytest.mark.parametrize("budget", [5.5, 8.0, 12.0])
def test_autoprune_splits_what_each_layer_processed(stage0: str, budget: float) -> None:
    model = build_decoder(layers=8)
    inputs = make_inputs(batch=3, text_lengths=(5, 1, 3))
    pruner = SplitCheckPruner(budget=budget, stage0=stage0)  # type: ignore[arg-type]
    with prune(model, pruner, inputs) as record:
        forward(model, record.inputs)
    assert len(pruner.checked) >= 3


@dataclass
class MergeCountPruner(AutoPrunePruner):
    """AutoPrune checking its merges' host counts (or hiding them, to take the engine's sync path)."""

    hide_counts: bool = False
    merges: int = 0

    def merge(self, view: LayerView, scores: torch.Tensor, dropped: torch.Tensor, clusters: torch.Tensor):
        merge = super().merge(view, scores, dropped, clusters)
        assert merge is not None and merge.count_host is not None
        count = merge.valid.sum(1)
        prefix = torch.arange(merge.valid.shape[1]) < count.unsqueeze(1)
        assert merge.count_host == count.tolist() and torch.equal(merge.valid, prefix)
        self.merges += 1
        return replace(merge, count_host=None) if self.hide_counts else merge


@pytest.mark.parametrize("budget", [4.5, 8.0, 11.0])
def test_merge_host_counts_are_the_valid_prefix_and_give_what_reading_valid_gives(budget: float) -> None:
    model = build_decoder(layers=8)
    inputs = make_inputs(batch=3, text_lengths=(5, 1, 3))
    records = []
    for hide in (False, True):
        pruner = MergeCountPruner(budget=budget, hide_counts=hide)
        with prune(model, pruner, inputs) as record:
            out = forward(model, record.inputs)
        assert pruner.merges >= 1
        records.append((record, out))
    (a, out_a), (b, out_b) = records
    assert torch.equal(out_a, out_b)
    for name in ("visual_tokens", "merged_tokens", "tokens", "seq_len"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert all(torch.equal(x, y) for x, y in zip(a.kept_visual, b.kept_visual, strict=True))


@dataclass
class BadSplitPruner(AutoPrunePruner):
    def split(self, view: LayerView, hand_on: list[int]) -> tuple[list[int], list[int]]:
        return [n + 1 for n in hand_on], [0] * len(hand_on)


def test_a_split_that_does_not_sum_to_the_hand_on_count_is_a_one_line_error() -> None:
    model = build_decoder(layers=4)
    inputs = make_inputs(batch=2, text_lengths=(3, 2))
    with (
        pytest.raises(ValueError, match=r"autoprune\.split returned kept .* must be >= 0 and sum to"),
        prune(model, BadSplitPruner(budget=6), inputs) as record,
    ):
        forward(model, record.inputs)


def test_row_gathers_and_scatters_equal_element_wise_gather_and_scatter() -> None:
    gen = torch.Generator().manual_seed(0)
    index = torch.randint(0, 9, (3, 5), generator=gen)
    for x in (torch.randn(3, 9, 4, generator=gen), torch.randn(1, 9, 4, generator=gen).expand(3, -1, -1)):
        expected = x.gather(1, index.unsqueeze(-1).expand(-1, -1, 4))
        assert torch.equal(gather_rows(x, index), expected)
    flags = torch.rand(3, 9, generator=gen) > 0.5
    assert torch.equal(gather_rows(flags, index), flags.gather(1, index))
    target = torch.stack([torch.randperm(9, generator=gen)[:5] for _ in range(3)])
    rows = torch.randn(3, 5, 4, generator=gen)
    expected = torch.zeros(3, 9, 4).scatter_(1, target.unsqueeze(-1).expand(-1, -1, 4), rows)
    assert torch.equal(scatter_rows_(torch.zeros(3, 9, 4), target, rows), expected)


@pytest.mark.parametrize("lengths", [(4, 4, 4), (5, 2, 4)], ids=["full-text", "padded-text"])
def test_slot_index_moved_by_the_drop_equals_recomputing_it(
    monkeypatch: pytest.MonkeyPatch, lengths: tuple[int, ...]
) -> None:
    # The drop hands the next layer its slot index (inverse of its own sort); recomputing it from
    # the slots must give the same record and logits bit for bit (AutoPrune: merges, fillers).
    model = build_decoder(layers=8)
    inputs = make_inputs(batch=3, text_lengths=lengths)
    moved: list[bool] = []
    original = Dropper.moved_index

    def counting(self: Any, *args: Any) -> Any:
        index = original(self, *args)
        moved.append(index is not None)
        return index

    def run() -> tuple[torch.Tensor, Any]:
        with prune(model, build_pruner("autoprune", budget=6.0), inputs) as record:
            logits = forward(model, record.inputs)
        return logits, record

    monkeypatch.setattr(Dropper, "moved_index", counting)
    logits, record = run()
    assert moved and all(moved) == (len(set(lengths)) == 1)
    monkeypatch.setattr(Dropper, "moved_index", lambda self, *args: None)
    recomputed_logits, recomputed = run()
    assert torch.equal(logits, recomputed_logits)
    for name in ("visual_tokens", "merged_tokens", "tokens", "seq_len"):
        assert torch.equal(getattr(record, name), getattr(recomputed, name))
    for a, b in zip(
        record.kept_visual + record.merged_into, recomputed.kept_visual + recomputed.merged_into, strict=True
    ):
        assert (a is None and b is None) or torch.equal(a, b)
