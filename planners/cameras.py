"""What the model's cameras show during an evaluation: intact, or replaced to measure how much the
plan depends on them (config group ``cameras``).

A :class:`CameraAblation` replaces the cameras at one of two places on the input path: in the
dataset (what the images show: :class:`ConstantImages`, :class:`OtherSceneCameras`) or in the
decoder input (the visual tokens themselves: :class:`ZeroVisualTokens`). Each replacement is a
different question, and gives a different answer on the same weights:

- ``zero_tokens``: every visual-token embedding set to 0 (what the bundled models' TRAINING.md
  records as ``model_visual_zeroed``); an input no model was trained on.
- ``black`` / ``grey``: every camera image black (0) or mid-grey (128). With SigLIP's
  normalisation (mean = std = 0.5) mid-grey is an all-zero ``pixel_values``.
- ``other_scene``: each sample sees the cameras of a sample from another scene of the same split
  (same keyframe position where the other scene has it). Real camera images, just the wrong ones:
  the in-distribution control of how much the plan reads its cameras.

A VLA planner run under an ablation is named ``vla[<name>]``, so its runs never pair with intact
ones as the same configuration; reports compare each ablated unpruned run with the intact one
(:mod:`vla_autoprune.pipeline.camera_reliance`).
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from vla_autoprune.errors import ConfigError
from vla_autoprune.models.base import DecoderInputs

logger = logging.getLogger(__name__)


class CameraAblation(abc.ABC):  # noqa: B024 - both hooks optional: each ablation overrides one
    """Replaces what the cameras show. Subclasses set ``name`` and override one of the two hooks."""

    #: Short identifier, shown in the planner name (``vla[<name>]``, hence in run.json).
    name: str = "cameras"

    def dataset(self, dataset: Any) -> Any:
        """The evaluation dataset with its ``images`` replaced; the default returns it unchanged."""
        return dataset

    def inputs(self, inputs: DecoderInputs) -> DecoderInputs:
        """The decoder input with its visual tokens replaced; the default returns it unchanged."""
        return inputs

    def split_images(self, images: torch.Tensor, scenes: Sequence[Any]) -> torch.Tensor:
        """:meth:`dataset` for a split held in memory (the training script's evaluation): uint8
        ``[S, C, 3, H, W]`` images and each sample's scene (any hashable id) -> replaced images of the
        same shape. The default returns them unchanged."""
        return images

    @property
    def intact(self) -> bool:
        """True when this ablation changes nothing."""
        return False


class Intact(CameraAblation):
    """The cameras as recorded (the default)."""

    name = "intact"

    @property
    def intact(self) -> bool:
        """Inherited, see superclass."""
        return True


class ZeroVisualTokens(CameraAblation):
    """Every visual token's input embedding (and any per-layer visual input, e.g. Qwen3-VL's
    deepstack features) set to zero; text, masks and positions unchanged. The vision tower's
    saliency, which pre-decoder pruners (FasterVLM) rank by, stays that of the real images."""

    name = "zero_tokens"

    def inputs(self, inputs: DecoderInputs) -> DecoderInputs:
        """Inherited, see superclass."""
        visual = inputs.layout.visual_mask.unsqueeze(-1)  # [B, N, 1]
        deepstack = inputs.deepstack
        if deepstack is not None:
            deepstack = tuple(torch.zeros_like(features) for features in deepstack)
        return inputs.with_(inputs_embeds=inputs.inputs_embeds.masked_fill(visual, 0.0), deepstack=deepstack)


class ConstantImages(CameraAblation):
    """Every camera image one uniform uint8 value: 0 = black, 128 = mid-grey.

    Args:
        value: the pixel value, 0..255, in every channel.
        name: the identifier (``black``, ``grey``, ...).
    """

    def __init__(self, value: int, name: str) -> None:
        if not (isinstance(value, int) and 0 <= value <= 255):
            raise ConfigError(f"cameras.value={value!r} must be an integer pixel value in 0..255")
        self.value = value
        self.name = name

    def dataset(self, dataset: Any) -> Any:
        """Inherited, see superclass."""
        return ReplacedImages(dataset, self._constant, f"every image = {self.value}")

    def split_images(self, images: torch.Tensor, scenes: Sequence[Any]) -> torch.Tensor:
        """Inherited, see superclass."""
        return torch.full_like(images, self.value)

    def _constant(self, index: int, images: torch.Tensor) -> torch.Tensor:
        return self.split_images(images, ())


class OtherSceneCameras(CameraAblation):
    """Each sample gets the images of a sample from another scene of the same split.

    The scenes are shuffled once with ``seed`` and each takes its cameras from the next one in that
    order (the last from the first): every scene gives and receives exactly once, and none keeps its
    own. Within the scenes, the k-th sample takes the other scene's k-th (its last when shorter).

    Args:
        seed: seed of the scene shuffle.
    """

    name = "other_scene"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def dataset(self, dataset: Any) -> Any:
        """Inherited, see superclass."""
        scenes = _scene_tokens(dataset)
        donors = other_scene_donors(scenes, self.seed)
        logger.info(
            "cameras: each sample sees the cameras of a sample from another scene (seed %d)", self.seed
        )
        return ReplacedImages(dataset, _DonorImages(dataset, donors), "cameras of other scenes")

    def split_images(self, images: torch.Tensor, scenes: Sequence[Any]) -> torch.Tensor:
        """Inherited, see superclass."""
        return images[torch.from_numpy(other_scene_donors(scenes, self.seed))]


class _DonorImages:
    """``(index, images) -> dataset[donors[index]]["images"]`` (a class, so DataLoader workers can pickle it)."""

    def __init__(self, dataset: Any, donors: np.ndarray) -> None:
        self.dataset = dataset
        self.donors = donors

    def __call__(self, index: int, images: torch.Tensor) -> torch.Tensor:
        donor: torch.Tensor = self.dataset[int(self.donors[index])]["images"]
        return donor


def dataset_seen_by(planner: Any, dataset: Any) -> Any:
    """``dataset`` as ``planner`` sees it: through its camera ablation, if it has one (a VLA
    planner), unchanged otherwise (camera-free planners)."""
    cameras = getattr(planner, "cameras", None)
    return cameras.dataset(dataset) if isinstance(cameras, CameraAblation) else dataset


def other_scene_donors(scenes: Sequence[Any], seed: int) -> np.ndarray:
    """int64 [S]: for each sample (its scene, a token or any hashable id, in ``scenes``, samples of a scene contiguous or
    not, in time order), the index of the sample whose cameras it gets, always of another scene.

    Raises a one-line :class:`ConfigError` when there are fewer than two scenes.
    """
    order = list(dict.fromkeys(scenes))  # scenes in order of first appearance
    if len(order) < 2:
        raise ConfigError(
            f"cameras=other_scene needs samples of at least 2 scenes; the evaluated data holds {len(order)}"
            " (use more scenes, or another cameras ablation)"
        )
    members: dict[str, list[int]] = {scene: [] for scene in order}
    for index, scene in enumerate(scenes):
        members[scene].append(index)
    shuffled = [order[i] for i in np.random.default_rng(seed).permutation(len(order))]
    donor_scene = {scene: shuffled[(i + 1) % len(shuffled)] for i, scene in enumerate(shuffled)}
    donors = np.empty(len(scenes), dtype=np.int64)
    for scene, indices in members.items():
        given = members[donor_scene[scene]]
        for k, index in enumerate(indices):
            donors[index] = given[min(k, len(given) - 1)]
    return donors


def _scene_tokens(dataset: Any) -> list[str]:
    """The scene token of every sample, from the dataset's tables (no images decoded)."""
    if not hasattr(dataset, "scene_tokens"):
        raise ConfigError(
            f"cameras=other_scene needs a dataset that lists each sample's scene (scene_tokens()); "
            f"{type(dataset).__name__} does not"
        )
    return list(dataset.scene_tokens())


