"""The synthetic nuScenes generator, checked through the unmodified nuscenes-devkit."""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from nuscenes.map_expansion.arcline_path_utils import project_pose_to_lane
from nuscenes.map_expansion.map_api import NuScenesMap
from nuscenes.nuscenes import NuScenes
from nuscenes.utils.data_classes import LidarPointCloud
from nuscenes.utils.geometry_utils import BoxVisibility, points_in_box, view_points
from pyquaternion import Quaternion
from shapely.geometry import Polygon

from data_tools import synthetic_nuscenes
from data_tools.synthetic.render import AMBIENT, CLASS_RGB
from data_tools.synthetic_nuscenes import (
    DatarootNotEmptyError,
    GeneratorArgumentError,
    generate,
    main,
)
from vla_autoprune.data.schema import CAMERAS, CATEGORIES
from vla_autoprune.errors import ConfigError

VERSION = "v1.0-synthetic"
#: One scene of each family in train (a scene's family cycles with its index), two in val.
SPLIT_SCENES = {"train": 6, "val": 2}
SCENES, SAMPLES, SIZE = sum(SPLIT_SCENES.values()), 10, (192, 108)
HEX32 = re.compile(r"^[0-9a-f]{32}$")
#: Planning-metric ego footprint (METRICS.md): 4.084 m x 1.85 m, centred 0.5 m ahead of the pose.
EGO_LENGTH, EGO_WIDTH, EGO_CENTER_AHEAD = 4.084, 1.85, 0.5
#: Commands from the future path: lateral offset at +3 s (6 keyframes) beyond +-2 m.
COMMAND_STEPS, COMMAND_OFFSET_M = 6, 2.0


@pytest.fixture(scope="module")
def dataroot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    return generate(root, scenes=SPLIT_SCENES, samples_per_scene=SAMPLES, image_size=SIZE, seed=0)


@pytest.fixture(scope="module")
def nusc(dataroot: Path) -> NuScenes:
    return NuScenes(version=VERSION, dataroot=str(dataroot), verbose=False)


def _scene_samples(nusc: NuScenes, scene: dict) -> list[dict]:
    out, token = [], scene["first_sample_token"]
    while token:
        out.append(nusc.get("sample", token))
        token = out[-1]["next"]
    return out


def _ego_pose(nusc: NuScenes, sample: dict) -> tuple[np.ndarray, float]:
    pose = nusc.get("ego_pose", nusc.get("sample_data", sample["data"]["LIDAR_TOP"])["ego_pose_token"])
    return np.array(pose["translation"][:2]), Quaternion(pose["rotation"]).yaw_pitch_roll[0]


