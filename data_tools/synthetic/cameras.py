"""The sensor rig: six nuScenes-like surround cameras and a roof lidar, calibrated as nuScenes stores them.

Extrinsics are sensor-to-ego (``translation`` in metres, ``rotation`` a quaternion ``[w, x, y, z]``);
the ego frame is x forward, y left, z up, and a camera frame is x right, y down, z forward (OpenCV).
Intrinsics are the nuScenes v1.0 values at 1600x900, scaled to the requested image size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from data_tools.synthetic.geometry import quaternion_from_matrix, rotation_z

#: nuScenes image size the reference intrinsics below are given for.
REFERENCE_SIZE = (1600, 900)

#: Camera frame (x right, y down, z forward) expressed in the ego frame (x fwd, y left, z up): the
#: columns are the camera axes, so camera z maps to ego x, camera x to ego -y, camera y to ego -z.
CAMERA_TO_FORWARD_EGO = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


@dataclass(frozen=True)
class CameraSpec:
    """Reference calibration of one camera at 1600x900 (rounded from nuScenes v1.0 calibrations).

    :param translation: camera position in the ego frame (m).
    :param yaw_deg: viewing direction, degrees counter-clockwise from ego +x (left positive).
    :param focal: focal length in pixels (square pixels).
    :param principal: principal point ``(cx, cy)`` in pixels.
    """

    translation: tuple[float, float, float]
    yaw_deg: float
    focal: float
    principal: tuple[float, float]


#: The six surround cameras, in the project's camera order (vla_autoprune.data.schema.CAMERAS).
CAMERA_SPECS: dict[str, CameraSpec] = {
    "CAM_FRONT": CameraSpec((1.70, 0.02, 1.51), 0.0, 1266.4, (816.3, 491.5)),
    "CAM_FRONT_RIGHT": CameraSpec((1.55, -0.49, 1.49), -55.0, 1260.8, (808.0, 495.3)),
    "CAM_FRONT_LEFT": CameraSpec((1.52, 0.49, 1.51), 55.0, 1272.6, (826.6, 479.8)),
    # The rear camera has a wider lens (fx ~ 809) as on the nuScenes vehicle.
    "CAM_BACK": CameraSpec((0.03, 0.0, 1.57), 180.0, 809.2, (829.2, 481.8)),
    "CAM_BACK_LEFT": CameraSpec((1.04, 0.48, 1.56), 110.0, 1256.7, (792.1, 492.8)),
    "CAM_BACK_RIGHT": CameraSpec((1.03, -0.48, 1.59), -110.0, 1259.5, (807.3, 501.2)),
}

LIDAR_CHANNEL = "LIDAR_TOP"
#: Roof lidar mount; nuScenes' LIDAR_TOP is yawed -90 deg (its x axis points to the ego's right).
LIDAR_TRANSLATION = (0.94, 0.0, 1.84)
LIDAR_YAW_RAD = -math.pi / 2.0


@dataclass(frozen=True, eq=False)
class Sensor:
    """A calibrated sensor: channel, modality and sensor-to-ego extrinsics (+ intrinsics for cameras).

    :param intrinsic: ``[3, 3]`` camera matrix in pixels, or None for the lidar.
    :param image_size: ``(W, H)`` for cameras, ``(0, 0)`` for the lidar.
    """

    channel: str
    modality: str
    translation: np.ndarray
    rotation: np.ndarray
    intrinsic: np.ndarray | None
    image_size: tuple[int, int]

    @property
    def quaternion(self) -> list[float]:
        """Rotation as nuScenes stores it: ``[w, x, y, z]``."""
        return quaternion_from_matrix(self.rotation)

    def to_ego(self) -> np.ndarray:
        """``[4, 4]`` sensor-to-ego transform."""
        out = np.eye(4)
        out[:3, :3] = self.rotation
        out[:3, 3] = self.translation
        return out


def scaled_intrinsic(spec: CameraSpec, image_size: tuple[int, int]) -> np.ndarray:
    """``[3, 3]`` camera matrix of ``spec`` for an image of ``image_size = (W, H)`` pixels."""
    sx = image_size[0] / REFERENCE_SIZE[0]
    sy = image_size[1] / REFERENCE_SIZE[1]
    return np.array(
        [
            [spec.focal * sx, 0.0, spec.principal[0] * sx],
            [0.0, spec.focal * sy, spec.principal[1] * sy],
            [0.0, 0.0, 1.0],
        ]
    )


def camera_rig(image_size: tuple[int, int]) -> tuple[Sensor, ...]:
    """The six cameras (in ``CAMERA_SPECS`` order) for ``image_size = (W, H)``."""
    cams = []
    for channel, spec in CAMERA_SPECS.items():
        rotation = rotation_z(math.radians(spec.yaw_deg)) @ CAMERA_TO_FORWARD_EGO
        cams.append(
            Sensor(
                channel=channel,
                modality="camera",
                translation=np.asarray(spec.translation, dtype=np.float64),
                rotation=rotation,
                intrinsic=scaled_intrinsic(spec, image_size),
                image_size=(int(image_size[0]), int(image_size[1])),
            )
        )
    return tuple(cams)


def lidar_sensor() -> Sensor:
    """The roof lidar ``LIDAR_TOP``."""
    return Sensor(
        channel=LIDAR_CHANNEL,
        modality="lidar",
        translation=np.asarray(LIDAR_TRANSLATION, dtype=np.float64),
        rotation=rotation_z(LIDAR_YAW_RAD),
        intrinsic=None,
        image_size=(0, 0),
    )
