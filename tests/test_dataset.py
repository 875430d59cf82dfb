"""NuScenesDrivingDataset, geometry and collate on a small generated nuScenes-format set."""

from __future__ import annotations

import json
import math
import shutil

import cv2
import numpy as np
import pytest
import torch
from nuscenes import NuScenes
from PIL import Image
from pyquaternion import Quaternion

from vla_autoprune.data import (
    BATCH_KEYS,
    CAMERAS,
    CATEGORIES,
    COMMANDS,
    NUM_FUTURE_STEPS,
    NUM_PAST_STEPS,
    EmptySplitError,
    NuScenesDrivingDataset,
    collate,
)
from vla_autoprune.data.geometry import (
    boxes_in_frame,
    driving_command,
    ego_motion,
    global_to_ego_xy,
    invert_pose,
    pose_matrix,
)

VERSION = "v1.0-synthetic"
RESIZE = (96, 54)  # (W, H): half the generated 192 x 108


def yaw_quaternion(yaw: float) -> list[float]:
    """w, x, y, z of a rotation by ``yaw`` about +z."""
    return list(Quaternion(axis=[0.0, 0.0, 1.0], angle=yaw).elements)


# ---- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nusc(synthetic_root) -> NuScenes:
    return NuScenes(version=VERSION, dataroot=str(synthetic_root), verbose=False)


@pytest.fixture(scope="module")
def splits(synthetic_root) -> dict[str, list[str]]:
    return json.loads((synthetic_root / VERSION / "splits.json").read_text())


@pytest.fixture(scope="module")
def val_ds(synthetic_root, nusc) -> NuScenesDrivingDataset:
    return NuScenesDrivingDataset(synthetic_root, VERSION, "val", nusc=nusc)


@pytest.fixture(scope="module")
def train_ds(synthetic_root, nusc) -> NuScenesDrivingDataset:
    return NuScenesDrivingDataset(synthetic_root, VERSION, "train", nusc=nusc, image_size=RESIZE)


# ---- independent references (pyquaternion, straight from the tables) ------------------------


def lidar_ego_pose(nusc: NuScenes, sample: dict) -> dict:
    return nusc.get("ego_pose", nusc.get("sample_data", sample["data"]["LIDAR_TOP"])["ego_pose_token"])


def to_current_frame(pose: dict, point) -> np.ndarray:
    """Global point -> ego frame of ``pose`` (x, y, z)."""
    return Quaternion(pose["rotation"]).inverse.rotate(np.asarray(point) - np.asarray(pose["translation"]))


def reference_future(nusc: NuScenes, token: str) -> tuple[np.ndarray, np.ndarray]:
    sample = nusc.get("sample", token)
    current = lidar_ego_pose(nusc, sample)
    xy, mask = np.zeros((NUM_FUTURE_STEPS, 2)), np.zeros(NUM_FUTURE_STEPS, dtype=bool)
    for k in range(NUM_FUTURE_STEPS):
        if not sample["next"]:
            break
        sample = nusc.get("sample", sample["next"])
        xy[k] = to_current_frame(current, lidar_ego_pose(nusc, sample)["translation"])[:2]
        mask[k] = True
    return xy, mask


def scene_positions(ds: NuScenesDrivingDataset) -> dict[str, tuple[int, int]]:
    """sample token -> (index in its scene, scene length)."""
    out: dict[str, tuple[int, int]] = {}
    for scene in ds.nusc.scene:
        tokens, token = [], scene["first_sample_token"]
        while token:
            tokens.append(token)
            token = ds.nusc.get("sample", token)["next"]
        out.update({t: (i, len(tokens)) for i, t in enumerate(tokens)})
    return out


# ---- geometry: hand-worked cases --------------------------------------------------------------


def test_global_to_ego_hand_worked():
    # Ego at (10, 5) facing +y (yaw 90 deg): a point at (10, 8) is 3 m straight ahead.
    xy = global_to_ego_xy([10.0, 5.0, 0.0], yaw_quaternion(math.pi / 2), np.array([[10.0, 8.0, 0.0]]))
    np.testing.assert_allclose(xy, [[3.0, 0.0]], atol=1e-12)
    # (7, 5) is 3 m to the ego's left; (10, 2) 3 m behind.
    xy = global_to_ego_xy([10, 5, 0], yaw_quaternion(math.pi / 2), np.array([[7, 5, 0], [10, 2, 0]]))
    np.testing.assert_allclose(xy, [[0.0, 3.0], [-3.0, 0.0]], atol=1e-12)


