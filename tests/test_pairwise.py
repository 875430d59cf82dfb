"""Pruner-vs-pruner comparisons and the report's choice of resampling, on hand-worked records."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vla_autoprune.pipeline.pairwise import pairwise_rows
from vla_autoprune.pipeline.report_files import write_report
from vla_autoprune.pipeline.resampling import Bootstrap, Design, Run, design_of
from vla_autoprune.pipeline.summary import summarize

BOOT = Bootstrap(resamples=2000, seed=0)


def _records(l2: list[float], families: list[str], collide: list[bool] | None = None) -> list[dict[str, Any]]:
    """One sample per scene ``i``: constant per-step L2 ``l2[i]`` (so L2@3s stp3 = ``l2[i]``), family
    ``families[i]`` and, where ``collide[i]``, a collision at the last step (Col@3s stp3 = 1/6)."""
    collide = collide or [False] * len(l2)
    return [
        {
            "index": i,
            "sample_token": f"s{i}",
            "scene_token": f"scene-{i}",
            "gt_mask": [True] * 6,
            "l2": [value] * 6,
            "collision": {k: [False] * 5 + [hit] for k in ("stp3", "uniad", "box")},
            "scenario": family,
        }
        for i, (value, family, hit) in enumerate(zip(l2, families, collide, strict=True))
    ]


def _run(records: list[dict[str, Any]], pruner: str, budget: int | None, **meta: Any) -> Run:
    base = {"planner": "vla", "pruner": pruner, "budget": budget, "model": "m", "samples_digest": "d"}
    return Run.of(summarize(records, base | meta), records)


def test_hand_worked_difference_ratio_and_collision_one_stratum() -> None:
    # two scenes of one family: A - B is 0 on scene 0 and 1 on scene 1. Each replicate draws the
    # scenes (2, 0), (1, 1) or (0, 2): A - B = 0, 0.5 or 1, so the estimate is 0.5 and the 95 %
    # interval [0, 1] holds 0 ("no"); likewise A / B = 1.5 in [1, 2] and Col@3s A - B = 1/12 in [0, 1/6]
    same = ["easy", "easy"]
    a = _run(_records([1.0, 2.0], same, [False, True]), "autoprune", 32)
    b = _run(_records([1.0, 1.0], same), "random", 32)
    (row,) = pairwise_rows([b, a], BOOT)
    assert (row["pruner A"], row["run A"], row["pruner B"], row["run B"]) == ("autoprune", 1, "random", 2)
    assert (row["budget"], row["samples @3s"]) == (32, 2)
    got = [row[f"L2@3s stp3 A-B{s}"] for s in ("", " lo", " hi")]
    np.testing.assert_allclose(got, [0.5, 0.0, 1.0])
    np.testing.assert_allclose([row[f"L2@3s stp3 A/B{s}"] for s in ("", " lo", " hi")], [1.5, 1.0, 2.0])
    np.testing.assert_allclose([row[f"Col@3s stp3 A-B{s}"] for s in ("", " lo", " hi")], [1 / 12, 0, 1 / 6])
    assert row["L2@3s stp3 A-B excludes 0"] == row["L2@3s stp3 A/B excludes 1"] == "no"
    assert row["Col@3s stp3 A-B excludes 0"] == "no"


def test_hand_worked_stratified_families_of_two_scenes() -> None:
    # families x = scenes 0, 1 and y = scenes 2, 3; A - B is 0, 0 in x and 1, 3 in y (estimate 1).
    # Each family redraws its own two scenes: x always gives 0, y gives 1, 2 or 3 (1/4, 1/2, 1/4),
    # so the replicates are (0 + 0 + 2 y-mean) / 4 = 0.5, 1 or 1.5: interval [0.5, 1.5], excludes 0.
    # Unstratified, a replicate may draw x's scenes only (A - B = 0): the interval reaches 0.
    families = ["x", "x", "y", "y"]
    a = _run(_records([1.0, 1.0, 2.0, 4.0], families), "autoprune", 32)
    b = _run(_records([1.0, 1.0, 1.0, 1.0], families), "random", 32)
    (row,) = pairwise_rows([a, b], BOOT)
    got = [row[f"L2@3s stp3 A-B{s}"] for s in ("", " lo", " hi")]
    np.testing.assert_allclose(got, [1.0, 0.5, 1.5])
    assert row["L2@3s stp3 A-B excludes 0"] == row["L2@3s stp3 A/B excludes 1"] == "yes"
    (plain,) = pairwise_rows([a, b], Bootstrap(2000, 0, stratify=False))
    assert plain["L2@3s stp3 A-B lo"] == 0.0 and plain["L2@3s stp3 A-B excludes 0"] == "no"


def test_only_runs_at_one_budget_of_one_planner_model_and_data_are_paired() -> None:
    families = ["easy", "cut_in", "easy", "cut_in"]
    records = _records([1.0, 1.2, 1.4, 1.6], families)
    runs = [
        _run(records, "none", None),
        _run(records, "random", 32),
        _run(records, "fastv", 32),
        _run(records, "autoprune", 32, variant="pruner.stage0=before"),
        _run(records, "fastv", 64),
        _run(records, "random", 64),
        _run(records, "random", 32, model="other"),  # another model: never paired with the rest
        _run(records, "random", 32, samples_digest="e"),  # other samples
        _run(records[:3], "autoprune", 64),  # fewer samples: not aligned
    ]
    rows = pairwise_rows(runs, BOOT)
    pairs = [(r["budget"], r["pruner A"], r["pruner B"]) for r in rows]
    assert pairs == [
        (32, "autoprune (pruner.stage0=before)", "fastv"),
        (32, "autoprune (pruner.stage0=before)", "random"),
        (32, "fastv", "random"),
        (64, "fastv", "random"),
    ]
    assert all(r["run A"] < r["run B"] for r in rows)  # A before B in the results table's order
    # identical records: every difference is exactly 0 and the interval holds it
    assert all(r["L2@3s stp3 A-B hi"] == 0.0 and r["L2@3s stp3 A-B excludes 0"] == "no" for r in rows)


def test_design_is_stratified_only_when_every_sample_has_a_known_family() -> None:
    records = _records([1.0] * 5, ["easy", "cut_in", "easy", "cut_in", "easy"])
    assert design_of(records) == Design(strata=(("cut_in", 2), ("easy", 3)))
    # a one-scene family would be drawn whole in every replicate: fall back to the plain bootstrap
    assert "cut_in holds a single scene" in design_of(records[:3]).describe()
    assert "cut_in 2, easy 3" in design_of(records).describe()
    records[1]["scenario"] = "unknown"  # real nuScenes records carry "unknown"
    assert design_of(records).strata == () and "no known scenario" in design_of(records).describe()
    mixed = _records([1.0, 1.0], ["easy", "cut_in"])
    mixed[1]["scene_token"] = "scene-0"  # one scene, two families
    assert "several scenario families" in design_of(mixed).reason
    assert design_of(_records([1.0], ["easy"]), stratify=False).reason == "stratification turned off"


def test_plain_fallback_equals_the_unstratified_bootstrap() -> None:
    records = _records(list(np.linspace(1.0, 2.0, 8)), ["unknown"] * 8)
    run = _run(records, "random", 32)
    np.testing.assert_array_equal(BOOT.weights(run), Bootstrap(2000, 0, stratify=False).weights(run))
    known = _run(_records(list(np.linspace(1.0, 2.0, 8)), ["easy", "cut_in"] * 4), "random", 32)
    # stratified: each family's 4 scenes are redrawn among themselves, 4 per replicate
    w = BOOT.weights(known)
    assert np.all(w[:, 0::2].sum(axis=1) == 4) and np.all(w[:, 1::2].sum(axis=1) == 4)


def test_report_writes_one_pairwise_table_per_budget_and_pairwise_csv(tmp_path: Path) -> None:
    families = ["easy", "cut_in"] * 3
    for name, pruner, budget, shift in (
        ("none", "none", None, 0.0),
        ("r32", "random", 32, 0.5),
        ("a32", "autoprune", 32, 0.0),
        ("r64", "random", 64, 0.2),
        ("a64", "autoprune", 64, 0.1),
    ):
        folder = tmp_path / "sweep" / name
        folder.mkdir(parents=True)
        meta = {"planner": "vla", "pruner": pruner, "budget": budget, "model": "m", "data": {"v": 1}}
        (folder / "run.json").write_text(json.dumps(meta))
        records = _records([1.0 + shift + 0.1 * i for i in range(6)], families)
        (folder / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    write_report([tmp_path / "sweep"], tmp_path / "out", resamples=200, seed=0)
    text = (tmp_path / "out" / "report.md").read_text()
    assert "## Pruner vs pruner at each budget" in text
    # a ranking is the model's own: the section says which model it was measured on
    assert "Rankings measured on m; another model can rank the pruners differently" in text
    assert "# vla-autoprune report\n\nModel: m. L2 in metres" in text  # and so does the header
    assert "### Budget 32" in text and "### Budget 64" in text
    assert "scenes per stratum: cut_in 3, easy 3" in text
    rows = list(csv.DictReader(io.StringIO((tmp_path / "out" / "pairwise.csv").read_text())))
    assert [(r["budget"], r["pruner A"], r["pruner B"]) for r in rows] == [
        ("32", "autoprune", "random"),
        ("64", "autoprune", "random"),
    ]
    # a constant shift per sample: the paired difference is exact in every replicate
    assert float(rows[0]["L2@3s stp3 A-B"]) == pytest.approx(-0.5)
    assert float(rows[0]["L2@3s stp3 A-B hi"]) == pytest.approx(-0.5)
    assert rows[0]["L2@3s stp3 A-B excludes 0"] == "yes" and rows[0]["samples @3s"] == "6"


def test_a_report_without_pairs_still_names_the_model_and_writes_csv_headers(tmp_path: Path) -> None:
    for name, pruner, budget in (("none", "none", None), ("a64", "autoprune", 64)):
        folder = tmp_path / "sweep" / name
        folder.mkdir(parents=True)
        meta = {"planner": "vla", "pruner": pruner, "budget": budget, "model": "m", "data": {"v": 1}}
        (folder / "run.json").write_text(json.dumps(meta))
        records = _records([1.0 + 0.1 * i for i in range(6)], ["easy", "cut_in"] * 3)
        (folder / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    write_report([tmp_path / "sweep"], tmp_path / "out", resamples=50, seed=0)
    assert "Model: m." in (tmp_path / "out" / "report.md").read_text()
    reader = csv.DictReader(io.StringIO((tmp_path / "out" / "pairwise.csv").read_text()))
    assert list(reader) == [] and reader.fieldnames and "L2@3s stp3 A/B" in reader.fieldnames
