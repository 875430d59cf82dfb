"""Scaling: time and memory as ``V`` grows (6 cameras x {64, 144, 256, 576} tokens) at budget V/4.

For ``none``, ``fastv`` and ``autoprune``: prefill time, the ideal's time (same per-layer counts,
no engine), peak memory, and a least-squares fit of the engine's cost (pruned - ideal) as
``a + b V``.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any

import numpy as np
import torch

from benchmarks.common import (
    Shape,
    ideal_run,
    interleaved,
    make_pruner,
    peak_bytes,
    pruned_run,
    shaped_subject,
)

SCALING_PRUNERS = ("none", "fastv", "autoprune")
SCALING_FRACTION = 1 / 4


def measure(
    shape: Shape,
    per_camera: tuple[int, ...],
    batch: int,
    rounds: int,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows per (V, pruner), and the overhead fit per pruner."""
    rows = []
    for p in per_camera:
        subject = shaped_subject(dataclasses.replace(shape, per_camera=p), batch, device, dtype)
        fns: dict[str, Any] = {}
        info: dict[str, dict[str, Any]] = {}
        for name in SCALING_PRUNERS:
            fraction = None if name == "none" else SCALING_FRACTION
            pruner, budget = make_pruner(
                name, fraction, subject.num_layers, subject.num_visual, subject.model
            )
            record = pruned_run(subject, pruner)
            assert record.seq_len is not None
            seq_len = [int(n) for n in record.seq_len]
            fns[name] = partial(pruned_run, subject, pruner)
            fns[f"ideal:{name}"] = partial(ideal_run, subject, seq_len)
            info[name] = {
                "budget": budget,
                "peak_MiB": round(peak_bytes(partial(pruned_run, subject, pruner), device) / 2**20, 2),
            }
        times = interleaved(fns, rounds, device)
        for name in SCALING_PRUNERS:
            rows.append(
                {
                    "num_visual": subject.num_visual,
                    "pruner": name,
                    **info[name],
                    "ms": round(1000 * times[name], 3),
                    "ideal_ms": round(1000 * times[f"ideal:{name}"], 3),
                    "engine_ms": round(1000 * (times[name] - times[f"ideal:{name}"]), 3),
                    "speedup_vs_none": round(times["none"] / times[name], 3),
                }
            )
    fits = []
    for name in SCALING_PRUNERS:
        mine = [r for r in rows if r["pruner"] == name]
        v = np.array([r["num_visual"] for r in mine], dtype=np.float64)
        cost = np.array([r["engine_ms"] for r in mine], dtype=np.float64)
        if len(v) >= 2:
            slope, intercept = np.polyfit(v, cost, 1)
            fits.append(
                {
                    "pruner": name,
                    "engine_ms_fit": f"{intercept:.3f} ms + {1000 * slope:.3f} us x V",
                    "intercept_ms": round(float(intercept), 4),
                    "per_token_us": round(float(1000 * slope), 4),
                }
            )
    return rows, fits
