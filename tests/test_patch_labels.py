"""Per-patch perception targets of the training script (data_tools/patch_labels.py), by hand."""

from __future__ import annotations

import torch

from data_tools.patch_labels import PATCH_CLASSES, mirror_patch_labels, patch_labels
from vla_autoprune.data.schema import CATEGORIES

CAR, ADULT, CONE = (
    CATEGORIES.index(c) for c in ("vehicle.car", "human.pedestrian.adult", "movable_object.trafficcone")
)


def _front_camera() -> tuple[torch.Tensor, torch.Tensor]:
    """One forward camera 1.5 m above the ego origin, f = 96 px, principal point at the centre of
    a 192 x 192 image: intrinsics ``[1, 1, 3, 3]`` and cam2ego ``[1, 1, 4, 4]``."""
    k = torch.tensor([[96.0, 0.0, 96.0], [0.0, 96.0, 96.0], [0.0, 0.0, 1.0]])
    cam2ego = torch.eye(4)
    # camera x (right) = -ego y, camera y (down) = -ego z, camera z (forward) = ego x
    cam2ego[:3, :3] = torch.tensor([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    cam2ego[:3, 3] = torch.tensor([0.0, 0.0, 1.5])
    return k.view(1, 1, 3, 3), cam2ego.view(1, 1, 4, 4)


def _labels(boxes: list[list[float]], cats: list[int], valid: list[bool] | None = None) -> torch.Tensor:
    k, cam2ego = _front_camera()
    valid_t = torch.tensor([valid if valid is not None else [True] * len(cats)])
    grid = patch_labels(torch.tensor([boxes]), valid_t, torch.tensor([cats]), k, cam2ego, (192, 192), 24)
    assert grid.shape == (1, 1, 8, 8)
    return grid[0, 0].flatten()  # row-major: the vision tower's patch order


def test_car_ahead_marks_the_four_patches_its_box_covers() -> None:
    # Corners x in [8, 12], y in [-1, 1], z in [0, 1.7]: u in [84, 108] px, v in [93.6, 114] px,
    # i.e. grid rows 3-4 and columns 3-4 of the 8 x 8 grid.
    labels = _labels([[10.0, 0.0, 2.0, 4.0, 0.0]], [CAR])
    expected = torch.zeros(64, dtype=torch.long)
    expected[[27, 28, 35, 36]] = PATCH_CLASSES.index("vehicle")
    assert torch.equal(labels, expected)


def test_person_wins_over_vehicle_and_other_objects_are_background() -> None:
    labels = _labels([[10.0, 0.0, 2.0, 4.0, 0.0], [9.0, -0.7, 0.6, 0.6, 0.0], [10.0, 0.0, 0.5, 0.5, 0.0]],
                     [CAR, ADULT, CONE])  # fmt: skip
    assert set(labels.unique().tolist()) == {0, 1, 2}
    # The person (u in [100, 107] px: column 4 only) stands in front of the car's right half.
    assert labels[[28, 36]].tolist() == [PATCH_CLASSES.index("human")] * 2
    assert labels[[27, 35]].tolist() == [PATCH_CLASSES.index("vehicle")] * 2


def test_boxes_behind_far_invalid_or_padding_are_not_labelled() -> None:
    behind = [-10.0, 0.0, 2.0, 4.0, 0.0]
    far = [80.0, 0.0, 2.0, 4.0, 0.0]
    ahead = [10.0, 0.0, 2.0, 4.0, 0.0]
    labels = _labels([behind, far, ahead, ahead], [CAR, CAR, CAR, -1], [True, True, False, True])
    assert torch.equal(labels, torch.zeros(64, dtype=torch.long))


def test_mirrored_labels_are_the_labels_of_the_mirrored_world() -> None:
    left = _labels([[10.0, 3.0, 2.0, 4.0, 0.3]], [CAR])
    right = _labels([[10.0, -3.0, 2.0, 4.0, -0.3]], [CAR])
    assert left.any() and not torch.equal(left, right)
    assert torch.equal(mirror_patch_labels(left.view(1, 1, 8, 8), [0]).flatten(), right)


def test_training_mirror_keeps_patch_labels_on_their_pixels() -> None:
    """``mirror`` moves each label with the pixels it describes (camera slots swapped, rows reversed)."""
    from data_tools.train_tiny_vla import mirror

    labels = torch.randint(0, len(PATCH_CLASSES), (2, 6, 8, 8), generator=torch.Generator().manual_seed(0))
    # Each 24 px patch of each camera is painted with its own label.
    images = labels.view(2, 6, 1, 8, 1, 8, 1).expand(2, 6, 3, 8, 24, 8, 24).reshape(2, 6, 3, 192, 192)
    batch = {
        "images": images.to(torch.uint8),
        "command": torch.tensor([0, 1]),
        "ego_state": torch.zeros(2, 3),
        "gt_trajectory": torch.zeros(2, 6, 2),
        "gt_mask": torch.ones(2, 6, dtype=torch.bool),
        "patch_labels": labels,
    }
    out = mirror(batch, torch.tensor([True, False]))
    painted = out["images"][:, :, 0, ::24, ::24].long()
    assert torch.equal(out["patch_labels"], painted)
    assert not torch.equal(out["patch_labels"][0], labels[0]) and torch.equal(
        out["patch_labels"][1], labels[1]
    )
