"""Where the engine reads device values on the host (each read is a stream sync on a GPU).

The engine's docstring promises: none in a decoder layer, pruning or merging or not (the kept
width and the merge sizes are host ints: ``Pruner.split``, ``Merge.count_host``), except one copy
of each new schedule. Counted here on the CPU with a ``TorchFunctionMode`` that sees every ``.tolist()``,
``.item()``, ``bool()``, ``int()``, ``.numpy()``, ... a hook makes, attributed to the layer whose
hooks are running (the last layer, which works out the record, is not checked).
"""

from __future__ import annotations

from collections import Counter
from functools import partial
from typing import Any

import pytest
import torch
from conftest import NUM_VISUAL, build_decoder, forward, make_inputs
from torch.overrides import TorchFunctionMode

from vla_autoprune.devices import to_host
from vla_autoprune.pruning import LayerView, Pruner, build_pruner, prune
from vla_autoprune.pruning import record as record_module

pytestmark = pytest.mark.usefixtures("one_thread")

_READS = {"tolist", "item", "__bool__", "__int__", "__float__", "__index__", "numpy", "equal", "nonzero"}


class _HostReads(TorchFunctionMode):
    """Counts host reads of tensor values per decoder layer (``layer`` is set by pre-hooks)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = -1
        self.reads: Counter[int] = Counter()

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if getattr(func, "__name__", "") in _READS:
            self.reads[self.layer] += 1
        return func(*args, **(kwargs or {}))


def _reads_per_layer(
    pruner: Pruner, layers: int = 6, batch: int = 3, num_visual: int = NUM_VISUAL
) -> tuple[list[int], list[int]]:
    """Host reads in each layer's hooks (layer ``l``'s post-hook counts for ``l``) and the seq lengths."""
    model = build_decoder(layers=layers)
    inputs = make_inputs(batch=batch, text_lengths=(4,) * batch, num_visual=num_visual)
    counter = _HostReads()
    decoder_layers = model.model.layers

    def enter(i: int) -> Any:
        def hook(*_: Any) -> None:
            counter.layer = i

        return hook

    handles = [layer.register_forward_pre_hook(enter(i)) for i, layer in enumerate(decoder_layers)]
    try:
        with prune(model, pruner, inputs) as record:
            with counter:
                forward(model, record.inputs)
    finally:
        for handle in handles:
            handle.remove()
    assert record.seq_len is not None
    return [counter.reads[i] for i in range(layers)], record.seq_len.tolist()


class _OneDrop(Pruner):
    """Hands on all ``V`` visual tokens but after layer 2, where it keeps half (ranked by text attention)."""

    name = "one_drop"

    def schedule(self, view: LayerView) -> torch.Tensor:
        if view.schedule is not None:
            return view.schedule
        counts = torch.full((view.batch_size, view.num_layers), view.num_visual, dtype=torch.long)
        counts[:, 2:] = view.num_visual // 2
        return counts

    def score(self, view: LayerView) -> torch.Tensor:
        return view.text_attention()


def test_only_the_schedule_copy_reads_device_values() -> None:
    reads, seq_len = _reads_per_layer(_OneDrop())
    assert seq_len[2] > seq_len[3] == seq_len[4]  # layer 2 pruned, 3 and 4 handed everything on
    assert reads[0] == 1  # the schedule's one copy to the host
    assert reads[1:5] == [0, 0, 0, 0]  # the pruning layer 2 included: its kept width is a host int


def test_autoprune_reads_nothing_in_the_layers_after_its_schedule() -> None:
    # After the reference layer (1: MI and the schedule, solved on the host), layers that prune
    # and merge read no device value: their split and merge sizes are host ints.
    pruner = build_pruner("autoprune", budget=20.0)
    reads, seq_len = _reads_per_layer(pruner, layers=8, num_visual=48)
    later = range(2, len(seq_len) - 1)
    assert any(seq_len[i + 1] < seq_len[i] for i in later), seq_len
    assert [reads[i] for i in later] == [0] * len(later), (reads, seq_len)


@pytest.mark.parametrize("name", ["sparsevlm", "fastv", "pdrop", "random"])
def test_no_pruner_reads_device_values_after_its_schedule(name: str) -> None:
    """Static schedules are copied once (layer 0); no later layer reads, whatever it drops or merges."""
    reads, seq_len = _reads_per_layer(build_pruner(name, budget=20.0), layers=8, num_visual=48)
    assert any(seq_len[i + 1] < seq_len[i] for i in range(len(seq_len) - 1)), seq_len
    assert reads[1:-1] == [0] * (len(reads) - 2), (name, reads, seq_len)


def test_the_record_is_the_same_when_its_host_copies_are_packed(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU the record's tensors leave the device in one packed copy (:func:`to_host`); forced
    here on the CPU, merges and ragged rows included, it must give the record the plain copies give."""
    model = build_decoder(layers=8)
    inputs = make_inputs(batch=3, text_lengths=(4, 2, 3), num_visual=48)

    def record() -> Any:
        with prune(model, build_pruner("autoprune", budget=20.0), inputs) as rec:
            forward(model, rec.inputs)
        return rec

    plain = record()
    monkeypatch.setattr(record_module, "to_host", partial(to_host, packed=True))
    packed = record()
    assert plain.merged_tokens is not None and int(plain.merged_tokens.sum()) > 0  # merges ran
    for name in ("visual_tokens", "merged_tokens", "tokens", "seq_len", "schedule", "camera_tokens", "flops"):
        assert torch.equal(getattr(plain, name), getattr(packed, name)), name
    for per_layer in ("kept_visual", "merged_into"):
        for a, b in zip(getattr(plain, per_layer), getattr(packed, per_layer), strict=True):
            assert (a is None and b is None) or torch.equal(a, b), per_layer
    assert plain.stats.keys() == packed.stats.keys() and all(
        torch.equal(plain.stats[k], packed.stats[k]) for k in plain.stats
    )
