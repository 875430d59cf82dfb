"""The logged trajectory as a plan: an upper bound and a sanity check (its L2 is 0)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from planners.base import Planner, batch_tensor


class GroundTruthPlanner(Planner):
    """Returns ``gt_trajectory`` (zeros where ``gt_mask`` is false, as the batch holds it)."""

    name = "ground_truth"

    def plan(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Inherited, see superclass."""
        return batch_tensor(batch, "gt_trajectory").to(torch.float32).clone()
