"""What the waypoint head corrects: a constant-speed rollout, or a learned map of speed x command.

Both are functions of what the model knows besides its cameras (the ego speed and the command),
so the decoder only has to learn what the cameras change: a tiny model trained from scratch learns
that far faster than whole trajectories.
"""

from __future__ import annotations

import torch
from torch import nn

from vla_autoprune.data.schema import KEYFRAME_DT_S, NUM_FUTURE_STEPS


def future_times(device: torch.device | None = None) -> torch.Tensor:
    """float32 ``[6]``: seconds from now of the future waypoints (0.5, 1.0, ..., 3.0)."""
    return KEYFRAME_DT_S * torch.arange(1, NUM_FUTURE_STEPS + 1, device=device, dtype=torch.float32)


def constant_speed_rollout(speed: torch.Tensor) -> torch.Tensor:
    """Waypoints float32 ``[B, 6, 2]`` of driving straight (+x) at ``speed`` m/s ``[B]``."""
    x = speed.float().unsqueeze(1) * future_times(speed.device)  # [B, 6]
    return torch.stack([x, torch.zeros_like(x)], dim=-1)


def constant_speed_weight(num_commands: int) -> torch.Tensor:
    """``[12, 2C]`` weight of a :class:`SpeedCommandPrior` that reproduces :func:`constant_speed_rollout`."""
    weight = torch.zeros(NUM_FUTURE_STEPS * 2, 2 * num_commands)
    weight[0::2, :num_commands] = future_times().unsqueeze(1)
    return weight


def speed_command_features(
    speed: torch.Tensor, command: torch.Tensor, num_commands: int, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """``[B, 2C]``: ``[speed * onehot(command), onehot(command)]`` from speed (m/s) ``[B]`` and
    command int64 ``[B]``: everything the model knows besides its cameras."""
    onehot = nn.functional.one_hot(command.long(), num_commands).to(dtype)
    return torch.cat([speed.to(dtype).unsqueeze(1) * onehot, onehot], dim=1)


def fit_speed_command(
    speed: torch.Tensor,
    command: torch.Tensor,
    trajectory: torch.Tensor,
    mask: torch.Tensor,
    num_commands: int,
) -> torch.Tensor:
    """Least-squares weights float64 ``[2C, 12]`` of the flattened waypoints on
    :func:`speed_command_features`, over the samples whose 6 future waypoints are all valid.

    :param speed: float ``[N]``; ``command``: int64 ``[N]``; ``trajectory``: float ``[N, 6, 2]``;
        ``mask``: bool ``[N, 6]``.
    """
    complete = mask.all(dim=1)
    x = speed_command_features(speed, command, num_commands)[complete]
    return torch.linalg.lstsq(x, trajectory[complete].flatten(1).double()).solution


class SpeedCommandPrior(nn.Module):
    """Waypoints ``[B, 6, 2]`` linear in ``[speed * onehot(command), onehot(command)]``.

    Initialised to the constant-speed rollout (``x = speed * t`` under every command, ``y = 0``), so
    a model with this prior starts where the kinematic prior does. :meth:`fit_` sets it to the
    least-squares fit of a training set's waypoints on the same features, i.e. to what the speed
    and the command alone predict; the decoder then learns only what the cameras change.
    """

    def __init__(self, num_commands: int) -> None:
        super().__init__()
        self.num_commands = num_commands
        # A bare parameter, not an nn.Linear: model-wide weight init would redraw a Linear at random.
        self.weight = nn.Parameter(constant_speed_weight(num_commands))

    def features(self, speed: torch.Tensor, command: torch.Tensor) -> torch.Tensor:
        """:func:`speed_command_features` in the weight's dtype."""
        return speed_command_features(speed, command, self.num_commands, self.weight.dtype)

    def forward(self, speed: torch.Tensor, command: torch.Tensor) -> torch.Tensor:
        """float32 ``[B, 6, 2]`` waypoints (m, ego frame)."""
        return (self.features(speed, command) @ self.weight.T).float().view(-1, NUM_FUTURE_STEPS, 2)

    @torch.no_grad()
    def fit_(
        self, speed: torch.Tensor, command: torch.Tensor, trajectory: torch.Tensor, mask: torch.Tensor
    ) -> None:
        """Least-squares fit on the samples whose 6 future waypoints are all valid.

        :param speed: float ``[N]``; ``command``: int64 ``[N]``; ``trajectory``: float ``[N, 6, 2]``;
            ``mask``: bool ``[N, 6]``.
        :raises ValueError: when fewer samples than features have a full future.
        """
        complete, features = int(mask.all(dim=1).sum()), 2 * self.num_commands
        if complete < features:
            raise ValueError(
                f"{complete} samples with a full future cannot fit {features} prior features; "
                "fit on more samples"
            )
        solution = fit_speed_command(speed, command, trajectory, mask, self.num_commands)  # [2C, 12]
        self.weight.copy_(solution.T.to(self.weight.dtype))
