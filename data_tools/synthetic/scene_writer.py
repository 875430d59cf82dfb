"""Turns one simulated scene into nuScenes files and records: JPEGs, lidar sweeps and table rows."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from data_tools.synthetic.cameras import Sensor
from data_tools.synthetic.geometry import WorldBox, rotation_z, yaw_quaternion
from data_tools.synthetic.ground import ground_layers
from data_tools.synthetic.lidar import LidarScanner, LidarSweep
from data_tools.synthetic.props import brake_light_props, signal_props
from data_tools.synthetic.render import RenderResult, SceneRenderer
from data_tools.synthetic.scenario import SPLIT_IDS
from data_tools.synthetic.tables import (
    ROTATION_DIGITS,
    NuScenesTables,
    Record,
    attribute_name,
    rounded,
    visibility_token,
)
from data_tools.synthetic.world import SceneTrajectory

#: Agents further than this from the ego (m, in the ground plane) are not annotated (nuScenes
#: detection evaluates within 50 m).
ANNOTATION_RANGE_M = 50.0
#: Scene start times: 2020-01-01T00:00:00Z plus one hour per scene index, in microseconds.
BASE_TIMESTAMP_US = 1_577_836_800_000_000
SCENE_TIME_GAP_US = 3_600_000_000
KEYFRAME_US = 500_000  # 2 Hz keyframes
JPEG_QUALITY = 90
VEHICLE_NAME = "synthetic-ego"
#: Scene start times of different splits never coincide: each split's scenes start this many
#: scene slots after the previous split's.
SPLIT_TIME_SLOTS = 100_000
#: Categories counted by a sample's complexity: road users (vehicles and humans) within 50 m.
COMPLEXITY_PREFIXES = ("vehicle.", "human.")


@dataclass
class SceneCounts:
    """How much one scene wrote."""

    samples: int = 0
    annotations: int = 0
    images: int = 0
    #: Side-file rows: sample token -> {"scenario": family, "complexity": road users within 50 m}.
    sample_info: dict[str, dict[str, object]] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class SensorSetup:
    """The rig: cameras in project order, then the lidar."""

    cameras: tuple[Sensor, ...]
    lidar: Sensor

    @property
    def all(self) -> tuple[Sensor, ...]:
        """Every sensor, cameras first."""
        return (*self.cameras, self.lidar)


def ego_to_global(xy: np.ndarray, yaw: float) -> np.ndarray:
    """``[4, 4]`` ego-to-global transform of a pose on the flat ground."""
    out = np.eye(4)
    out[:3, :3] = rotation_z(yaw)
    out[:2, 3] = xy
    return out


def write_scene(
    root: Path, tables: NuScenesTables, trajectory: SceneTrajectory, rig: SensorSetup, seed: int
) -> tuple[str, SceneCounts]:
    """Write one scene's files under ``root`` and its records into ``tables``; returns (log token, counts)."""
    writer = _SceneWriter(root, tables, trajectory, rig, seed)
    for k in range(len(trajectory.times)):
        writer.keyframe(k)
    writer.finish()
    return writer.log_token, writer.counts


