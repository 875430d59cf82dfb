"""``NuScenesDrivingDataset``: nuScenes keyframes as planning samples (see ``schema.py``).

Built on nuscenes-devkit: the tables are loaded by :class:`nuscenes.NuScenes` and read through
``nusc.get`` / ``nusc.get_sample_data_path`` only. Every geometric quantity is expressed in the
ego frame of the current keyframe's ``LIDAR_TOP`` sample_data (x forward, y left).

Conventions (see ``geometry.py`` for the formulas):

- trajectories: the ``LIDAR_TOP`` ego positions of the neighbouring keyframes of the same scene;
  steps past the scene's ends are zeros with a false mask.
- ``cam2ego``: camera -> ego at the camera's own timestamp -> global -> current ego, so the
  camera's ego pose (which differs from the lidar's) is compensated, as the devkit does.
- ``ego_state``: derivatives at the current time of the polynomial through the current keyframe
  and its two neighbours (central difference; one-sided at a scene end).
- ``command``: the VAD / UniAD rule on the last valid GT waypoint (y > 2 m left, < -2 m right).
- ``future_boxes``: every annotation of ``CATEGORIES`` at each future keyframe, nearest first.
- ``agent_*``: the same annotations at the current and future keyframes, one slot per
  ``instance_token`` (slots ordered by the agent's closest approach over the 3 s, nearest first).
- ``map_location`` / ``ego_pose``: the log's location and the current pose (global x, y, yaw), so
  the closed-loop-style score can cut the map around the ego.
- ``scenario`` / ``complexity``: from the ``<version>/scenarios.json`` side file when there is one
  (the synthetic sets); otherwise ``unknown`` and the same complexity definition computed from the
  sample's annotations (road users within 50 m, see ``schema.py``).
- ``images``: decoded straight at ``image_size`` when one is given (JPEG DCT-domain downscaling,
  then one uint8 resize), never as full-size float frames.
"""

from __future__ import annotations

import io
import json
import logging
import numbers
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from nuscenes import NuScenes
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from vla_autoprune.data.errors import (
    CorruptImageError,
    DatasetConfigError,
    EmptySplitError,
    ImageNotFoundError,
    MissingCameraError,
    NuScenesFormatError,
    UnknownCameraError,
)
from vla_autoprune.data.geometry import (
    boxes_in_frame,
    driving_command,
    ego_motion,
    invert_pose,
    pose_matrix,
    transform_points,
    yaw_of,
)
from vla_autoprune.data.schema import (
    CAMERAS,
    CATEGORIES,
    COMPLEXITY_CATEGORY_PREFIXES,
    COMPLEXITY_RANGE_M,
    NUM_AGENT_STEPS,
    NUM_FUTURE_STEPS,
    NUM_PAST_STEPS,
    UNKNOWN_SCENARIO,
)
from vla_autoprune.data.splits import check_version_dir, split_scene_names

logger = logging.getLogger(__name__)

#: The sensor whose ego pose defines the current ego frame (the nuScenes / UniAD convention).
EGO_CHANNEL = "LIDAR_TOP"
#: nuScenes timestamps are microseconds.
MICROSECONDS_PER_SECOND = 1e6
#: Keyframes in the ego-motion finite-difference window (current + one neighbour each side).
EGO_MOTION_WINDOW = 3
#: A complete JPEG ends with the EOI marker; checked so truncation is caught even when some other
#: code has set PIL's ``ImageFile.LOAD_TRUNCATED_IMAGES`` (which makes PIL pad silently).
JPEG_EOI = b"\xff\xd9"
#: An object's default repr (``<_io.BytesIO object at 0x7fa4...>``) in a decoder's error text.
_OBJECT_REPR = re.compile(r"\s*<[^<>]*\bat 0x[0-9a-fA-F]+>")
#: Box columns: x, y, width, length, yaw.
BOX_DIM = 5
#: Side file of per-sample scenario family and complexity (written by the synthetic generator).
SCENARIOS_FILE = "scenarios.json"

