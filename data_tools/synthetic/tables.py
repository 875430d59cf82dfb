"""The nuScenes v1.0 schema tables, filled record by record and written as ``<version>/*.json``.

Tokens are 32-hex MD5 digests of the seed and the record's identity (e.g. ``sample/<scene>/<k>``), so
the same arguments give the same tokens and no two records collide. Floats are rounded (positions to
0.1 mm, quaternions to 1e-9) so the JSON text does not depend on the last bit of the floating point.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from data_tools.synthetic.cameras import Sensor
from data_tools.synthetic.geometry import yaw_quaternion

Record = dict[str, Any]

TABLE_NAMES: tuple[str, ...] = (
    "category",
    "attribute",
    "visibility",
    "instance",
    "sensor",
    "calibrated_sensor",
    "ego_pose",
    "log",
    "scene",
    "sample",
    "sample_data",
    "sample_annotation",
    "map",
)

#: The eight nuScenes v1.0 attributes.
ATTRIBUTES: dict[str, str] = {
    "vehicle.moving": "Vehicle is moving.",
    "vehicle.stopped": "Vehicle, with a driver/rider in/on it, is currently stationary but has an intent to move.",
    "vehicle.parked": "Vehicle is stationary (usually for longer duration) with no immediate intent to move.",
    "cycle.with_rider": "There is a rider on the bicycle or motorcycle.",
    "cycle.without_rider": "There is NO rider on the bicycle or motorcycle.",
    "pedestrian.sitting_lying_down": "The human is sitting or lying down.",
    "pedestrian.standing": "The human is standing.",
    "pedestrian.moving": "The human is moving.",
}
#: nuScenes visibility bins: token, level and upper bound of the visible fraction over all cameras.
VISIBILITY_BINS: tuple[tuple[str, str, float], ...] = (
    ("1", "v0-40", 0.4),
    ("2", "v40-60", 0.6),
    ("3", "v60-80", 0.8),
    ("4", "v80-100", 1.0),
)
#: Agents slower than this (m/s) count as stationary for their attribute.
MOVING_SPEED = 0.3
POSITION_DIGITS = 4
ROTATION_DIGITS = 9


class TokenFactory:
    """Deterministic 32-hex tokens from the seed and a record's identity."""

    def __init__(self, seed: int) -> None:
        self._seed = seed

    def __call__(self, *parts: object) -> str:
        key = "/".join([f"seed{self._seed}", *map(str, parts)])
        return hashlib.md5(key.encode()).hexdigest()


def rounded(values: Iterable[float], digits: int = POSITION_DIGITS) -> list[float]:
    """Plain-float list rounded to ``digits`` decimals (``+ 0.0`` turns -0.0 into 0.0)."""
    return [round(float(v), digits) + 0.0 for v in values]


def visibility_token(fraction: float) -> str:
    """nuScenes visibility token ``'1'..'4'`` of a visible fraction in [0, 1]."""
    for token, _, upper in VISIBILITY_BINS:
        if fraction <= upper:
            return token
    return VISIBILITY_BINS[-1][0]


def attribute_name(category: str, speed: float) -> str | None:
    """The attribute of an agent of ``category`` moving at ``speed`` m/s (None for static objects)."""
    moving = speed > MOVING_SPEED
    if category.startswith("vehicle."):
        return "vehicle.moving" if moving else "vehicle.stopped"
    if category.startswith("human.pedestrian."):
        return "pedestrian.moving" if moving else "pedestrian.standing"
    return None


class NuScenesTables:
    """Accumulates the records of all tables; :meth:`write` dumps them as JSON."""

    def __init__(self, seed: int, categories: Iterable[str], sensors: Iterable[Sensor]) -> None:
        self.token = TokenFactory(seed)
        self.tables: dict[str, list[Record]] = {name: [] for name in TABLE_NAMES}
        self._category_tokens = {}
        for name in categories:
            self._category_tokens[name] = self.token("category", name)
            self.tables["category"].append(
                {"token": self._category_tokens[name], "name": name, "description": f"nuScenes class {name}."}
            )
        self._attribute_tokens = {name: self.token("attribute", name) for name in ATTRIBUTES}
        self.tables["attribute"] = [
            {"token": self._attribute_tokens[n], "name": n, "description": d} for n, d in ATTRIBUTES.items()
        ]
        self.tables["visibility"] = [
            {"token": t, "level": level, "description": f"visibility of whole object is {level[1:]}%"}
            for t, level, _ in VISIBILITY_BINS
        ]
        self._sensor_tokens = {s.channel: self.token("sensor", s.channel) for s in sensors}
        self.tables["sensor"] = [
            {"token": self._sensor_tokens[s.channel], "channel": s.channel, "modality": s.modality}
            for s in sensors
        ]

    def category_token(self, name: str) -> str:
        """Token of category ``name``."""
        return self._category_tokens[name]

    def attribute_token(self, name: str) -> str:
        """Token of attribute ``name``."""
        return self._attribute_tokens[name]

    def add_calibration(self, scene: str, sensor: Sensor) -> str:
        """A calibrated_sensor record of ``sensor`` for one scene's log; returns its token."""
        token = self.token("calibrated_sensor", scene, sensor.channel)
        intrinsic = [] if sensor.intrinsic is None else [rounded(row) for row in sensor.intrinsic]
        self.tables["calibrated_sensor"].append(
            {
                "token": token,
                "sensor_token": self._sensor_tokens[sensor.channel],
                "translation": rounded(sensor.translation),
                "rotation": rounded(sensor.quaternion, ROTATION_DIGITS),
                "camera_intrinsic": intrinsic,
            }
        )
        return token

    def add_ego_pose(self, token: str, timestamp: int, xy: np.ndarray, yaw: float) -> None:
        """An ego_pose on the flat ground (z = 0, yaw only)."""
        self.tables["ego_pose"].append(
            {
                "token": token,
                "timestamp": timestamp,
                "rotation": rounded(yaw_quaternion(yaw), ROTATION_DIGITS),
                "translation": rounded([xy[0], xy[1], 0.0]),
            }
        )

    def add_map(self, location: str, log_tokens: list[str]) -> str:
        """The map record of ``location``; returns the mask file name relative to the dataroot."""
        token = self.token("map", location)
        filename = f"maps/{token}.png"
        self.tables["map"].append(
            {"token": token, "log_tokens": log_tokens, "category": "semantic_prior", "filename": filename}
        )
        return filename

    def append(self, table: str, record: Record) -> None:
        """Add a record built by the caller."""
        self.tables[table].append(record)

    def write(self, table_dir: Path) -> None:
        """Write every table to ``table_dir/<name>.json`` (each via a temporary file and a rename)."""
        table_dir.mkdir(parents=True, exist_ok=True)
        for name, records in self.tables.items():
            write_json(table_dir / f"{name}.json", records)


def write_json(path: Path, payload: object) -> None:
    """Write ``payload`` as JSON so that a reader never sees a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=0))
    os.replace(tmp, path)