class ReplacedImages(Dataset):
    """A dataset whose items carry replaced ``images``; every other field and attribute is the
    wrapped dataset's (``len``, ``dataroot``, ``map_locations()``, ...).

    Args:
        dataset: the wrapped dataset (items as in :mod:`vla_autoprune.data.schema`).
        replace: ``(index, images) -> images``: uint8 ``[C, 3, H, W]`` in, the same shape out.
        description: what the images become, for logs and ``repr``.
    """

    def __init__(self, dataset: Any, replace: Any, description: str) -> None:
        self.base = dataset
        self.replace = replace
        self.description = description

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.base[index])
        images = self.replace(index, item["images"])
        if images.shape != item["images"].shape or images.dtype != item["images"].dtype:
            raise ValueError(
                f"replaced images are {images.dtype} {tuple(images.shape)}, the dataset's "
                f"{item['images'].dtype} {tuple(item['images'].shape)}; replace with the same shape"
            )
        item["images"] = images
        return item

    def __getattr__(self, name: str) -> Any:
        # Only called for attributes this wrapper lacks: the wrapped dataset's (dataroot, nusc, ...).
        if name == "base":  # not yet set (e.g. while unpickling): no recursion through self.base
            raise AttributeError(name)
        return getattr(self.base, name)

    def __repr__(self) -> str:
        return f"ReplacedImages({self.base!r}, {self.description})"
