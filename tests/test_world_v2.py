"""World v2: held-out scene streams, scenario families whose triggers only the cameras show, and
conflict objects that a plan ignoring the trigger runs into (METRICS.md collision check)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from nuscenes.map_expansion.map_api import NuScenesMap

from data_tools.synthetic.cameras import camera_rig
from data_tools.synthetic.events import FAMILIES
from data_tools.synthetic.ground import ground_layers
from data_tools.synthetic.props import BRAKE_LIT_RGB, LAMP_RGB, brake_light_props, signal_props
from data_tools.synthetic.render import SceneRenderer
from data_tools.synthetic.scenario import SPLIT_IDS, ScenePlan, plan_scene
from data_tools.synthetic.scene_writer import ego_to_global
from data_tools.synthetic.traffic import EGO_FRONT_M
from data_tools.synthetic.world import SceneTrajectory, simulate
from data_tools.synthetic_nuscenes import generate, plan_scenes
from data_tools.yardsticks import constant_velocity
from planners.metrics import collision_at
from vla_autoprune.data import NuScenesDrivingDataset, collate
from vla_autoprune.data.schema import UNKNOWN_SCENARIO

VERSION = "v1.0-synthetic"
KEYFRAMES = 12
#: Two scenes of every family; val only, as the main job's default set is.
VAL_SCENES = 2 * len(FAMILIES)
#: Families whose conflict object a constant-velocity plan must run into somewhere in two scenes.
CONFLICT_FAMILIES = ("traffic_light", "pedestrian", "lead_brake", "stopped_vehicle")
#: Constant velocity (ignores every trigger) must collide at least this often (stp3 Col@3s).
MIN_CV_COLLISION = 0.05


@pytest.fixture(scope="module")
def val_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("world_v2")
    return generate(
        root, scenes={"val": VAL_SCENES}, samples_per_scene=KEYFRAMES, image_size=(64, 64), seed=0
    )


@pytest.fixture(scope="module")
def val_batch(val_root: Path) -> dict:
    ds = NuScenesDrivingDataset(val_root, VERSION, "val")
    return collate([ds[i] for i in range(len(ds))])


def _fingerprint(plan: ScenePlan) -> tuple:
    """Scene content relative to the ego (placement on the map canvas left out)."""
    agents = tuple(
        (a.category, round(a.offset - plan.ego_offset, 6), round(a.start - plan.ego_start_s, 6), a.wlh)
        for a in plan.agents
    )
    road = (tuple(np.round(plan.road.piece_lengths, 6)), tuple(np.round(plan.road.piece_curvatures, 6)))
    return (plan.family, plan.location, round(plan.ego_speed, 9), plan.road.lane_forward, road, agents)


def test_split_streams_are_disjoint_by_content() -> None:
    """No scene of train appears in val or test (for either seed): compared by what is in it."""
    seen: dict[tuple, str] = {}
    for seed in (0, 1):
        for split in SPLIT_IDS:
            for index in range(60):
                key = _fingerprint(plan_scene(seed, split, index, KEYFRAMES))
                assert key not in seen, (seed, split, index, seen.get(key))
                seen[key] = f"{seed}/{split}/{index}"
    # ... and the val scenes do not depend on how many training scenes are generated with them.
    alone = plan_scenes(0, {"val": 6}, KEYFRAMES)
    after_train = [p for p in plan_scenes(0, {"train": 50, "val": 6}, KEYFRAMES) if p.split == "val"]
    assert [_fingerprint(p) for p in alone] == [_fingerprint(p) for p in after_train]


def test_side_file_gives_each_sample_its_family_and_complexity(val_root: Path, tmp_path: Path) -> None:
    ds = NuScenesDrivingDataset(val_root, VERSION, "val")
    side = json.loads((val_root / VERSION / "scenarios.json").read_text())
    by_scene: dict[str, set[str]] = {}
    for i in range(len(ds)):
        item = ds[i]
        assert item["scenario"] == side["samples"][item["sample_token"]]["scenario"]
        by_scene.setdefault(item["scene_token"], set()).add(item["scenario"])
    assert all(len(families) == 1 for families in by_scene.values())
    assert sorted(f for fams in by_scene.values() for f in fams) == sorted(FAMILIES * 2)
    # Without the side file (as on real nuScenes): "unknown", and the same complexity recomputed
    # from the annotations by the dataset's own definition.
    bare = tmp_path / "bare"
    shutil.copytree(val_root, bare)
    (bare / VERSION / "scenarios.json").unlink()
    plain = NuScenesDrivingDataset(bare, VERSION, "val")
    complexities = []
    for i in range(0, len(ds), 5):
        item, other = ds[i], plain[i]
        assert other["scenario"] == UNKNOWN_SCENARIO
        assert other["complexity"].dtype == torch.float32
        assert float(other["complexity"]) == float(item["complexity"])
        complexities.append(float(item["complexity"]))
    assert len(set(complexities)) >= 4  # complexity varies from sample to sample


def test_collated_scenario_and_complexity(val_batch: dict) -> None:
    assert isinstance(val_batch["scenario"], list) and len(val_batch["scenario"]) == len(val_batch["command"])
    assert val_batch["complexity"].dtype == torch.float32
    assert val_batch["complexity"].shape == (len(val_batch["command"]),)


def test_ignoring_the_triggers_collides(val_batch: dict) -> None:
    """Constant velocity (blind to every trigger) runs into the conflict objects; the logged ego never does."""
    b = val_batch
    cv = constant_velocity(b["ego_state"])
    rate = collision_at(cv, b["gt_trajectory"], b["future_boxes"], b["future_labels"], b["gt_mask"])
    assert rate["3s"] >= MIN_CV_COLLISION, rate
    flags = rate["per_sample"].any(dim=1)
    hit = {f for f, h in zip(b["scenario"], flags.tolist(), strict=True) if h}
    assert set(CONFLICT_FAMILIES) <= hit, hit
    easy = [h for f, h in zip(b["scenario"], flags.tolist(), strict=True) if f == "easy"]
    assert sum(easy) <= len(easy) // 4  # the easy scenes are easy


def _trajectories(family: str, count: int) -> list[SceneTrajectory]:
    index = [i for i in range(6 * count) if FAMILIES[i % len(FAMILIES)] == family]
    return [simulate(plan_scene(7, "train", i, KEYFRAMES)) for i in index[:count]]


def test_the_ego_stops_at_red_and_goes_at_green() -> None:
    stopped = went = 0
    for traj in _trajectories("traffic_light", 30):
        plan, signal = traj.plan, traj.plan.signal
        assert signal is not None and plan.cross is not None
        stop_line = float(plan.road.lane_length(signal.stop_line_s, plan.ego_offset))
        along = np.array(
            [float(plan.road.lane_length(_s_of(plan, xy), plan.ego_offset)) for xy in traj.ego_xy]
        )
        fronts = along + EGO_FRONT_M
        red = np.array([s == "red" for s in traj.signal_states])
        before = fronts[0] < stop_line
        if signal.initial == "green" and math.isfinite(signal.switch_at) and before and red.any():
            # Stopping for the amber / red: never past the line while red, and slowed to a crawl.
            if fronts[np.argmax(red)] < stop_line:
                assert (fronts[red] <= stop_line + 0.05).all()
                assert traj.ego_speed[-1] < 0.5 * traj.ego_speed[0]
                stopped += 1
        if signal.initial == "red":  # creeping up to the line, then green: it drives off
            green = ~red
            assert (fronts[red] <= stop_line + 0.05).all()
            assert traj.ego_speed[-1] > traj.ego_speed[np.argmax(green)] + 2.0
            went += 1
    assert stopped >= 3 and went >= 3, (stopped, went)


def _s_of(plan: ScenePlan, xy: np.ndarray) -> float:
    """Centre-line arc length of a point on the straight ego lane (traffic-light roads are straight)."""
    start, heading = plan.road.pose_at(0.0, 0.0)
    return float((xy - start) @ np.array([math.cos(float(heading)), math.sin(float(heading))]))


def test_trigger_state_is_not_given_away_by_speed() -> None:
    """Stop-at-red and drive-through-green scenes start at the same speeds: only the light differs."""
    speeds: dict[str, list[float]] = {"stop": [], "green": []}
    for traj in _trajectories("traffic_light", 40):
        signal = traj.plan.signal
        assert signal is not None
        if signal.initial == "green":
            speeds["stop" if math.isfinite(signal.switch_at) else "green"].append(float(traj.ego_speed[0]))
    assert min(speeds["stop"]) < np.median(speeds["green"]) < max(speeds["stop"])
    assert min(speeds["green"]) < np.median(speeds["stop"]) < max(speeds["green"])


def _front_image(traj: SceneTrajectory, k: int, props: tuple) -> np.ndarray:
    cams = camera_rig((384, 216))
    plan = traj.plan
    stop = plan.signal.stop_line_s if plan.signal else None
    renderer = SceneRenderer(ground_layers(plan.road, plan.cross, stop, plan.crosswalk_s), cams[:1])
    pose = ego_to_global(traj.ego_xy[k], float(traj.ego_yaw[k]))
    return renderer.render(pose, [], props).images[0]


def test_lit_lamps_show_in_the_front_camera() -> None:
    """The light's lit lamp and a braking lead's brake lights are drawn in CAM_FRONT (RGB exact)."""
    for traj in _trajectories("traffic_light", 6):
        state = traj.signal_states[0]
        image = _front_image(traj, 0, signal_props(traj.plan, state))
        bgr = np.array(LAMP_RGB[state][::-1])
        assert (np.abs(image.astype(int) - bgr).max(axis=-1) == 0).sum() >= 2, state
    traj = _trajectories("lead_brake", 1)[0]
    lead = next(t for t in traj.agents if t.spec.is_lead)
    k = int(np.argmax(lead.lights))
    assert lead.lights[k]
    image = _front_image(traj, k, brake_light_props(lead, k))
    assert (np.abs(image.astype(int) - np.array(BRAKE_LIT_RGB[::-1])).max(axis=-1) == 0).sum() >= 2


def test_map_holds_the_intersections(val_root: Path) -> None:
    """NuScenesMap reads the stop lines (with their traffic-light / crosswalk cues) and crosswalks."""
    families = json.loads((val_root / VERSION / "scenarios.json").read_text())["scenes"]
    lights = sum(f == "traffic_light" for f in families.values())
    found = {"traffic_light": 0, "stop_line": 0, "ped_crossing": 0}
    for location in ("boston-seaport", "singapore-onenorth"):
        if not (val_root / "maps" / "expansion" / f"{location}.json").is_file():
            continue
        nmap = NuScenesMap(str(val_root), location)
        for layer in found:
            found[layer] += len(getattr(nmap, layer))
        for record in nmap.stop_line:
            assert record["cue"], record["token"]  # a light or a crosswalk tells when to stop
            assert nmap.extract_polygon(record["polygon_token"]).area > 1.0
    assert found["traffic_light"] == lights and found["stop_line"] >= lights
    assert found["ped_crossing"] >= lights
