"""Camera images: the 3D world projected through each camera's calibration and drawn with OpenCV.

Per image: a sky gradient above the horizon and grass below, the ground layers (asphalt, sidewalks,
markings) as projected quads, then the agents as shaded boxes, far to near (painter's algorithm) with
back faces culled. Every polygon is clipped to the near plane ``z >= NEAR_M`` in camera coordinates
before projection. Alongside, an id buffer records which box owns each pixel; it gives each box's
visible pixel count, and the box's unoccluded silhouette area gives the visible fraction.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from data_tools.synthetic.cameras import Sensor
from data_tools.synthetic.geometry import BOX_FACES, WorldBox, clip_polygon_near, project
from data_tools.synthetic.ground import GroundLayer

#: Near clipping plane (m in front of the camera).
NEAR_M = 0.3
#: Nothing further than this from the ego is drawn (m); it is a few pixels tall at 1600x900 anyway.
RENDER_RANGE_M = 150.0
#: Fixed-point bits for sub-pixel polygon vertices in cv2.fillPoly.
SUBPIXEL_BITS = 4
#: Vertices are clamped to +-this many pixels so fixed-point coordinates stay within int32.
MAX_PIXEL_COORD = 2.0**24

SKY_ZENITH_RGB = (90, 140, 215)
SKY_HORIZON_RGB = (195, 215, 238)
GRASS_RGB = (96, 128, 72)
#: Agent colours (RGB), one per category, saturated so they stand out from the grey/green ground.
#: Cars are blue so that red brake lights stand out on them.
CLASS_RGB: dict[str, tuple[int, int, int]] = {
    "vehicle.car": (70, 120, 235),
    "vehicle.truck": (245, 140, 20),
    "vehicle.bus.rigid": (20, 180, 180),
    "human.pedestrian.adult": (255, 225, 40),
    "human.pedestrian.child": (160, 60, 230),
    "movable_object.trafficcone": (250, 60, 200),
}
#: Lambertian shading: face colour = base * (AMBIENT + (1 - AMBIENT) * max(0, n . SUN)).
AMBIENT = 0.55
SUN_DIRECTION = np.array([0.4, 0.3, 0.85]) / np.linalg.norm([0.4, 0.3, 0.85])
FACE_INDEX = np.array(BOX_FACES)  # [6, 4] corner indices


@dataclass(frozen=True, eq=False)
class RenderResult:
    """Images of one keyframe and per-box pixel statistics summed over cameras.

    :param images: per camera, ``[H, W, 3]`` uint8 BGR (OpenCV order, ready for ``cv2.imencode``).
    :param visible_pixels: ``[B]`` pixels showing each box.
    :param silhouette_pixels: ``[B]`` pixels each box would cover with nothing in front of it.
    """

    images: list[np.ndarray]
    visible_pixels: np.ndarray
    silhouette_pixels: np.ndarray


class SceneRenderer:
    """Renders one scene's ground layers and boxes through a camera rig."""

    def __init__(self, layers: tuple[GroundLayer, ...], cameras: tuple[Sensor, ...]) -> None:
        self._layers = layers
        self._cameras = cameras
        self._backgrounds = [_background(cam) for cam in cameras]

    def render(
        self, ego_to_global: np.ndarray, boxes: list[WorldBox], props: tuple[WorldBox, ...] = ()
    ) -> RenderResult:
        """Draw every camera for an ego at ``ego_to_global [4, 4]``: the annotated ``boxes`` (counted
        in the pixel statistics) and unannotated ``props`` (lights, poles), depth-sorted together."""
        if len(boxes) >= np.iinfo(np.uint8).max:
            raise ValueError(f"{len(boxes)} boxes in one frame; the id buffer holds at most 254")
        ego_xy = ego_to_global[:2, 3]
        near_layers = [
            (layer, np.linalg.norm(layer.centers - ego_xy, axis=1) < RENDER_RANGE_M) for layer in self._layers
        ]
        boxes = [*boxes, *props]
        near_boxes = [
            i for i, b in enumerate(boxes) if np.linalg.norm(b.center[:2] - ego_xy) < RENDER_RANGE_M
        ]
        annotated = len(boxes) - len(props)
        images = []
        visible = np.zeros(len(boxes), dtype=np.int64)
        silhouette = np.zeros(len(boxes), dtype=np.float64)
        for cam, background in zip(self._cameras, self._backgrounds, strict=True):
            cam_to_global = ego_to_global @ cam.to_ego()
            image = background.copy()
            for layer, mask in near_layers:
                _draw_ground(image, layer, layer.quads[mask], cam, cam_to_global)
            ids = np.zeros(image.shape[:2], dtype=np.uint8)
            silhouette += _draw_boxes(image, ids, boxes, near_boxes, cam, cam_to_global, annotated)
            visible += np.bincount(ids[ids > 0], minlength=len(boxes) + 1)[1:]
            images.append(image)
        return RenderResult(images, visible[:annotated], silhouette[:annotated])


def _bgr(rgb: tuple[int, int, int] | np.ndarray) -> tuple[int, int, int]:
    r, g, b = (int(round(float(c))) for c in rgb)
    return b, g, r


