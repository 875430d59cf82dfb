"""Camera mosaics: the cameras in the nuScenes surround layout, each visual token's patch marked.

Kept tokens keep their pixels and get a :data:`KEPT` outline; dropped ones are dimmed; the members
of a merged (recycled) token are tinted and outlined in :data:`MERGED`. Camera names, the patch
grid and each token's camera and patch come from the trace (the model's ``TokenLayout``); the grid
spans the part of each image the vision tower saw (the whole image, or a processor's centre crop).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from vla_autoprune.viz.persistence import SampleTrace

#: Where the nuScenes surround cameras go: (row, column); other channels fill rows of three below.
SURROUND: dict[str, tuple[int, int]] = {
    "CAM_FRONT_LEFT": (0, 0),
    "CAM_FRONT": (0, 1),
    "CAM_FRONT_RIGHT": (0, 2),
    "CAM_BACK_LEFT": (1, 0),
    "CAM_BACK": (1, 1),
    "CAM_BACK_RIGHT": (1, 2),
}
COLUMNS = 3
KEPT = (0, 255, 0)
MERGED = (255, 0, 255)
DIM = 0.3  # brightness left to a dropped patch (so a dimmed pixel never reads as a marker colour)
MERGE_TINT = 0.5  # blend weight of MERGED over a merged member's pixels
OUTLINE_PX = 2
LABEL_PX = 14  # strip above each camera image holding its name
BACKGROUND = (24, 24, 24)
LABEL_COLOUR = (230, 230, 230)


@dataclass(frozen=True)
class MosaicGeometry:
    """Pixel layout of one mosaic panel (``cell`` = one camera image, ``(width, height)``)."""

    cameras: tuple[str, ...]
    patch_grid: tuple[int, int]
    cell: tuple[int, int]
    slots: tuple[tuple[int, int], ...]  # (row, col) of each camera
    region: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)  # of each image the grid covers

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` of the panel."""
        rows = 1 + max(r for r, _ in self.slots)
        return COLUMNS * self.cell[0], rows * (self.cell[1] + LABEL_PX)

    def camera_box(self, camera: int) -> tuple[int, int, int, int]:
        """``(x0, y0, x1, y1)`` (end exclusive) of camera ``camera``'s image in the panel."""
        row, col = self.slots[camera]
        x0 = col * self.cell[0]
        y0 = row * (self.cell[1] + LABEL_PX) + LABEL_PX
        return x0, y0, x0 + self.cell[0], y0 + self.cell[1]

    def patch_box(self, camera: int, patch: int) -> tuple[int, int, int, int]:
        """``(x0, y0, x1, y1)`` (end exclusive) of patch ``patch`` (row-major) of camera ``camera``."""
        cx, cy, _, _ = self.camera_box(camera)
        rx0, ry0, rx1, ry1 = self.region
        x0, y0 = cx + round(rx0 * self.cell[0]), cy + round(ry0 * self.cell[1])
        w = cx + round(rx1 * self.cell[0]) - x0
        h = cy + round(ry1 * self.cell[1]) - y0
        rows, cols = self.patch_grid
        r, c = divmod(int(patch), cols)
        return (
            x0 + (c * w) // cols,
            y0 + (r * h) // rows,
            x0 + ((c + 1) * w) // cols,
            y0 + ((r + 1) * h) // rows,
        )

    def token_boxes(self, trace: SampleTrace) -> np.ndarray:
        """int ``[V, 4]``: the patch box of every visual token of ``trace``."""
        return np.array(
            [self.patch_box(c, p) for c, p in zip(trace.camera_index, trace.patch_index, strict=True)],
            dtype=np.int64,
        ).reshape(-1, 4)


