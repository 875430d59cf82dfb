"""The closed-loop-style PDM score in the pipeline: dataset keys, per-sample records, the ``scores``
choice, the missing-map error and the report's PDMS columns (docs/CLOSED-LOOP.md)."""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import evaluate_config
from omegaconf import DictConfig

from planners.constant_velocity import ConstantVelocityPlanner
from planners.ground_truth import GroundTruthPlanner
from vla_autoprune.data import NuScenesDrivingDataset, collate
from vla_autoprune.data.schema import CATEGORIES
from vla_autoprune.errors import ConfigError, DataNotFoundError
from vla_autoprune.pipeline.app import evaluate
from vla_autoprune.pipeline.ci_tables import Bootstrap, Run, main_rows
from vla_autoprune.pipeline.closed_loop_scores import DEFAULT_SCORES, SHORT_LOG, check_scores
from vla_autoprune.pipeline.loop import run_split
from vla_autoprune.pipeline.report_files import write_report
from vla_autoprune.pipeline.summary import summarize
from vla_autoprune.pipeline.table import table_rows
from vla_autoprune.run_files import RECORDS_FILE, read_records

#: Families whose conflict is a vehicle stopped (or stopping) in the ego lane.
STOPPED_LEAD = ("lead_brake", "stopped_vehicle")


def _cfg(root: Path, *overrides: str) -> DictConfig:
    return evaluate_config(root, "batch_size=4", *overrides)


