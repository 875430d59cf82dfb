"""End to end: samples/s of the evaluate loop (``run_split``) with ``none`` and ``autoprune``.

The library's own loop runs the bundled model (a :class:`~planners.vla.VLAPlanner`) on the
synthetic val split, records and kept-token chunks written to a temporary folder, open-loop metrics
only (the PDM score's cost does not depend on the pruner). Process CPU time (on a GPU: wall time,
synchronising at each phase boundary) is split into phases by module hooks and a timing dataset
wrapper, all in one process run:

- ``data``: the dataset's ``__getitem__`` (image decoding, resizing; ``num_workers=0``);
- ``vision``: the vision tower and projector forwards;
- ``decoder``: the decoder layers' own work (the base model's forward minus ``engine``);
- ``engine``: the pruning engine's hooks inside the decoder: from each layer's call to its
  ``input_layernorm`` (the engine's pre-hook) and from its ``mlp`` output to the next layer's
  call or the final norm (the engine's forward hook);
- ``other``: the rest (prompt building, ``prune()`` set-up and record finishing, metrics, writing).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from benchmarks.common import make_pruner
from vla_autoprune import compat

PHASES = ("data", "vision", "decoder", "engine", "other")


def clock(device: torch.device) -> Callable[[], float]:
    """Process CPU time on the CPU; wall time after a synchronisation on a GPU."""
    if device.type != "cuda":
        return time.process_time

    def synced() -> float:
        torch.cuda.synchronize(device)
        return time.perf_counter()

    return synced


class TimedDataset(Dataset):
    """A dataset whose ``__getitem__`` adds its process time to ``seconds``."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        self.seconds = 0.0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        start = time.process_time()
        item = self.dataset[index]
        self.seconds += time.process_time() - start
        return item

    def __getattr__(self, name: str) -> Any:  # the loop reads e.g. dataroot and maps from it
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


class PhaseTimer:
    """Process seconds per phase, from forward (pre-)hooks on the model's modules."""

    def __init__(self, now: Callable[[], float]) -> None:
        self.now = now
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self._open: dict[str, float] = {}

    def _start(self, key: str) -> None:
        self._open[key] = self.now()

    def _stop(self, key: str, phase: str) -> None:
        start = self._open.pop(key, None)
        if start is not None:
            self.seconds[phase] += self.now() - start

    @contextmanager
    def hooks(self, model: Any) -> Iterator[None]:
        """Install the timing hooks on ``model`` (a DrivingVLA) while the block runs."""
        handles = []

        def span(module: nn.Module, key: str, phase: str, prepend: bool = False) -> None:
            handles.append(module.register_forward_pre_hook(lambda *_: self._start(key), prepend=prepend))
            handles.append(module.register_forward_hook(lambda *_: self._stop(key, phase)))

        for name in ("vision_tower", "projector"):
            span(getattr(model, name), name, "vision")
        base: Any = model.language_model.model
        span(base, "base", "decoder", prepend=True)
        layers = compat.decoder_layers(base)
        layer: Any  # transformers decoder layers: their submodules are attributes
        for layer in layers:
            # engine pre-hook: from the layer's call (before the engine's pre-hook) to its first module
            handles.append(layer.register_forward_pre_hook(self._layer_start, prepend=True))
            handles.append(
                layer.input_layernorm.register_forward_pre_hook(lambda *_: self._stop("pre", "engine"))
            )
            # engine forward hook: from the layer's MLP output to the next layer's call (or the norm)
            handles.append(layer.mlp.register_forward_hook(lambda *_: self._start("post")))
        handles.append(base.norm.register_forward_pre_hook(lambda *_: self._stop("post", "engine")))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _layer_start(self, *_: Any) -> None:
        self._stop("post", "engine")
        self._start("pre")


def measure(
    pruners: tuple[str, ...],
    fraction: float,
    rounds: int,
    batch_size: int,
    limit: int | None,
    device: torch.device | None = None,
) -> list[dict[str, Any]]:
    """One row per pruner: samples/s of ``run_split`` and the share of each phase (medians of rounds)."""
    from data_tools.embedded import synthetic_dataset
    from planners.vla import VLAPlanner
    from vla_autoprune.models import load
    from vla_autoprune.models.loading import DEFAULT_MODEL
    from vla_autoprune.pipeline.loop import run_split

    dataset = TimedDataset(
        synthetic_dataset("val", image_size=(192, 192), scenes={"val": 2}, samples_per_scene=8)
    )
    indices = list(range(len(dataset) if limit is None else min(limit, len(dataset))))
    device = torch.device("cpu") if device is None else device
    now = clock(device)
    model: Any = load(DEFAULT_MODEL, device=device)
    layers = len(compat.decoder_layers(model.decoder))
    num_visual = int(model.num_patches) * len(dataset[0]["cameras"])
    planners = {}
    for name in pruners:
        pruner, budget = make_pruner(
            name, None if name == "none" else fraction, layers, num_visual, DEFAULT_MODEL
        )
        planners[name] = (VLAPlanner(model, pruner, device=device), budget)
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in pruners}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(rounds + 1):  # round 0 warms up
            for name, (planner, _) in planners.items():
                timer = PhaseTimer(now)
                dataset.seconds = 0.0
                with timer.hooks(model):
                    start = now()
                    run_split(
                        planner,
                        dataset,
                        indices,
                        f"{tmp}/{name}-{round_}",
                        batch_size=batch_size,
                        resume=False,
                        scores=("open_loop",),
                    )
                    total = now() - start
                if round_:
                    phases = timer.seconds | {"data": dataset.seconds}
                    decoder = phases["decoder"] - phases["engine"]
                    phases["decoder"] = decoder
                    phases["other"] = total - sum(v for k, v in phases.items() if k != "other")
                    samples[name].append(phases | {"total": total})
    rows = []
    for name, (planner, budget) in planners.items():
        median = {key: statistics.median(s[key] for s in samples[name]) for key in (*PHASES, "total")}
        row: dict[str, Any] = {
            "pruner": planner.pruner.label,
            "budget": budget,
            "samples": len(indices),
            "batch_size": batch_size,
            "samples_per_s": round(len(indices) / median["total"], 2),
            "total_ms": round(1000 * median["total"], 1),
        }
        for phase in PHASES:
            row[f"{phase}_ms"] = round(1000 * median[phase], 1)
        for phase in PHASES:
            row[f"{phase}_share"] = round(median[phase] / median["total"], 3)
        rows.append(row)
    return rows