_CATEGORY_INDEX = {name: i for i, name in enumerate(CATEGORIES)}


class NuScenesDrivingDataset(Dataset):
    """Keyframe samples of one split, in split scene order, each a dict of ``schema.BATCH_KEYS``.

    :param dataroot: folder holding ``<version>/`` (tables) and ``samples/`` (JPEGs).
    :param version: table version, e.g. ``v1.0-mini``, ``v1.0-trainval`` or ``v1.0-synthetic``.
    :param split: split name (release splits, or a key of ``<version>/splits.json``).
    :param cameras: camera channels, in the order of ``images``.
    :param image_size: ``(W, H)`` to resize images to (intrinsics scaled); None keeps native.
    :param max_boxes: boxes per future step: None keeps all (N = the item's max), an int keeps
        the nearest ``max_boxes`` and pads every step to exactly that many.
    :param full_future_only: keep only the samples followed by ``NUM_FUTURE_STEPS`` keyframes in
        their scene (a full 3 s future: every horizon's L2 / collision and the PDM score are defined);
        the others, the last keyframes of each scene, would only count towards the 1-2 s figures.
    :param nusc: an already loaded ``NuScenes`` for the same dataroot and version (skips loading).
    :param verbose: let the devkit print its loading progress.
    """

    def __init__(
        self,
        dataroot: str | Path,
        version: str = "v1.0-synthetic",
        split: str = "val",
        cameras: Sequence[str] = CAMERAS,
        image_size: Sequence[int] | None = None,
        max_boxes: int | None = None,
        full_future_only: bool = False,
        nusc: NuScenes | None = None,
        verbose: bool = False,
    ) -> None:
        self.dataroot = Path(dataroot)
        self.version = version
        self.split = split
        self.cameras = _check_cameras_arg(cameras)
        self.image_size = _check_image_size(image_size)
        self.max_boxes = _check_max_boxes(max_boxes)
        self.full_future_only = bool(full_future_only)
        check_version_dir(self.dataroot, version)
        self.nusc = (
            _check_nusc(nusc, self.dataroot, version)
            if nusc is not None
            else load_nuscenes(self.dataroot, version, verbose)
        )
        scene_names = split_scene_names(self.nusc, split)
        self.sample_tokens = self._collect_samples(scene_names)
        self.sample_info = _load_sample_info(self.dataroot / version / SCENARIOS_FILE)
        self._check_channels()
        logger.info(
            "NuScenesDrivingDataset %s/%s at %s: %d scenes, %d samples, cameras=%s, image_size=%s",
            version, split, self.dataroot, len(scene_names), len(self.sample_tokens),
            ",".join(self.cameras), self.image_size or "native",
        )  # fmt: skip

    def __len__(self) -> int:
        return len(self.sample_tokens)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """One sample; tensors as in ``schema.py`` without the batch dimension."""
        sample = self.nusc.get("sample", self.sample_tokens[index])
        current_pose = self._ego_pose(sample)  # [4, 4] global <- current ego
        ego_from_global = invert_pose(current_pose)
        past = self._walk(sample, "prev", NUM_PAST_STEPS)
        future = self._walk(sample, "next", NUM_FUTURE_STEPS)
        past_xy, past_mask = self._path(past, ego_from_global, NUM_PAST_STEPS)
        gt_xy, gt_mask = self._path(future, ego_from_global, NUM_FUTURE_STEPS)
        images, intrinsics, cam2ego = self._cameras(sample, ego_from_global)
        boxes, labels = self._future_boxes(future, ego_from_global)
        agent_boxes, agent_valid, agent_labels = self._agent_tracks([sample, *future], ego_from_global)
        info = self.sample_info.get(sample["token"], {})
        complexity = info.get("complexity")
        if complexity is None:
            complexity = self._complexity(sample, current_pose)
        return {
            "sample_token": sample["token"],
            "scene_token": sample["scene_token"],
            "cameras": self.cameras,
            "images": images,
            "intrinsics": intrinsics,
            "cam2ego": cam2ego,
            "ego_state": self._ego_state(past, sample, future, ego_from_global),
            "command": torch.tensor(driving_command(gt_xy, gt_mask), dtype=torch.int64),
            "past_trajectory": torch.from_numpy(past_xy).float(),
            "past_mask": torch.from_numpy(past_mask),
            "gt_trajectory": torch.from_numpy(gt_xy).float(),
            "gt_mask": torch.from_numpy(gt_mask),
            "future_boxes": boxes,
            "future_labels": labels,
            "scenario": str(info.get("scenario", UNKNOWN_SCENARIO)),
            "complexity": torch.tensor(float(complexity), dtype=torch.float32),
            "agent_boxes": agent_boxes,
            "agent_valid": agent_valid,
            "agent_labels": agent_labels,
            "map_location": self.location(sample["scene_token"]),
            "ego_pose": torch.tensor(
                [current_pose[0, 3], current_pose[1, 3], yaw_of(current_pose)], dtype=torch.float64
            ),
        }

    def location(self, scene_token: str) -> str:
        """The map location of a scene's log (``maps/expansion/<location>.json``)."""
        return str(self._get("log", self._get("scene", scene_token)["log_token"])["location"])

    def scene_tokens(self) -> list[str]:
        """The scene token of every sample, in dataset order (reads tables only, no images)."""
        return [self.nusc.get("sample", token)["scene_token"] for token in self.sample_tokens]

    def map_locations(self) -> list[str]:
        """The map location of every sample, in dataset order (reads tables only, no images)."""
        by_scene: dict[str, str] = {}
        out = []
        for scene in self.scene_tokens():
            if scene not in by_scene:
                by_scene[scene] = self.location(scene)
            out.append(by_scene[scene])
        return out

    # ---- construction ----------------------------------------------------------------------

    def _collect_samples(self, scene_names: list[str]) -> list[str]:
        """Keyframe sample tokens of the named scenes, scene by scene, in time order."""
        scenes = {scene["name"]: scene for scene in self.nusc.scene}
        missing = [name for name in scene_names if name not in scenes]
        if missing:
            logger.warning(
                "%d scenes of split %s are not in %s (e.g. %s); skipping them",
                len(missing), self.split, self.version, missing[0],
            )  # fmt: skip
        tokens: list[str] = []
        for name in scene_names:
            if name in scenes:
                tokens.extend(self._scene_samples(scenes[name]))
        if not tokens:
            if self.full_future_only:
                raise EmptySplitError(
                    f"split {self.split!r} of {self.version} at {self.dataroot} has no sample with a full "
                    f"{NUM_FUTURE_STEPS}-keyframe future (every scene is too short); set "
                    f"full_future_only=false or use scenes of more than {NUM_FUTURE_STEPS} keyframes."
                )
            raise EmptySplitError(
                f"split {self.split!r} of {self.version} at {self.dataroot} has no sample in the loaded "
                f"tables ({len(scene_names)} scene names, {len(missing)} absent); pick a split whose "
                "scenes this version contains."
            )
        return tokens

    def _scene_samples(self, scene: dict[str, Any]) -> list[str]:
        """Sample tokens of one scene, following the ``next`` chain from its first sample (without
        the last ``NUM_FUTURE_STEPS`` when ``full_future_only``)."""
        tokens: list[str] = []
        token = scene["first_sample_token"]
        while token:
            tokens.append(token)
            token = self._get("sample", token)["next"]
        if self.full_future_only:
            return tokens[: max(0, len(tokens) - NUM_FUTURE_STEPS)]
        return tokens

    def _check_channels(self) -> None:
        """Every sample has a keyframe sample_data record for each camera and for LIDAR_TOP."""
        channels = {s["channel"]: s["modality"] for s in self.nusc.sensor}
        unknown = [c for c in self.cameras if channels.get(c) != "camera"]
        if unknown:
            cams = sorted(c for c, modality in channels.items() if modality == "camera")
            raise UnknownCameraError(
                f"cameras {unknown} are not camera sensors of {self.version}; use channels from {cams}."
            )
        for token in self.sample_tokens:
            present = self.nusc.get("sample", token)["data"]
            for channel in (*self.cameras, EGO_CHANNEL):
                if channel not in present:
                    raise MissingCameraError(
                        f"sample {token} has no {channel} keyframe sample_data record in "
                        f"{self.dataroot / self.version}; restore the record or drop {channel} from cameras."
                    )

    # ---- item parts ------------------------------------------------------------------------

    def _get(self, table: str, token: str) -> dict[str, Any]:
        """``nusc.get`` with a dangling token reported as a format error, not a bare KeyError."""
        try:
            return self.nusc.get(table, token)
        except KeyError as exc:
            raise NuScenesFormatError(
                f"{table} token {token} is referenced but missing from {self.dataroot / self.version}; "
                "regenerate or re-download the tables."
            ) from exc

    def _ego_pose(self, sample: dict[str, Any]) -> np.ndarray:
        """``[4, 4]`` global <- ego transform of the sample's LIDAR_TOP keyframe."""
        return self._pose_of(sample)[0]

    def _pose_of(self, sample: dict[str, Any]) -> tuple[np.ndarray, float]:
        """(``[4, 4]`` global <- ego, time in seconds) of the sample's LIDAR_TOP keyframe."""
        sd = self._get("sample_data", sample["data"][EGO_CHANNEL])
        pose = self._get("ego_pose", sd["ego_pose_token"])
        return pose_matrix(pose["translation"], pose["rotation"]), pose["timestamp"] / MICROSECONDS_PER_SECOND

    def _walk(self, sample: dict[str, Any], direction: str, steps: int) -> list[dict[str, Any]]:
        """Up to ``steps`` keyframe samples following ``direction`` ("prev"/"next"), nearest first."""
        out: list[dict[str, Any]] = []
        token = sample[direction]
        while token and len(out) < steps:
            out.append(self._get("sample", token))
            token = out[-1][direction]
        return out

    def _path(
        self, samples: list[dict[str, Any]], ego_from_global: np.ndarray, steps: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Ego xy ``[steps, 2]`` (zeros where absent) and mask ``[steps]`` in the current frame."""
        xy = np.zeros((steps, 2))
        mask = np.zeros(steps, dtype=bool)
        for k, other in enumerate(samples):
            position = self._ego_pose(other)[:3, 3]
            xy[k] = transform_points(ego_from_global, position)[0, :2]
            mask[k] = True
        return xy, mask

    def _ego_state(
        self,
        past: list[dict[str, Any]],
        sample: dict[str, Any],
        future: list[dict[str, Any]],
        ego_from_global: np.ndarray,
    ) -> torch.Tensor:
        """float32 ``[3]`` (speed, longitudinal accel, yaw rate) from neighbouring keyframes.

        The window is 3 consecutive keyframes centred on the current one; at a scene end it is
        shifted inward (one-sided differences); see :func:`geometry.ego_motion`.
        """
        chain = [*reversed(past), sample, *future]
        start = min(max(len(past) - 1, 0), max(len(chain) - EGO_MOTION_WINDOW, 0))
        window = [self._pose_of(s) for s in chain[start : start + EGO_MOTION_WINDOW]]
        relative = [ego_from_global @ pose for pose, _ in window]  # current ego <- ego at t
        motion = ego_motion(
            times_s=np.array([t for _, t in window]),
            xy=np.array([r[:2, 3] for r in relative]),
            yaws=np.array([yaw_of(r) for r in relative]),
            t0_s=self._pose_of(sample)[1],
        )
        return torch.tensor([motion.speed, motion.longitudinal_accel, motion.yaw_rate], dtype=torch.float32)

    def _cameras(
        self, sample: dict[str, Any], ego_from_global: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """uint8 images ``[C, 3, H, W]``, float32 intrinsics ``[C, 3, 3]`` and cam2ego ``[C, 4, 4]``."""
        images, intrinsics, cam2ego = [], [], []
        for channel in self.cameras:
            sd = self._get("sample_data", sample["data"][channel])
            calib = self._get("calibrated_sensor", sd["calibrated_sensor_token"])
            pose = self._get("ego_pose", sd["ego_pose_token"])
            # The camera fires at its own time: camera -> ego(t_cam) -> global -> ego(t_lidar).
            global_from_cam_ego = pose_matrix(pose["translation"], pose["rotation"])
            cam_to_cam_ego = pose_matrix(calib["translation"], calib["rotation"])
            cam2ego.append(ego_from_global @ global_from_cam_ego @ cam_to_cam_ego)
            path = self.nusc.get_sample_data_path(sd["token"])
            image = load_rgb(path, (sd["width"], sd["height"]), self.image_size)
            native_w, native_h = sd["width"], sd["height"]
            if not (native_w and native_h):  # a record without its size: read the file's header
                with Image.open(path) as header:
                    native_w, native_h = header.size
            scale = np.diag([image.shape[1] / native_w, image.shape[0] / native_h, 1.0])
            intrinsics.append(scale @ np.asarray(calib["camera_intrinsic"], dtype=np.float64))
            images.append(image.transpose(2, 0, 1))  # [H, W, 3] -> [3, H, W]
        return (
            torch.from_numpy(np.stack(images)),
            torch.from_numpy(np.stack(intrinsics)).float(),
            torch.from_numpy(np.stack(cam2ego)).float(),
        )

    def _complexity(self, sample: dict[str, Any], current_pose: np.ndarray) -> int:
        """Road users (``COMPLEXITY_CATEGORY_PREFIXES``) annotated within ``COMPLEXITY_RANGE_M`` of the ego."""
        count = 0
        for token in sample["anns"]:
            ann = self._get("sample_annotation", token)
            near = np.hypot(*(np.asarray(ann["translation"][:2]) - current_pose[:2, 3])) <= COMPLEXITY_RANGE_M
            count += bool(near and ann["category_name"].startswith(COMPLEXITY_CATEGORY_PREFIXES))
        return count

    def _future_boxes(
        self, future: list[dict[str, Any]], ego_from_global: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """GT boxes ``[6, N, 5]`` (x, y, width, length, yaw) and labels ``[6, N]`` (-1 = padding)."""
        per_step = [self._step_boxes(other, ego_from_global) for other in future]
        widest = max((len(labels) for _, labels in per_step), default=0)
        n = self.max_boxes if self.max_boxes is not None else widest
        boxes = np.zeros((NUM_FUTURE_STEPS, n, BOX_DIM))
        labels = np.full((NUM_FUTURE_STEPS, n), -1, dtype=np.int64)
        for k, (step_boxes, step_labels) in enumerate(per_step):
            kept = min(n, len(step_labels))
            boxes[k, :kept] = step_boxes[:kept]
            labels[k, :kept] = step_labels[:kept]
        return torch.from_numpy(boxes).float(), torch.from_numpy(labels)

    def _step_boxes(
        self, sample: dict[str, Any], ego_from_global: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """One keyframe's annotations of ``CATEGORIES``, nearest first: ``[M, 5]`` and ``[M]``."""
        _, boxes, labels = self._frame_annotations(sample, ego_from_global)
        # Nearest first, so max_boxes truncation drops the farthest agents; stable for ties.
        order = np.argsort(np.hypot(boxes[:, 0], boxes[:, 1]), kind="stable")
        return boxes[order], labels[order]

    def _frame_annotations(
        self, sample: dict[str, Any], ego_from_global: np.ndarray
    ) -> tuple[list[str], np.ndarray, np.ndarray]:
        """One keyframe's annotations of ``CATEGORIES`` in annotation order: instance tokens [M],
        boxes ``[M, 5]`` (x, y, width, length, yaw in the current frame) and labels ``[M]``."""
        anns = [self._get("sample_annotation", token) for token in sample["anns"]]
        anns = [ann for ann in anns if ann["category_name"] in _CATEGORY_INDEX]
        boxes = np.zeros((len(anns), BOX_DIM))
        if anns:
            boxes[:, [0, 1, 4]] = boxes_in_frame(
                ego_from_global,
                np.array([ann["translation"] for ann in anns]),
                [ann["rotation"] for ann in anns],
            )
            boxes[:, 2:4] = [ann["size"][:2] for ann in anns]  # nuScenes size is (w, l, h)
        labels = np.array([_CATEGORY_INDEX[ann["category_name"]] for ann in anns], dtype=np.int64)
        return [ann["instance_token"] for ann in anns], boxes, labels

    def _agent_tracks(
        self, keyframes: list[dict[str, Any]], ego_from_global: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Agents by identity over the current keyframe and the ones after it.

        :param keyframes: the current sample followed by up to ``NUM_FUTURE_STEPS`` future ones.
        :return: float32 boxes ``[7, A, 5]`` (zeros where absent), bool valid ``[7, A]`` and int64
            labels ``[A]``: slot ``a`` is one ``instance_token`` at every step, slots ordered by
            closest approach (nearest first; ``max_boxes`` keeps that many, padded with label -1).
        """
        slot_of: dict[str, int] = {}
        seen: list[tuple[int, int, np.ndarray, int]] = []  # (step, slot, box [5], label)
        for k, sample in enumerate(keyframes):
            tokens, boxes, labels = self._frame_annotations(sample, ego_from_global)
            for token, box, label in zip(tokens, boxes, labels, strict=True):
                seen.append((k, slot_of.setdefault(token, len(slot_of)), box, int(label)))
        closest = np.full(len(slot_of), np.inf)
        for _, slot, box, _ in seen:
            closest[slot] = min(closest[slot], float(np.hypot(box[0], box[1])))
        order = np.argsort(closest, kind="stable")  # [A]: slot of each output position
        n = len(order) if self.max_boxes is None else self.max_boxes
        position = np.full(len(slot_of), -1)
        position[order[:n]] = np.arange(min(n, len(order)))
        boxes_out = np.zeros((NUM_AGENT_STEPS, n, BOX_DIM))
        valid = np.zeros((NUM_AGENT_STEPS, n), dtype=bool)
        labels_out = np.full(n, -1, dtype=np.int64)
        for k, slot, box, label in seen:
            if position[slot] >= 0:
                boxes_out[k, position[slot]], valid[k, position[slot]] = box, True
                labels_out[position[slot]] = label
        return torch.from_numpy(boxes_out).float(), torch.from_numpy(valid), torch.from_numpy(labels_out)


def load_nuscenes(dataroot: str | Path, version: str, verbose: bool = False) -> NuScenes:
    """Load the tables with the devkit, reporting its bare assertions / KeyErrors as format errors."""
    try:
        return NuScenes(version=version, dataroot=str(dataroot), verbose=verbose)
    except (AssertionError, KeyError) as exc:
        raise NuScenesFormatError(
            f"nuscenes-devkit cannot load {version} at {dataroot} ({type(exc).__name__}: {exc}); "
            "regenerate or re-download the tables and maps."
        ) from exc


def load_rgb(
    path: str | Path, expected_size: tuple[int, int] | None = None, size: tuple[int, int] | None = None
) -> np.ndarray:
    """Decode a camera JPEG to uint8 RGB ``[H, W, 3]``, refusing truncated or corrupt files.

    :param expected_size: ``(W, H)`` the sample_data record declares; checked when given and > 0.
    :param size: ``(W, H)`` to decode at: the JPEG decoder downscales by a power of two in the DCT
        domain to no less than ``size`` (PIL ``draft``), then one bilinear uint8 resize gives ``size``.
    :raises ImageNotFoundError: no file at ``path``.
    :raises CorruptImageError: the file does not decode completely or has the wrong size.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageNotFoundError(
            f"camera image {path} does not exist; restore the samples/ folder or regenerate the dataset."
        )
    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as image:
            fmt, native = image.format, image.size
            if size is not None and fmt == "JPEG":
                image.draft("RGB", size)
            image.load()  # decodes fully; raises OSError on truncation (PIL's default)
            decoded = image.convert("RGB")
            if size is not None and decoded.size != (size[0], size[1]):
                decoded = decoded.resize((size[0], size[1]), Image.Resampling.BILINEAR)
            rgb = np.asarray(decoded)
    except UnidentifiedImageError as exc:
        raise CorruptImageError(
            f"camera image {path} is not an image file PIL can identify (no JPEG or other image header); "
            "replace the file."
        ) from exc
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise CorruptImageError(
            f"camera image {path} cannot be decoded ({_decoder_reason(exc)}); replace the file."
        ) from exc
    if fmt == "JPEG" and not data.rstrip(b"\x00").endswith(JPEG_EOI):
        raise CorruptImageError(f"camera image {path} is truncated (no JPEG end marker); replace the file.")
    if expected_size and all(expected_size) and tuple(native) != tuple(expected_size):
        raise CorruptImageError(
            f"camera image {path} decodes to {native[0]}x{native[1]} but its sample_data record says "
            f"{expected_size[0]}x{expected_size[1]}; replace the file or fix the record."
        )
    return rgb


def _decoder_reason(exc: BaseException) -> str:
    """A decoder exception's text without object reprs (PIL names the in-memory file it read)."""
    reason = " ".join(_OBJECT_REPR.sub("", str(exc)).split())
    return reason or type(exc).__name__


def _load_sample_info(path: Path) -> dict[str, dict[str, Any]]:
    """Per-sample ``{"scenario", "complexity"}`` from a side file, or ``{}`` when there is none."""
    if not path.is_file():
        return {}
    try:
        samples = json.loads(path.read_text())["samples"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise NuScenesFormatError(
            f"{path} is not a valid scenario side file ({exc}); regenerate or delete it."
        ) from exc
    if not isinstance(samples, dict):
        raise NuScenesFormatError(
            f"{path} holds no per-sample mapping under 'samples'; regenerate or delete it."
        )
    return samples


def _check_nusc(nusc: NuScenes, dataroot: Path, version: str) -> NuScenes:
    """A passed-in ``NuScenes`` must hold the requested version of the same dataroot."""
    if nusc.version != version or os.path.realpath(nusc.dataroot) != os.path.realpath(dataroot):
        raise DatasetConfigError(
            f"nusc holds {nusc.version} at {nusc.dataroot} but {version} at {dataroot} was requested; "
            "pass matching dataroot/version or nusc=None."
        )
    return nusc


def _check_cameras_arg(cameras: Sequence[str]) -> tuple[str, ...]:
    """Cameras as a non-empty tuple of distinct channel names."""
    cams = (cameras,) if isinstance(cameras, str) else tuple(str(c) for c in cameras)
    if not cams or len(set(cams)) != len(cams):
        raise DatasetConfigError(
            f"cameras must be distinct channel names, got {list(cams)}; e.g. {list(CAMERAS)}."
        )
    return cams


def _check_image_size(image_size: Sequence[int] | None) -> tuple[int, int] | None:
    """``(W, H)`` of positive ints, or None."""
    if image_size is None:
        return None
    size = tuple(image_size)
    if len(size) != 2 or not all(isinstance(v, numbers.Integral) and v > 0 for v in size):
        raise DatasetConfigError(f"image_size must be (W, H) positive ints or None, got {image_size!r}.")
    return int(size[0]), int(size[1])


def _check_max_boxes(max_boxes: int | None) -> int | None:
    """A non-negative int, or None."""
    if max_boxes is not None and (not isinstance(max_boxes, numbers.Integral) or max_boxes < 0):
        raise DatasetConfigError(f"max_boxes must be a non-negative int or None, got {max_boxes!r}.")
    return None if max_boxes is None else int(max_boxes)