def test_pose_inverse_and_box_yaw_hand_worked():
    pose = pose_matrix([10.0, 5.0, 1.0], yaw_quaternion(0.3))
    np.testing.assert_allclose(invert_pose(pose) @ pose, np.eye(4), atol=1e-12)
    # Ego facing +y at (10, 5); a box at (10, 8) facing -x (yaw 180 deg) is ahead, pointing left (+90).
    ego_from_global = invert_pose(pose_matrix([10, 5, 0], yaw_quaternion(math.pi / 2)))
    out = boxes_in_frame(ego_from_global, np.array([[10.0, 8.0, 0.5]]), [yaw_quaternion(math.pi)])
    np.testing.assert_allclose(out, [[3.0, 0.0, math.pi / 2]], atol=1e-12)


def test_ego_motion_exact_for_constant_acceleration():
    # x(t) = 2 t + 0.5 * 1.5 t^2, yaw(t) = 0.2 t: speed 2 m/s, accel 1.5 m/s^2, yaw rate 0.2 rad/s at t = 0.
    def state(times):
        t = np.asarray(times)
        return np.column_stack([2 * t + 0.75 * t**2, np.zeros_like(t)]), 0.2 * t

    for times in ([-0.5, 0.0, 0.5], [0.0, 0.5, 1.0], [-1.0, -0.5, 0.0], [-0.4, 0.0, 0.6]):
        xy, yaws = state(times)
        motion = ego_motion(np.array(times) + 100.0, xy, yaws, t0_s=100.0)
        assert motion.speed == pytest.approx(2.0, abs=1e-9)
        assert motion.longitudinal_accel == pytest.approx(1.5, abs=1e-9)
        assert motion.yaw_rate == pytest.approx(0.2, abs=1e-9)
    # Two keyframes: a one-sided difference, no acceleration; one keyframe: all zero.
    two = ego_motion(np.array([0.0, 0.5]), np.array([[0.0, 0.0], [1.0, 0.0]]), np.array([0.0, 0.1]), 0.0)
    assert (two.speed, two.longitudinal_accel, two.yaw_rate) == pytest.approx((2.0, 0.0, 0.2))
    assert ego_motion(np.array([0.0]), np.zeros((1, 2)), np.zeros(1), 0.0).speed == 0.0


def test_ego_motion_yaw_rate_across_pi():
    # Headings 179 deg -> -179 deg in 0.5 s is +4 deg / 0.5 s, not -716 deg.
    yaws = np.radians([177.0, 179.0, -179.0])
    motion = ego_motion(np.array([-0.5, 0.0, 0.5]), np.zeros((3, 2)), yaws, 0.0)
    assert motion.yaw_rate == pytest.approx(math.radians(4.0), abs=1e-9)


def test_driving_command_rule():
    path = np.zeros((NUM_FUTURE_STEPS, 2))
    mask = np.ones(NUM_FUTURE_STEPS, dtype=bool)
    path[:, 0] = np.arange(1, 7)
    path[-1, 1] = 2.5
    assert COMMANDS[driving_command(path, mask)] == "left"
    path[-1, 1] = -2.5
    assert COMMANDS[driving_command(path, mask)] == "right"
    path[-1, 1] = 1.9
    assert COMMANDS[driving_command(path, mask)] == "straight"
    # The last VALID step decides: step 5 is invalid, step 4 is 3 m left.
    path[4, 1], path[5, 1], mask[5] = 3.0, -9.0, False
    assert COMMANDS[driving_command(path, mask)] == "left"
    assert COMMANDS[driving_command(path, np.zeros(NUM_FUTURE_STEPS, dtype=bool))] == "straight"


# ---- dataset on the generated set ---------------------------------------------------------------


def test_length_is_split_sample_count(val_ds, train_ds, nusc, splits):
    by_name = {scene["name"]: scene for scene in nusc.scene}
    for ds, split in ((val_ds, "val"), (train_ds, "train")):
        assert len(ds) == sum(by_name[name]["nbr_samples"] for name in splits[split])
        assert len(set(ds.sample_tokens)) == len(ds)


