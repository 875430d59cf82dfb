"""Shared pieces of the benchmarks: subjects (model + inputs), timing, the ideal stack, peak memory."""

from __future__ import annotations

import functools
import json
import os
import platform
import statistics
import subprocess
import time
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from transformers import LlamaConfig, LlamaForCausalLM

from vla_autoprune import compat
from vla_autoprune.models.base import DecoderInputs
from vla_autoprune.models.layout import TokenLayout
from vla_autoprune.models.loading import DEFAULT_MODEL
from vla_autoprune.pruning import build_pruner, prune
from vla_autoprune.pruning.calibration import calibrate_pruner
from vla_autoprune.pruning.flops import decoder_flops_from_config
from vla_autoprune.pruning.pruner import Pruner
from vla_autoprune.pruning.record import PruningRecord
from vla_autoprune.run_files import atomic_write_text

# The pruners of issue 14, each at budgets {V, V/2, V/4, about V/9} (V/9: 64 of 576 on LLaVA).
PRUNER_NAMES = ("fastv", "pdrop", "sparsevlm", "fastervlm", "random", "autoprune")
BUDGET_FRACTIONS = {"V": 1.0, "V/2": 1 / 2, "V/4": 1 / 4, "V/9": 1 / 9}


@dataclass
class Shape:
    """A random Llama-style decoder and its prompt: ``prefix`` tokens, ``cameras x per_camera``
    visual tokens, ``text`` query tokens (LLaVA-1.5-7B: 32 x 4096, 32 heads, MLP 11008, 576 + ~60)."""

    name: str
    layers: int
    hidden: int
    heads: int
    intermediate: int
    cameras: int
    per_camera: int
    text: int
    prefix: int = 35
    kv_heads: int | None = None
    note: str = ""

    @property
    def num_visual(self) -> int:
        return self.cameras * self.per_camera

    def describe(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()} | {"num_visual": self.num_visual}


@dataclass
class Subject:
    """What a benchmark runs: the module ``prune`` hooks, the inputs and the decoder forward."""

    name: str
    decoder: Any  # what prune() hooks (the causal LM)
    base: Any  # the layer stack's owner (LlamaModel): rotary, norm, layers
    inputs: DecoderInputs
    device: torch.device
    config: dict[str, Any] = field(default_factory=dict)
    model: str | None = None  # a bundled model's name: its pruner calibration applies (make_pruner)

    @property
    def num_layers(self) -> int:
        return len(compat.decoder_layers(self.base))

    @property
    def num_visual(self) -> int:
        return self.inputs.layout.num_visual

    @property
    def batch(self) -> int:
        return int(self.inputs.inputs_embeds.shape[0])

    @functools.cached_property
    def padded(self) -> bool:
        """Whether some row has padding (then every layer, pruned or not, runs with a mask)."""
        return not bool(self.inputs.attention_mask.bool().all())

    def forward(self, inputs: DecoderInputs) -> torch.Tensor:
        """The decoder's prefill: the base model (no LM head), as DrivingVLA.decode runs it."""
        return self.base(
            inputs_embeds=inputs.inputs_embeds,
            attention_mask=inputs.attention_mask,
            position_ids=inputs.position_ids,
            use_cache=False,
        ).last_hidden_state


def random_decoder(shape: Shape, device: torch.device, dtype: torch.dtype, attn: str = "sdpa") -> Any:
    """A randomly initialised Llama causal LM of ``shape`` (weights scaled small: finite in bf16)."""
    torch.manual_seed(0)
    config = LlamaConfig(  # type: ignore[call-arg]
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads or shape.heads,
        vocab_size=64,
        max_position_embeddings=max(4096, 2 * (shape.prefix + shape.num_visual + shape.text)),
        attn_implementation=attn,
    )
    with torch.device(device):
        model = LlamaForCausalLM(config)
    return model.to(dtype).eval()  # type: ignore[arg-type]