class _SceneWriter:
    """Writes one scene keyframe by keyframe, then links its annotations into instances."""

    def __init__(
        self, root: Path, tables: NuScenesTables, trajectory: SceneTrajectory, rig: SensorSetup, seed: int
    ) -> None:
        self.root, self.tables, self.trajectory, self.rig = root, tables, trajectory, rig
        plan = trajectory.plan
        self.scene = plan.name
        slot = SPLIT_IDS[plan.split] * SPLIT_TIME_SLOTS + plan.index
        self.start_us = BASE_TIMESTAMP_US + slot * SCENE_TIME_GAP_US
        self.logfile = f"synthetic-seed{seed}-{plan.name}"
        self.log_token = self._add_log(plan.location)
        self.calib = {s.channel: tables.add_calibration(plan.name, s) for s in rig.all}
        count = len(trajectory.times)
        self.samples = [tables.token("sample", plan.name, k) for k in range(count)]
        self.chains = {
            s.channel: [tables.token("sample_data", plan.name, s.channel, k) for k in range(count)]
            for s in rig.all
        }
        self.scene_token = self._add_scene()
        stop_line = plan.signal.stop_line_s if plan.signal else None
        layers = ground_layers(plan.road, plan.cross, stop_line, plan.crosswalk_s)
        self.renderer = SceneRenderer(layers, rig.cameras)
        self.scanner = LidarScanner(rig.lidar)
        self.agent_anns: dict[int, list[Record]] = {}
        self.counts = SceneCounts()

    def keyframe(self, k: int) -> None:
        """Simulate the sensors at keyframe ``k`` and write its files and records."""
        timestamp = self.start_us + k * KEYFRAME_US
        record = {"token": self.samples[k], "timestamp": timestamp, "scene_token": self.scene_token}
        self.tables.append("sample", _linked(record, self.samples, k))
        pose = ego_to_global(self.trajectory.ego_xy[k], float(self.trajectory.ego_yaw[k]))
        agents = [a for a, track in enumerate(self.trajectory.agents) if track.present[k]]
        boxes = [_box(self.trajectory, a, k) for a in agents]
        sweep = self.scanner.scan(pose, boxes)
        rendered = self.renderer.render(pose, boxes, self._props(agents, k))
        files = self._write_sensor_files(timestamp, sweep, rendered)
        for sensor in self.rig.all:
            self._add_sample_data(sensor, k, files[sensor.channel], timestamp)
        complexity = 0
        for j, a in enumerate(agents):
            if _annotated(boxes[j], pose, sweep, j):
                ann = self._annotation(
                    a, k, sweep.lidar_hits[j], sweep.radar_hits[j], _visible_fraction(rendered, j)
                )
                self.agent_anns.setdefault(a, []).append(ann)
                complexity += boxes[j].category.startswith(COMPLEXITY_PREFIXES)
        plan = self.trajectory.plan
        self.counts.sample_info[self.samples[k]] = {"scenario": plan.family, "complexity": complexity}
        self.counts.samples += 1
        self.counts.images += len(self.rig.cameras)

    def _props(self, agents: list[int], k: int) -> tuple[WorldBox, ...]:
        """Unannotated scenery at keyframe ``k``: the traffic light and the vehicles' brake lights."""
        states = self.trajectory.signal_states
        props = list(signal_props(self.trajectory.plan, states[k])) if states else []
        for a in agents:
            props.extend(brake_light_props(self.trajectory.agents[a], k))
        return tuple(props)

    def finish(self) -> None:
        """Chain each agent's annotations in time order and add its instance record."""
        for agent, anns in sorted(self.agent_anns.items()):
            tokens = [ann["token"] for ann in anns]
            for k, ann in enumerate(anns):
                self.tables.append("sample_annotation", _linked(ann, tokens, k))
            category = self.trajectory.agents[agent].spec.category
            self.tables.append(
                "instance",
                {
                    "token": self.tables.token("instance", self.scene, agent),
                    "category_token": self.tables.category_token(category),
                    "nbr_annotations": len(tokens),
                    "first_annotation_token": tokens[0],
                    "last_annotation_token": tokens[-1],
                },
            )
            self.counts.annotations += len(tokens)

    def _add_log(self, location: str) -> str:
        token = self.tables.token("log", self.scene)
        date = dt.datetime.fromtimestamp(self.start_us / 1e6, tz=dt.timezone.utc).strftime("%Y-%m-%d")
        self.tables.append(
            "log",
            {
                "token": token,
                "logfile": self.logfile,
                "vehicle": VEHICLE_NAME,
                "date_captured": date,
                "location": location,
            },
        )
        return token

    def _add_scene(self) -> str:
        token = self.tables.token("scene", self.scene)
        self.tables.append(
            "scene",
            {
                "token": token,
                "log_token": self.log_token,
                "nbr_samples": len(self.samples),
                "first_sample_token": self.samples[0],
                "last_sample_token": self.samples[-1],
                "name": self.scene,
                "description": f"Synthetic procedural road scene, scenario {self.trajectory.plan.family}.",
            },
        )
        return token

    def _write_sensor_files(
        self, timestamp: int, sweep: LidarSweep, rendered: RenderResult
    ) -> dict[str, str]:
        """Write the keyframe's JPEGs and lidar sweep; returns channel -> path relative to the dataroot."""
        files = {}
        for cam, image in zip(self.rig.cameras, rendered.images, strict=True):
            rel = f"samples/{cam.channel}/{self.logfile}__{cam.channel}__{timestamp}.jpg"
            ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            if not ok:
                raise RuntimeError(f"OpenCV could not encode {rel}")
            (self.root / rel).write_bytes(jpeg.tobytes())
            files[cam.channel] = rel
        lidar = self.rig.lidar.channel
        rel = f"samples/{lidar}/{self.logfile}__{lidar}__{timestamp}.pcd.bin"
        (self.root / rel).write_bytes(sweep.points.astype("<f4").tobytes())  # float32 x, y, z, i, ring
        files[lidar] = rel
        return files

    def _add_sample_data(self, sensor: Sensor, k: int, filename: str, timestamp: int) -> None:
        """The keyframe's sample_data of ``sensor`` and its ego_pose (same token, as in nuScenes)."""
        chain = self.chains[sensor.channel]
        self.tables.add_ego_pose(
            chain[k], timestamp, self.trajectory.ego_xy[k], float(self.trajectory.ego_yaw[k])
        )
        width, height = sensor.image_size
        record = {
            "token": chain[k],
            "sample_token": self.samples[k],
            "ego_pose_token": chain[k],
            "calibrated_sensor_token": self.calib[sensor.channel],
            "timestamp": timestamp,
            "fileformat": "jpg" if sensor.modality == "camera" else "pcd",
            "is_key_frame": True,
            "height": height,
            "width": width,
            "filename": filename,
        }
        self.tables.append("sample_data", _linked(record, chain, k))

    def _annotation(self, agent: int, k: int, lidar_pts: int, radar_pts: int, visible: float) -> Record:
        """A sample_annotation record (unlinked) of ``agent`` at keyframe ``k``."""
        track = self.trajectory.agents[agent]
        attribute = attribute_name(track.spec.category, float(track.speed[k]))
        return {
            "token": self.tables.token("sample_annotation", self.scene, agent, k),
            "sample_token": self.samples[k],
            "instance_token": self.tables.token("instance", self.scene, agent),
            "visibility_token": visibility_token(visible),
            "attribute_tokens": [self.tables.attribute_token(attribute)] if attribute else [],
            "translation": rounded(track.center(k)),
            "size": rounded(track.spec.wlh),
            "rotation": rounded(yaw_quaternion(float(track.yaw[k])), ROTATION_DIGITS),
            "prev": "",
            "next": "",
            "num_lidar_pts": int(lidar_pts),
            "num_radar_pts": int(radar_pts),
        }