def test_train_val_disjoint(val_ds, train_ds, nusc):
    assert not set(val_ds.sample_tokens) & set(train_ds.sample_tokens)
    val_scenes = {nusc.get("sample", t)["scene_token"] for t in val_ds.sample_tokens}
    train_scenes = {nusc.get("sample", t)["scene_token"] for t in train_ds.sample_tokens}
    assert val_scenes and train_scenes and not val_scenes & train_scenes


def test_item_keys_shapes_dtypes(val_ds, train_ds):
    for ds, (w, h) in ((val_ds, (192, 108)), (train_ds, RESIZE)):
        item = ds[0]
        assert set(item) == set(BATCH_KEYS)
        c = len(CAMERAS)
        expected = {
            "images": ((c, 3, h, w), torch.uint8),
            "intrinsics": ((c, 3, 3), torch.float32),
            "cam2ego": ((c, 4, 4), torch.float32),
            "ego_state": ((3,), torch.float32),
            "command": ((), torch.int64),
            "past_trajectory": ((NUM_PAST_STEPS, 2), torch.float32),
            "past_mask": ((NUM_PAST_STEPS,), torch.bool),
            "gt_trajectory": ((NUM_FUTURE_STEPS, 2), torch.float32),
            "gt_mask": ((NUM_FUTURE_STEPS,), torch.bool),
            "complexity": ((), torch.float32),
        }
        for key, (shape, dtype) in expected.items():
            assert tuple(item[key].shape) == shape, key
            assert item[key].dtype == dtype, key
        n = item["future_labels"].shape[1]
        assert item["future_boxes"].shape == (NUM_FUTURE_STEPS, n, 5)
        assert item["future_boxes"].dtype == torch.float32 and item["future_labels"].dtype == torch.int64
        assert item["cameras"] == CAMERAS
        assert isinstance(item["sample_token"], str) and isinstance(item["scene_token"], str)
        assert item["scenario"] in ("traffic_light", "pedestrian") and float(item["complexity"]) >= 0


def test_images_equal_jpeg_on_disk(val_ds, train_ds, nusc):
    token = val_ds.sample_tokens[1]
    item = val_ds[1]
    for c, channel in enumerate(CAMERAS):
        path = nusc.get_sample_data_path(nusc.get("sample", token)["data"][channel])
        rgb = cv2.imread(path, cv2.IMREAD_COLOR)[:, :, ::-1]  # independent decoder, BGR -> RGB
        assert torch.equal(item["images"][c], torch.from_numpy(rgb.transpose(2, 0, 1).copy()))
    # Resized to half size: decoded at that size in the DCT domain (never as a full frame), exactly
    # what an independent decoder's reduced mode gives; intrinsics scaled by the same factors.
    token = train_ds.sample_tokens[0]
    item = train_ds[0]
    for c, channel in enumerate(CAMERAS):
        sd = nusc.get("sample_data", nusc.get("sample", token)["data"][channel])
        image = Image.open(nusc.get_sample_data_path(sd["token"])).convert("RGB")
        half = cv2.imread(nusc.get_sample_data_path(sd["token"]), cv2.IMREAD_REDUCED_COLOR_2)[:, :, ::-1]
        assert half.shape[:2] == (RESIZE[1], RESIZE[0])
        assert torch.equal(item["images"][c], torch.from_numpy(half.transpose(2, 0, 1).copy()))
        k = np.asarray(nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])["camera_intrinsic"])
        sx, sy = RESIZE[0] / image.width, RESIZE[1] / image.height
        expected = k * np.array([[sx], [sy], [1.0]])  # rows: fx, cx scale with W; fy, cy with H
        np.testing.assert_allclose(item["intrinsics"][c].numpy(), expected, rtol=1e-6)


