"""Scoring memory: the engine's text-row scoring against eager attention with ``output_attentions``.

Three prefills of the same model on the same inputs: plain SDPA (the baseline), SDPA plus the
engine's scoring path at every layer (text rows x all columns, from the layer's own input, what a
pruner computes), and eager attention with ``output_attentions=True`` (every layer's full
``N x N`` maps, what the reference implementations read). Peak memory is what each prefill
allocates on top of the model and inputs (CUDA: ``max_memory_allocated``; CPU: every new tensor
storage tracked through a dispatch mode).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch

from benchmarks.common import Subject, interleaved, peak_bytes
from vla_autoprune import compat
from vla_autoprune.pruning.scores import text_visual_attention


def _scoring_prefill(subject: Subject) -> None:
    """SDPA prefill with the text-row scores computed (and kept, as a pruner would) at every layer."""
    inputs = subject.inputs
    layout = inputs.layout
    text_rows = torch.stack([torch.nonzero(r).flatten() for r in layout.text_mask])
    visual_cols = layout.visual_positions()
    kept: list[torch.Tensor] = []

    def hook(layer: Any, args: tuple, kwargs: dict, output: Any) -> None:
        hidden = compat.layer_hidden(args, kwargs)
        attn = text_visual_attention(
            layer, hidden, kwargs[compat.KW_POS_EMB], kwargs.get(compat.KW_MASK), text_rows, visual_cols
        )
        kept.append(attn.mean(dim=(1, 2)))  # [B, V] scores

    handles = [
        layer.register_forward_hook(hook, with_kwargs=True) for layer in compat.decoder_layers(subject.base)
    ]
    try:
        with torch.inference_mode():
            subject.forward(inputs)
    finally:
        for handle in handles:
            handle.remove()


def _eager_prefill(subject: Subject) -> None:
    inputs = subject.inputs
    with torch.inference_mode():
        out = subject.base(
            inputs_embeds=inputs.inputs_embeds,
            attention_mask=inputs.attention_mask,
            position_ids=inputs.position_ids,
            use_cache=False,
            output_attentions=True,
        )
    assert out.attentions is not None and len(out.attentions) == subject.num_layers


def _plain_prefill(subject: Subject) -> None:
    with torch.inference_mode():
        subject.forward(subject.inputs)


def measure(subject: Subject, rounds: int) -> list[dict[str, Any]]:
    """Peak bytes and median time of the three prefills, and the scoring/eager ratios."""
    model = subject.decoder
    previous = compat.decoder_config(model)._attn_implementation
    results: dict[str, dict[str, float]] = {}
    for name, fn, attn in (
        ("plain sdpa", _plain_prefill, previous),
        ("sdpa + text-row scoring", _scoring_prefill, previous),
        ("eager + output_attentions", _eager_prefill, "eager"),
    ):
        model.set_attn_implementation(attn)
        try:
            # timed first: its warm-up leaves lazy one-off setup (cuBLAS handles) out of the peak
            seconds = interleaved({name: partial(fn, subject)}, rounds, subject.device)[name]
            peak = peak_bytes(partial(fn, subject), subject.device)
        finally:
            model.set_attn_implementation(previous)
        results[name] = {"peak_bytes": peak, "seconds": seconds}
    base = results["plain sdpa"]
    rows = []
    for name, r in results.items():
        rows.append(
            {
                "prefill": name,
                "peak_MiB": round(r["peak_bytes"] / 2**20, 2),
                "extra_over_plain_MiB": round((r["peak_bytes"] - base["peak_bytes"]) / 2**20, 2),
                "ms": round(1000 * r["seconds"], 3),
            }
        )
    scoring, eager = results["sdpa + text-row scoring"], results["eager + output_attentions"]
    rows.append(
        {
            "prefill": "ratio scoring / eager",
            "peak_MiB": round(scoring["peak_bytes"] / max(eager["peak_bytes"], 1), 4),
            "extra_over_plain_MiB": round(
                (scoring["peak_bytes"] - base["peak_bytes"])
                / max(eager["peak_bytes"] - base["peak_bytes"], 1),
                4,
            ),
            "ms": round(scoring["seconds"] / eager["seconds"], 4),
        }
    )
    return rows