def shaped_inputs(shape: Shape, batch: int, device: torch.device, dtype: torch.dtype) -> DecoderInputs:
    """Unpadded inputs ``[prefix][camera 0]..[camera C-1][text]`` with random embeddings and saliency."""
    gen = torch.Generator().manual_seed(1)
    v, n = shape.num_visual, shape.prefix + shape.num_visual + shape.text
    visual = torch.zeros(batch, n, dtype=torch.bool)
    visual[:, shape.prefix : shape.prefix + v] = True
    text = torch.zeros(batch, n, dtype=torch.bool)
    text[:, n - shape.text :] = True
    side = max(1, int(shape.per_camera**0.5))
    layout = TokenLayout(
        visual_mask=visual.to(device),
        text_mask=text.to(device),
        camera_index=torch.arange(v)
        .div(shape.per_camera, rounding_mode="floor")
        .expand(batch, -1)
        .to(device),
        patch_index=torch.arange(v).remainder(shape.per_camera).expand(batch, -1).to(device),
        patch_grid=(side, max(1, shape.per_camera // side)),
    )
    embeds = torch.randn(batch, n, shape.hidden, generator=gen) * 0.5
    return DecoderInputs(
        inputs_embeds=embeds.to(device, dtype),
        attention_mask=torch.ones(batch, n, dtype=torch.long, device=device),
        position_ids=torch.arange(n, device=device).expand(batch, -1),
        layout=layout,
        vision_saliency=torch.rand(batch, v, generator=gen).to(device),
    )


def shaped_subject(
    shape: Shape, batch: int, device: torch.device, dtype: torch.dtype, attn: str = "sdpa"
) -> Subject:
    model = random_decoder(shape, device, dtype, attn)
    return Subject(
        shape.name, model, model.model, shaped_inputs(shape, batch, device, dtype), device, shape.describe()
    )


def bundled_subject(batch: int, device: torch.device) -> Subject:
    """The bundled tiny-drive-vla on a synthetic nuScenes batch (prepared once, outside any timing)."""
    from data_tools.embedded import synthetic_dataset  # the benchmark's own data, generated once
    from vla_autoprune.data import collate
    from vla_autoprune.devices import batch_to
    from vla_autoprune.models import load

    dataset = synthetic_dataset("val", image_size=(192, 192), scenes={"val": 2}, samples_per_scene=8)
    data = batch_to(collate([dataset[i % len(dataset)] for i in range(batch)]), device)
    model = load(DEFAULT_MODEL, device=device)
    with torch.inference_mode():
        inputs = model.prepare(data)
    lm: Any = model.decoder
    config = compat.decoder_config(lm)
    info = {"model": DEFAULT_MODEL, "layers": config.num_hidden_layers, "hidden": config.hidden_size}
    base: Any = model.language_model
    return Subject(DEFAULT_MODEL, lm, base.model, inputs, device, info, model=DEFAULT_MODEL)


# ------------------------------------------------------------------------------------------------
# Pruned, plain and ideal forwards.


def make_pruner(
    name: str, fraction: float | None, num_layers: int, num_visual: int, model: str | None = None
) -> tuple[Pruner, float | None]:
    """The pruner at ``fraction * V``, raised to the lowest budget it can reach (returned), with the
    constants measured for ``model`` (a bundled name or folder, as the main job gives them; None for
    the random-weight shapes, which have no calibration)."""
    if name == "none" or fraction is None:
        return build_pruner("none"), None
    lo = build_pruner(name).reachable(num_layers, num_visual)[0]
    budget = max(fraction * num_visual, lo)
    pruner = build_pruner(name, budget=budget)
    if model is not None:
        calibrate_pruner(pruner, model)
    return pruner, budget


def pruned_run(subject: Subject, pruner: Pruner) -> PruningRecord:
    """One pruned prefill; returns the record."""
    with torch.inference_mode(), prune(subject.decoder, pruner, subject.inputs) as record:
        subject.forward(record.inputs)
    return record


def plain_run(subject: Subject) -> None:
    """The decoder without the engine."""
    with torch.inference_mode():
        subject.forward(subject.inputs)


def ideal_run(subject: Subject, seq_len: list[int]) -> None:
    """The plain layer stack fed exactly ``seq_len[l]`` tokens at layer ``l`` (sliced, no scoring).

    Padded inputs (the bundled batches) get what any engine must give them, a 4D bool mask (causal
    AND real keys, built once per forward as the model builds its own, sliced per layer); unpadded
    ones run SDPA's ``is_causal`` path.
    """
    base = subject.base
    layers = compat.decoder_layers(base)
    inputs = subject.inputs
    with torch.inference_mode():
        hidden = inputs.inputs_embeds
        pos = inputs.position_ids
        assert pos is not None  # shaped and prepared inputs carry explicit position ids
        cos, sin = base.rotary_emb(hidden, pos)
        mask = None
        if subject.padded:
            n0 = hidden.shape[1]
            causal = torch.ones(n0, n0, dtype=torch.bool, device=hidden.device).tril()
            mask = causal & inputs.attention_mask.bool()[:, None, None, :]
        for layer, n in zip(layers, seq_len, strict=True):
            if n < hidden.shape[1]:
                hidden = hidden[:, :n].contiguous()
            out = layer(
                hidden,
                attention_mask=None if mask is None else mask[:, :, :n, :n],
                position_ids=pos[:, :n],
                position_embeddings=(cos[:, :n], sin[:, :n]),
            )
            hidden = out[0] if isinstance(out, tuple) else out
        base.norm(hidden)


def executed_macs(subject: Subject, record: PruningRecord) -> int:
    """Decoder MACs of the shapes the layers ran (``seq_len`` x batch, fillers included)."""
    assert record.seq_len is not None
    per_row = decoder_flops_from_config(record.seq_len.unsqueeze(0), compat.decoder_config(subject.decoder))
    return int(per_row.sum()) * subject.batch


# ------------------------------------------------------------------------------------------------
# Timing.


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def host_syncs(fn: Callable[[], Any], device: torch.device) -> int | None:
    """How many calls during one ``fn()`` made the host wait for the GPU (CUDA's sync debug mode:
    ``.item()``, ``.tolist()``, blocking copies, ...); None off CUDA, where nothing waits."""
    if device.type != "cuda":
        return None
    sync(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def time_once(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds of one call: CUDA events on a GPU, process CPU time on the CPU (steady on a shared box)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1000
    begin = time.process_time()
    fn()
    return time.process_time() - begin


def interleaved_rounds(
    fns: dict[str, Callable[[], Any]], rounds: int, device: torch.device
) -> dict[str, list[float]]:
    """Seconds of each function in each of ``rounds`` round-robin rounds (after a warm-up call each):
    entry ``r`` of every list comes from the same round, so ratios of entries are paired."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(time_once(fn, device))
    return times


def medians(per_round: dict[str, list[float]]) -> dict[str, float]:
    """The median of each function's rounds (:func:`interleaved_rounds`)."""
    return {name: statistics.median(ts) for name, ts in per_round.items()}


def interleaved(fns: dict[str, Callable[[], Any]], rounds: int, device: torch.device) -> dict[str, float]:
    """Median seconds per call of each function, over ``rounds`` round-robin rounds (after a warm-up)."""
    return medians(interleaved_rounds(fns, rounds, device))


def round_range(name: str, values: list[float], digits: int = 3) -> dict[str, float]:
    """``{"<name> lo": min, "<name> hi": max}`` of a figure computed in each round (rounded): how far
    one round strays (the report's tables show them as ``value [lo, hi]``)."""
    return {f"{name} lo": round(min(values), digits), f"{name} hi": round(max(values), digits)}


# ------------------------------------------------------------------------------------------------
# Peak memory.


class PeakTensorMemory(TorchDispatchMode):
    """Peak bytes of tensor storage allocated while active (CPU: tracks every op's new storages)."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def _free(self, key: int, nbytes: int) -> None:
        if self.live.pop(key, None) is not None:
            self.current -= nbytes

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key and key not in self.live:
                    nbytes = storage.nbytes()
                    self.live[key] = nbytes
                    self.current += nbytes
                    self.peak = max(self.peak, self.current)
                    weakref.finalize(storage, self._free, key, nbytes)
        return out


def peak_bytes(fn: Callable[[], Any], device: torch.device) -> int:
    """Peak memory a call allocates beyond what existed before it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    with PeakTensorMemory() as tracker:
        fn()
    return tracker.peak


# ------------------------------------------------------------------------------------------------
# Results.


def machine(device: torch.device) -> dict[str, Any]:
    """Where and with what a result was measured."""
    info: dict[str, Any] = {
        "device": str(device),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    info["commit"] = _PINNED_COMMIT[0] if _PINNED_COMMIT else _commit()
    info["time"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return info


#: The commit a run started at (:func:`pin_commit`): every section of one run names the code that ran,
#: even when the checkout moves on while it runs.
_PINNED_COMMIT: list[str | None] = []


def pin_commit() -> None:
    """Record the checkout's commit now, at the start of a run, for every result it writes."""
    _PINNED_COMMIT[:] = [_commit()]


def _commit() -> str | None:
    """The checkout's short commit; ``BENCHMARK_COMMIT`` where there is no git repository (a copy of
    the working tree on a lent GPU machine, see ``benchmarks/gpu.sh``)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        commit = ""
    return commit or os.environ.get("BENCHMARK_COMMIT") or None


def result_name(name: str, device: torch.device) -> str:
    """A result's file stem: ``name`` on the CPU, ``name_cuda`` on a GPU (the same benchmark on a GPU
    is another result, not a replacement of the CPU one)."""
    return name if device.type == "cpu" else f"{name}_{device.type}"


def write_result(
    out: Path,
    name: str,
    device: torch.device,
    config: dict[str, Any],
    rows: list[dict[str, Any]],
    **extra: Any,
) -> Path:
    """``out/name.json`` (``name_cuda.json`` on a GPU): machine, versions and config next to the rows
    (written atomically: an interrupted run leaves the previous file or the whole new one)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{result_name(name, device)}.json"
    payload = {"benchmark": name, "machine": machine(device), "config": config, "rows": rows, **extra}
    atomic_write_text(path, json.dumps(payload, indent=2, default=str))
    return path
