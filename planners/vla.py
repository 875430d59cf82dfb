"""The VLA driving model as a planner, run under a visual-token pruner.

Everything the planner reports per sample (visual tokens per layer, FLOPs, MI, k) is read from the
:class:`~vla_autoprune.pruning.PruningRecord` of the forward that produced the waypoints.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from planners.base import Planner
from planners.cameras import CameraAblation, Intact
from vla_autoprune.compat import decoder_config, decoder_layers
from vla_autoprune.devices import batch_to, resolve_device, resolve_dtype
from vla_autoprune.models.base import DrivingModel
from vla_autoprune.models.layout import TokenLayout
from vla_autoprune.models.loading import check_factory
from vla_autoprune.pruning import NoPruner, Pruner, PruningRecord, run_pruned
from vla_autoprune.pruning.flops import decoder_flops_from_config


class VLAPlanner(Planner):
    """Plans with a :class:`DrivingModel` whose decoder runs under ``pruner``.

    Args:
        model: a factory ``(device=..., dtype=...) -> DrivingModel`` (e.g. a partial of
            :func:`vla_autoprune.models.load`), called in :meth:`setup`; or a loaded model.
        pruner: the pruner (None = keep every token).
        cameras: what the cameras show (:mod:`planners.cameras`; None = intact). An ablated
            planner is named ``vla[<ablation>]``.
        device: ``auto``, ``cpu``, ``cuda``, ... ; dtype: ``float32`` / ``bfloat16`` / ``float16``.
    """

    name = "vla"

    def __init__(
        self,
        model: Callable[..., DrivingModel] | DrivingModel,
        pruner: Pruner | None = None,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "float32",
        cameras: CameraAblation | None = None,
    ) -> None:
        self._factory = model
        self.pruner = pruner if pruner is not None else NoPruner()
        self.cameras = cameras if cameras is not None else Intact()
        if not self.cameras.intact:
            self.name = f"{type(self).name}[{self.cameras.name}]"
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype)
        self._model: DrivingModel | None = model if isinstance(model, DrivingModel) else None
        # The last batch's record and its input layout, for the viewer's token files (vla_autoprune.viz).
        self.last_pruning: tuple[PruningRecord, TokenLayout] | None = None

    @property
    def model(self) -> DrivingModel:
        """The loaded model (after :meth:`setup`)."""
        if self._model is None:
            raise RuntimeError("VLAPlanner.setup() must run before planning (it loads the weights)")
        return self._model

    def check_before_loading(self) -> None:
        """The model factory's settings and folder, as its loader will check them
        (:func:`vla_autoprune.models.loading.check_factory`)."""
        if self._model is None:
            check_factory(self._factory)

    def setup(self) -> None:
        """Load the model weights onto the planner's device and dtype."""
        if self._model is None:
            assert callable(self._factory)
            self._model = self._factory(device=self.device, dtype=self.dtype)

    def validate(self, batch: Mapping[str, Any]) -> None:
        """Check the pruner's budget against this model's depth and visual token count."""
        inputs = self.model.prepare(batch_to(batch, self.device))
        num_layers = len(decoder_layers(self.model.decoder))
        self.pruner.check_budget(num_layers, inputs.layout.num_visual)

    def plan(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Inherited, see superclass."""
        return self.plan_with_stats(batch)[0]

    def plan_with_stats(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        """Waypoints and, per sample, what the pruned decoder actually processed."""
        with torch.inference_mode():
            inputs = self.cameras.inputs(self.model.prepare(batch_to(batch, self.device)))
            waypoints, record = run_pruned(self.model, inputs, self.pruner)
        self.last_pruning = (record, inputs.layout)
        full_tokens = inputs.attention_mask.sum(dim=1)  # [B]: every token at every layer when unpruned
        return waypoints.float().cpu(), self._stats(record, full_tokens)

    def _stats(self, record: PruningRecord, full_tokens: torch.Tensor) -> list[dict[str, Any]]:
        """JSON-ready per-sample facts from the record."""
        assert record.visual_tokens is not None and record.tokens is not None and record.flops is not None
        config = decoder_config(self.model.decoder)
        unpruned = decoder_flops_from_config(full_tokens[:, None].expand(-1, record.num_layers), config)
        out = []
        for b in range(record.visual_tokens.shape[0]):
            # the pruner's stats ([B, ...] each); mi and k (AutoPrune's) are written for every pruner
            stats: dict[str, Any] = {"mi": None, "k": None}
            stats.update({name: value[b].tolist() for name, value in record.stats.items()})
            out.append(
                {
                    "visual_tokens_per_layer": record.visual_tokens[b].tolist(),
                    "merged_tokens_per_layer": record.merged_tokens[b].tolist()
                    if record.merged_tokens is not None
                    else None,
                    "tokens_per_layer": record.tokens[b].tolist(),
                    "num_visual": record.num_visual,
                    "flops": int(record.flops[b]),
                    "flops_unpruned": int(unpruned[b]),
                    "pruner_label": self.pruner.label,
                    "scoring_flops": int(record.scoring_flops[b]) if record.scoring_flops is not None else 0,
                    "position_ids": record.position_ids,
                    "camera_tokens_per_layer": record.camera_tokens[b].tolist()
                    if record.camera_tokens is not None
                    else None,
                    **stats,
                }
            )
        return out
