"""Retention curves: visual tokens entering each decoder layer, per run, against the budget line."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure


@dataclass(frozen=True)
class Curve:
    """One run's curve for one sample.

    Attributes:
        label: the run's name (pruner and budget).
        visual_tokens: int ``[L]``, visual tokens entering each layer (merged ones included).
        merged_tokens: int ``[L]``, merged tokens among them.
        budget: the run's budget (mean visual tokens per layer), or None.
        mi, k: AutoPrune's mutual information and logistic slope, or None.
    """

    label: str
    visual_tokens: np.ndarray
    merged_tokens: np.ndarray
    budget: float | None = None
    mi: float | None = None
    k: float | None = None


def _title(curves: Sequence[Curve]) -> str:
    parts = [f"{c.label}: MI={c.mi:.3f}, k={c.k:.3f}" for c in curves if c.mi is not None and c.k is not None]
    return "; ".join(parts) if parts else "visual tokens per layer"


def retention_figure(
    curves: Sequence[Curve], num_visual: int, size: tuple[float, float] = (4.2, 3.0)
) -> Figure:
    """Tokens kept per layer, one line per run, with each run's budget dashed in the same colour.

    Args:
        curves: the runs to compare on one sample.
        num_visual: ``V``, the visual tokens layer 0 sees (top of the y axis).
    """
    fig = Figure(figsize=size, dpi=100, layout="constrained")
    ax = fig.add_subplot()
    colours = [f"C{i}" for i in range(len(curves))]
    for curve, colour in zip(curves, colours, strict=True):
        layers = np.arange(len(curve.visual_tokens))
        ax.step(layers, curve.visual_tokens, where="post", color=colour, label=curve.label, lw=1.8)
        if np.any(curve.merged_tokens):
            ax.step(layers, curve.merged_tokens, where="post", color=colour, lw=1.0, ls=":")
        if curve.budget is not None:
            ax.axhline(curve.budget, color=colour, lw=1.0, ls="--")
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("visual tokens")
    ax.set_ylim(0, num_visual * 1.05)
    ax.set_title(_title(curves), fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, title="dashed: budget, dotted: merged", title_fontsize=6)
    return fig