def _to_ego(xy: np.ndarray, origin: np.ndarray, yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    d = np.asarray(xy) - origin
    return np.array([c * d[0] + s * d[1], -s * d[0] + c * d[1]])


def test_devkit_loads_every_sample_with_all_sensors(nusc: NuScenes, dataroot: Path) -> None:
    assert len(nusc.scene) == SCENES and len(nusc.sample) == SCENES * SAMPLES
    assert {c["name"] for c in nusc.category} == set(CATEGORIES)
    assert {v["token"] for v in nusc.visibility} == {"1", "2", "3", "4"}
    for sample in nusc.sample:
        assert set(sample["data"]) == {*CAMERAS, "LIDAR_TOP"}
        for channel in CAMERAS:
            sd = nusc.get("sample_data", sample["data"][channel])
            assert sd["is_key_frame"] and sd["timestamp"] == sample["timestamp"]
            image = cv2.imread(str(dataroot / sd["filename"]))
            assert image.shape == (SIZE[1], SIZE[0], 3) == (sd["height"], sd["width"], 3)
    lidar = LidarPointCloud.from_file(nusc.get_sample_data_path(nusc.sample[0]["data"]["LIDAR_TOP"]))
    assert lidar.points.shape[0] == 4 and lidar.points.shape[1] > 1000


def test_tokens_are_unique_hex_and_annotations_have_points(nusc: NuScenes) -> None:
    for table in nusc.table_names:
        tokens = [r["token"] for r in getattr(nusc, table)]
        assert len(set(tokens)) == len(tokens), table
        if table != "visibility":
            assert all(HEX32.match(t) for t in tokens), table
    assert all(a["num_lidar_pts"] + a["num_radar_pts"] > 0 for a in nusc.sample_annotation)
    assert all(a["visibility_token"] in {"1", "2", "3", "4"} for a in nusc.sample_annotation)


def test_linked_lists_are_consistent(nusc: NuScenes) -> None:
    for scene in nusc.scene:
        samples = _scene_samples(nusc, scene)
        assert len(samples) == scene["nbr_samples"] == SAMPLES
        assert samples[-1]["token"] == scene["last_sample_token"]
        assert np.all(np.diff([s["timestamp"] for s in samples]) == 500_000)  # 2 Hz, microseconds
        for prev, cur in zip(samples, samples[1:], strict=False):
            assert cur["prev"] == prev["token"]
            for channel in prev["data"]:
                assert nusc.get("sample_data", prev["data"][channel])["next"] == cur["data"][channel]
    for inst in nusc.instance:
        anns, token = [], inst["first_annotation_token"]
        while token:
            anns.append(nusc.get("sample_annotation", token))
            token = anns[-1]["next"]
        assert len(anns) == inst["nbr_annotations"] and anns[-1]["token"] == inst["last_annotation_token"]
        assert all(a["instance_token"] == inst["token"] for a in anns)
        times = [nusc.get("sample", a["sample_token"])["timestamp"] for a in anns]
        assert times == sorted(times) and len(set(times)) == len(times)


def test_camera_calibration_matches_nuscenes(nusc: NuScenes) -> None:
    scale = SIZE[0] / 1600
    expected_yaw = {"CAM_FRONT": 0, "CAM_FRONT_RIGHT": -55, "CAM_FRONT_LEFT": 55, "CAM_BACK": 180}
    expected_yaw |= {"CAM_BACK_LEFT": 110, "CAM_BACK_RIGHT": -110}
    sample = nusc.sample[0]
    for channel, yaw in expected_yaw.items():
        calib = nusc.get(
            "calibrated_sensor", nusc.get("sample_data", sample["data"][channel])["calibrated_sensor_token"]
        )
        axis = Quaternion(calib["rotation"]).rotation_matrix @ np.array(
            [0.0, 0.0, 1.0]
        )  # optical axis in ego
        error = math.atan2(axis[1], axis[0]) - math.radians(yaw)
        assert abs(math.remainder(error, 2 * math.pi)) < 1e-6, channel
        assert abs(axis[2]) < 1e-9  # level cameras
        focal = calib["camera_intrinsic"][0][0]
        assert focal == pytest.approx((809.2 if channel == "CAM_BACK" else 1266.4) * scale, rel=0.01)


def _matches_class_colour(pixel_rgb: np.ndarray, category: str) -> bool:
    """Pixel = base colour x shade, shade in [AMBIENT, 1], up to JPEG error."""
    base = np.asarray(CLASS_RGB[category], dtype=np.float64)
    shade = float(pixel_rgb @ base / (base @ base))
    residual = np.abs(pixel_rgb - shade * base).max()
    return AMBIENT - 0.1 <= shade <= 1.1 and residual < 30


def test_annotation_boxes_project_onto_their_rendered_colour(nusc: NuScenes, dataroot: Path) -> None:
    """The devkit's own box projection lands on pixels painted in the agent's class colour.

    Traffic-light scenes are left out: their (unannotated) poles may stand in front of a box.
    """
    families = json.loads((dataroot / VERSION / "scenarios.json").read_text())["samples"]
    checked = 0
    for sample in nusc.sample:
        if families[sample["token"]]["scenario"] == "traffic_light":
            continue
        for channel in CAMERAS:
            sd_token = sample["data"][channel]
            path, boxes, intrinsic = nusc.get_sample_data(sd_token, box_vis_level=BoxVisibility.NONE)
            boxes = [b for b in boxes if b.corners()[2].max() > 0.0]  # at least partly in front
            if not boxes:
                continue
            nearest = min(boxes, key=lambda b: b.corners()[2].min())  # nothing can stand in front of it
            _, full, _ = nusc.get_sample_data(
                sd_token, box_vis_level=BoxVisibility.ALL, selected_anntokens=[nearest.token]
            )
            if (
                not full
                or np.ptp(view_points(nearest.corners(), intrinsic, normalize=True)[:2], axis=1).min() < 6
            ):
                continue  # partly out of view, or only a few pixels
            # A quarter of the height up the box's axis: on the body, below a vehicle's brake lights.
            low = (nearest.center + nearest.corners()[:, [2, 3, 6, 7]].mean(axis=1)) / 2.0
            u, v = view_points(low[:, None], intrinsic, normalize=True)[:2, 0].round().astype(int)
            rgb = cv2.imread(path)[v - 1 : v + 2, u - 1 : u + 2, ::-1].reshape(-1, 3)
            assert _matches_class_colour(np.median(rgb, axis=0), nearest.name), (path, nearest.name)
            checked += 1
    assert checked >= 10, checked


def test_lidar_points_fall_in_annotated_boxes(nusc: NuScenes) -> None:
    sample = nusc.sample[SAMPLES // 2]
    sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
    cloud = LidarPointCloud.from_file(nusc.get_sample_data_path(sd["token"]))
    points = cloud.points[:3].astype(np.float64)
    _, boxes, _ = nusc.get_sample_data(sd["token"])  # boxes in the lidar frame
    for box in boxes:
        ann = nusc.get("sample_annotation", box.token)
        inside = points_in_box(box, points, wlh_factor=1.001)
        assert abs(int(inside.sum()) - ann["num_lidar_pts"]) <= 1, ann["category_name"]


def test_map_expansion_matches_ego_poses(nusc: NuScenes, dataroot: Path) -> None:
    maps: dict[str, NuScenesMap] = {}
    for scene in nusc.scene:
        location = nusc.get("log", scene["log_token"])["location"]
        nmap = maps.setdefault(location, NuScenesMap(dataroot=str(dataroot), map_name=location))
        for sample in _scene_samples(nusc, scene):
            xy, yaw = _ego_pose(nusc, sample)
            layers = nmap.layers_on_point(xy[0], xy[1])
            assert layers["drivable_area"] and layers["road_segment"] and layers["lane"]
            off_road = xy + 20.0 * np.array([-math.sin(yaw), math.cos(yaw)])  # 20 m to the left
            assert nmap.record_on_point(off_road[0], off_road[1], "drivable_area") == ""
            lane = nmap.get_closest_lane(xy[0], xy[1], radius=2.0)
            (lane_x, lane_y, lane_yaw), _ = project_pose_to_lane(
                (xy[0], xy[1], yaw), nmap.get_arcline_path(lane), 0.1
            )
            # The ego drives on its lane's arc-line centre (0.1 m discretisation) and along it.
            assert math.hypot(lane_x - xy[0], lane_y - xy[1]) < 0.06 and math.cos(lane_yaw - yaw) > 0.9999
            patch = (xy[0] - 1.0, xy[1] - 1.0, xy[0] + 1.0, xy[1] + 1.0)
            assert nmap.is_record_in_patch("lane", layers["lane"], patch, mode="intersect")


def _commands(nusc: NuScenes) -> set[str]:
    out = set()
    for scene in nusc.scene:
        poses = [_ego_pose(nusc, s) for s in _scene_samples(nusc, scene)]
        for (xy, yaw), (future, _) in zip(poses, poses[COMMAND_STEPS:], strict=False):
            lateral = _to_ego(future, xy, yaw)[1]
            out.add(
                "left"
                if lateral > COMMAND_OFFSET_M
                else "right"
                if lateral < -COMMAND_OFFSET_M
                else "straight"
            )
    return out


def test_scenes_hold_all_commands_and_slow_for_the_vehicle_ahead(nusc: NuScenes, dataroot: Path) -> None:
    """Every command occurs; in the braking-lead and stopped-vehicle scenes the ego loses >= 3 m/s
    while a vehicle stands or brakes in its lane ahead (the family comes from the side file)."""
    assert _commands(nusc) == {"left", "straight", "right"}
    families = json.loads((dataroot / VERSION / "scenarios.json").read_text())["scenes"]
    checked = 0
    for scene in nusc.scene:
        if families[scene["name"]] not in ("lead_brake", "stopped_vehicle"):
            continue
        samples = _scene_samples(nusc, scene)
        poses = [_ego_pose(nusc, s) for s in samples]
        speed = np.array([np.linalg.norm(b[0] - a[0]) / 0.5 for a, b in zip(poses, poses[1:], strict=False)])
        assert speed[0] - speed.min() >= 3.0, (scene["name"], speed)
        nmap = NuScenesMap(str(dataroot), nusc.get("log", scene["log_token"])["location"])
        for (xy, yaw), sample in zip(poses[:-1], samples, strict=False):
            ego_lane = nmap.get_closest_lane(xy[0], xy[1], radius=2.0)
            in_lane_ahead = []
            for token in sample["anns"]:
                ann = nusc.get("sample_annotation", token)
                x, y = ann["translation"][:2]
                if ann["category_name"].startswith("vehicle.") and _to_ego((x, y), xy, yaw)[0] > 0.0:
                    in_lane_ahead.append(nmap.get_closest_lane(x, y, radius=2.0) == ego_lane)
            assert any(in_lane_ahead), scene["name"]
        checked += 1
    assert checked >= 2


def test_ego_never_overlaps_an_agent(nusc: NuScenes) -> None:
    half_l, half_w = EGO_LENGTH / 2, EGO_WIDTH / 2
    ego = Polygon(
        [
            (EGO_CENTER_AHEAD + x, y)
            for x, y in [(half_l, half_w), (half_l, -half_w), (-half_l, -half_w), (-half_l, half_w)]
        ]
    )
    for sample in nusc.sample:
        xy, yaw = _ego_pose(nusc, sample)
        for token in sample["anns"]:
            box = nusc.get_box(token)
            corners = [_to_ego(c, xy, yaw) for c in box.bottom_corners()[:2].T]
            assert not ego.intersects(Polygon(corners)), box.name


def test_splits_partition_the_scenes(nusc: NuScenes, dataroot: Path) -> None:
    splits = json.loads((dataroot / VERSION / "splits.json").read_text())
    assert set(splits) == {"train", "val"} and splits["train"] and splits["val"]
    assert sorted(splits["train"] + splits["val"]) == sorted(s["name"] for s in nusc.scene)


def test_same_seed_is_byte_identical_and_another_seed_differs(tmp_path: Path) -> None:
    """Every file (tables, side file, JPEGs, lidar sweeps, maps) is a function of the arguments."""

    def files(folder: str, seed: int) -> dict[str, bytes]:
        root = generate(tmp_path / folder, scenes=2, samples_per_scene=3, image_size=(48, 27), seed=seed)
        return {str(f.relative_to(root)): f.read_bytes() for f in sorted(root.rglob("*")) if f.is_file()}

    first, again, other = files("a", 3), files("b", 3), files("c", 4)
    assert sum(name.endswith(".jpg") for name in first) == 2 * 3 * len(CAMERAS)
    assert f"{VERSION}/scenarios.json" in first and f"{VERSION}/generator.json" in first
    assert first == again
    assert json.loads(first[f"{VERSION}/generator.json"])["seed"] == 3
    assert json.loads(other[f"{VERSION}/generator.json"])["seed"] == 4
    assert first[f"{VERSION}/ego_pose.json"] != other[f"{VERSION}/ego_pose.json"]
    assert first[f"{VERSION}/sample.json"] != other[f"{VERSION}/sample.json"]


def test_cli_refuses_a_non_empty_dataroot(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "keep.txt").write_text("user data")
    argv = ["--dataroot", str(tmp_path), "--scenes", "1", "--samples-per-scene", "2", "--image-size", "32x18"]
    with caplog.at_level(logging.ERROR):
        assert main(argv) == 2
    assert "--overwrite" in caplog.text and len(caplog.records) == 1 and "\n" not in caplog.records[0].message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
    with pytest.raises(DatarootNotEmptyError):
        generate(tmp_path, scenes=1, samples_per_scene=2, image_size=(32, 18))
    assert main([*argv, "--overwrite"]) == 0
    assert (tmp_path / "keep.txt").exists() and (tmp_path / VERSION / "sample.json").is_file()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"scenes": 0},
        {"scenes": {"val": 0}},
        {"scenes": {"val": -2, "train": 3}},
        {"scenes": {"holdout": 3}},
        {"samples_per_scene": 1},
        {"image_size": (8, 8)},
        {"val_fraction": 1.0},
    ],
)
def test_bad_arguments_raise_one_line_config_errors(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(GeneratorArgumentError, match="got|use") as info:
        generate(tmp_path, **kwargs)
    assert isinstance(info.value, ConfigError) and "\n" not in str(info.value)
    assert not any(tmp_path.iterdir())


def test_cli_per_split_scene_counts(tmp_path: Path) -> None:
    argv = [
        "--dataroot",
        str(tmp_path),
        "--val-scenes",
        "2",
        "--test-scenes",
        "1",
        "--samples-per-scene",
        "2",
    ]
    assert main([*argv, "--image-size", "32x18"]) == 0
    splits = json.loads((tmp_path / VERSION / "splits.json").read_text())
    assert splits == {"val": ["scene-val-0001", "scene-val-0002"], "test": ["scene-test-0001"]}


def _small(root: Path) -> list[str]:
    return ["--dataroot", str(root), "--val-scenes", "1", "--samples-per-scene", "2", "--image-size", "32x18"]


def test_overwrite_never_deletes_folders_the_generator_did_not_write(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A real nuScenes folder's ``samples/`` is the user's: ``--overwrite`` refuses it in one line."""
    (tmp_path / "samples" / "CAM_FRONT").mkdir(parents=True)
    (tmp_path / "samples" / "CAM_FRONT" / "real.jpg").write_text("a user's image")
    (tmp_path / "v1.0-mini").mkdir()
    with caplog.at_level(logging.ERROR):
        assert main([*_small(tmp_path), "--overwrite"]) == 2
    assert len(caplog.records) == 1 and caplog.records[0].message.startswith("error: ")
    assert "samples/" in caplog.text and "did not write" in caplog.text
    assert (tmp_path / "samples" / "CAM_FRONT" / "real.jpg").read_text() == "a user's image"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["samples", "v1.0-mini"]


def test_overwrite_replaces_the_generators_own_set_even_a_partial_one(tmp_path: Path) -> None:
    root = tmp_path / "set"
    assert main(_small(root)) == 0
    stale = root / "samples" / "CAM_FRONT" / "stale.jpg"
    stale.write_text("from an earlier run")
    shutil.rmtree(root / VERSION)  # as an interrupted run leaves it: samples/, no tables
    assert main([*_small(root), "--overwrite"]) == 0
    assert not stale.exists() and (root / VERSION / "sample.json").is_file()


def test_cli_usage_errors_and_an_unwritable_dataroot_are_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exit_info:
        main(["--dataroot", str(tmp_path), "--image-size", "64"])
    assert exit_info.value.code == 2 and len(caplog.records) == 1
    assert caplog.records[0].message.startswith("error: argument --image-size")
    caplog.clear()
    (tmp_path / "file").write_text("")
    with caplog.at_level(logging.ERROR):
        assert main(_small(tmp_path / "file" / "sub")) == 2
    assert len(caplog.records) == 1 and "cannot write to dataroot" in caplog.records[0].message


def test_ctrl_c_is_one_line_and_leaves_no_set_that_looks_complete(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic_nuscenes, "write_scene", interrupted)
    with caplog.at_level(logging.ERROR):
        assert main(_small(tmp_path)) == 130
    assert len(caplog.records) == 1 and caplog.records[0].message.startswith("interrupted: ")
    assert "--overwrite" in caplog.text and not (tmp_path / VERSION).exists()