def surround_slots(cameras: Sequence[str]) -> tuple[tuple[int, int], ...]:
    """(row, col) per camera: nuScenes surround positions, other channels in rows of three below."""
    known = [SURROUND[c] for c in cameras if c in SURROUND]
    next_row = 1 + max((r for r, _ in known), default=-1)
    slots, extra = [], 0
    for camera in cameras:
        if camera in SURROUND:
            slots.append(SURROUND[camera])
        else:
            slots.append((next_row + extra // COLUMNS, extra % COLUMNS))
            extra += 1
    return tuple(slots)


def geometry_for(trace: SampleTrace, image_size: tuple[int, int], cell_width: int = 288) -> MosaicGeometry:
    """The panel layout for ``trace``'s cameras, cells of ``cell_width`` with the images' aspect.

    Args:
        image_size: ``(width, height)`` of the camera images.
    """
    rows, cols = trace.patch_grid
    width = max(int(cell_width), cols)
    height = max(round(width * image_size[1] / image_size[0]), rows)
    return MosaicGeometry(
        trace.cameras, trace.patch_grid, (width, height), surround_slots(trace.cameras), trace.image_region
    )


def base_panel(images: Sequence[np.ndarray], geometry: MosaicGeometry) -> Image.Image:
    """The undecorated panel: camera ``c``'s image (uint8 ``[H, W, 3]``) in its cell, names above."""
    panel = Image.new("RGB", geometry.size, BACKGROUND)
    draw = ImageDraw.Draw(panel)
    for camera, image in enumerate(images):
        x0, y0, x1, y1 = geometry.camera_box(camera)
        cell = Image.fromarray(np.ascontiguousarray(image)).resize(
            (x1 - x0, y1 - y0), Image.Resampling.BILINEAR
        )
        panel.paste(cell, (x0, y0))
        draw.text((x0 + 3, y0 - LABEL_PX + 1), geometry.cameras[camera], fill=LABEL_COLOUR)
    return panel


def _outline(pixels: np.ndarray, box: np.ndarray, colour: tuple[int, int, int]) -> None:
    """Paint an inset ``OUTLINE_PX`` frame inside ``box`` (exact colour, no anti-aliasing)."""
    x0, y0, x1, y1 = (int(v) for v in box)
    t = min(OUTLINE_PX, max((x1 - x0) // 2, 1), max((y1 - y0) // 2, 1))
    pixels[y0 : y0 + t, x0:x1] = colour
    pixels[y1 - t : y1, x0:x1] = colour
    pixels[y0:y1, x0 : x0 + t] = colour
    pixels[y0:y1, x1 - t : x1] = colour


def draw_layer(base: Image.Image, geometry: MosaicGeometry, trace: SampleTrace, layer: int) -> Image.Image:
    """The panel of ``layer``: kept patches outlined, dropped dimmed, merged members tinted."""
    pixels = np.asarray(base, dtype=np.float32).copy()
    boxes = geometry.token_boxes(trace)
    kept = trace.kept[layer]
    merged = np.zeros_like(kept)
    for members in trace.merged_members(layer).values():
        merged[members] = True
    for v in np.flatnonzero(~kept):
        x0, y0, x1, y1 = boxes[v]
        if merged[v]:
            region = pixels[y0:y1, x0:x1]
            pixels[y0:y1, x0:x1] = (1 - MERGE_TINT) * region + MERGE_TINT * np.array(MERGED)
        else:
            pixels[y0:y1, x0:x1] *= DIM
    out = pixels.round().clip(0, 255).astype(np.uint8)
    for v in np.flatnonzero(kept):
        _outline(out, boxes[v], KEPT)
    for v in np.flatnonzero(merged & ~kept):
        _outline(out, boxes[v], MERGED)
    return Image.fromarray(out)


def layer_stack(panels: Sequence[Image.Image], titles: Sequence[str]) -> Image.Image:
    """Panels one below the other, each under a ``LABEL_PX`` title strip (the PNG of several layers)."""
    width = max(p.width for p in panels)
    height = sum(p.height + LABEL_PX for p in panels)
    out = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(out)
    y = 0
    for panel, title in zip(panels, titles, strict=True):
        draw.text((3, y + 1), title, fill=LABEL_COLOUR)
        out.paste(panel, (0, y + LABEL_PX))
        y += panel.height + LABEL_PX
    return out


def panel_origin(panels: Sequence[Image.Image], i: int) -> tuple[int, int]:
    """Top-left ``(x, y)`` of panel ``i`` inside :func:`layer_stack`'s image."""
    return 0, sum(p.height + LABEL_PX for p in panels[:i]) + LABEL_PX
