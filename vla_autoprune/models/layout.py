"""Token layout: which sequence positions of a decoder input hold which tokens.

The pruning engine only needs masks over the decoder sequence; the model derives them from its
inputs and its vision config (never from hard-coded counts) and also records, for visualisation,
which camera and which image patch each visual token came from.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TokenLayout:
    """Per-sample token layout of a (possibly padded) decoder input of length ``N``.

    Attributes:
        visual_mask: bool ``[B, N]``; True at the positions of visual (camera) tokens. Every sample
            has the same number ``V`` of visual tokens, in camera order; the block may be
            interleaved with non-visual tokens (e.g. a camera marker before each camera).
        text_mask: bool ``[B, N]``; True at the "text" query tokens used to score visual tokens:
            every non-padding token after the visual block (command, ego state, action queries).
        attention_mask: int64 ``[B, N]``; 1 for real tokens, 0 for padding (transformers' 2D mask).
        camera_index: int64 ``[B, V]``; camera (index into the batch's ``cameras``) of each visual
            token, in sequence order.
        patch_index: int64 ``[B, V]``; patch index (row-major in the vision tower's patch grid) of
            each visual token within its camera image.
        patch_grid: ``(rows, cols)`` of the vision tower's patch grid per camera.
    """

    visual_mask: torch.Tensor
    text_mask: torch.Tensor
    attention_mask: torch.Tensor
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
