"""Host-to-device helpers (vla_autoprune/devices.py)."""

from __future__ import annotations

import pytest
import torch

from vla_autoprune.devices import device_ints, to_device


def test_device_ints_are_int64_with_the_host_values() -> None:
    flat = device_ints([3, 0, 7], torch.device("cpu"))
    assert flat.dtype == torch.int64 and flat.tolist() == [3, 0, 7]
    nested = device_ints([[1, 2], [3, 4]], torch.device("cpu"))
    assert nested.shape == (2, 2) and nested.tolist() == [[1, 2], [3, 4]]
    assert device_ints([], torch.device("cpu")).shape == (0,)


def test_to_device_on_the_cpu_is_the_tensor_itself() -> None:
    x = torch.arange(4)
    assert to_device(x, torch.device("cpu")) is x


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_to_cuda_copies_without_a_stream_sync() -> None:
    device = torch.device("cuda")
    torch.cuda.set_sync_debug_mode("error")  # a synchronising call raises
    try:
        out = device_ints([5, 6, 7], device)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out.device.type == "cuda" and out.cpu().tolist() == [5, 6, 7]
