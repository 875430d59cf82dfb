"""Device and dtype names as users write them (``auto``, ``cuda:1``, ``bfloat16``) -> torch objects."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from vla_autoprune.errors import ConfigError

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else must be a device torch can use."""
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(
            f"device={name!r} is not a device torch knows ({err}); use auto, cpu or cuda:N"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but CUDA is not available here; use device=cpu or device=auto")
    return device


def resolve_dtype(name: str | torch.dtype) -> torch.dtype:
    """``float32`` / ``bfloat16`` / ``float16`` (or a torch dtype, returned as is) -> the torch dtype."""
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise ConfigError(f"dtype={name!r} is not supported; use one of {sorted(DTYPES)}")
    return DTYPES[name]


def batch_to(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """A collated batch with its tensors on ``device`` (lists of tokens and names unchanged)."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host tensor ``x`` on ``device`` without making the host wait for the device's queued work.

    A plain host-to-CUDA copy (``x.to("cuda")``, ``torch.tensor(values, device="cuda")``) ends in a
    stream synchronisation: the host waits until every kernel queued before it has run. Staged in
    pinned memory and copied with ``non_blocking=True`` it does not; the copy is still ordered on the
    stream before any kernel that reads it, and the caching host allocator keeps the pinned source
    alive until the copy is done. On the CPU (or any other device) this is a plain ``to``.
    """
    if device.type != "cuda" or x.device.type != "cpu":
        return x.to(device)
    return x.pin_memory().to(device, non_blocking=True)


def device_ints(values: Sequence[int] | Sequence[Sequence[int]], device: torch.device) -> torch.Tensor:
    """Host ints (a list, or a list of equal-length lists) as an int64 tensor on ``device`` (:func:`to_device`)."""
    return to_device(torch.tensor(values, dtype=torch.long), device)


def to_host(tensors: Sequence[torch.Tensor], packed: bool | None = None) -> list[torch.Tensor]:
    """``tensors`` on the CPU, detached, with one device-to-host copy for all of them.

    Each ``.cpu()`` of a device tensor makes the host wait for the stream: fifty of them at the end
    of a prefill cost more than the copies. Packed, the tensors off the CPU are viewed as bytes,
    joined, copied once and split back on the host (same dtypes, shapes and values; tensors on the
    CPU come back themselves). ``packed``: None packs when some tensor is on a device; True packs
    every tensor, also on the CPU (what tests use to check the round trip).
    """
    # no op for what needs none (each is a dispatch, and the record has ~50 tensors)
    tensors = [t.detach() if t.requires_grad else t for t in tensors]
    moving = [i for i, t in enumerate(tensors) if packed or (packed is None and t.device.type != "cpu")]
    if len(moving) < 2 or len({tensors[i].device for i in moving}) > 1:
        return [t if t.device.type == "cpu" else t.cpu() for t in tensors]
    raw = [tensors[i].contiguous().reshape(-1).view(torch.uint8) for i in moving]
    host = torch.cat(raw).cpu()
    out, start = list(tensors), 0
    for i, r in zip(moving, raw, strict=True):
        chunk = host[start : start + r.numel()].clone()  # its own storage: aligned for the dtype view
        out[i] = chunk.view(tensors[i].dtype).reshape(tensors[i].shape)
        start += r.numel()
    return out
