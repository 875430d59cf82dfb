"""What this project knows about the Qwen-VL families in transformers 5.24 (M-RoPE, image tokens).

Kept apart from :mod:`vla_autoprune.compat` (plain decoders) so a transformers upgrade of the
Qwen-VL code touches one file:

- the model types supported (Qwen2.5-VL, Qwen3-VL) and the ones recognised but refused (below);
- the chat special tokens a Qwen-VL prompt is built from;
- the image processor's resize rule (``smart_resize``) and the spatial merge, so that the number of
  visual tokens per camera follows from ``preprocessor_config.json`` and the image size alone;
- M-RoPE: 3-D position ids ``[3, B, N]`` (temporal, height, width) from the model's own
  ``get_rope_index``, and the ``rope_deltas`` the model keeps for decoding without explicit ids.

In 5.24 the text rotary module recomposes the three axes into ordinary ``[B, N, head_dim]``
cos/sin before the decoder loop, and every decoder layer receives ``position_ids=None`` (the
"text" row exists only for packed 4-row ids). So a layer sees one rotary row per token: gathering
those rows keeps each surviving token's original (t, h, w) rotation. Qwen3-VL differs only inside
that rotary module (its (t, h, w) frequencies are interleaved, ``mrope_interleaved``) and in the
``get_rope_index`` details (same ``[3, B, N]`` / ``rope_deltas`` contract), so the same holds.

Qwen3-VL's vision tower attends fully in every block (no windows: its merged tokens come out in
raster order) and adds "deepstack" features to the first decoder layers' outputs; the adapter
carries those in ``DecoderInputs.deepstack`` (:mod:`vla_autoprune.models.deepstack`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers.vision_utils import get_vision_window_index

from vla_autoprune.errors import ModelLoadError

QWEN2_5_VL_MODEL_TYPE = "qwen2_5_vl"
QWEN3_VL_MODEL_TYPE = "qwen3_vl"
#: Recognised but refused: Qwen3-VL-MoE (the FLOPs accounting assumes dense MLPs) and Qwen3.5
#: (hybrid linear-attention decoders, whose layers the engine cannot shorten) are not supported.
REFUSED_MODEL_TYPES = ("qwen3_vl_moe", "qwen3_5", "qwen3_5_moe")

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
SPECIAL_TOKENS: tuple[str, ...] = (IM_START, IM_END, VISION_START, VISION_END, IMAGE_PAD)

#: ``preprocessor_config.json`` keys and their transformers defaults (Qwen2VLImageProcessor).
_DEFAULT_PATCH, _DEFAULT_MERGE = 14, 2
_DEFAULT_MIN_PIXELS, _DEFAULT_MAX_PIXELS = 56 * 56, 28 * 28 * 1280


class Qwen3VLUnsupportedError(ModelLoadError):
    """A Qwen3-VL-MoE or Qwen3.5 folder: not supported (only dense ``qwen3_vl`` is)."""


def refuse_qwen3(model_type: Any, where: Path) -> None:
    """Raise a one-line :class:`Qwen3VLUnsupportedError` for a refused Qwen-VL ``model_type``."""
    if model_type in REFUSED_MODEL_TYPES:
        raise Qwen3VLUnsupportedError(
            f"{where} holds model_type={model_type!r}, which is not supported (MoE FLOPs / Qwen3.5 linear "
            f"attention); use a dense {QWEN3_VL_MODEL_TYPE!r} or {QWEN2_5_VL_MODEL_TYPE!r} checkpoint"
        )


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """``(H', W')`` the Qwen2-VL image processor resizes an ``H x W`` image to (multiples of ``factor``).

    Same rule as ``transformers.models.qwen2_vl.image_processing_qwen2_vl.smart_resize``.
    """
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def merged_grid_from_preprocessor(folder: Path, image_size: tuple[int, int]) -> tuple[int, int]:
    """``(rows, cols)`` of decoder visual tokens of one ``(W, H)`` image, from ``preprocessor_config.json``.

    The processor resizes to multiples of ``patch_size * merge_size`` within ``[min, max]`` pixels;
    the vision tower's merger then turns each ``merge x merge`` block of patches into one token.
    """
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        raise ModelLoadError(
            f"{path} not found; save the image processor next to the model (image_processor.save_pretrained)"
        )
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelLoadError(f"{path} is not valid JSON ({err}); re-save the image processor") from None
    size = cfg.get("size") or {}
    patch = int(cfg.get("patch_size", _DEFAULT_PATCH))
    merge = int(cfg.get("merge_size", _DEFAULT_MERGE))
    min_pixels = int(cfg.get("min_pixels") or size.get("shortest_edge") or _DEFAULT_MIN_PIXELS)
    max_pixels = int(cfg.get("max_pixels") or size.get("longest_edge") or _DEFAULT_MAX_PIXELS)
    width, height = image_size
    h, w = smart_resize(height, width, patch * merge, min_pixels, max_pixels)
    return h // (patch * merge), w // (patch * merge)


def merged_grid(image_grid_thw: torch.Tensor, merge: int) -> tuple[int, int]:
    """``(rows, cols)`` of decoder tokens per image from the processor's ``image_grid_thw`` ``[I, 3]``.

    Raises :class:`ModelLoadError` unless every image has one frame and the same grid (six cameras
    of one resolution), which the layout's per-camera patch grid needs.
    """
    grid = image_grid_thw.long()
    if grid.numel() == 0 or not bool((grid == grid[:1]).all()) or int(grid[0, 0]) != 1:
        raise ModelLoadError(
            f"the processor gave image grids {grid.tolist()}; every camera image must have one frame and "
            "the same size: resize the cameras to one resolution (data.dataset.image_size)"
        )
    _, h, w = (int(v) for v in grid[0])
    return h // merge, w // merge


def mrope_positions(
    model: nn.Module, input_ids: torch.Tensor, image_grid_thw: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """M-RoPE position ids int64 ``[3, B, N]`` and ``rope_deltas`` int64 ``[B, 1]`` of a prompt batch.

    Computed by the model's own ``get_rope_index`` (``input_ids`` ``[B, N]``, ``image_grid_thw``
    ``[I, 3]`` in prompt order, ``attention_mask`` ``[B, N]``; padding gets 0). ``rope_deltas`` is
    ``max position + 1 - real length``: the offset a decode step at cache length ``c`` adds to ``c``.
    """
    inner: Any = model.get_submodule("model")
    config: Any = model.config
    image_token_id = int(config.image_token_id)
    mm_types = (input_ids == image_token_id).int()  # 1 = image, 0 = text (no video)
    return inner.get_rope_index(
        input_ids,
        mm_token_type_ids=mm_types,
        image_grid_thw=image_grid_thw,
        attention_mask=attention_mask,
    )


def set_rope_deltas(model: nn.Module, rope_deltas: torch.Tensor) -> None:
    """Store ``rope_deltas`` ``[B, 1]`` where the model reads it when decoding without position ids."""
    inner: Any = model.get_submodule("model")
    inner.rope_deltas = rope_deltas


def rope_deltas_of(position_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """int64 ``[B, 1]``: ``max position + 1 - real tokens`` of ``[3, B, N]`` ids (padding excluded)."""
    real = attention_mask.bool()
    top = position_ids.masked_fill(~real.unsqueeze(0), -1).amax(dim=(0, 2))
    return (top + 1 - real.sum(dim=1)).unsqueeze(1)


def windowed(config: Any) -> bool:
    """Whether a vision config windows its attention (Qwen2.5-VL) or attends fully everywhere (Qwen3-VL)."""
    return hasattr(config, "window_size") or hasattr(config, "fullatt_block_indexes")


def last_full_attention(visual: nn.Module) -> nn.Module:
    """The attention module of the vision tower's last full-attention block (Qwen2.5-VL: the
    others are windowed; Qwen3-VL: every block attends fully, so the last one)."""
    config: Any = visual.config
    blocks: Any = visual.get_submodule("blocks")
    if not windowed(config):
        return blocks[len(blocks) - 1].attn
    full = [int(i) for i in getattr(config, "fullatt_block_indexes", ()) if int(i) < len(blocks)]
    if not full:
        raise ModelLoadError(
            f"{type(visual).__name__} has no full-attention block (fullatt_block_indexes="
            f"{getattr(config, 'fullatt_block_indexes', None)}), so there is no per-image attention to rank tokens by"
        )
    return blocks[max(full)].attn


def vision_window_index(config: Any, grid_thw: torch.Tensor) -> torch.Tensor:
    """int64 ``[I * P]``: the vision tower's window order of the merged tokens (``hidden[j] = natural[idx[j]]``).

    The identity for a tower without windows (Qwen3-VL).
    """
    if not windowed(config):
        merge = int(config.spatial_merge_size)
        return torch.arange(int((grid_thw.prod(-1) // (merge * merge)).sum()))
    index, _ = get_vision_window_index(
        grid_thw.cpu(),
        spatial_merge_size=int(config.spatial_merge_size),
        window_size=int(config.window_size),
        patch_size=int(config.patch_size),
    )
    return index
