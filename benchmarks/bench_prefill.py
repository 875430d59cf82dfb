"""Prefill speed (and CUDA peak memory) of each pruner relative to ``none``, measured in one run.

    python benchmarks/bench_prefill.py [--model tiny-drive-vla] [--budget 96] [--batch-size 8]
                                       [--repeats 5] [--device auto] [--out benchmarks/results]

Every pruner runs on the same batch, interleaved round-robin over ``--repeats`` rounds so drift in
machine load affects all of them alike; the report gives median wall time per forward, its ratio to
``none``, the decoder MACs the record says ran and their ratio, and (CUDA only) peak memory.
Targets belong here as ratios, never as timed unit tests.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from vla_autoprune.data.synthetic import synthetic_dataset

from vla_autoprune.data import collate
from vla_autoprune.devices import batch_to, resolve_device
from vla_autoprune.models import load
from vla_autoprune.pipeline.table import to_markdown
from vla_autoprune.pruning import PRUNERS, build_pruner, run_pruned

logger = logging.getLogger("bench_prefill")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    model: Any, batch: dict[str, Any], names: list[str], budget: float, repeats: int, device: torch.device
) -> list[dict[str, Any]]:
    """Median seconds per pruned forward, MACs and peak memory for each pruner name."""
    pruners = {n: build_pruner(n, **({} if n == "none" else {"budget": budget})) for n in names}
    inputs = model.prepare(batch)
    times: dict[str, list[float]] = {n: [] for n in names}
    macs: dict[str, int] = {}
    peak: dict[str, float | None] = {}
    for name, pruner in pruners.items():  # warm-up (and the record of what ran)
        _, record = run_pruned(model, inputs, pruner)
        macs[name] = int(record.flops.sum()) if record.flops is not None else 0
    for _ in range(repeats):
        for name, pruner in pruners.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            _sync(device)
            start = time.perf_counter()
            run_pruned(model, inputs, pruner)
            _sync(device)
            times[name].append(time.perf_counter() - start)
            peak[name] = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    base_t, base_m = statistics.median(times["none"]), macs["none"]
    return [
        {
            "pruner": n,
            "budget": None if n == "none" else budget,
            "median_ms": 1000 * statistics.median(times[n]),
            "time_ratio_vs_none": statistics.median(times[n]) / base_t,
            "decoder_MACs": macs[n],
            "MACs_ratio_vs_none": macs[n] / base_m,
            "peak_MiB": peak[n],
        }
        for n in names
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="tiny-drive-vla")
    parser.add_argument("--budget", type=float, default=96)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--pruners", default=",".join(PRUNERS))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = resolve_device(args.device)
    dataset = synthetic_dataset("val", image_size=(400, 225), scenes=8, samples_per_scene=16)
    batch = collate([dataset[i] for i in range(min(args.batch_size, len(dataset)))])
    batch = batch_to(batch, device)
    model = load(args.model, device=device)
    names = ["none", *[n for n in args.pruners.split(",") if n != "none"]]
    rows = measure(model, batch, names, args.budget, args.repeats, device)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {
        "device": str(device),
        "torch": torch.__version__,
        "batch_size": args.batch_size,
        "model": args.model,
    }
    (args.out / "prefill.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    logger.info("%s\n%s", meta, to_markdown(rows))


if __name__ == "__main__":
    main()
