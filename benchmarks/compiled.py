"""``torch.compile`` with the pruning engine: does it work, how close are the outputs, is it faster?

Compiles every decoder layer in place (``nn.Module.compile(dynamic=True)``), the form that can work
while token counts change from layer to layer (a whole-prefill graph cannot: a pruning layer sizes
its output from the kept width). The engine's hooks stay attached; dynamo traces them with the
layer and falls back to eager where their shapes keep changing. Measured on the subject's own
layers, so run it last: the subject stays compiled.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import torch

from benchmarks.common import Subject, interleaved, make_pruner, pruned_run
from vla_autoprune import compat
from vla_autoprune.pruning import prune


def _hidden(subject: Subject, pruner: Any) -> tuple[torch.Tensor, list[int]]:
    """Final hidden states (float32) and per-layer token counts of one pruned prefill."""
    with torch.inference_mode(), prune(subject.decoder, pruner, subject.inputs) as record:
        hidden = subject.forward(record.inputs)
    counts = [] if record.seq_len is None else [int(n) for n in record.seq_len]
    return hidden.float().clone(), counts


def measure(subject: Subject, rounds: int, names: tuple[str, ...], fraction: float) -> list[dict[str, Any]]:
    """Rows (pruner, eager ms, compiled ms, speedup, max |difference|, same token counts, compile
    seconds) or, where compiling fails, the error in one line."""
    pruners = {name: make_pruner(name, None if name == "none" else fraction, subject.num_layers,
                                 subject.num_visual, subject.model) for name in names}  # fmt: skip
    eager = {name: _hidden(subject, p) for name, (p, _) in pruners.items()}
    eager_s = interleaved(
        {n: partial(pruned_run, subject, p) for n, (p, _) in pruners.items()}, rounds, subject.device
    )
    for layer in compat.decoder_layers(subject.base):
        layer.compile(dynamic=True)
    rows = []
    for name, (pruner, budget) in pruners.items():
        row: dict[str, Any] = {"pruner": pruner.label, "budget": budget}
        try:
            start = time.perf_counter()
            hidden, counts = _hidden(subject, pruner)
            row["first_call_s"] = round(time.perf_counter() - start, 1)
            ref, ref_counts = eager[name]
            row["same_token_counts"] = counts == ref_counts
            # As text: the report prints floats to 3 decimals, and these differences are ~1e-6.
            row["max_abs_diff"] = (
                f"{float((hidden - ref).abs().max()):.1e}" if hidden.shape == ref.shape else None
            )
        except Exception as err:  # what fails is the finding: report it, measure the rest
            row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
        rows.append(row)
    ok = [n for n, r in zip(pruners, rows, strict=True) if "error" not in r]
    compiled_s = interleaved(
        {n: partial(pruned_run, subject, pruners[n][0]) for n in ok}, rounds, subject.device
    )
    for name, row in zip(pruners, rows, strict=True):
        row["eager_ms"] = round(1000 * eager_s[name], 3)
        if name in ok:
            row["compiled_ms"] = round(1000 * compiled_s[name], 3)
            row["speedup"] = round(row["eager_ms"] / row["compiled_ms"], 3)
    torch._dynamo.reset()
    return rows