def _background(cam: Sensor) -> np.ndarray:
    """Sky gradient down to the horizon, grass below: ``[H, W, 3]`` BGR.

    The cameras are level and the ground is flat, so the horizon is the principal point's row.
    """
    width, height = cam.image_size
    assert cam.intrinsic is not None
    horizon = int(np.clip(np.ceil(cam.intrinsic[1, 2]), 0, height))
    rows = np.arange(height, dtype=np.float64)[:, None] / max(horizon, 1)  # 0 at the top, 1 at horizon
    sky = np.asarray(SKY_ZENITH_RGB) * (1.0 - rows) + np.asarray(SKY_HORIZON_RGB) * rows  # [H, 3]
    column = np.where(np.arange(height)[:, None] < horizon, sky, np.asarray(GRASS_RGB, dtype=np.float64))
    column_bgr = np.round(column[:, ::-1]).astype(np.uint8)  # [H, 3]
    return np.ascontiguousarray(np.broadcast_to(column_bgr[:, None, :], (height, width, 3)))


def _to_camera(points: np.ndarray, cam_to_global: np.ndarray) -> np.ndarray:
    """Global points ``[..., 3]`` to camera coordinates ``[..., 3]``."""
    return (points - cam_to_global[:3, 3]) @ cam_to_global[:3, :3]


def _pixels(points_cam: np.ndarray, intrinsic: np.ndarray) -> np.ndarray:
    """Camera-frame points ``[N, 3]`` (all in front of the near plane) to fixed-point int32 ``[N, 2]``."""
    uv = np.clip(project(points_cam, intrinsic), -MAX_PIXEL_COORD, MAX_PIXEL_COORD)
    return np.round(uv * (1 << SUBPIXEL_BITS)).astype(np.int32)


def _draw_ground(
    image: np.ndarray, layer: GroundLayer, quads: np.ndarray, cam: Sensor, cam_to_global: np.ndarray
) -> None:
    """Fill one layer's quads ``[Q, 4, 3]``; quads of a layer never overlap, so one fillPoly call works."""
    assert cam.intrinsic is not None
    if len(quads) == 0:
        return
    quads_cam = _to_camera(quads, cam_to_global)  # [Q, 4, 3]
    depth = quads_cam[:, :, 2]
    front = depth.min(axis=1) >= NEAR_M
    straddle = ~front & (depth.max(axis=1) >= NEAR_M)
    polys = list(_pixels(quads_cam[front].reshape(-1, 3), cam.intrinsic).reshape(-1, 4, 2))
    for quad in quads_cam[straddle]:
        polys.append(_pixels(clip_polygon_near(quad, NEAR_M), cam.intrinsic))
    if polys:
        cv2.fillPoly(image, polys, _bgr(layer.rgb), lineType=cv2.LINE_8, shift=SUBPIXEL_BITS)


def _draw_boxes(
    image: np.ndarray,
    ids: np.ndarray,
    boxes: list[WorldBox],
    candidates: list[int],
    cam: Sensor,
    cam_to_global: np.ndarray,
    annotated: int,
) -> np.ndarray:
    """Paint boxes far to near into ``image``, and the index + 1 of the first ``annotated`` ones into
    ``ids`` (props in front of a box hide it too: their id is 0); returns silhouette areas ``[B]``."""
    assert cam.intrinsic is not None
    cam_pos = cam_to_global[:3, 3]
    order = sorted(candidates, key=lambda i: -float(np.linalg.norm(boxes[i].center - cam_pos)))
    areas = np.zeros(len(boxes))
    for i in order:
        box = boxes[i]
        faces = _visible_faces(box, cam_pos, cam_to_global)
        outline = []
        base = np.asarray(box.rgb if box.rgb is not None else CLASS_RGB[box.category], dtype=np.float64)
        for face_cam, shade in faces:
            poly = _pixels(face_cam, cam.intrinsic)
            colour = _bgr(base if box.emissive else base * shade)
            cv2.fillPoly(image, [poly], colour, lineType=cv2.LINE_8, shift=SUBPIXEL_BITS)
            cv2.fillPoly(
                ids, [poly], (i + 1 if i < annotated else 0,), lineType=cv2.LINE_8, shift=SUBPIXEL_BITS
            )
            outline.append(project(face_cam, cam.intrinsic))
        if outline and i < annotated:
            areas[i] = _silhouette_area(np.concatenate(outline), cam.image_size)
    return areas


def _visible_faces(
    box: WorldBox, cam_pos: np.ndarray, cam_to_global: np.ndarray
) -> list[tuple[np.ndarray, float]]:
    """Front-facing faces of ``box`` clipped to the near plane: (camera-frame polygon ``[M, 3]``, shade)."""
    quads = box.corners()[FACE_INDEX]  # [6, 4, 3]
    centers = quads.mean(axis=1)  # [6, 3]
    normals = centers - box.center
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    facing = np.einsum("fk,fk->f", normals, centers - cam_pos) < 0.0  # back faces point away
    quads_cam = _to_camera(quads[facing], cam_to_global)  # [F, 4, 3]
    shades = AMBIENT + (1.0 - AMBIENT) * np.maximum(0.0, normals[facing] @ SUN_DIRECTION)
    out = []
    for quad, shade in zip(quads_cam, shades, strict=True):
        clipped = clip_polygon_near(quad, NEAR_M)
        if len(clipped) >= 3:
            out.append((clipped, float(shade)))
    return out


def _silhouette_area(uv: np.ndarray, image_size: tuple[int, int]) -> float:
    """Area (pixels) of the convex hull of projected points ``[N, 2]`` inside the image."""
    width, height = image_size
    hull = cv2.convexHull(np.clip(uv, -MAX_PIXEL_COORD, MAX_PIXEL_COORD).astype(np.float32))
    if len(hull) < 3:
        return 0.0
    frame = np.array([[0, 0], [width, 0], [width, height], [0, height]], dtype=np.float32)
    area, _ = cv2.intersectConvexConvex(hull.reshape(-1, 2), frame)
    return float(area)
