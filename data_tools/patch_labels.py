"""Per-patch perception targets for training the bundled model's vision tower.

A tiny vision tower trained from scratch on a few thousand frames learns what a scene *looks like*
before it learns to find the few patches that decide the plan (a pedestrian off the curb, the car
ahead). Real VLAs start from encoders pre-trained on far more data; this project cannot download
one, so training supervises each patch with what the nuScenes annotations say is there, the way
perception heads of driving models (UniAD, VAD) are trained. These labels are a training signal
only: the evaluated model never sees them.

Labels come from the current keyframe's annotated boxes projected through each camera's
calibration: the image-plane bounding rectangle of the box's eight corners marks every patch it
overlaps. Heights are not in the batch schema's boxes, so each class stands at a typical height.
"""

from __future__ import annotations

import torch

from planners.raster import box_corners as footprint_corners
from vla_autoprune.data.schema import CATEGORIES

#: Patch classes: nothing annotated, a vehicle, a person.
PATCH_CLASSES: tuple[str, ...] = ("background", "vehicle", "human")
#: Typical box heights (m) per class (the schema's boxes are (x, y, width, length, yaw)).
CLASS_HEIGHT_M = {"vehicle": 1.7, "human": 1.75}
#: Boxes beyond this range (m) from the ego are left unlabelled: a few pixels at 192 px.
MAX_RANGE_M = 60.0
#: Corners closer than this (m) in front of the camera's image plane are not projected.
MIN_DEPTH_M = 0.3


def class_of_labels(labels: torch.Tensor) -> torch.Tensor:
    """Patch class index per nuScenes category index ``labels [...]`` (``-1`` padding -> 0)."""
    lut = torch.zeros(len(CATEGORIES) + 1, dtype=torch.long)
    for i, name in enumerate(CATEGORIES):
        if name.startswith("vehicle.") and name != "vehicle.bicycle":
            lut[i] = PATCH_CLASSES.index("vehicle")
        elif name.startswith("human."):
            lut[i] = PATCH_CLASSES.index("human")
    return lut[labels.where(labels >= 0, len(CATEGORIES))]  # the extra last entry: padding


def box_corners(boxes: torch.Tensor, heights: torch.Tensor) -> torch.Tensor:
    """The 8 corners ``[..., 8, 3]`` of boxes ``[..., 5]`` (x, y, width, length, yaw) standing on
    the ground (z from 0 to ``heights [...]``): the footprint at both heights."""
    foot = torch.from_numpy(footprint_corners(boxes.numpy())).float()  # [..., 4, 2]
    ground = torch.cat([foot, torch.zeros_like(foot[..., :1])], dim=-1)
    top = torch.cat([foot, heights[..., None, None].expand_as(foot[..., :1])], dim=-1)
    return torch.cat([ground, top], dim=-2)


def patch_labels(
    boxes: torch.Tensor,
    valid: torch.Tensor,
    labels: torch.Tensor,
    intrinsics: torch.Tensor,
    cam2ego: torch.Tensor,
    image_hw: tuple[int, int],
    patch: int,
) -> torch.Tensor:
    """Class per patch ``[B, C, H / patch, W / patch]`` (flattened row-major, the vision tower's
    patch sequence; index into :data:`PATCH_CLASSES`; a person wins over a vehicle).

    :param boxes: ``[B, A, 5]`` current-keyframe boxes in the ego frame (``agent_boxes[:, 0]``).
    :param valid: ``[B, A]`` the box is annotated at the current keyframe.
    :param labels: ``[B, A]`` category indices (``-1`` padding).
    :param intrinsics: ``[B, C, 3, 3]`` camera matrices at ``image_hw``.
    :param cam2ego: ``[B, C, 4, 4]`` camera-to-ego transforms.
    """
    height, width = image_hw
    rows, cols = height // patch, width // patch
    cls = class_of_labels(labels)  # [B, A]
    heights = torch.zeros_like(cls, dtype=torch.float32)
    for name, h in CLASS_HEIGHT_M.items():
        heights = heights.masked_fill(cls == PATCH_CLASSES.index(name), h)
    keep = valid & (cls > 0) & (boxes[..., :2].norm(dim=-1) <= MAX_RANGE_M)  # [B, A]
    corners = box_corners(boxes.float(), heights)  # [B, A, 8, 3]
    rot, trans = cam2ego[..., :3, :3].float(), cam2ego[..., :3, 3].float()  # [B, C, 3, 3], [B, C, 3]
    rel = corners[:, None] - trans[:, :, None, None]  # [B, C, A, 8, 3]
    cam = torch.einsum("bcji,bcakj->bcaki", rot, rel)  # ego -> camera: R^T (p - t)
    depth = cam[..., 2]
    front = depth > MIN_DEPTH_M  # [B, C, A, 8]
    pix = torch.einsum("bcij,bcakj->bcaki", intrinsics.float(), cam)
    uv = pix[..., :2] / depth.clamp(min=MIN_DEPTH_M)[..., None]
    inf = torch.tensor(float("inf"))
    lo = torch.where(front[..., None], uv, inf).amin(dim=3)  # [B, C, A, 2]
    hi = torch.where(front[..., None], uv, -inf).amax(dim=3)
    seen = front.any(-1) & keep[:, None]  # [B, C, A]
    edges_u = torch.arange(cols, dtype=torch.float32) * patch
    edges_v = torch.arange(rows, dtype=torch.float32) * patch
    over_u = (hi[..., None, 0] > edges_u) & (lo[..., None, 0] < edges_u + patch)  # [B, C, A, cols]
    over_v = (hi[..., None, 1] > edges_v) & (lo[..., None, 1] < edges_v + patch)  # [B, C, A, rows]
    hit = over_v[..., :, None] & over_u[..., None, :] & seen[..., None, None]  # [B, C, A, rows, cols]
    graded = hit.long() * cls[:, None, :, None, None]
    return graded.amax(dim=2) if graded.shape[2] else graded.new_zeros(*graded.shape[:2], rows, cols)


def mirror_patch_labels(labels: torch.Tensor, camera_order: list[int]) -> torch.Tensor:
    """Labels ``[B, C, rows, cols]`` of the left <-> right mirrored frames: cameras permuted by
    ``camera_order`` and each grid row reversed."""
    return labels[:, camera_order].flip(-1)
