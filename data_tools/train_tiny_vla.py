"""Train the bundled tiny DrivingVLA on the synthetic nuScenes set, deterministically, on CPU.

CLI::

    python -m data_tools.train_tiny_vla --out vla_autoprune/assets/tiny-drive-vla [--seed 0] [--steps N]

Recipe: generate (or reuse from the cache) the synthetic dataset and load its train/val splits once
at the vision tower's input size; stage 1 pre-trains the vision tower alone on an auxiliary loss
(waypoints from the front camera's pooled features + speed + command), stage 2 trains everything on
an L1 waypoint loss (+ the auxiliary loss), both with AdamW and warm-up + cosine; samples are
randomly mirrored left <-> right. Then write the model (``save_pretrained``), ``training.json``
(arguments, losses, val L2 of the model, of the model with its visual tokens zeroed, of constant
velocity and of a camera-free linear fit) and ``TRAINING.md``.

Pruning robustness: for a random share of each batch, a random fraction of the visual tokens (and
now and then whole cameras) is masked out of attention, keeping the original position ids,
exactly what a pruner that drops tokens does; the model learns to drive from what survives.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from data_tools.embedded import SYNTHETIC_VERSION, ensure_synthetic
from planners.metrics import l2_at
from vla_autoprune.data.collate import collate
from vla_autoprune.data.nuscenes_dataset import NuScenesDrivingDataset
from vla_autoprune.data.schema import CAMERAS, COMMANDS, KEYFRAME_DT_S, NUM_FUTURE_STEPS
from vla_autoprune.models.base import DecoderInputs
from vla_autoprune.models.driving_vla import DrivingVLA, DrivingVLAConfig, sub_config

logger = logging.getLogger(__name__)

#: The tensors of a batch the model and the metrics need (the rest of the schema is not cached).
CACHED_KEYS = ("images", "command", "ego_state", "gt_trajectory", "gt_mask")
#: Samples per forward when loading / evaluating: bounds memory, does not change results.
EVAL_BATCH = 16
#: Gradient-norm clip: guards the first steps, when the randomly initialised head is far off.
GRAD_CLIP = 1.0


@dataclass(frozen=True)
class TrainArgs:
    """Training run arguments (all recorded in ``training.json``)."""

    out: Path
    seed: int = 0
    steps: int = 800
    #: Stage 1: vision-tower pre-training steps on the auxiliary loss (no decoder, so ~10x cheaper).
    vision_steps: int = 1500
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 30
    #: Synthetic data at 400x225 (W x H), 25 % of the scenes in val. Many short scenes rather
    #: than few long ones: a vision tower trained from scratch memorises the look of a scene, so
    #: the number of distinct scenes is what makes its features generalise (measured: 24 training
    #: scenes overfit, 72 start to generalise).
    data_seed: int = 0
    scenes: int = 96
    samples_per_scene: int = 12
    image_size: tuple[int, int] = (400, 225)
    dataroot: Path | None = None
    threads: int = 2
    #: Share of samples whose visual tokens are partly masked, and the largest masked fraction.
    token_drop_prob: float = 0.25
    max_token_drop: float = 0.9
    #: Per-camera probability of masking all of that camera's tokens.
    camera_drop_prob: float = 0.05
    #: Probability of mirroring a sample left <-> right (images, camera slots, command, y, yaw rate).
    flip_prob: float = 0.5
    #: Weight of the auxiliary loss that regresses waypoints from the vision tower's pooled
    #: output: a short gradient path that speeds up learning visual features from scratch and
    #: trains the SigLIP pooling probe, whose attention is the model's ``vision_saliency``.
    aux_weight: float = 0.3
    #: Cameras whose pooled features the auxiliary head reads. The front camera sees where the
    #: road goes and the vehicle ahead; adding the others lets the head memorise scene looks
    #: (measured: val L2@3s of the auxiliary head 1.25 m from the front camera, 1.42 m from all six).
    aux_cameras: tuple[str, ...] = ("CAM_FRONT",)
    log_every: int = 100
    config_overrides: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------- data


def load_split(dataset: NuScenesDrivingDataset, model: DrivingVLA) -> dict[str, torch.Tensor]:
    """All samples of ``dataset`` as stacked tensors, images resized to the model's input size."""
    parts: list[dict[str, torch.Tensor]] = []
    for start in range(0, len(dataset), EVAL_BATCH):
        batch = collate([dataset[i] for i in range(start, min(start + EVAL_BATCH, len(dataset)))])
        part = {k: batch[k] for k in CACHED_KEYS}
        part["images"] = model.resize_images(part["images"])
        parts.append(part)
    return {k: torch.cat([p[k] for p in parts]) for k in CACHED_KEYS}


