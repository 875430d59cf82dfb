"""Engine overhead: time outside the decoder layers' own work, as a share of the pruned prefill.

Overhead = pruned prefill - ideal (the same per-layer token counts through the plain stack): the
scoring, MI, schedule solve, top-k, gather, merging, mask building and Python of the engine. One
pruned prefill is profiled with ``torch.profiler``; the top entries by self time are kept, the
aten ops issued from Python are counted for the pruned prefill and for the ideal, and the engine's
own ranges (:mod:`vla_autoprune.profiling`) split its time into stages: scoring, schedule,
selection, merging, bookkeeping, ...
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from benchmarks.common import (
    Subject,
    host_syncs,
    ideal_run,
    interleaved_rounds,
    make_pruner,
    medians,
    pruned_run,
    round_range,
)
from vla_autoprune.profiling import STAGE_PREFIX, STAGES

PROFILE_TOP = 15


def measure(
    subject: Subject, rounds: int, names: tuple[str, ...], fraction: float
) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]], dict[str, list[dict[str, Any]]]]:
    """Rows (pruner, pruned ms, ideal ms, overhead share), each pruner's profiler top entries and its
    engine stages (:func:`stage_times`)."""
    rows, profiles, stages = [], {}, {}
    for name in names:
        pruner, budget = make_pruner(name, fraction, subject.num_layers, subject.num_visual, subject.model)
        record = pruned_run(subject, pruner)
        assert record.seq_len is not None
        seq_len = [int(n) for n in record.seq_len]
        per_round = interleaved_rounds(
            {
                "pruned": partial(pruned_run, subject, pruner),
                "ideal": partial(ideal_run, subject, seq_len),
            },
            rounds,
            subject.device,
        )
        times = medians(per_round)
        share = (times["pruned"] - times["ideal"]) / times["pruned"]
        # the same share in each round (pruned and ideal timed back to back): its spread
        shares = [(p - i) / p for p, i in zip(per_round["pruned"], per_round["ideal"], strict=True)]
        prof = _profiled(partial(pruned_run, subject, pruner), subject.device)
        top, ops = profile_top(prof, subject.device)
        stages[pruner.label] = stage_times(prof)
        ideal_ops = top_level_ops(_profiled(partial(ideal_run, subject, seq_len), subject.device))
        rows.append(
            {
                "pruner": pruner.label,
                "budget": budget,
                "pruned_ms": round(1000 * times["pruned"], 3),
                "ideal_ms": round(1000 * times["ideal"], 3),
                "overhead_ms": round(1000 * (times["pruned"] - times["ideal"]), 3),
                "overhead_share": round(share, 4),
                **round_range("overhead_share", shares, digits=4),
                "aten_ops": ops,
                "ideal_aten_ops": ideal_ops,
            }
        )
        syncs = host_syncs(partial(pruned_run, subject, pruner), subject.device)
        if syncs is not None:  # on a GPU: how often one prefill made the host wait
            rows[-1]["host_syncs"] = syncs
        profiles[pruner.label] = top
    return rows, profiles, stages


def _profiled(fn: Callable[[], Any], device: torch.device) -> Any:
    """The torch.profiler result of one call of ``fn`` (CPU, plus CUDA on a GPU)."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
    return prof


def top_level_ops(prof: Any) -> int:
    """How many aten ops a profiled call issued from Python (ops called inside another aten op not
    counted): on small shapes each costs microseconds of dispatch whatever its size, so the count
    explains a fixed overhead that timing alone does not."""
    return sum(
        1
        for e in prof.events()
        if e.name.startswith("aten::")
        and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))
    )


def profile_top(prof: Any, device: torch.device) -> tuple[list[dict[str, Any]], int]:
    """Top profiler entries (self time) of one profiled pruned prefill, and its top-level aten op count.

    On the CPU: every entry by self CPU time. On a GPU: the host-side ops by the device time of the
    kernels each launched itself (an op's ``self_device_time_total``), as shares of all kernels'
    time; the kernels' own entries and the GPU copies of the ``vla_autoprune.*`` ranges are left out,
    since each repeats time an op already holds (:func:`device_entries`).
    """
    cuda = device.type == "cuda"
    averages = list(prof.key_averages())
    if cuda:
        entries, total = device_entries(averages)
    else:
        entries = [(e.key, e.count, float(e.self_cpu_time_total)) for e in averages]
        total = sum(t for _, _, t in entries)
    top = [
        {"op": key, "calls": count, "self_us": round(t, 1), "share": round(t / (total or 1), 4)}
        for key, count, t in sorted(entries, key=lambda entry: entry[2], reverse=True)[:PROFILE_TOP]
    ]
    torch.cuda.empty_cache() if cuda else None
    return top, top_level_ops(prof)


def device_entries(averages: list[Any]) -> tuple[list[tuple[str, int, float]], float]:
    """``(key, calls, self device us)`` of the host-side ops, and all kernels' device time (us).

    ``averages``: ``prof.key_averages()`` of a CUDA-profiled call. Kineto lists each kernel twice:
    as its own device entry and inside the ``self_device_time_total`` of the op that launched it;
    user ranges also get a device-side copy spanning their whole time. The total is torch's own
    table's (device entries that are not user annotations); the entries are the ops, so each
    kernel is counted once, under the op that launched it.
    """
    total = sum(
        float(e.self_device_time_total)
        for e in averages
        if e.device_type != DeviceType.CPU and not e.is_user_annotation
    )
    ops = [
        (e.key, e.count, float(e.self_device_time_total))
        for e in averages
        if e.device_type == DeviceType.CPU and not e.is_user_annotation and not e.key.startswith(STAGE_PREFIX)
    ]
    return ops, total


def stage_times(prof: Any) -> list[dict[str, Any]]:
    """The engine's stages in one profiled prefill: per stage its ranges (``calls``) and their
    exclusive CPU time in ms (a range's time less that of the stage ranges nested in it, e.g. the
    merge inside a selection), with each stage's share of their sum. CPU time under the profiler,
    which inflates small ops: read the shares, not the milliseconds. On a GPU it is the time the
    host spends issuing the stage (the engine's cost while the host paces the device)."""
    exclusive = dict.fromkeys(STAGES, 0.0)
    calls = dict.fromkeys(STAGES, 0)

    def nested(event: Any) -> float:
        """CPU time of the outermost stage ranges below ``event``."""
        return sum(
            child.cpu_time_total if child.name.startswith(STAGE_PREFIX) else nested(child)
            for child in event.cpu_children
        )

    for event in prof.events():
        # CPU ranges only: on a GPU each range also has a device-side copy of the same name
        if event.name.startswith(STAGE_PREFIX) and event.device_type == DeviceType.CPU:
            name = event.name[len(STAGE_PREFIX) :]
            exclusive[name] += event.cpu_time_total - nested(event)
            calls[name] += 1
    total = sum(exclusive.values()) or 1.0
    return [
        {
            "stage": name,
            "calls": calls[name],
            "cpu_ms": round(exclusive[name] / 1000, 3),
            "share": round(exclusive[name] / total, 4),
        }
        for name in STAGES
        if calls[name]
    ]
