"""Per-layer additive visual inputs ("deepstack", Qwen3-VL): ``h_i += deepstack[i]`` at the visual tokens.

Qwen3-VL's text model adds vision features from intermediate vision blocks to the output of its
first decoder layers, at the visual positions of the full-length prompt. The adapters do not hand
them to the model (its full-length mask would not line up with a pruned sequence); they carry them
in :attr:`DecoderInputs.deepstack` and the decoder run adds them with hooks instead:

- unpruned (:func:`deepstack_hooks`, used by the adapter's ``decode``): every visual token;
- inside ``prune()``: the engine adds them at the visual tokens in the current slots (survivors
  only), each slot getting the feature of the original token it holds (a merged token: its
  representative's, the member whose position id it took).

Either way :func:`add_at_visual` computes ``where(visual, h + f, h)``, the same single addition the
model's own ``_deepstack_process`` makes, so an unpruned run is bit-identical to transformers'.
Only prefill forwards get the addition (as in transformers: decode steps have no visual tokens).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from torch import nn

from vla_autoprune import compat
from vla_autoprune.errors import ModelLoadError
from vla_autoprune.indexing import gather_rows


def add_at_visual(
    hidden: torch.Tensor, features: torch.Tensor, visual: torch.Tensor, rank: torch.Tensor
) -> torch.Tensor:
    """``hidden`` float ``[B, K, D]`` plus ``features[b, rank[b, k]]`` where ``visual`` bool ``[B, K]``.

    ``features`` float ``[B, V, D]``; ``rank`` int64 ``[B, K]`` (index among the ``V`` visual
    tokens; ignored where not visual). Non-visual rows are returned unchanged.
    """
    index = rank.clamp(min=0, max=features.shape[1] - 1)
    added = hidden + gather_rows(features.to(hidden.device, hidden.dtype), index)
    return torch.where(visual.unsqueeze(-1), added, hidden)


def check_deepstack(features: tuple[torch.Tensor, ...], visual_mask: torch.Tensor, num_layers: int) -> None:
    """Raise a one-line :class:`ModelLoadError` unless ``features`` are ``<= L`` tensors ``[B, V, D]``."""
    b = visual_mask.shape[0]
    v = int(visual_mask.sum(dim=1).max()) if visual_mask.numel() else 0
    shapes = [tuple(f.shape[:2]) for f in features]
    if len(features) > num_layers or any(s != (b, v) for s in shapes):
        raise ModelLoadError(
            f"deepstack holds {len(features)} tensors of shapes {shapes} for {num_layers} layers and "
            f"[B={b}, V={v}] visual tokens; build them with the adapter's prepare()"
        )


@contextmanager
def deepstack_hooks(decoder: nn.Module, inputs: Any) -> Iterator[None]:
    """While active, a prefill of ``decoder`` on ``inputs`` (:class:`DecoderInputs`) adds their
    ``deepstack`` features at every visual token; a no-op when ``inputs.deepstack`` is None."""
    features = inputs.deepstack
    if not features:
        yield
        return
    layers = compat.decoder_layers(decoder)
    visual = inputs.layout.visual_mask.bool()
    check_deepstack(features, visual, len(layers))
    rank = visual.long().cumsum(dim=1) - 1
    prefill = [False] * len(features)

    def pre(i: int, _module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        hidden = compat.layer_hidden(args, kwargs)
        cache = compat.layer_cache(kwargs)
        prefill[i] = compat.cache_length(cache, i) == 0 and hidden.shape[:2] == visual.shape

    def post(i: int, _module: nn.Module, _args: tuple[Any, ...], _kwargs: dict[str, Any], output: Any) -> Any:
        if not prefill[i]:
            return None
        hidden = compat.output_hidden(output)
        return compat.with_output_hidden(output, add_at_visual(hidden, features[i], visual, rank))

    handles = []
    for i in range(len(features)):
        handles.append(layers[i].register_forward_pre_hook(partial(pre, i), with_kwargs=True))
        handles.append(layers[i].register_forward_hook(partial(post, i), with_kwargs=True))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
