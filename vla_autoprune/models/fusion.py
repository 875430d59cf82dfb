"""Deep fusion: the prompt reads the cameras only from a given decoder layer on.

In a LLaVA-style decoder every text token may attend to every visual token before it from layer 0
on. A small model then reads all it needs from the cameras in layer 0, which every in-decoder
pruner leaves whole (they prune from layer 1 or later), so in-decoder pruning cannot touch it.
Deep-fusion VLMs (Flamingo, Llama-3.2-Vision, CogVLM) let the language stream see the image only
in later layers. :func:`vision_from_layer` gives an unmodified decoder that structure: in the
layers before ``first`` the non-visual tokens cannot attend to the visual ones (the visual tokens
still attend to each other and to the text before them), by narrowing the layers' own 4D
attention mask in a forward pre-hook that is always removed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from vla_autoprune import compat
from vla_autoprune.errors import ConfigError


def fusion_mask(allowed: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
    """``allowed`` bool ``[B, 1, N, N]`` (True = attend) with every non-visual row's visual
    columns blocked; ``visual`` bool ``[B, N]`` marks the visual positions. The diagonal is
    never blocked (a row is visual or not), so no row that attended to something loses it all."""
    blocked = (~visual)[:, None, :, None] & visual[:, None, None, :]
    return allowed & ~blocked


@contextmanager
def vision_from_layer(layers: nn.ModuleList, first: int, visual: torch.Tensor) -> Iterator[None]:
    """While active, ``layers[:first]`` run with :func:`fusion_mask` over ``visual`` bool ``[B, N]``
    (the positions of the visual tokens in the sequence the decoder is called with).

    Raises ConfigError inside the forward if one of those layers gets a sequence of another length
    (a pruner that drops tokens before layer ``first``)."""
    visual = visual.bool()

    def hook(index: int) -> Any:
        def narrow(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any]:
            hidden = compat.layer_hidden(args, kwargs)
            b, n = visual.shape
            if tuple(hidden.shape[:2]) != (b, n):
                raise ConfigError(
                    f"decoder layer {index} got {tuple(hidden.shape[:2])} tokens but the prompt reads the "
                    f"cameras only from layer {first} on ({(b, n)} tokens expected): prune from layer "
                    f"{first} or later, or use a model with vision_from_layer=0"
                )
            mask = compat.check_mask(kwargs.get(compat.KW_MASK), index)
            if mask is None:  # SDPA's causal fast path: no padding
                allowed = torch.ones(n, n, dtype=torch.bool, device=hidden.device).tril().expand(b, 1, n, n)
            else:
                allowed = compat.mask_to_bool(mask)
            narrowed = fusion_mask(allowed, visual.to(allowed.device))
            return args, {**kwargs, compat.KW_MASK: compat.bool_to_mask_like(narrowed, mask, hidden.dtype)}

        return narrow

    handles = [
        layer.register_forward_pre_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers[:first])
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
