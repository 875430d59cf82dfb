"""A ray-cast roof lidar: first hits on the flat ground and on the agents' boxes.

Besides the point cloud, each sweep counts the rays whose first hit is each box; these are the
annotations' ``num_lidar_pts``. ``num_radar_pts`` counts the near-horizontal rays only, a proxy for a
planar automotive radar (no radar sample_data is written).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from data_tools.synthetic.cameras import Sensor
from data_tools.synthetic.geometry import WorldBox

#: Velodyne HDL-32E, the nuScenes LIDAR_TOP: 32 rings from -30.67 to +10.67 degrees elevation.
LIDAR_RINGS = 32
LIDAR_ELEVATION_DEG = (-30.67, 10.67)
#: Azimuth steps per turn (0.5 deg): keeps a pedestrian at 50 m (~0.75 deg wide) hit by some ray.
LIDAR_AZIMUTHS = 720
LIDAR_MAX_RANGE_M = 70.0
#: Rays within this elevation (deg) of the horizon stand in for a planar radar's returns.
RADAR_ELEVATION_DEG = 2.0
#: Reflectance written in the intensity channel: dark asphalt vs painted/metal objects (0-255 scale).
GROUND_INTENSITY = 8.0
OBJECT_INTENSITY = 60.0
#: Only every n-th azimuth column keeps its ground returns, to keep sweep files small (~90 KB);
#: returns from boxes are all kept, so ``num_lidar_pts`` equals the box's points in the file.
GROUND_THINNING = 4
#: Guards the slab test against division by an exactly zero direction component.
TINY = 1e-12


@dataclass(frozen=True, eq=False)
class LidarSweep:
    """One sweep: ``points [N, 5]`` float32 (x, y, z, intensity, ring) in the sensor frame and,
    per box, ``lidar_hits [B]`` and ``radar_hits [B]`` (int)."""

    points: np.ndarray
    lidar_hits: np.ndarray
    radar_hits: np.ndarray


class LidarScanner:
    """Casts a fixed fan of rays from the lidar mount of an ego at a given pose."""

    def __init__(self, sensor: Sensor) -> None:
        elevation = np.radians(np.linspace(*LIDAR_ELEVATION_DEG, LIDAR_RINGS))
        azimuth = np.arange(LIDAR_AZIMUTHS) * (2.0 * math.pi / LIDAR_AZIMUTHS)
        elev, azim = np.meshgrid(elevation, azimuth, indexing="ij")  # [rings, azimuths]
        self._dirs = np.stack(
            [np.cos(elev) * np.cos(azim), np.cos(elev) * np.sin(azim), np.sin(elev)], axis=-1
        ).reshape(-1, 3)  # [N, 3] unit rays in the sensor frame
        self._ring = np.repeat(np.arange(LIDAR_RINGS), LIDAR_AZIMUTHS).astype(np.float32)
        self._radar = np.abs(np.degrees(elev.reshape(-1))) <= RADAR_ELEVATION_DEG
        self._keep_ground = (
            (np.arange(LIDAR_AZIMUTHS) % GROUND_THINNING == 0)[None].repeat(LIDAR_RINGS, 0).ravel()
        )
        self._sensor = sensor

    def scan(self, ego_to_global: np.ndarray, boxes: list[WorldBox]) -> LidarSweep:
        """Sweep from an ego at ``ego_to_global [4, 4]`` among ``boxes``."""
        sensor_to_global = ego_to_global @ self._sensor.to_ego()
        origin, rot = sensor_to_global[:3, 3], sensor_to_global[:3, :3]
        down = self._dirs @ rot[2]  # [N] global z component of each ray
        with np.errstate(divide="ignore"):
            dist = np.where(down < 0.0, -origin[2] / down, np.inf)  # ground hits
        owner = np.zeros(len(dist), dtype=np.int64)  # 0 = ground, b + 1 = box b
        for b, box in enumerate(boxes):
            rays = self._rays_towards(box, origin, rot)
            if rays.size == 0:
                continue
            t = _slab_entry(origin, self._dirs[rays] @ rot.T, box)
            closer = t < dist[rays]
            dist[rays[closer]] = t[closer]
            owner[rays[closer]] = b + 1
        valid = dist <= LIDAR_MAX_RANGE_M
        on_box = valid & (owner > 0)
        lidar_hits = np.bincount(owner[on_box] - 1, minlength=len(boxes))
        radar_hits = np.bincount(owner[on_box & self._radar] - 1, minlength=len(boxes))
        keep = on_box | (valid & (owner == 0) & self._keep_ground)
        xyz = self._dirs[keep] * dist[keep, None]
        intensity = np.where(owner[keep] > 0, OBJECT_INTENSITY, GROUND_INTENSITY)
        points = np.column_stack([xyz, intensity, self._ring[keep]]).astype(np.float32)
        return LidarSweep(points, lidar_hits, radar_hits)

    def _rays_towards(self, box: WorldBox, origin: np.ndarray, rot: np.ndarray) -> np.ndarray:
        """Indices of the rays whose azimuth falls within the box's angular extent (none if out of range)."""
        corners = (box.corners() - origin) @ rot  # [8, 3] in the sensor frame
        if np.linalg.norm(corners[:, :2], axis=1).min() > LIDAR_MAX_RANGE_M:
            return np.empty(0, dtype=np.int64)
        center = corners.mean(axis=0)
        mid = math.atan2(center[1], center[0])
        rel = (np.arctan2(corners[:, 1], corners[:, 0]) - mid + math.pi) % (2.0 * math.pi) - math.pi
        step = 2.0 * math.pi / LIDAR_AZIMUTHS
        cols = np.arange(math.floor((mid + rel.min()) / step), math.ceil((mid + rel.max()) / step) + 1)
        cols %= LIDAR_AZIMUTHS
        return (np.arange(LIDAR_RINGS)[:, None] * LIDAR_AZIMUTHS + cols[None, :]).ravel()


def _slab_entry(origin: np.ndarray, dirs: np.ndarray, box: WorldBox) -> np.ndarray:
    """Distance ``[R]`` along unit rays ``dirs [R, 3]`` from ``origin`` into ``box`` (inf on a miss)."""
    cos, sin = math.cos(box.yaw), math.sin(box.yaw)
    rel = origin - box.center
    # Into the box frame (x along the heading): rotate by -yaw.
    local_origin = np.array([cos * rel[0] + sin * rel[1], -sin * rel[0] + cos * rel[1], rel[2]])
    local_dirs = np.stack(
        [cos * dirs[:, 0] + sin * dirs[:, 1], -sin * dirs[:, 0] + cos * dirs[:, 1], dirs[:, 2]], axis=1
    )
    local_dirs = np.where(np.abs(local_dirs) < TINY, TINY, local_dirs)
    half = np.array([box.wlh[1], box.wlh[0], box.wlh[2]]) / 2.0  # length, width, height halves
    t1 = (-half - local_origin) / local_dirs
    t2 = (half - local_origin) / local_dirs
    t_near = np.minimum(t1, t2).max(axis=1)
    t_far = np.maximum(t1, t2).min(axis=1)
    return np.where((t_near <= t_far) & (t_near > 0.0), t_near, np.inf)
