"""What a training run writes next to its weights: ``training.json`` and ``TRAINING.md``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: A ``TRAINING.md`` heading containing this starts the hand-written part, which rewrites keep.
HAND_WRITTEN = "(hand-written"


def write_record(folder: Path, record: dict[str, Any]) -> None:
    """Write ``training.json`` and ``TRAINING.md``, keeping the hand-written sections of an existing
    ``TRAINING.md`` (from the first ``##`` heading that contains :data:`HAND_WRITTEN` on)."""
    (folder / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    text = training_markdown(record, folder.name)
    old = folder / "TRAINING.md"
    if old.is_file():
        lines = old.read_text().splitlines(keepends=True)
        start = next((i for i, ln in enumerate(lines) if ln.startswith("## ") and HAND_WRITTEN in ln), None)
        if start is not None:
            text += "\n" + "".join(lines[start:])
    (folder / "TRAINING.md").write_text(text)


def _metric_rows(metrics: dict[str, dict[str, float]]) -> str:
    keys = ("l2_1s", "l2_2s", "l2_3s", "col_1s", "col_2s", "col_3s")
    return "\n".join(
        f"| {name} | "
        + " | ".join(f"{m[k]:.3f}" if k.startswith("l2") else f"{100 * m[k]:.1f} %" for k in keys)
        + " |"
        for name, m in metrics.items()
    )


def training_markdown(record: dict[str, Any], name: str) -> str:
    """Short human-readable account of the training run of the model folder ``name``."""
    a = record["args"]
    command = record.get(
        "command",
        f"python -m data_tools.train_tiny_vla --out vla_autoprune/assets/{name} --seed {a['seed']} "
        f"--steps {a['steps']} --threads {a['threads']}",
    )
    world = record.get("world_version", "world2").replace("world", "version ")
    first = a.get("vision_from_layer", 0)
    fusion = (
        f" The prompt and the readout attend to the visual tokens only from decoder layer {first} on\n"
        "(deep fusion, `vision_from_layer`): a pruner inside the decoder decides what they can read."
        if first
        else ""
    )
    family_weight = a.get("family_weight", 0.0)
    family = (
        f"\n  + {family_weight} x the cross-entropy of a linear head on the same features against the scene's\n"
        "  scenario family (training-only supervision, in both stages; the family is never a model input)"
        if family_weight
        else ""
    )
    vision = a["config_overrides"]["vision_config"]
    patch, merge = a.get("patch_size", vision["patch_size"]), a.get("spatial_merge", 1)
    grid = vision["image_size"] // patch // merge
    patches = f"{patch} px patches" + (f" merged {merge} x {merge}" if merge > 1 else "")
    tables = "\n\n".join(
        f"""Val split of generator seed {name.removeprefix("seed").removesuffix("_val")} (held out):

| planner | L2@1s | L2@2s | L2@3s | Col@1s | Col@2s | Col@3s |
|---|---|---|---|---|---|---|
{_metric_rows(m)}"""
        for name, m in record["val_stp3"].items()
    )
    retention = "\n".join(
        f"| {name.removeprefix('seed').removesuffix('_val')} | {run} | {r['retention']:.1f} "
        f"[{r['low']:.1f}, {r['high']:.1f}] | {(r['high'] - r['low']) / 2:.1f} |"
        for name, runs in record["retention_l2_3s"].items()
        for run, r in runs.items()
    )
    ratios = "\n".join(
        f"| {name.removeprefix('seed').removesuffix('_val')} | {label} | {r['ratio']:.3f} "
        f"[{r['low']:.3f}, {r['high']:.3f}] | {r['asks']} |"
        for name, rows in record.get("ratios_l2_3s", {}).items()
        for label, r in rows.items()
    )
    ratio_table = (
        f"""

Issue 9's checks as L2@3s (stp3) ratios of two planners on the same samples, with paired 95 %
intervals from the same scene bootstrap (where a threshold lies inside the interval, these samples
do not resolve the check either way):

| val seed | A / B | ratio [95 % CI] | issue 9 asks |
|---|---|---|---|
{ratios}"""
        if ratios
        else ""
    )
    layers = a["config_overrides"]["text_config"]["num_hidden_layers"]
    ev = record["evaluation"]
    samples = ", ".join(f"{n} samples ({name.removesuffix('_val')})" for name, n in ev["val_samples"].items())
    return f"""# {name}

A tiny DrivingVLA (SigLIP vision tower, LLaVA projector, {layers}-layer Llama decoder with GQA, action
queries + MLP waypoint head on a constant-speed prior) trained from scratch on the synthetic
nuScenes world ({world}: scenario families whose triggers only the cameras show). It sees the
six cameras ({vision["image_size"]} px, {patches}: {grid * grid} visual tokens per camera,
{6 * grid * grid} in all), the command and the ego speed (not the acceleration or yaw rate, which would give
away a braking or turning already under way).{fusion}

Reproduce (CPU, {a["threads"]} threads, deterministic: the same machine and thread count give the
same weights bit for bit):

    {command}

- data: synthetic generator seed {a["data_seed"]}, train split {a["train_scenes"]} scenes x {a["samples_per_scene"]} keyframes at
  {a["image_size"][0]}x{a["image_size"][1]} ({record["train_samples"]} samples); the val split (its own scene stream: no val
  scene is a training scene) does not affect the weights.
- stage 1: {a["vision_steps"]} steps training the vision tower alone on an auxiliary loss (waypoints from
  the pooled features of {", ".join(a["aux_cameras"])} + speed + command){family}
- stage 2: {a["steps"]} steps training everything on the L1 loss of valid waypoints (+ {a["aux_weight"]} x the
  auxiliary loss); both stages AdamW (lr {a["lr"]}, weight decay {a["weight_decay"]}),
  {a["warmup_steps"]} warm-up steps then cosine, batch {a["batch_size"]}; {record["train_seconds"]} s of training,
  {record["total_seconds"]} s in all (data generation and evaluation included)
- augmentation: each sample mirrored left <-> right with probability {a["flip_prob"]}; no token masking
  or any other pruning-robustness trick

Validation on held-out val splits of {ev["val_scenes"]} scenes per seed, the samples with a full 3 s future
({samples}; the main job's default evaluation set, `conf/data/synthetic.yaml`), stp3 convention (L2 in
m, collision rate in % of future steps):

{tables}

`model_visual_zeroed` is the same model with every visual token's embedding set to zero: the gap
to `model` measures how much the model relies on its visual tokens. The other readings of "images
zeroed", where present: `model_images_black` / `model_images_grey`, every camera image black /
mid-grey (grey is an all-zero `pixel_values` under SigLIP's normalisation), and
`model_other_scene_cameras`, each sample given the real cameras of a sample from another scene (the
in-distribution control); the main job measures the same with `cameras=zero_tokens|black|grey|other_scene`
(`conf/cameras/`). The zeroed, black and grey inputs are unlike anything the model was trained on,
and the same weights answer each differently. `model_random_bN` prunes the
visual tokens at random down to a budget of N (about V/9 of the V visual tokens) inside the
decoder (`build_pruner("random", budget=N)`): without pruning-robustness training it hurts. `constant_velocity` keeps the
current speed along +x. `blind_speed_x_command` is a least-squares fit (on train) of the waypoints
on speed x command, i.e. everything the model sees except the cameras: the yardstick of what the
cameras add beyond the prompt that issue 9 names. `blind_speed_x_command_median` is a stronger
camera-free yardstick: the coordinate-wise median future of the {record["blind_neighbours"]} train samples of the same
command with the nearest speeds (non-linear in the speed, and a median does not average a stop
and a go into a plan that is wrong for both). `oracle_family_median`, where present, is that median
told each sample's scenario family (the train samples of the same command and family): not a
planner, since the family is never a model input, but what perfect recognition of the family from
the cameras is worth to that rule.

L2@3s (stp3) retention of pruners at about V/9 against the unpruned model, in % (`none` / pruned),
with paired 95 % intervals from 2000 scene-bootstrap resamples stratified by scenario family (the
main job's report does the same):

| val seed | pruner_budget | retention [95 % CI] | half-width (points) |
|---|---|---|---|
{retention}{ratio_table}{_family_head_section(record)}
"""


def _family_head_section(record: dict[str, Any]) -> str:
    """The family head's held-out confusion tables (``family_head_val``), or "" for older records."""
    head = record.get("family_head_val")
    if not head:
        return ""
    classes = head["classes"]
    tables = "\n\n".join(
        f"Val seed {split.removeprefix('seed').removesuffix('_val')}: accuracy {m['accuracy']:.3f}\n\n"
        f"| true \\ predicted | {' | '.join(classes)} |\n|---|{'---|' * len(classes)}\n"
        + "\n".join(
            f"| {name} | {' | '.join(map(str, row))} |"
            for name, row in zip(classes, m["confusion"], strict=True)
        )
        for split, m in head.items()
        if split != "classes"
    )
    return f"""

The training-only family head (not saved) on the held-out splits: what the vision tower
perceives, apart from the plan (rows: the sample's scenario family, columns: the head's answer):

{tables}"""
