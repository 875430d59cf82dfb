"""Unannotated scenery drawn as boxes: traffic lights on their poles, and vehicles' brake lights.

Sizes are real-world ones: a signal head is about 0.35 m wide and 1.1 m tall with 30 cm lamps
(US MUTCD 12-inch lenses), hung about 5 m above the lane on a mast arm; brake lights are about
30 x 20 cm at bumper height. At the model's resolution they are a few pixels: the kind of small,
localised evidence that decides a driving plan.
"""

from __future__ import annotations

import math

import numpy as np

from data_tools.synthetic.geometry import WorldBox
from data_tools.synthetic.scenario import LEFT_HAND_TRAFFIC, ScenePlan
from data_tools.synthetic.world import AgentTrack

#: Signal head: (width, depth, height) m, and the lamps' size (m) and vertical pitch (m).
HEAD_WLH = (0.4, 0.3, 1.15)
LAMP_M = 0.3
LAMP_PITCH_M = 0.37
LAMP_THICKNESS_M = 0.04
#: Mast-arm head centre height (m) over the ego lane; corner-post head centre height (m).
MAST_HEAD_Z = 5.3
POST_HEAD_Z = 3.0
POLE_M = 0.22
#: The corner post stands this far (m) beyond the curb on the driving side, at the stop line.
POST_CURB_OFFSET_M = 0.8
HOUSING_RGB = (35, 35, 35)
POLE_RGB = (120, 120, 125)
#: Lamp colours: lit red / amber / green, and an unlit lens.
LAMP_RGB = {"red": (255, 45, 35), "amber": (255, 175, 0), "green": (40, 255, 120)}
UNLIT_RGB = (60, 60, 55)
LAMP_ORDER = ("red", "amber", "green")  # top to bottom
#: Brake lights: size (m), height of their centre as a share of the body height, inset from the
#: body's sides (m); lit and unlit colours.
BRAKE_LIGHT_WH = (0.32, 0.22)
BRAKE_LIGHT_HEIGHT_SHARE = 0.7
BRAKE_LIGHT_INSET_M = 0.22
BRAKE_LIT_RGB = (255, 30, 30)
BRAKE_UNLIT_RGB = (95, 25, 25)


def signal_props(plan: ScenePlan, state: str) -> tuple[WorldBox, ...]:
    """The light's poles, arm, heads and lamps (``state`` lit) for a scene with a signal."""
    if plan.signal is None:
        return ()
    road = plan.road
    side = 1.0 if plan.location in LEFT_HAND_TRAFFIC else -1.0  # the driving side's curb
    d_ego = plan.ego_offset
    out: list[WorldBox] = []
    # Mast arm on the far side: pole at the curb, arm across to above the ego lane, head under it.
    mast_s = plan.signal.mast_s
    pole_d = side * (road.half_width + POLE_M)
    out.append(_pole(road.pose_at(mast_s, pole_d)[0], MAST_HEAD_Z + 0.9))
    (xy_pole, xy_head), heading = road.pose_at(np.array([mast_s, mast_s]), np.array([pole_d, d_ego]))
    arm_center = (xy_pole + xy_head) / 2.0
    arm_length = float(np.linalg.norm(xy_head - xy_pole)) + 0.5
    out.append(
        WorldBox(
            np.array([*arm_center, MAST_HEAD_Z + 0.75]),
            np.array([arm_length, 0.15, 0.15]),
            float(heading[0]),
            "prop",
            POLE_RGB,
        )  # fmt: skip
    )
    out.extend(_head(xy_head, float(heading[0]) + math.pi, MAST_HEAD_Z, state))
    # Corner post at the stop line, on the driving side.
    post_d = side * (road.half_width + POST_CURB_OFFSET_M)
    xy_post, post_heading = road.pose_at(plan.signal.stop_line_s, post_d)
    out.append(_pole(xy_post, POST_HEAD_Z - 0.5))
    out.extend(_head(xy_post, float(post_heading) + math.pi, POST_HEAD_Z, state))
    return tuple(out)


def brake_light_props(track: AgentTrack, k: int) -> tuple[WorldBox, ...]:
    """The two brake lights on the rear of a vehicle at keyframe ``k`` (lit or not)."""
    if not track.spec.category.startswith("vehicle"):
        return ()
    width, length, height = track.spec.wlh
    yaw = float(track.yaw[k])
    forward = np.array([math.cos(yaw), math.sin(yaw)])
    left = np.array([-forward[1], forward[0]])
    rear = track.xy[k] - forward * (length / 2.0 + LAMP_THICKNESS_M / 2.0)
    lit = bool(track.lights[k])
    rgb = BRAKE_LIT_RGB if lit else BRAKE_UNLIT_RGB
    lamp_w, lamp_h = BRAKE_LIGHT_WH
    out = []
    for sign in (-1.0, 1.0):
        xy = rear + left * sign * (width / 2.0 - BRAKE_LIGHT_INSET_M)
        center = np.array([*xy, height * BRAKE_LIGHT_HEIGHT_SHARE])
        out.append(
            WorldBox(center, np.array([lamp_w, LAMP_THICKNESS_M, lamp_h]), yaw, "prop", rgb, emissive=lit)
        )
    return tuple(out)


def _pole(xy: np.ndarray, top: float) -> WorldBox:
    return WorldBox(
        np.array([xy[0], xy[1], top / 2.0]), np.array([POLE_M, POLE_M, top]), 0.0, "prop", POLE_RGB
    )


def _head(xy: np.ndarray, facing: float, z: float, state: str) -> list[WorldBox]:
    """A signal head at ``xy`` whose lenses face ``facing`` (towards the ego), ``state`` lit."""
    forward = np.array([math.cos(facing), math.sin(facing)])
    width, depth, height = HEAD_WLH
    out = [
        WorldBox(np.array([xy[0], xy[1], z]), np.array([width, depth, height]), facing, "prop", HOUSING_RGB)
    ]
    lens_xy = xy + forward * (depth / 2.0 + LAMP_THICKNESS_M / 2.0)
    for i, colour in enumerate(LAMP_ORDER):
        lit = colour == state
        center = np.array([lens_xy[0], lens_xy[1], z + (1 - i) * LAMP_PITCH_M])
        out.append(
            WorldBox(
                center,
                np.array([LAMP_M, LAMP_THICKNESS_M, LAMP_M]),
                facing,
                "prop",
                LAMP_RGB[colour] if lit else UNLIT_RGB,
                emissive=lit,
            )  # fmt: skip
        )
    return out