def batch_at(data: dict[str, torch.Tensor], index: torch.Tensor) -> dict[str, Any]:
    """The model batch of the samples ``index`` (cached tensors + the camera names)."""
    return {**{k: v[index] for k, v in data.items()}, "cameras": CAMERAS}


def constant_velocity(ego_state: torch.Tensor) -> torch.Tensor:
    """Baseline ``[B, 6, 2]``: keep the current speed straight along +x."""
    times = KEYFRAME_DT_S * torch.arange(1, NUM_FUTURE_STEPS + 1, dtype=torch.float32)
    x = ego_state[:, :1].float() * times
    return torch.stack([x, torch.zeros_like(x)], dim=-1)


# ---------------------------------------------------------------------- training pieces

#: Camera slot each camera takes in the mirrored world (left <-> right).
MIRRORED_CAMERA = {
    "CAM_FRONT": "CAM_FRONT",
    "CAM_FRONT_RIGHT": "CAM_FRONT_LEFT",
    "CAM_FRONT_LEFT": "CAM_FRONT_RIGHT",
    "CAM_BACK": "CAM_BACK",
    "CAM_BACK_LEFT": "CAM_BACK_RIGHT",
    "CAM_BACK_RIGHT": "CAM_BACK_LEFT",
}
_YAW_RATE = 2  # ego_state column
_LEFT, _RIGHT = COMMANDS.index("left"), COMMANDS.index("right")


def mirror(batch: dict[str, Any], flip: torch.Tensor) -> dict[str, Any]:
    """Mirror the samples where ``flip`` (bool ``[B]``): the rig is left/right symmetric, so a
    mirrored frame is a plausible frame of the mirrored world (the generator has left- and
    right-hand traffic)."""
    out = dict(batch)
    order = [CAMERAS.index(MIRRORED_CAMERA[c]) for c in CAMERAS]
    mirrored = batch["images"][:, order].flip(-1)
    out["images"] = torch.where(flip.view(-1, 1, 1, 1, 1), mirrored, batch["images"])
    command = batch["command"]
    swapped = torch.where(command == _LEFT, _RIGHT, torch.where(command == _RIGHT, _LEFT, command))
    out["command"] = torch.where(flip, swapped, command)
    sign = torch.where(flip, -1.0, 1.0)
    out["gt_trajectory"] = batch["gt_trajectory"] * torch.stack([torch.ones_like(sign), sign], -1).view(
        -1, 1, 2
    )
    ego = batch["ego_state"].clone()
    ego[:, _YAW_RATE] *= sign
    out["ego_state"] = ego
    return out


class PooledAuxHead(nn.Module):
    """Training-only head: waypoints from the cameras' pooled vision features, ego input and command."""

    def __init__(self, num_cameras: int, vision_size: int, ego_size: int, hidden: int = 128) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(num_cameras * vision_size + ego_size + len(COMMANDS), hidden),
            nn.GELU(),
            nn.Linear(hidden, NUM_FUTURE_STEPS * 2),
        )

    def forward(self, pooled: torch.Tensor, ego: torch.Tensor, command: torch.Tensor) -> torch.Tensor:
        """``pooled`` ``[B, C, Dv]``, ``ego`` ``[B, F]``, ``command`` ``[B]`` -> ``[B, 6, 2]``
        (units of waypoint_scale_m)."""
        onehot = nn.functional.one_hot(command, len(COMMANDS)).to(pooled.dtype)
        out = self.mlp(torch.cat([pooled.flatten(1), ego.to(pooled.dtype), onehot], dim=1))
        return out.view(-1, NUM_FUTURE_STEPS, 2)


def aux_loss(
    model: DrivingVLA,
    aux: PooledAuxHead,
    pooled: torch.Tensor,
    batch: dict[str, Any],
    cameras: tuple[str, ...],
) -> torch.Tensor:
    """L1 loss of the auxiliary head on the pooled features ``[B * C, Dv]`` of ``cameras`` in ``batch``."""
    b = len(batch["command"])
    ego = model._scaled_ego_state(batch["ego_state"])
    chosen = pooled.view(b, len(CAMERAS), -1)[:, [CAMERAS.index(c) for c in cameras]]
    pred = aux(chosen, ego, batch["command"]) * model.config.waypoint_scale_m
    return waypoint_loss(pred, batch["gt_trajectory"], batch["gt_mask"])