@pytest.fixture(scope="module")
def families_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four val scenes: scene i has family i (traffic_light, pedestrian, lead_brake, stopped_vehicle),
    8 keyframes each, so the first 2 samples of every scene have the full 3 s ahead."""
    from data_tools.synthetic_nuscenes import generate

    return generate(
        tmp_path_factory.mktemp("families"), scenes={"val": 4}, samples_per_scene=8, image_size=(64, 36)
    )


# ------------------------------------------------------------------------------- dataset keys


def test_agent_slots_hold_one_instance_at_every_step(synthetic_root: Path) -> None:
    from nuscenes.nuscenes import NuScenes
    from pyquaternion import Quaternion

    ds = NuScenesDrivingDataset(synthetic_root, split="val")
    nusc: NuScenes = ds.nusc
    item = ds[0]
    boxes, valid, labels = item["agent_boxes"].numpy(), item["agent_valid"].numpy(), item["agent_labels"]
    assert boxes.shape[:2] == valid.shape == (7, labels.shape[0]) and boxes.shape[2] == 5
    sample = nusc.get("sample", ds.sample_tokens[0])
    keyframes = [sample]
    while keyframes[-1]["next"] and len(keyframes) < 7:
        keyframes.append(nusc.get("sample", keyframes[-1]["next"]))
    lidar = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
    pose = nusc.get("ego_pose", lidar["ego_pose_token"])
    yaw0 = Quaternion(pose["rotation"]).yaw_pitch_roll[0]
    assert item["ego_pose"].dtype == torch.float64
    np.testing.assert_allclose(item["ego_pose"].numpy(), [*pose["translation"][:2], yaw0], atol=1e-9)
    log = nusc.get("log", nusc.get("scene", sample["scene_token"])["log_token"])
    assert item["map_location"] == log["location"]

    def by_hand(ann: dict[str, Any]) -> np.ndarray:
        """(x, y, width, length, yaw) of an annotation in the current ego frame, worked out here."""
        dx, dy = np.subtract(ann["translation"][:2], pose["translation"][:2])
        c, s = math.cos(yaw0), math.sin(yaw0)
        yaw = (Quaternion(ann["rotation"]).yaw_pitch_roll[0] - yaw0 + math.pi) % (2 * math.pi) - math.pi
        return np.array([c * dx + s * dy, -s * dx + c * dy, ann["size"][0], ann["size"][1], yaw])

    # Every slot is one instance: find it at its first valid step, then every step must hold that
    # instance's annotation at that keyframe (and be invalid where the instance is not annotated).
    annotations = [[nusc.get("sample_annotation", t) for t in kf["anns"]] for kf in keyframes]
    seen = set()
    for a in range(labels.shape[0]):
        first = int(np.flatnonzero(valid[:, a])[0])
        (instance,) = [
            ann["instance_token"]
            for ann in annotations[first]
            if np.allclose(by_hand(ann), boxes[first, a], atol=1e-3)
        ]
        assert instance not in seen
        seen.add(instance)
        for k, anns in enumerate(annotations):
            mine = [ann for ann in anns if ann["instance_token"] == instance]
            assert valid[k, a] == bool(mine)
            if mine:
                np.testing.assert_allclose(boxes[k, a], by_hand(mine[0]), atol=1e-3)
                assert CATEGORIES[int(labels[a])] == mine[0]["category_name"]
    # Every annotated instance of the 7 keyframes has a slot (no max_boxes given).
    assert seen == {ann["instance_token"] for anns in annotations for ann in anns}
    # Slots are in order of closest approach over the horizon.
    closest = [np.hypot(*boxes[valid[:, a], a, :2].T).min() for a in range(labels.shape[0])]
    assert closest == sorted(closest)


def test_collate_pads_agent_slots_as_absent(synthetic_root: Path) -> None:
    ds = NuScenesDrivingDataset(synthetic_root, split="val")
    items = [ds[0], ds[len(ds) - 1]]
    batch = collate(items)
    slots = max(int(i["agent_labels"].shape[0]) for i in items)
    assert batch["agent_boxes"].shape == (2, 7, slots, 5) and batch["agent_valid"].shape == (2, 7, slots)
    assert batch["ego_pose"].shape == (2, 3) and batch["map_location"] == [i["map_location"] for i in items]
    for b, item in enumerate(items):
        n = item["agent_labels"].shape[0]
        assert torch.equal(batch["agent_boxes"][b, :, :n], item["agent_boxes"])
        assert not batch["agent_valid"][b, :, n:].any() and (batch["agent_labels"][b, n:] == -1).all()
    # The last sample has no future: its agents exist at t = 0 only.
    assert not batch["agent_valid"][1, 1:].any()


# ------------------------------------------------------------------------------- records


def test_evaluate_records_the_pdm_score_of_every_sample(synthetic_root: Path, tmp_path: Path) -> None:
    summary = evaluate(_cfg(synthetic_root, "planner=ground_truth"), tmp_path)
    records = read_records(tmp_path / RECORDS_FILE)
    json.dumps(records, allow_nan=False)  # unscored values are null, never NaN
    scored = [r for r in records if r["pdm_scored"]]
    unscored = [r for r in records if not r["pdm_scored"]]
    assert scored and unscored  # the last 6 samples of a scene have less than 3 s ahead
    for r in records:
        full = all(r["gt_mask"])
        assert r["pdm_scored"] == full
        assert r["pdm_problem"] == (None if full else SHORT_LOG)
    for r in scored:
        assert 0.0 <= r["pdm"]["pdms"] <= 1.0 and r["pdm"]["nc"] == r["pdm"]["dac"] == 1.0
    assert all(all(v is None for v in r["pdm"].values()) for r in unscored)
    assert summary["pdm_unscored"] == len(unscored) and summary["pdm_scored"] == len(scored)
    assert summary["pdm_unscored_reasons"] == {SHORT_LOG: len(unscored)}
    assert summary["pdm"]["pdms"] == pytest.approx(np.mean([r["pdm"]["pdms"] for r in scored]))


def test_ground_truth_near_one_and_constant_velocity_far_lower_behind_stopped_leads(
    families_root: Path, tmp_path: Path
) -> None:
    # GT >= 0.9 on every scored stopped-lead sample: the log does not collide, stays on the road
    # and brakes smoothly (NC = DAC = TTC = C = 1), and the IDM reference stops behind the same
    # lead, so EP stays near 1 (only its 15 m/s target can take it further, before it reaches
    # the lead: >= 0.8 -> PDMS >= (7 + 4) / 12 = 0.92). Constant velocity keeps its speed into the
    # stopped car or off the curving road: its mean is at least 0.5 lower.
    ds = NuScenesDrivingDataset(families_root, split="val")
    pdms = {}
    for planner in (GroundTruthPlanner(), ConstantVelocityPlanner()):
        records = run_split(planner, ds, range(len(ds)), tmp_path / planner.name, batch_size=8)
        pdms[planner.name] = {
            r["sample_token"]: r["pdm"] for r in records if r["pdm_scored"] and r["scenario"] in STOPPED_LEAD
        }
        if planner.name == "ground_truth":
            # Every family: the log is safe and comfortable; progress is all it can lose.
            for r in records:
                if r["pdm_scored"]:
                    assert r["pdm"]["nc"] == r["pdm"]["dac"] == r["pdm"]["ttc"] == r["pdm"]["comfort"] == 1
    gt, cv = pdms["ground_truth"], pdms["constant_velocity"]
    assert len(gt) == 4 and gt.keys() == cv.keys()
    assert min(v["pdms"] for v in gt.values()) >= 0.9
    assert np.mean([v["pdms"] for v in cv.values()]) <= np.mean([v["pdms"] for v in gt.values()]) - 0.5


def test_missing_map_is_a_one_line_error_before_the_loop(synthetic_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "copy"
    shutil.copytree(synthetic_root, root)
    location = NuScenesDrivingDataset(root, split="val").map_locations()[0]
    (root / "maps" / "expansion" / f"{location}.json").unlink()
    out = tmp_path / "run"
    with pytest.raises(DataNotFoundError) as err:
        evaluate(_cfg(root, "planner=constant_velocity"), out)
    message = str(err.value)
    assert "\n" not in message and "map expansion" in message and location in message
    assert str(root / "maps" / "expansion" / f"{location}.json") in message
    assert "scores=[open_loop]" in message
    assert not (out / RECORDS_FILE).exists()  # raised before the first batch
    # Open-loop scores alone need no map.
    ds = NuScenesDrivingDataset(root, split="val")
    records = run_split(ConstantVelocityPlanner(), ds, [0, 1], tmp_path / "open", scores=["open_loop"])
    assert all("pdm" not in r for r in records)
    summary = summarize(records, {"planner": "constant_velocity"})
    assert "pdm" not in summary and "PDMS" not in table_rows([summary])[0]


def test_evaluate_config_scores_both_by_default(synthetic_root: Path) -> None:
    cfg = _cfg(synthetic_root)
    assert check_scores(cfg.scores) == DEFAULT_SCORES == ("open_loop", "closed_loop_style")
    assert check_scores(_cfg(synthetic_root, "scores=[open_loop]").scores) == ("open_loop",)


@pytest.mark.parametrize("scores", [["closed_loop_style"], ["open_loop", "nope"], []])
def test_bad_scores_are_one_line_config_errors(synthetic_root: Path, tmp_path: Path, scores: list) -> None:
    ds = NuScenesDrivingDataset(synthetic_root, split="val")
    with pytest.raises(ConfigError, match=r"scores=.*open_loop") as err:
        run_split(ConstantVelocityPlanner(), ds, [0], tmp_path, scores=scores)
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------- report


def _pdm_records(shift: float, seed: int = 0) -> list[dict[str, Any]]:
    """Records of 8 scenes x 5 samples; the last sample of each scene is unscored."""
    rng = np.random.default_rng(seed)
    records = []
    for scene in range(8):
        level = rng.random()
        for i in range(5):
            scored = i < 4
            value = min(1.0, 0.5 * level + 0.1 * rng.random() + shift) if scored else None
            records.append(
                {
                    "index": scene * 5 + i,
                    "sample_token": f"s{scene}-{i}",
                    "scene_token": f"scene-{scene}",
                    "gt_mask": [True] * 6 if scored else [True] * 3 + [False] * 3,
                    "l2": [1.0] * 6,
                    "collision": {k: [False] * 6 for k in ("stp3", "uniad", "box")},
                    "pdm": {"pdms": value, "nc": 1.0 if scored else None, "ep": value},
                    "pdm_scored": scored,
                    "pdm_problem": None if scored else SHORT_LOG,
                }
            )
    return records


def test_pdms_intervals_and_diff_vs_none_come_from_scored_samples_only() -> None:
    base = {"planner": "vla", "model": "m", "samples_digest": "d"}
    none_records, pruned_records = _pdm_records(0.0), _pdm_records(-0.1)
    none = Run.of(summarize(none_records, {**base, "pruner": "none"}), none_records)
    pruned = Run.of(summarize(pruned_records, {**base, "pruner": "random", "budget": 32}), pruned_records)
    rows = {r["pruner"]: r for r in main_rows([none, pruned], Bootstrap(resamples=500, seed=0))}
    scored = [r["pdm"]["pdms"] for r in none_records if r["pdm_scored"]]
    assert rows["none"]["PDMS"] == pytest.approx(np.mean(scored))
    assert rows["none"]["PDMS lo"] < rows["none"]["PDMS"] < rows["none"]["PDMS hi"]
    assert rows["none"]["PDM unscored"] == 8
    # Every scored sample of the pruned run is exactly 0.1 lower: the paired difference is -0.1 in
    # every replicate, so its interval is the point.
    for key in ("PDMS diff", "PDMS diff lo", "PDMS diff hi"):
        assert rows["random"][key] == pytest.approx(-0.1)
    assert math.isnan(rows["none"].get("DAC", math.nan))  # recorded by no sample: no number


def test_report_has_pdms_columns_intervals_and_a_budget_plot(synthetic_root: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    for name, overrides in (("none", ["pruner=none"]), ("random", ["pruner=random", "budget=64"])):
        evaluate(_cfg(synthetic_root, "data.dataset.split=train", *overrides), sweep / name)
    out = tmp_path / "report"
    write_report([sweep], out, resamples=200, seed=0)
    rows = list(csv.DictReader(io.StringIO((out / "report.csv").read_text())))
    assert [r["pruner"] for r in rows] == ["none", "random"]
    for row, name in zip(rows, ("none", "random"), strict=True):
        records = read_records(sweep / name / RECORDS_FILE)
        scored = [r["pdm"]["pdms"] for r in records if r["pdm_scored"]]
        assert float(row["PDMS"]) == pytest.approx(np.mean(scored))
        assert float(row["PDMS lo"]) <= float(row["PDMS hi"])
        assert int(row["PDM unscored"]) == len(records) - len(scored) > 0
        for column in ("NC", "DAC", "TTC", "EP", "C", "DDC"):
            assert 0.0 <= float(row[column]) <= 1.0
    assert float(rows[1]["PDMS diff lo"]) <= float(rows[1]["PDMS diff hi"])
    assert float(rows[1]["PDMS diff"]) == pytest.approx(float(rows[1]["PDMS"]) - float(rows[0]["PDMS"]))
    text = (out / "report.md").read_text()
    assert "## Closed-loop-style score" in text and "PDM unscored" in text
    assert (out / "pdms_vs_budget.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    breakdown = list(csv.DictReader(io.StringIO((out / "breakdown.csv").read_text())))
    assert all("PDMS" in r for r in breakdown)
