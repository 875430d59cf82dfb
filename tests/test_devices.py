"""Host-to-device helpers (vla_autoprune/devices.py)."""

from __future__ import annotations

import pytest
import torch

from vla_autoprune.devices import device_ints, to_device, to_host


def test_device_ints_are_int64_with_the_host_values() -> None:
    flat = device_ints([3, 0, 7], torch.device("cpu"))
    assert flat.dtype == torch.int64 and flat.tolist() == [3, 0, 7]
    nested = device_ints([[1, 2], [3, 4]], torch.device("cpu"))
    assert nested.shape == (2, 2) and nested.tolist() == [[1, 2], [3, 4]]
    assert device_ints([], torch.device("cpu")).shape == (0,)


def test_to_device_on_the_cpu_is_the_tensor_itself() -> None:
    x = torch.arange(4)
    assert to_device(x, torch.device("cpu")) is x


def test_packed_to_host_gives_back_every_dtype_shape_and_value() -> None:
    tensors = [
        torch.tensor([[True, False, True]]),
        torch.arange(5),
        torch.tensor(3.5, dtype=torch.float64),  # 0-dim
        torch.zeros(0, 4, dtype=torch.long),  # empty
        torch.randn(2, 3).to(torch.bfloat16),
        torch.arange(6, dtype=torch.int32).view(2, 3).t(),  # not contiguous, 4-byte items
    ]
    packed = to_host(tensors, packed=True)
    for given, back in zip(tensors, packed, strict=True):
        assert back.dtype == given.dtype and back.shape == given.shape and torch.equal(back, given)
        assert given.numel() == 0 or back.data_ptr() != given.data_ptr()  # copies, not views
    assert to_host([]) == []
    plain = to_host(tensors)  # all on the CPU: nothing packed, each tensor itself (detached)
    assert all(back.data_ptr() == given.data_ptr() for given, back in zip(tensors, plain, strict=True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_to_host_from_cuda_waits_once() -> None:
    device = torch.device("cuda")
    tensors = [
        torch.arange(7, device=device),
        torch.ones(2, 2, dtype=torch.bool, device=device),
        torch.arange(3),
    ]
    torch.cuda.synchronize()
    with pytest.warns(UserWarning) as caught:
        torch.cuda.set_sync_debug_mode("warn")
        try:
            back = to_host(tensors)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert sum("synchroniz" in str(w.message) for w in caught) == 1
    assert [t.device.type for t in back] == ["cpu"] * 3
    assert all(torch.equal(b, t.cpu()) for b, t in zip(back, tensors, strict=True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_to_cuda_copies_without_a_stream_sync() -> None:
    device = torch.device("cuda")
    torch.cuda.set_sync_debug_mode("error")  # a synchronising call raises
    try:
        out = device_ints([5, 6, 7], device)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out.device.type == "cuda" and out.cpu().tolist() == [5, 6, 7]
