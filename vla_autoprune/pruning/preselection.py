"""Pre-decoder selection: shorter decoder inputs holding the visual tokens a pruner keeps.

:meth:`Pruner.preselect` names the visual tokens to keep before the decoder runs (FasterVLM,
VisionZip, AutoPrune's stage 0 ``before``, ...); :func:`preselect_inputs` checks its answer, applies
an optional :meth:`Pruner.premerge` and builds the shorter inputs, with explicit position ids and an
explicit 2D attention mask (gapped ids without a mask would be read as packed sequences). With
``position_ids="contiguous"`` they are numbered ``0..n-1`` over their real tokens, exactly as if the
shortened prompt were a fresh input.
"""

from __future__ import annotations

import torch

from vla_autoprune.indexing import gather_rows, true_indices
from vla_autoprune.models.base import DecoderInputs
from vla_autoprune.pruning.positions import gather_positions, renumber
from vla_autoprune.pruning.pruner import Pruner


def check_layout(inputs: DecoderInputs) -> None:
    """Raise unless every row has the layout's ``V`` visual tokens."""
    layout = inputs.layout
    counts = layout.visual_mask.bool().sum(1)
    if not bool((counts == layout.num_visual).all()):
        raise ValueError(
            f"layout.visual_mask marks {counts.tolist()} tokens per row but camera_index has "
            f"V={layout.num_visual}; every row needs the same V visual tokens"
        )


def shorten(inputs: DecoderInputs, kept: torch.Tensor, contiguous: bool = False) -> DecoderInputs:
    """Inputs keeping every non-visual token and the visual tokens ``kept`` [B, n0] (ascending).

    ``contiguous``: the kept tokens are renumbered without gaps (else they keep their ids).
    """
    layout = inputs.layout
    b, n = layout.visual_mask.shape
    visual_pos = layout.visual_positions()
    keep = ~layout.visual_mask.bool()
    keep = keep.scatter(1, visual_pos.gather(1, kept), True)
    index = true_indices(keep)[0]
    position_ids = inputs.position_ids
    if position_ids is None:
        position_ids = torch.arange(n, device=index.device).expand(b, n)
    short_layout = layout.select(index, kept)
    saliency = inputs.vision_saliency
    attention_mask = inputs.attention_mask.gather(1, index)
    short_positions = gather_positions(position_ids, index)
    if contiguous:
        short_positions = renumber(short_positions, attention_mask)
    return inputs.with_(
        inputs_embeds=gather_rows(inputs.inputs_embeds, index),
        # An explicit 2D mask, even all ones: gapped position ids without one read as packed sequences.
        attention_mask=attention_mask,
        position_ids=short_positions,
        layout=short_layout,
        vision_saliency=None if saliency is None else saliency.gather(1, kept),
        deepstack=None if inputs.deepstack is None else tuple(gather_rows(f, kept) for f in inputs.deepstack),
    )


def preselect_inputs(
    pruner: Pruner, inputs: DecoderInputs, num_layers: int
) -> tuple[DecoderInputs, torch.Tensor | None]:
    """The inputs to run and the kept visual indices int64 ``[B, n0]`` (ascending), or ``(inputs, None)``."""
    kept = pruner.preselect(inputs, num_layers)
    if kept is None:
        return inputs, None
    v = inputs.layout.num_visual
    b = inputs.inputs_embeds.shape[0]
    if kept.dim() != 2 or kept.shape[0] != b or not 1 <= kept.shape[1] <= v:
        raise ValueError(
            f"{pruner.name}.preselect returned shape {tuple(kept.shape)}; expected [B={b}, n0] with 1 <= n0 <= {v}"
        )
    kept = kept.sort(dim=1).values
    if bool((kept[:, 1:] == kept[:, :-1]).any()) or int(kept.min()) < 0 or int(kept.max()) >= v:
        raise ValueError(f"{pruner.name}.preselect returned repeated or out-of-range visual indices")
    merged = pruner.premerge(inputs, kept)
    if merged is not None:  # e.g. VisionZip's contextual tokens: written over their kept slots
        if merged.shape != (*kept.shape, inputs.inputs_embeds.shape[-1]):
            raise ValueError(
                f"{pruner.name}.premerge returned shape {tuple(merged.shape)}; expected [B, n0, D]"
            )
        at = inputs.layout.visual_positions().gather(1, kept).unsqueeze(-1).expand_as(merged)
        inputs = inputs.with_(
            inputs_embeds=inputs.inputs_embeds.scatter(1, at, merged.to(inputs.inputs_embeds.dtype))
        )
    return shorten(inputs, kept, pruner.position_ids == "contiguous"), kept