def test_gt_trajectory_matches_ego_poses(val_ds, nusc):
    for index in (0, len(val_ds) // 2, len(val_ds) - 1):
        item = val_ds[index]
        xy, mask = reference_future(nusc, val_ds.sample_tokens[index])
        assert torch.equal(item["gt_mask"], torch.from_numpy(mask))
        np.testing.assert_allclose(item["gt_trajectory"].numpy(), xy, atol=1e-4)


def test_masks_follow_scene_bounds(val_ds):
    positions = scene_positions(val_ds)
    for index, token in enumerate(val_ds.sample_tokens):
        at, length = positions[token]
        if at not in (0, 1, length - 3, length - 1):
            continue
        item = val_ds[index]
        future_left, past_left = length - 1 - at, at
        expected_gt = [k < future_left for k in range(NUM_FUTURE_STEPS)]
        assert item["gt_mask"].tolist() == expected_gt
        assert item["past_mask"].tolist() == [k < past_left for k in range(NUM_PAST_STEPS)]
        assert not item["gt_trajectory"][~item["gt_mask"]].any()  # zeros past the scene end
        assert not item["past_trajectory"][~item["past_mask"]].any()
        assert (item["future_labels"][~item["gt_mask"]] == -1).all()


def test_past_trajectory_matches_ego_poses(val_ds, nusc):
    index = len(val_ds) - 1  # last sample of the last val scene: a full past
    sample = nusc.get("sample", val_ds.sample_tokens[index])
    current = lidar_ego_pose(nusc, sample)
    item = val_ds[index]
    for k in range(NUM_PAST_STEPS):
        sample = nusc.get("sample", sample["prev"])
        expected = to_current_frame(current, lidar_ego_pose(nusc, sample)["translation"])[:2]
        np.testing.assert_allclose(item["past_trajectory"][k].numpy(), expected, atol=1e-4)


def test_command_agrees_with_path(val_ds):
    for index in range(len(val_ds)):
        item = val_ds[index]
        valid = item["gt_mask"].nonzero().flatten()
        lateral = float(item["gt_trajectory"][valid[-1], 1]) if len(valid) else 0.0
        expected = "left" if lateral > 2.0 else "right" if lateral < -2.0 else "straight"
        assert COMMANDS[int(item["command"])] == expected


def test_ego_state_matches_finite_differences(val_ds, nusc):
    positions = scene_positions(val_ds)
    index = next(i for i, t in enumerate(val_ds.sample_tokens) if 0 < positions[t][0] < positions[t][1] - 1)
    sample = nusc.get("sample", val_ds.sample_tokens[index])
    current = lidar_ego_pose(nusc, sample)
    poses = [lidar_ego_pose(nusc, nusc.get("sample", sample[d])) for d in ("prev", "next")]
    (p_prev, p_next), t0 = (
        [to_current_frame(current, p["translation"])[:2] for p in poses],
        current["timestamp"],
    )
    h1, h2 = (t0 - poses[0]["timestamp"]) / 1e6, (poses[1]["timestamp"] - t0) / 1e6
    # Non-uniform 3-point differences at the middle point (current position is the origin).
    velocity = (h1**2 * p_next - h2**2 * p_prev) / (h1 * h2 * (h1 + h2))
    accel = 2 * (h1 * p_next + h2 * p_prev) / (h1 * h2 * (h1 + h2))
    yaws = [
        (Quaternion(current["rotation"]).inverse * Quaternion(p["rotation"])).yaw_pitch_roll[0] for p in poses
    ]
    yaw_rate = (h1**2 * yaws[1] - h2**2 * yaws[0]) / (h1 * h2 * (h1 + h2))
    state = val_ds[index]["ego_state"].numpy()
    np.testing.assert_allclose(state, [np.hypot(*velocity), accel[0], yaw_rate], atol=1e-3)


def test_cam2ego_compensates_camera_ego_pose(synthetic_root, tmp_path):
    # The generated cameras fire with the lidar; move each camera's ego pose of one sample (0.8 m
    # ahead, +3 deg), as nuScenes' staggered camera timestamps do, in a copy of the tables.
    root = tmp_path / "root"
    root.mkdir()
    shutil.copytree(synthetic_root / VERSION, root / VERSION)
    for child in synthetic_root.iterdir():
        if child.name != VERSION:
            (root / child.name).symlink_to(child)
    nusc = NuScenes(version=VERSION, dataroot=str(root), verbose=False)
    ds = NuScenesDrivingDataset(root, VERSION, "val", nusc=nusc)
    sample = nusc.get("sample", ds.sample_tokens[2])
    camera_poses = {nusc.get("sample_data", sample["data"][c])["ego_pose_token"] for c in CAMERAS}
    rows = json.loads((root / VERSION / "ego_pose.json").read_text())
    for row in rows:
        if row["token"] in camera_poses:
            q = Quaternion(row["rotation"])
            row["translation"] = list(np.asarray(row["translation"]) + q.rotate([0.8, 0.0, 0.0]))
            row["rotation"] = list((q * Quaternion(axis=[0, 0, 1], degrees=3.0)).elements)
    (root / VERSION / "ego_pose.json").write_text(json.dumps(rows))
    nusc = NuScenes(version=VERSION, dataroot=str(root), verbose=False)
    item = NuScenesDrivingDataset(root, VERSION, "val", nusc=nusc)[2]

    lidar_pose = lidar_ego_pose(nusc, sample)
    lidar, lidar_t = Quaternion(lidar_pose["rotation"]), np.asarray(lidar_pose["translation"])
    for c, channel in enumerate(CAMERAS):
        sd = nusc.get("sample_data", sample["data"][channel])
        calib = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        pose = nusc.get("ego_pose", sd["ego_pose_token"])
        cam_ego = Quaternion(pose["rotation"])
        rotation = lidar.inverse * cam_ego * Quaternion(calib["rotation"])
        origin = cam_ego.rotate(calib["translation"]) + np.asarray(pose["translation"]) - lidar_t
        np.testing.assert_allclose(item["cam2ego"][c, :3, :3].numpy(), rotation.rotation_matrix, atol=1e-5)
        np.testing.assert_allclose(item["cam2ego"][c, :3, 3].numpy(), lidar.inverse.rotate(origin), atol=1e-4)
        np.testing.assert_allclose(item["cam2ego"][c, 3].numpy(), [0, 0, 0, 1])
        # Not the plain calibration: the camera origin sits ~0.8 m further ahead.
        shift = item["cam2ego"][c, :3, 3].numpy() - np.asarray(calib["translation"])
        assert shift[0] == pytest.approx(0.8, abs=0.15)


def test_future_boxes_match_annotations(val_ds, nusc):
    """Every future annotation of CATEGORIES appears at its ego-frame pose; one ahead has x > 0."""
    index = 0
    sample = nusc.get("sample", val_ds.sample_tokens[index])
    current = lidar_ego_pose(nusc, sample)
    item = val_ds[index]
    ahead = 0
    for k in range(int(item["gt_mask"].sum())):
        sample = nusc.get("sample", sample["next"])
        anns = [nusc.get("sample_annotation", t) for t in sample["anns"]]
        anns = [a for a in anns if a["category_name"] in CATEGORIES]
        labels = item["future_labels"][k]
        assert int((labels >= 0).sum()) == len(anns)
        for ann in anns:
            x, y, _ = to_current_frame(current, ann["translation"])
            yaw = (Quaternion(current["rotation"]).inverse * Quaternion(ann["rotation"])).yaw_pitch_roll[0]
            expected = torch.tensor([x, y, ann["size"][0], ann["size"][1], yaw], dtype=torch.float32)
            match = (item["future_boxes"][k, :, :2] - expected[:2]).norm(dim=-1).argmin()
            assert torch.allclose(item["future_boxes"][k, match], expected, atol=1e-3)
            assert CATEGORIES[int(labels[match])] == ann["category_name"]
            ahead += int(x > 0 and abs(y) < x)
    assert ahead > 0, "the generated scene should have an agent ahead of the ego"
    assert ((item["future_boxes"][..., 0] > 0) & (item["future_labels"] >= 0)).any()


def test_max_boxes_keeps_nearest(synthetic_root, nusc, val_ds):
    capped = NuScenesDrivingDataset(synthetic_root, VERSION, "val", nusc=nusc, max_boxes=2)
    full, item = val_ds[0], capped[0]
    assert item["future_boxes"].shape == (NUM_FUTURE_STEPS, 2, 5)
    for k in range(NUM_FUTURE_STEPS):
        valid = full["future_labels"][k] >= 0
        distances = full["future_boxes"][k, valid, :2].norm(dim=-1)
        kept = item["future_boxes"][k, item["future_labels"][k] >= 0, :2].norm(dim=-1)
        np.testing.assert_allclose(kept.numpy(), distances.sort().values[:2].numpy())


def test_collate_pads_boxes(val_ds):
    a, b = val_ds[0], val_ds[1]
    b = dict(b, future_boxes=b["future_boxes"][:, :1], future_labels=b["future_labels"][:, :1])
    n = a["future_labels"].shape[1]
    assert n > 1, "need an item with several boxes"
    batch = collate([a, b])
    assert set(batch) == set(BATCH_KEYS)
    assert batch["images"].shape == (2, len(CAMERAS), 3, 108, 192)
    assert batch["future_boxes"].shape == (2, NUM_FUTURE_STEPS, n, 5)
    assert torch.equal(batch["future_boxes"][0], a["future_boxes"])
    assert torch.equal(batch["future_labels"][1, :, :1], b["future_labels"])
    assert (batch["future_labels"][1, :, 1:] == -1).all() and not batch["future_boxes"][1, :, 1:].any()
    assert batch["sample_token"] == [a["sample_token"], b["sample_token"]]
    assert batch["cameras"] == CAMERAS
    assert batch["command"].dtype == torch.int64 and batch["command"].shape == (2,)
    assert batch["scenario"] == [a["scenario"], b["scenario"]]
    assert batch["complexity"].dtype == torch.float32 and batch["complexity"].tolist() == [
        float(a["complexity"]),
        float(b["complexity"]),
    ]


def test_decoding_at_any_size_matches_a_full_decode_resized(synthetic_root, nusc):
    """A size that is no power-of-two fraction: DCT-domain decode at >= the size, then a resize;
    close to decoding the whole frame and resizing it, with intrinsics scaled to the exact size."""
    size = (50, 30)
    ds = NuScenesDrivingDataset(synthetic_root, VERSION, "val", nusc=nusc, image_size=size)
    item = ds[0]
    assert item["images"].shape[-2:] == (size[1], size[0])
    sample = nusc.get("sample", ds.sample_tokens[0])
    for c, channel in enumerate(CAMERAS):
        sd = nusc.get("sample_data", sample["data"][channel])
        full = Image.open(nusc.get_sample_data_path(sd["token"])).convert("RGB")
        reference = np.asarray(full.resize(size, Image.Resampling.BILINEAR, reducing_gap=None)).astype(int)
        got = item["images"][c].permute(1, 2, 0).numpy().astype(int)
        assert np.abs(got - reference).mean() < 6.0, channel
        k = np.asarray(nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])["camera_intrinsic"])
        expected = k * np.array([[size[0] / sd["width"]], [size[1] / sd["height"]], [1.0]])
        np.testing.assert_allclose(item["intrinsics"][c].numpy(), expected, rtol=1e-6)