def mask_visual_tokens(inputs: DecoderInputs, args: TrainArgs, generator: torch.Generator) -> DecoderInputs:
    """Mask random visual tokens / cameras out of attention (position ids kept, like pruning)."""
    layout = inputs.layout
    b, v = layout.camera_index.shape
    per_sample = torch.rand(b, 1, generator=generator) * args.max_token_drop
    per_sample *= torch.rand(b, 1, generator=generator) < args.token_drop_prob
    drop = torch.rand(b, v, generator=generator) < per_sample
    cameras_dropped = torch.rand(b, len(CAMERAS), generator=generator) < args.camera_drop_prob
    drop |= torch.gather(cameras_dropped, 1, layout.camera_index.cpu())
    keep = torch.ones_like(inputs.attention_mask)
    keep[layout.visual_mask] = (~drop).long().flatten().to(keep.device)
    return inputs.with_(attention_mask=inputs.attention_mask * keep)


def waypoint_loss(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean L1 over valid future steps: ``pred``/``gt`` ``[B, 6, 2]``, ``mask`` bool ``[B, 6]``."""
    per_step = (pred - gt).abs().sum(-1)  # [B, 6]
    return (per_step * mask).sum() / mask.sum().clamp(min=1)


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to zero at ``steps``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.5 * lr * (1.0 + math.cos(math.pi * progress))


@torch.no_grad()
def predict(model: DrivingVLA, data: dict[str, torch.Tensor], zero_visual: bool = False) -> torch.Tensor:
    """Waypoints ``[N, 6, 2]`` for every cached sample; ``zero_visual`` zeroes all visual tokens."""
    model.eval()
    preds = []
    for start in range(0, len(data["command"]), EVAL_BATCH):
        index = torch.arange(start, min(start + EVAL_BATCH, len(data["command"])))
        inputs = model.prepare(batch_at(data, index))
        if zero_visual:
            visual = inputs.layout.visual_mask.unsqueeze(-1)
            inputs = inputs.with_(inputs_embeds=inputs.inputs_embeds.masked_fill(visual, 0.0))
        preds.append(model.decode(inputs))
    return torch.cat(preds)


def evaluate(model: DrivingVLA, data: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """L2@1/2/3 s (stp3) of the model, the model with zeroed visual tokens, and constant velocity."""
    gt, mask = data["gt_trajectory"], data["gt_mask"]
    return {
        "model": l2_at(predict(model, data), gt, mask),
        "model_visual_zeroed": l2_at(predict(model, data, zero_visual=True), gt, mask),
        "constant_velocity": l2_at(constant_velocity(data["ego_state"]), gt, mask),
    }


def blind_features(data: dict[str, torch.Tensor]) -> torch.Tensor:
    """``[N, 6]``: speed x one-hot command and the one-hot command (what the model sees besides images)."""
    onehot = nn.functional.one_hot(data["command"], len(COMMANDS)).double()
    return torch.cat([data["ego_state"][:, :1].double() * onehot, onehot], dim=1)


def blind_linear_baseline(train: dict[str, torch.Tensor], val: dict[str, torch.Tensor]) -> dict[str, float]:
    """Val L2 (stp3) of a least-squares fit of the waypoints on speed x command, without cameras:
    the honest yardstick of what the cameras add."""
    complete = train["gt_mask"].all(1)
    x, y = blind_features(train)[complete], train["gt_trajectory"][complete].flatten(1).double()
    weights = torch.linalg.lstsq(x, y).solution
    pred = (blind_features(val) @ weights).view(-1, NUM_FUTURE_STEPS, 2)
    return l2_at(pred.float(), val["gt_trajectory"], val["gt_mask"])


class Trainer:
    """The optimisation state shared by the two stages (vision pre-training, then everything)."""

    def __init__(self, model: DrivingVLA, data: dict[str, torch.Tensor], args: TrainArgs) -> None:
        self.model, self.data, self.args = model, data, args
        self.generator = torch.Generator().manual_seed(args.seed)
        vision = sub_config(model.config, "vision_config").hidden_size
        self.aux = PooledAuxHead(len(args.aux_cameras), vision, len(model.config.ego_state_fields))
        self.order, self.cursor = torch.randperm(len(data["command"]), generator=self.generator), 0
        self.pooled: list[torch.Tensor] = []

    def next_batch(self) -> dict[str, Any]:
        """The next shuffled training batch, randomly mirrored."""
        n, size = len(self.data["command"]), self.args.batch_size
        if self.cursor + size > n:  # new epoch
            self.order, self.cursor = torch.randperm(n, generator=self.generator), 0
        index = self.order[self.cursor : self.cursor + size]
        self.cursor += size
        flip = torch.rand(len(index), generator=self.generator) < self.args.flip_prob
        return mirror(batch_at(self.data, index), flip)

    def vision_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """Stage 1: the auxiliary loss alone (vision tower + pooling probe + aux head)."""
        self.pooled.clear()
        pooled = self.model.vision_tower(
            pixel_values=self.model.preprocess_images(batch["images"])
        ).pooler_output
        return aux_loss(self.model, self.aux, pooled, batch, self.args.aux_cameras)

    def full_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """Stage 2: waypoint loss through the decoder (+ the weighted auxiliary loss)."""
        self.pooled.clear()
        inputs = mask_visual_tokens(self.model.prepare(batch), self.args, self.generator)
        loss = waypoint_loss(self.model.decode(inputs), batch["gt_trajectory"], batch["gt_mask"])
        if self.args.aux_weight > 0:
            aux = aux_loss(self.model, self.aux, self.pooled[0], batch, self.args.aux_cameras)
            loss = loss + self.args.aux_weight * aux
        return loss

    def run(self, stage: str, steps: int, params: list[nn.Parameter], lr: float) -> list[float]:
        """Optimise ``params`` for ``steps`` with AdamW + warm-up/cosine; return the logged losses."""
        loss_fn = self.vision_loss if stage == "vision" else self.full_loss
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=self.args.weight_decay)
        hook = self.model.vision_tower.head.register_forward_hook(lambda _m, _a, out: self.pooled.append(out))
        losses, running, start = [], 0.0, time.monotonic()
        try:
            self.model.train()
            for step in range(steps):
                loss = loss_fn(self.next_batch())
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(step, steps, lr, self.args.warmup_steps)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(params, GRAD_CLIP)
                optimizer.step()
                running += float(loss.detach())
                if (step + 1) % self.args.log_every == 0:
                    losses.append(running / self.args.log_every)
                    logger.info(
                        "%s step %d/%d loss %.3f (%.0f s)",
                        stage,
                        step + 1,
                        steps,
                        losses[-1],
                        time.monotonic() - start,
                    )
                    running = 0.0
        finally:
            hook.remove()
        return losses


def train_model(model: DrivingVLA, data: dict[str, torch.Tensor], args: TrainArgs) -> dict[str, list[float]]:
    """Stage 1 pre-trains the vision tower on the auxiliary loss (cheap: no decoder), stage 2
    trains everything; returns each stage's logged losses."""
    trainer = Trainer(model, data, args)
    vision_params = [*model.vision_tower.parameters(), *trainer.aux.parameters()]
    losses = {"vision": trainer.run("vision", args.vision_steps, vision_params, args.lr)}
    all_params = [*model.parameters(), *trainer.aux.parameters()]
    losses["full"] = trainer.run("full", args.steps, all_params, args.lr)
    return losses


# ---------------------------------------------------------------------- run


def train(args: TrainArgs) -> dict[str, Any]:
    """Run the whole recipe; write the model folder; return the ``training.json`` record."""
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(args.threads)
    root = ensure_synthetic(
        args.dataroot,
        scenes=args.scenes,
        samples_per_scene=args.samples_per_scene,
        image_size=args.image_size,
        seed=args.data_seed,
    )
    model = DrivingVLA(DrivingVLAConfig(**args.config_overrides))
    splits = {
        s: load_split(NuScenesDrivingDataset(root, SYNTHETIC_VERSION, s), model) for s in ("train", "val")
    }
    logger.info(
        "train %d samples, val %d samples", len(splits["train"]["command"]), len(splits["val"]["command"])
    )
    start = time.monotonic()
    losses = train_model(model, splits["train"], args)
    seconds = time.monotonic() - start
    metrics = evaluate(model, splits["val"])
    metrics["blind_linear_speed_x_command"] = blind_linear_baseline(splits["train"], splits["val"])
    logger.info("val L2 (stp3): %s", json.dumps(metrics))
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    record = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(args).items() if k != "out"},
        "train_samples": len(splits["train"]["command"]),
        "val_samples": len(splits["val"]["command"]),
        "train_seconds": round(seconds, 1),
        "loss_curve": {stage: [round(x, 4) for x in curve] for stage, curve in losses.items()},
        "val_l2_stp3": metrics,
        "torch_version": torch.__version__,
    }
    (args.out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    (args.out / "TRAINING.md").write_text(training_markdown(record))
    return record


def training_markdown(record: dict[str, Any]) -> str:
    """Short human-readable account of a training run."""
    a, m = record["args"], record["val_l2_stp3"]
    rows = "\n".join(
        f"| {name} | " + " | ".join(f"{m[name][h]:.3f}" for h in ("1s", "2s", "3s")) + " |" for name in m
    )
    return f"""# tiny-drive-vla

A tiny DrivingVLA (SigLIP vision tower, LLaVA projector, 8-layer Llama decoder with GQA, action
queries + MLP waypoint head on a constant-speed prior) trained from scratch on the synthetic
nuScenes set. It sees the six cameras, the command and the ego speed (not the acceleration or
yaw rate: with those, kinematics alone are accurate here and the cameras go unused).

Reproduce (CPU, {a["threads"]} threads, deterministic):

    python -m data_tools.train_tiny_vla --out vla_autoprune/assets/tiny-drive-vla --seed {a["seed"]} --steps {a["steps"]}

- data: synthetic generator seed {a["data_seed"]}, {a["scenes"]} scenes x {a["samples_per_scene"]} keyframes at
  {a["image_size"][0]}x{a["image_size"][1]}; {record["train_samples"]} train / {record["val_samples"]} val samples
- stage 1: {a["vision_steps"]} steps training the vision tower alone on an auxiliary loss (waypoints from
  the pooled features of {", ".join(a["aux_cameras"])} + speed + command)
- stage 2: {a["steps"]} steps training everything on the L1 loss of valid waypoints (+ {a["aux_weight"]} x the
  auxiliary loss); both stages AdamW (lr {a["lr"]}, weight decay {a["weight_decay"]}),
  {a["warmup_steps"]} warm-up steps then cosine, batch {a["batch_size"]}; {record["train_seconds"]} s in all
- augmentation: each sample mirrored left <-> right with probability {a["flip_prob"]}
- pruning robustness: {a["token_drop_prob"]:.0%} of samples get up to {a["max_token_drop"]:.0%} of their visual
  tokens masked out of attention, and each camera is masked with probability {a["camera_drop_prob"]}

Validation L2 (m, stp3 convention):

| planner | L2@1s | L2@2s | L2@3s |
|---|---|---|---|
{rows}

`model_visual_zeroed` is the same model with every visual token's embedding set to zero: the gap
to `model` measures how much the model relies on its visual tokens. `constant_velocity` keeps the
current speed along +x. `blind_linear_speed_x_command` is a least-squares fit (on train) of the
waypoints on speed x command, i.e. everything the model sees except the cameras: the honest
yardstick of what the cameras add beyond the prompt.
"""


def parse_args(argv: Sequence[str] | None = None) -> TrainArgs:
    """Command-line arguments -> :class:`TrainArgs`."""
    defaults = TrainArgs(out=Path("."))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="model folder to write")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--steps", type=int, default=defaults.steps, help="stage-2 (full model) steps")
    parser.add_argument("--vision-steps", type=int, default=defaults.vision_steps, help="stage-1 steps")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--data-seed", type=int, default=defaults.data_seed)
    parser.add_argument("--scenes", type=int, default=defaults.scenes)
    parser.add_argument("--samples-per-scene", type=int, default=defaults.samples_per_scene)
    parser.add_argument("--image-size", type=_size, default=defaults.image_size, help="W x H, e.g. 400x225")
    parser.add_argument("--dataroot", type=Path, default=None, help="dataset folder (default: the cache)")
    parser.add_argument("--threads", type=int, default=defaults.threads)
    ns = parser.parse_args(argv)
    return TrainArgs(**{k: v for k, v in vars(ns).items()})


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--image-size must look like 400x225, got {text!r}") from err
    return w, h


def main(argv: Sequence[str] | None = None) -> None:
    """CLI entry point."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    train(parse_args(argv))


if __name__ == "__main__":
    main()
