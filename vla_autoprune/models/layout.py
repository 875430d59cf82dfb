"""Token layout: which sequence positions of a decoder input hold which tokens.

The pruning engine only needs masks over the decoder sequence; the model derives them from its
inputs and its vision config (never from hard-coded counts) and also records, for visualisation,
which camera and which image patch each visual token came from.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vla_autoprune.errors import ModelLoadError


@dataclass(frozen=True)
class TokenLayout:
    """Per-sample token layout of a (possibly padded) decoder input of length ``N``.

    Attributes:
        visual_mask: bool ``[B, N]``; True at the positions of visual (camera) tokens. Every sample
            has the same number ``V`` of visual tokens, in camera order; the block may be
            interleaved with non-visual tokens (e.g. a camera marker before each camera).
        text_mask: bool ``[B, N]``; True at the "text" query tokens used to score visual tokens:
            every non-padding token after the visual block (command, ego state, action queries).
            (Padding is the ``attention_mask`` of the :class:`DecoderInputs` the layout belongs to.)
        camera_index: int64 ``[B, V]``; camera (index into the batch's ``cameras``) of each visual
            token, in sequence order.
        patch_index: int64 ``[B, V]``; patch index (row-major in the vision tower's patch grid) of
            each visual token within its camera image.
        patch_grid: ``(rows, cols)`` of the vision tower's patch grid per camera.
    """

    visual_mask: torch.Tensor
    text_mask: torch.Tensor
    camera_index: torch.Tensor
    patch_index: torch.Tensor
    patch_grid: tuple[int, int]

    @property
    def num_visual(self) -> int:
        """Number of visual tokens per sample (``V``)."""
        return int(self.camera_index.shape[1])

    def visual_positions(self) -> torch.Tensor:
        """int64 ``[B, V]``: sequence positions of the visual tokens, in order."""
        b, n = self.visual_mask.shape
        pos = torch.arange(n, device=self.visual_mask.device).expand(b, n)
        return pos[self.visual_mask].view(b, -1)

    def select(self, index: torch.Tensor, kept: torch.Tensor) -> TokenLayout:
        """The layout of shorter inputs that keep sequence positions ``index`` and visual tokens ``kept``.

        Args:
            index: int64 ``[B, N']``, ascending sequence positions kept (all non-visual ones and
                the positions of the ``kept`` visual tokens).
            kept: int64 ``[B, V']``, ascending indices (into this layout's ``V`` visual tokens) of
                the visual tokens kept.
        """
        return TokenLayout(
            visual_mask=self.visual_mask.gather(1, index),
            text_mask=self.text_mask.gather(1, index),
            camera_index=self.camera_index.gather(1, kept),
            patch_index=self.patch_index.gather(1, kept),
            patch_grid=self.patch_grid,
        )


def build_layout(
    visual_mask: torch.Tensor,
    attention_mask: torch.Tensor,
    num_cameras: int,
    patch_grid: tuple[int, int],
) -> TokenLayout:
    """The token layout of a (left- or right-) padded batch, derived from where its visual tokens sit.

    The ``k``-th visual token of a row (in sequence order) is patch ``k % P`` of camera ``k // P``,
    with ``P = rows * cols`` tokens per camera image, in the vision tower's row-major patch order;
    each camera's ``P`` tokens must be contiguous in the sequence (markers or text may separate
    cameras). Text queries are the real tokens after the last visual token.

    Args:
        visual_mask: bool ``[B, N]``; True at the positions of visual tokens.
        attention_mask: int ``[B, N]``; 1 for real tokens, 0 for padding.
        num_cameras: ``C``, images per sample, in the order their tokens appear.
        patch_grid: ``(rows, cols)`` of visual tokens per image (after any spatial merge).

    Returns:
        The layout, with ``camera_index`` / ``patch_index`` int64 ``[B, C * P]``.

    Raises:
        ModelLoadError: the visual tokens do not form ``C`` contiguous runs of ``P`` per row, i.e.
            the prompt's image tokens and the vision tower's patch grid disagree.
    """
    visual_mask = visual_mask.bool()
    b, n = visual_mask.shape
    rows, cols = patch_grid
    per_camera = rows * cols
    expected = num_cameras * per_camera
    counts = visual_mask.sum(dim=1)
    if per_camera < 1 or num_cameras < 1 or not bool((counts == expected).all()):
        raise ModelLoadError(
            f"the prompts hold {counts.tolist()} image tokens per sample but {num_cameras} cameras x "
            f"{rows}x{cols} patches need {expected}: the processor's image tokens and the vision "
            "config's patch grid disagree; save the model and its processor from one checkpoint"
        )
    positions = torch.arange(n, device=visual_mask.device).expand(b, n)
    visual_positions = positions[visual_mask].view(b, num_cameras, per_camera)
    spans = visual_positions[..., -1] - visual_positions[..., 0]  # [B, C]
    if not bool((spans == per_camera - 1).all()):
        raise ModelLoadError(
            f"some camera's {per_camera} image tokens are not contiguous in the prompt (spans "
            f"{(spans + 1).tolist()}): each image must be one run of {rows}x{cols} tokens; check the "
            "processor's image-token expansion against the vision config"
        )
    last_visual = visual_positions[:, -1, -1].unsqueeze(1)  # [B, 1]
    rank = torch.arange(expected, device=visual_mask.device)
    return TokenLayout(
        visual_mask=visual_mask,
        text_mask=(positions > last_visual) & attention_mask.bool(),
        camera_index=rank.div(per_camera, rounding_mode="floor").expand(b, -1).clone(),
        patch_index=rank.remainder(per_camera).expand(b, -1).clone(),
        patch_grid=(rows, cols),
    )
