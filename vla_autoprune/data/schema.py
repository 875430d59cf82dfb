"""Names and conventions shared by the data layer, the models, the pruners and the planners.

Frames: every geometric quantity in a batch is in the ego frame of the current keyframe
(from the ``LIDAR_TOP`` sample_data's ego pose): x forward, y left, z up, metres, radians.
Time: keyframes at 2 Hz; future step ``k = 0..5`` is ``t = 0.5 * (k + 1)`` seconds ahead,
past step ``k = 0..3`` is ``t = -0.5 * (k + 1)`` seconds (most recent first).

Batch keys (``B`` samples, ``C = len(cameras)`` cameras, ``N`` padded boxes per step, ``A``
padded agent slots):

============== ========================= =====================================================
key            shape / type              meaning
============== ========================= =====================================================
sample_token   list[str] (B)             nuScenes sample token
scene_token    list[str] (B)             nuScenes scene token
cameras        tuple[str, ...] (C)       camera channels, in the order of ``images``
images         uint8 [B, C, 3, H, W]     RGB images
intrinsics     float32 [B, C, 3, 3]      camera matrices (pixels), scaled to ``H, W``
cam2ego        float32 [B, C, 4, 4]      camera-to-current-ego transforms
ego_state      float32 [B, 3]            (speed m/s, longitudinal accel m/s^2, yaw rate rad/s)
command        int64 [B]                 index into ``COMMANDS``
past_trajectory float32 [B, 4, 2]        past ego xy, most recent first
past_mask      bool [B, 4]               past step exists
gt_trajectory  float32 [B, 6, 2]         future ego xy (zeros where invalid)
gt_mask        bool [B, 6]               future keyframe exists
future_boxes   float32 [B, 6, N, 5]      (x, y, width, length, yaw) of GT agent boxes
future_labels  int64 [B, 6, N]           index into ``CATEGORIES``; -1 = padding / absent
scenario       list[str] (B)             scenario family (synthetic side file; ``unknown`` for real data)
complexity     float32 [B]               road users (vehicle.*, human.*) annotated within 50 m
agent_boxes    float32 [B, 7, A, 5]      (x, y, width, length, yaw) at t = 0, 0.5, ..., 3.0 s;
                                         slot a is one instance_token at every step
agent_valid    bool [B, 7, A]            the slot's instance is annotated at that keyframe
agent_labels   int64 [B, A]              index into ``CATEGORIES``; -1 = padding
map_location   list[str] (B)             the log's location (map expansion ``<location>.json``)
ego_pose       float64 [B, 3]            global x, y, yaw of the current ``LIDAR_TOP`` ego pose
============== ========================= =====================================================

``future_boxes`` (nearest first at each step) feed the open-loop collision metrics; the
``agent_*`` tracks (one slot per agent across steps) and ``map_location`` / ``ego_pose`` feed the
closed-loop-style score (``docs/CLOSED-LOOP.md``).

``ego_state`` columns are named, in order, by ``EGO_STATE_FIELDS``; every consumer indexes them
through it (``EGO_STATE_FIELDS.index("speed")``), never by a literal column number.
"""

from __future__ import annotations

#: Default camera order: the six nuScenes surround cameras.
CAMERAS: tuple[str, ...] = (
    "CAM_FRONT",
    "CAM_FRONT_RIGHT",
    "CAM_FRONT_LEFT",
    "CAM_BACK",
    "CAM_BACK_LEFT",
    "CAM_BACK_RIGHT",
)

#: ``ego_state`` columns, in order: speed (m/s), longitudinal accel (m/s^2), yaw rate (rad/s).
EGO_STATE_FIELDS: tuple[str, ...] = ("speed", "accel", "yaw_rate")

#: Driving commands; ``command`` holds an index into this tuple.
COMMANDS: tuple[str, ...] = ("left", "straight", "right")

#: Future waypoints (3 s at 2 Hz) and past waypoints (2 s at 2 Hz).
NUM_FUTURE_STEPS = 6
NUM_PAST_STEPS = 4
KEYFRAME_DT_S = 0.5

#: The 23 nuScenes v1.0 detection-taxonomy categories; ``future_labels`` index into it.
CATEGORIES: tuple[str, ...] = (
    "animal",
    "human.pedestrian.adult",
    "human.pedestrian.child",
    "human.pedestrian.construction_worker",
    "human.pedestrian.personal_mobility",
    "human.pedestrian.police_officer",
    "human.pedestrian.stroller",
    "human.pedestrian.wheelchair",
    "movable_object.barrier",
    "movable_object.debris",
    "movable_object.pushable_pullable",
    "movable_object.trafficcone",
    "static_object.bicycle_rack",
    "vehicle.bicycle",
    "vehicle.bus.bendy",
    "vehicle.bus.rigid",
    "vehicle.car",
    "vehicle.construction",
    "vehicle.emergency.ambulance",
    "vehicle.emergency.police",
    "vehicle.motorcycle",
    "vehicle.trailer",
    "vehicle.truck",
)

BATCH_KEYS: tuple[str, ...] = (
    "sample_token",
    "scene_token",
    "cameras",
    "images",
    "intrinsics",
    "cam2ego",
    "ego_state",
    "command",
    "past_trajectory",
    "past_mask",
    "gt_trajectory",
    "gt_mask",
    "future_boxes",
    "future_labels",
    "scenario",
    "complexity",
    "agent_boxes",
    "agent_valid",
    "agent_labels",
    "map_location",
    "ego_pose",
)

#: Keyframes of the agent tracks: the current one and the ``NUM_FUTURE_STEPS`` after it.
NUM_AGENT_STEPS = NUM_FUTURE_STEPS + 1

#: ``scenario`` of a sample whose dataset records none (real nuScenes).
UNKNOWN_SCENARIO = "unknown"
#: ``complexity`` counts the annotated road users (categories with these prefixes) within this
#: many metres of the ego at the sample's keyframe (the nuScenes detection range).
COMPLEXITY_CATEGORY_PREFIXES: tuple[str, ...] = ("vehicle.", "human.")
COMPLEXITY_RANGE_M = 50.0
