"""FLOPs: the record's analytic count against ``torch.utils.flop_counter`` on real forwards.

Every pruner at every budget runs once on an eager-attention decoder (FlopCounterMode has no
formula for the CPU SDPA kernel) at batch 1 (no fillers: executed = per-sample). A
``FlopCounterMode`` is entered in a pre-hook and left in a forward hook of every decoder layer,
so it counts exactly the layers' own work (the engine's scoring runs after it, in its own forward
hook). FlopCounterMode counts 2 FLOPs per MAC; the record counts MACs (flops.py).
Also: the reduction at 64 of 576 tokens on the LLaVA-1.5-7B shape next to the paper's figure.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import BUDGET_FRACTIONS, PRUNER_NAMES, Shape, Subject, make_pruner
from vla_autoprune import compat
from vla_autoprune.pruning import autoprune_math as ap
from vla_autoprune.pruning import prune
from vla_autoprune.pruning.flops import FORMULAS, decoder_flops

TOLERANCE = 0.01  # issue 14: within 1 %
PAPER_REDUCTION = 0.768  # AutoPrune paper: 76.8 % fewer FLOPs at 89 % of the tokens pruned (64 of 576)


class LayerFlops:
    """Counts FLOPs inside each decoder layer's own forward (hooks outermost/innermost)."""

    def __init__(self, layers: Any) -> None:
        self.total = 0
        self.mode: FlopCounterMode | None = None
        self.handles = []
        for layer in layers:
            self.handles.append(layer.register_forward_pre_hook(self._enter))  # after the engine's
            self.handles.append(layer.register_forward_hook(self._exit, prepend=True))  # before it

    def _enter(self, module: Any, args: Any) -> None:
        self.mode = FlopCounterMode(display=False)
        self.mode.__enter__()

    def _exit(self, module: Any, args: Any, output: Any) -> None:
        assert self.mode is not None
        self.mode.__exit__(None, None, None)
        self.total += self.mode.get_total_flops()
        self.mode = None

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def measure(subject: Subject, pruners: tuple[str, ...] = PRUNER_NAMES) -> list[dict[str, Any]]:
    """Per pruner and budget: analytic MACs x 2 against the counted FLOPs of the same forward."""
    if subject.batch != 1:
        raise ValueError("the FLOPs check runs at batch 1 (no fillers)")
    rows = []
    variants = [("none", "-", None)] + [
        (n, label, f) for n in pruners for label, f in BUDGET_FRACTIONS.items()
    ]
    for name, label, fraction in variants:
        pruner, budget = make_pruner(name, fraction, subject.num_layers, subject.num_visual, subject.model)
        with torch.inference_mode(), prune(subject.decoder, pruner, subject.inputs) as record:
            counter = LayerFlops(compat.decoder_layers(subject.base))
            try:
                subject.forward(record.inputs)
            finally:
                counter.remove()
        assert record.flops is not None
        analytic = 2 * int(record.flops.sum())
        error = counter.total / analytic - 1
        rows.append(
            {
                "pruner": pruner.label,
                "budget_label": label,
                "budget": budget,
                "analytic_FLOPs": analytic,
                "flop_counter_FLOPs": counter.total,
                "relative_error": round(error, 6),
                "within_1pct": abs(error) <= TOLERANCE,
            }
        )
    return rows


def llava_reduction(shape: Shape) -> list[dict[str, Any]]:
    """FLOPs reduction of AutoPrune at 64 of 576 visual tokens on the LLaVA-1.5-7B shape (analytic)."""
    layers, v = shape.layers, shape.num_visual
    other = shape.prefix + shape.text
    rows = []
    full = torch.full((1, layers), v + other)
    for accounting in ("actual", "reference"):
        for k in (0.0, 0.2, 0.4):
            sched = ap.retention_schedule(
                torch.tensor([k], dtype=torch.float64), 64, layers, v, accounting=accounting
            )
            if accounting == "actual":
                visual = torch.cat([torch.tensor([[v]]), sched[:, :-1]], dim=1)  # what each layer processed
            else:
                visual = sched  # the authors' count: layer 0 at v0, layer l at what it hands on
            tokens = visual + other
            sizes = (shape.hidden, shape.intermediate, shape.heads, shape.kv_heads or shape.heads)
            for formula in FORMULAS:
                pruned = float(decoder_flops(tokens, *sizes, formula=formula).sum())  # type: ignore[arg-type]
                base = float(decoder_flops(full, *sizes, formula=formula).sum())  # type: ignore[arg-type]
                rows.append(
                    {
                        "accounting": accounting,
                        "k": k,
                        "formula": formula,
                        "mean_visual_tokens": round(float(visual.double().mean()), 2),
                        "tokens_pruned_share": round(1 - float(visual.double().mean()) / v, 4),
                        "flops_reduction": round(1 - pruned / base, 4),
                        "paper_reduction": PAPER_REDUCTION,
                    }
                )
    return rows
