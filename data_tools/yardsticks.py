"""Camera-free yardsticks of the training report: what a planner gets without looking.

``constant_velocity`` keeps the current speed; ``blind_fit`` is the least-squares fit of the
waypoints on speed x command that issue 9 measures the model against; ``blind_median`` is the
stronger non-linear one (the median future of the nearest speeds under the same command);
``family_median`` is the same median told each sample's scenario family, which the model is never
given: what a planner that recognised the family perfectly from its cameras would get by that rule.
"""

from __future__ import annotations

from typing import Any

import torch

from vla_autoprune.data.schema import COMMANDS, NUM_FUTURE_STEPS
from vla_autoprune.models.waypoint_prior import (
    constant_speed_rollout,
    fit_speed_command,
    speed_command_features,
)


def constant_velocity(ego_state: torch.Tensor) -> torch.Tensor:
    """Baseline ``[B, 6, 2]``: keep the current speed (``ego_state`` column 0) straight along +x."""
    return constant_speed_rollout(ego_state[:, 0])


def blind_fit(train: dict[str, Any]) -> torch.Tensor:
    """Least-squares weights ``[6, 12]`` (float64) of the waypoints on speed x command (train samples with a
    full future): everything the model sees except the cameras, the honest yardstick of what the
    cameras add."""
    speed, command = train["ego_state"][:, 0], train["command"]
    return fit_speed_command(speed, command, train["gt_trajectory"], train["gt_mask"], len(COMMANDS))


def blind_predict(weights: torch.Tensor, data: dict[str, Any]) -> torch.Tensor:
    """Waypoints ``[N, 6, 2]`` of the blind fit."""
    features = speed_command_features(data["ego_state"][:, 0], data["command"], len(COMMANDS))
    return (features @ weights).view(-1, NUM_FUTURE_STEPS, 2).float()


#: Neighbours of :func:`blind_median`. On the seed-0 val split (180 train scenes) 16-64 neighbours
#: all give L2@3s 1.65-1.74 m; fewer are noisy, more blur the speed dependence.
BLIND_NEIGHBOURS = 32


def blind_median(train: dict[str, Any], data: dict[str, Any], k: int = BLIND_NEIGHBOURS) -> torch.Tensor:
    """Waypoints ``[N, 6, 2]``: per sample of ``data``, the coordinate-wise median future of the ``k``
    train samples (with a full future) of the same command and the nearest speeds.

    A second camera-free yardstick, stronger than the linear :func:`blind_fit`: it is non-linear in
    the speed (a creeping ego at a red light goes, a fast one follows the road) and, being a median,
    it does not average a stop and a go into a plan that is wrong for both, which is what L2 rewards
    when a command's futures split into stopping and going.
    """

    def groups(split: dict[str, Any]) -> list[str]:
        return [repr(COMMANDS[int(c)]) for c in split["command"]]

    return _nearest_speed_median(train, data, groups(train), groups(data), k)


def family_median(train: dict[str, Any], data: dict[str, Any], k: int = BLIND_NEIGHBOURS) -> torch.Tensor:
    """:func:`blind_median` told the scenario family (``scenario``, one str per sample, in ``train``
    and ``data``): the median future of the ``k`` train samples of the same command AND family with
    the nearest speeds. An oracle, not a planner: the family is never a model input. It bounds what
    recognising the family from the cameras is worth to a nearest-speed median."""

    def groups(split: dict[str, Any]) -> list[str]:
        pairs = zip(split["command"], split["scenario"], strict=True)
        return [f"{COMMANDS[int(c)]!r} in scenario family {f!r}" for c, f in pairs]

    return _nearest_speed_median(train, data, groups(train), groups(data), k)


def _nearest_speed_median(
    train: dict[str, Any], data: dict[str, Any], train_group: list[str], data_group: list[str], k: int
) -> torch.Tensor:
    """Per sample of ``data``, the median future of the ``k`` nearest-speed complete train samples
    of its group (``*_group``: one label per sample)."""
    complete = train["gt_mask"].all(1)
    speed, futures = train["ego_state"][complete, 0], train["gt_trajectory"][complete]
    pool_group = [g for g, ok in zip(train_group, complete.tolist(), strict=True) if ok]
    out = torch.zeros(len(data_group), NUM_FUTURE_STEPS, 2)
    for group in dict.fromkeys(data_group):
        rows = torch.tensor([g == group for g in data_group])
        pool = torch.tensor([g == group for g in pool_group], dtype=torch.bool)
        if int(pool.sum()) == 0:
            raise ValueError(f"no train sample has command {group}; train on more scenes")
        gap = (data["ego_state"][rows, :1] - speed[pool].unsqueeze(0)).abs()  # [n, M]
        nearest = gap.argsort(dim=1, stable=True)[:, :k]
        out[rows] = futures[pool][nearest].median(dim=1).values.float()
    return out