def _linked(record: Record, tokens: list[str], k: int) -> Record:
    """``record`` with ``prev``/``next`` pointing at its neighbours in ``tokens`` ('' at the ends)."""
    record["prev"] = tokens[k - 1] if k > 0 else ""
    record["next"] = tokens[k + 1] if k + 1 < len(tokens) else ""
    return record


def _box(trajectory: SceneTrajectory, agent: int, k: int) -> WorldBox:
    track = trajectory.agents[agent]
    return WorldBox(track.center(k), np.asarray(track.spec.wlh), float(track.yaw[k]), track.spec.category)


def _annotated(box: WorldBox, pose: np.ndarray, sweep: LidarSweep, j: int) -> bool:
    """nuScenes keeps boxes with at least one lidar or radar point; we also cap the range."""
    near = float(np.linalg.norm(box.center[:2] - pose[:2, 3])) <= ANNOTATION_RANGE_M
    return near and int(sweep.lidar_hits[j] + sweep.radar_hits[j]) > 0


def _visible_fraction(rendered: RenderResult, j: int) -> float:
    """Share of box ``j``'s unoccluded silhouette that shows in the images (0 when out of view)."""
    silhouette = float(rendered.silhouette_pixels[j])
    return min(1.0, float(rendered.visible_pixels[j]) / silhouette) if silhouette > 0 else 0.0
