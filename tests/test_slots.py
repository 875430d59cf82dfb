"""A drop worked out by hand: which slots survive, in what order, with which hidden states.

Two rows of ``[prefix, v0, v1, v2, v3, text, text]``; each hidden state is its slot's number, so the
gathered and restored states show where every row came from.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import torch
from torch import nn

from vla_autoprune.models.base import DecoderInputs
from vla_autoprune.models.layout import TokenLayout
from vla_autoprune.pruning.pruner import LayerView
from vla_autoprune.pruning.slots import DropCounts, Dropper, Slots

B, N = 2, 7
VISUAL = torch.tensor([[0, 1, 1, 1, 1, 0, 0]] * B, dtype=torch.bool)
TEXT = torch.tensor([[0, 0, 0, 0, 0, 1, 1]] * B, dtype=torch.bool)


def dropper() -> Dropper:
    return Dropper(
        visual=VISUAL,
        text=TEXT,
        real=torch.ones(B, N, dtype=torch.bool),
        visual_rank=VISUAL.long().cumsum(dim=1) - 1,
        text_width=2,
        text_full=True,
        camera=torch.zeros(B, 4, dtype=torch.long),
        camera_ratios=None,
        merge=lambda *args: None,
    )


def identity_slots() -> Slots:
    flags = torch.zeros(B, N, dtype=torch.bool)
    return Slots(
        src=torch.arange(N).expand(B, N),
        valid=~flags,
        merged=flags,
        identity=True,
        visual_width=4,
        alive=[4, 4],
    )


def view(drops: Dropper, slots: Slots, output: torch.Tensor) -> LayerView:
    layout = TokenLayout(
        visual_mask=VISUAL,
        text_mask=TEXT,
        camera_index=torch.zeros(B, 4, dtype=torch.long),
        patch_index=torch.arange(4).expand(B, 4),
        patch_grid=(2, 2),
    )
    inputs = DecoderInputs(
        inputs_embeds=output,
        attention_mask=torch.ones(B, N, dtype=torch.long),
        position_ids=torch.arange(N).expand(B, N),
        layout=layout,
    )
    cos = torch.ones(B, N, 2)
    return LayerView(
        layer_idx=0,
        num_layers=2,
        num_visual=4,
        layer=nn.Identity(),
        hidden=output,
        output=output,
        position_embeddings=(cos, cos),
        attention_mask=None,
        slot_index=partial(drops.index, slots),
        inputs=inputs,
        schedule=None,
        scratch={},
        stats={},
    )


def test_a_drop_keeps_each_rows_top_tokens_in_order_and_pads_a_short_row_with_a_filler() -> None:
    drops, slots = dropper(), identity_slots()
    output = torch.arange(B * N, dtype=torch.float32).view(B, N, 1)  # row 1 holds 7..13
    layer_view = view(drops, slots, output)
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.2], [0.3, 0.1, 0.8, 0.4]])
    kept = torch.tensor([2, 1])

    counts = DropCounts(kept, torch.zeros(B, dtype=torch.long), [2, 1], [0, 0])
    new, hidden = drops.drop(layer_view, slots, scores, counts)

    # row 0 keeps v1, v2 (slots 2, 3); row 1 keeps v2 (slot 3) and is padded with its next best, v3
    # (slot 4), marked invalid; prefix and text keep their places after them
    assert new.src.tolist() == [[0, 2, 3, 5, 6], [0, 3, 4, 5, 6]]
    assert new.valid.tolist() == [[True] * 5, [True, True, False, True, True]]
    assert not new.merged.any() and not new.identity
    assert new.alive == [2, 1] and new.ragged and new.visual_width == 2
    assert hidden[..., 0].tolist() == [[0, 2, 3, 5, 6], [7, 10, 11, 12, 13]]
    # the index the drop moved equals the one computed from the new slots
    assert new.index is not None
    fresh = drops.index(replace(new, index=None))
    for name in ("visual_slots", "visual_valid", "visual_index", "text_slots", "text_valid"):
        assert torch.equal(getattr(new.index, name), getattr(fresh, name)), name
    assert fresh.visual_slots.tolist() == [[1, 2], [1, 2]] and fresh.visual_index.tolist() == [[1, 2], [2, 3]]
    assert fresh.text_slots.tolist() == [[3, 4], [3, 4]]

    # after the last layer, the output returns to the input positions: dropped ones and fillers zero
    restored = drops.restore(new, hidden)
    assert restored[..., 0].tolist() == [[0, 0, 2, 3, 0, 5, 6], [7, 0, 0, 10, 0, 12, 13]]
