"""The training tool's camera-free yardsticks and its record writing, on hand-made values."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from data_tools.synthetic.events import FAMILIES
from data_tools.train_tiny_vla import (
    ISSUE9_RATIOS,
    TrainArgs,
    Trainer,
    WeightAverage,
    family_classes,
    family_head_record,
    family_labels,
    parse_args,
    ratio_intervals,
    reproduce_command,
    retention_intervals,
)
from data_tools.training_record import HAND_WRITTEN, training_markdown, write_record
from data_tools.yardsticks import blind_median, family_median
from vla_autoprune.data.schema import COMMANDS
from vla_autoprune.models import DrivingVLA, DrivingVLAConfig
from vla_autoprune.models.loading import resolve_model_path

LEFT, STRAIGHT = COMMANDS.index("left"), COMMANDS.index("straight")


def _split(speeds: list[float], commands: list[int], x3: list[float]) -> dict[str, torch.Tensor]:
    """Samples whose futures are x = x3 * t / 3 (y = 0) at the 6 future times."""
    t = 0.5 * torch.arange(1, 7)
    x = torch.tensor(x3).unsqueeze(1) * t / 3.0
    return {
        "ego_state": torch.tensor([[s, 0.0, 0.0] for s in speeds]),
        "command": torch.tensor(commands),
        "gt_trajectory": torch.stack([x, torch.zeros_like(x)], -1),
        "gt_mask": torch.ones(len(speeds), 6, dtype=torch.bool),
    }


def test_blind_median_takes_the_median_of_the_nearest_speeds_of_the_same_command() -> None:
    # straight: speeds 1, 2, 3, 10 going 3 s -> 5, 30, 6, 40 m; left: one sample at speed 2.1
    train = _split([1.0, 2.0, 3.0, 10.0, 2.1], [STRAIGHT] * 4 + [LEFT], [5.0, 30.0, 6.0, 40.0, 99.0])
    train["gt_mask"][3, 5] = False  # an incomplete future never counts (else 40 m would be a neighbour)
    data = _split([2.2, 9.0, 2.0], [STRAIGHT, STRAIGHT, LEFT], [0.0, 0.0, 0.0])
    out = blind_median(train, data, k=3)
    # 2.2 m/s straight: neighbours 2, 3, 1 -> median of (30, 6, 5) = 6 m at 3 s; the stop and the
    # go are not averaged into 13.7 m. 9 m/s: the same three remain (the 10 m/s one is incomplete).
    assert out[0, 5].tolist() == pytest.approx([6.0, 0.0])
    assert out[1, 5].tolist() == pytest.approx([6.0, 0.0])
    assert out[2, 5].tolist() == pytest.approx([99.0, 0.0])  # left reads only left samples
    assert out[0, 2].tolist() == pytest.approx([3.0, 0.0])  # 1.5 s: half of 6 m


def test_blind_median_without_a_command_in_train_says_so() -> None:
    train = _split([1.0], [STRAIGHT], [5.0])
    with pytest.raises(ValueError, match="no train sample has command 'left'"):
        blind_median(train, _split([1.0], [LEFT], [0.0]))


def test_family_median_reads_only_samples_of_the_same_command_and_family() -> None:
    # straight at about 2 m/s: red lights stop (5, 6 m in 3 s), easy scenes go (30, 31, 40 m)
    train = _split([1.0, 2.0, 3.0, 2.5, 9.0], [STRAIGHT] * 5, [5.0, 30.0, 6.0, 31.0, 40.0])
    train["scenario"] = ["traffic_light", "easy", "traffic_light", "easy", "easy"]
    data = _split([2.2, 2.2], [STRAIGHT, STRAIGHT], [0.0, 0.0])
    data["scenario"] = ["traffic_light", "easy"]
    out = family_median(train, data, k=2)
    assert out[0, 5].tolist() == pytest.approx([5.0, 0.0])  # lights: speeds 3, 1 -> lower median 5 m
    assert out[1, 5].tolist() == pytest.approx([30.0, 0.0])  # easy: speeds 2, 2.5 -> 30, 31
    # told no family, the three nearest speeds mix a stop and two goes (2, 2.5, 3 -> 30, 31, 6)
    assert blind_median(train, data, k=3)[0, 5].tolist() == pytest.approx([30.0, 0.0])
    data["scenario"] = ["cut_in", "easy"]
    with pytest.raises(
        ValueError, match="no train sample has command 'straight' in scenario family 'cut_in'"
    ):
        family_median(train, data)


def test_write_record_keeps_the_hand_written_part(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import data_tools.training_record as training

    monkeypatch.setattr(training, "training_markdown", lambda record, name: f"# generated {record['n']}\n")
    write_record(tmp_path, {"n": 1})
    assert (tmp_path / "TRAINING.md").read_text() == "# generated 1\n"
    notes = f"## Against the issue {HAND_WRITTEN} note)\n\nkept\n"
    (tmp_path / "TRAINING.md").write_text("# generated 1\n\n" + notes)
    write_record(tmp_path, {"n": 2})
    assert (tmp_path / "TRAINING.md").read_text() == "# generated 2\n\n" + notes
    assert json.loads((tmp_path / "training.json").read_text()) == {"n": 2}


def test_reproduce_command_names_every_non_default_recipe_flag() -> None:
    out = Path("vla_autoprune/assets/m")
    assert reproduce_command(TrainArgs(out=out)) == (
        f"python -m data_tools.train_tiny_vla --out {out} --seed 0 --steps 700 --threads 2"
    )
    args = TrainArgs(
        out=out, steps=3000, train_scenes=720, vision_from_layer=1, command_prior=True, threads=1
    )
    assert reproduce_command(args) == (
        f"python -m data_tools.train_tiny_vla --out {out} --seed 0 --steps 3000 --train-scenes 720 "
        "--vision-from-layer 1 --command-prior --threads 1"
    )
    args = TrainArgs(out=out, family_weight=1.0)
    assert reproduce_command(args) == (
        f"python -m data_tools.train_tiny_vla --out {out} --seed 0 --steps 700 --family-weight 1.0 --threads 2"
    )
    assert parse_args(reproduce_command(args).split()[3:]) == args  # the command parses back
    args = TrainArgs(out=out, family_weight=1.0, family_cameras=("CAM_FRONT_LEFT", "CAM_FRONT"))
    assert reproduce_command(args).endswith(
        "--family-weight 1.0 --family-cameras CAM_FRONT_LEFT CAM_FRONT --threads 2"
    )
    assert parse_args(reproduce_command(args).split()[3:]) == args
    merged = ("traffic_light", "pedestrian", "lead_brake+stopped_vehicle", "cut_in", "easy")
    args = TrainArgs(out=out, family_weight=1.0, family_classes=merged)
    assert reproduce_command(args).endswith(f"--family-classes {' '.join(merged)} --threads 2")
    assert parse_args(reproduce_command(args).split()[3:]) == args
    args = TrainArgs(out=out, average_last=0.25)
    assert reproduce_command(args).endswith("--average-last 0.25 --threads 2")
    assert parse_args(reproduce_command(args).split()[3:]) == args


def test_weight_average_is_the_uniform_average_of_the_steps_from_its_start() -> None:
    p = nn.Parameter(torch.tensor([0.0, 10.0]))
    average = WeightAverage([p], start=1)
    for step, v in enumerate(([1.0, 2.0], [3.0, 6.0], [5.0, 4.0], [7.0, 0.0])):
        with torch.no_grad():
            p.copy_(torch.tensor(v))
        average.update(step)
    assert p.tolist() == [7.0, 0.0]  # the parameter keeps its last value until copied
    average.copy_to_params()
    assert p.tolist() == pytest.approx([5.0, 10.0 / 3.0])  # steps 1-3: (3 + 5 + 7) / 3, (6 + 4 + 0) / 3
    off = nn.Parameter(torch.tensor([7.0]))
    untouched = WeightAverage([off], start=None)
    untouched.update(0)
    untouched.copy_to_params()
    assert off.tolist() == [7.0]


def test_family_labels_index_the_families_and_refuse_unknown_ones() -> None:
    assert family_labels(["easy", "traffic_light", "easy"]).tolist() == [
        FAMILIES.index("easy"),
        FAMILIES.index("traffic_light"),
        FAMILIES.index("easy"),
    ]
    with pytest.raises(ValueError, match="--family-weight needs every training sample's scenario family"):
        family_labels(["easy", "unknown"])


def test_family_classes_merge_families_and_must_name_each_once() -> None:
    merged = ("traffic_light", "pedestrian", "lead_brake+stopped_vehicle", "cut_in", "easy")
    assert family_classes(merged)[2] == ("lead_brake", "stopped_vehicle")
    labels = family_labels(["stopped_vehicle", "lead_brake", "easy", "cut_in"], merged).tolist()
    assert labels == [2, 2, 4, 3]
    assert family_classes() == [(name,) for name in FAMILIES]
    for bad in (merged[:-1], (*merged, "easy"), ("traffic_light+bus", *merged[1:])):
        with pytest.raises(ValueError, match="must name every scenario family once"):
            family_classes(bad)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--family-weight", "1", "--family-classes", "easy", "cut_in"],
            "must name every scenario family once",
        ),
        (
            [
                "--family-classes",
                "traffic_light",
                "pedestrian",
                "lead_brake+stopped_vehicle",
                "cut_in",
                "easy",
            ],
            "--family-weight 0 turns off",
        ),
        (["--average-last", "1.5"], "--average-last must be in [0, 1]"),
    ],
)
def test_bad_recipe_flags_fail_at_the_command_line(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--out", "m", *flags])
    assert message in capsys.readouterr().err


def _scenes(errors_a: list[float], errors_b: list[float]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Plans A and B off the ground truth (x = 0) by the given 3 s errors, one sample per scene."""
    n = len(errors_a)
    t = 0.5 * torch.arange(1, 7) / 3.0
    plan = lambda e: torch.stack([torch.tensor(e).unsqueeze(1) * t, torch.zeros(n, 6)], -1)  # noqa: E731
    data = {
        "gt_trajectory": torch.zeros(n, 6, 2),
        "gt_mask": torch.ones(n, 6, dtype=torch.bool),
        "scene": torch.arange(n),
        "scenario": ["easy"] * (n // 2) + ["pedestrian"] * (n - n // 2),
    }
    return {"a": plan(errors_a), "b": plan(errors_b)}, data


def test_ratio_intervals_are_l2_of_a_over_b_with_a_paired_scene_interval() -> None:
    # A is off by exactly twice B's error in every scene: the ratio is 2 in every resample.
    plans, data = _scenes([2.0, 4.0, 6.0, 8.0], [1.0, 2.0, 3.0, 4.0])
    names = {a for a, _, _ in ISSUE9_RATIOS} | {b for _, b, _ in ISSUE9_RATIOS}
    all_plans = {name: plans["b"] for name in names} | {"model_visual_zeroed": plans["a"]}
    ratios = ratio_intervals(all_plans, data)
    assert list(ratios) == [f"{a} / {b}" for a, b, _ in ISSUE9_RATIOS]
    zeroed = ratios["model_visual_zeroed / model"]
    assert (zeroed["ratio"], zeroed["low"], zeroed["high"]) == pytest.approx((2.0, 2.0, 2.0))
    assert zeroed["asks"] == ">= 1.5"
    blind = ratios["model / blind_speed_x_command"]
    assert (blind["ratio"], blind["low"], blind["high"], blind["asks"]) == (1.0, 1.0, 1.0, "<= 0.75")
    # Unequal ratios per scene: the point is the ratio of the means (2.5 / 2 ... here 20 / 13),
    # and the scene bootstrap gives an interval around it.
    plans, data = _scenes([2.0, 4.0, 6.0, 8.0], [1.0, 4.0, 3.0, 5.0])
    ratio, low, high = (
        ratio_intervals({name: plans["b"] for name in names} | {"model": plans["a"]}, data)[
            "model / constant_velocity"
        ][key]
        for key in ("ratio", "low", "high")
    )
    assert ratio == pytest.approx(20.0 / 13.0, abs=1e-4) and low < ratio < high
    # retention (%) is the same machinery: unpruned over pruned
    assert retention_intervals(plans["b"], {"p": plans["a"]}, data)["p"]["retention"] == pytest.approx(65.0)


def test_family_confusion_counts_each_true_class_against_the_heads_answer() -> None:
    """A head that always answers "lead_brake+stopped_vehicle": that column holds every sample, by
    true class, over more samples than one evaluation batch; accuracy is that class's share."""
    torch.manual_seed(0)
    tower = {"model_type": "siglip_vision_model", "image_size": 32, "patch_size": 16, "hidden_size": 32}
    model = DrivingVLA(
        DrivingVLAConfig(vision_config={**tower, "num_hidden_layers": 1, "num_attention_heads": 2})
    )
    scenarios = ["easy", "lead_brake", "easy", "cut_in", "stopped_vehicle"] * 4  # 20 > EVAL_BATCH
    data = {
        "command": torch.zeros(20, dtype=torch.long),
        "scenario": scenarios,
        "images": torch.randint(0, 256, (20, 6, 3, 32, 32), dtype=torch.uint8),
    }
    classes = ("traffic_light+pedestrian", "lead_brake+stopped_vehicle", "cut_in", "easy")
    trainer = Trainer(model, data, TrainArgs(out=Path("m"), family_weight=1.0, family_classes=classes))
    assert trainer.family_head is not None
    with torch.no_grad():
        trainer.family_head.weight.zero_()
        trainer.family_head.bias.copy_(torch.tensor([0.0, 1.0, 0.0, 0.0]))
    confusion = trainer.family_confusion(data)
    assert confusion is not None
    assert confusion.tolist() == [[0, 0, 0, 0], [0, 8, 0, 0], [0, 4, 0, 0], [0, 8, 0, 0]]
    record = family_head_record({"seed0_val": confusion}, classes)
    assert record == {
        "family_head_val": {
            "classes": list(classes),
            "seed0_val": {"accuracy": 0.4, "confusion": confusion.tolist()},
        }
    }
    no_head = Trainer(model, data, TrainArgs(out=Path("m")))
    assert no_head.family_confusion(data) is None
    assert family_head_record({"seed0_val": None}, ()) == {}
    bundled = json.loads((resolve_model_path("tiny-drive-vla") / "training.json").read_text())
    rendered = training_markdown({**bundled, **record}, "m")
    assert "Val seed 0: accuracy 0.400" in rendered
    assert "| lead_brake+stopped_vehicle | 0 | 8 | 0 | 0 |" in rendered