def test_dataloader_batches(val_ds):
    loader = torch.utils.data.DataLoader(val_ds, batch_size=3, collate_fn=collate)
    batch = next(iter(loader))
    assert batch["gt_trajectory"].shape == (3, NUM_FUTURE_STEPS, 2)
    assert len(batch["scene_token"]) == 3


def test_full_future_only_keeps_exactly_the_samples_with_a_full_future(synthetic_root, nusc, val_ds):
    full = NuScenesDrivingDataset(synthetic_root, VERSION, "val", nusc=nusc, full_future_only=True)
    expected = [t for i, t in enumerate(val_ds.sample_tokens) if bool(val_ds[i]["gt_mask"].all())]
    assert full.sample_tokens == expected
    positions = scene_positions(val_ds)
    assert all(positions[t][1] - 1 - positions[t][0] >= NUM_FUTURE_STEPS for t in full.sample_tokens)
    assert 0 < len(full) < len(val_ds)


def test_full_future_only_on_scenes_too_short_is_a_one_line_error(tmp_path):
    from data_tools.synthetic_nuscenes import generate

    root = generate(tmp_path / "short", scenes={"val": 1}, samples_per_scene=4, image_size=(64, 64), seed=0)
    with pytest.raises(EmptySplitError, match="full_future_only=false") as err:
        NuScenesDrivingDataset(root, VERSION, "val", full_future_only=True)
    assert "\n" not in str(err.value)
