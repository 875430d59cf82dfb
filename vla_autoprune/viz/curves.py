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
    """AutoPrune's MI and k of each run that has them, one line each."""
    lines = [f"{c.label}: MI={c.mi:.3f}, k={c.k:.3f}" for c in curves if c.mi is not None and c.k is not None]
    return "\n".join(lines) if lines else "visual tokens per layer"


def retention_figure(curves: Sequence[Curve], num_visual: int, width: float = 5.4) -> Figure:
    """Tokens kept per layer, one line per run (merged ones dotted), each distinct budget dashed grey.

    Args:
        curves: the runs to compare on one sample.
        num_visual: ``V``, the visual tokens layer 0 sees (top of the y axis).
        width: figure width in inches (the legend sits below the axes).
    """
    title = _title(curves)
    columns = 2 if max((len(c.label) for c in curves), default=0) <= 40 else 1
    legend_rows = -(-len(curves) // columns)
    height = 2.8 + 0.15 * title.count("\n") + 0.18 * legend_rows
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    for i, curve in enumerate(curves):
        layers = np.arange(len(curve.visual_tokens))
        ax.step(layers, curve.visual_tokens, where="post", color=f"C{i}", label=curve.label, lw=1.8)
        if np.any(curve.merged_tokens):
            ax.step(layers, curve.merged_tokens, where="post", color=f"C{i}", lw=1.0, ls=":")
    for budget in sorted({c.budget for c in curves if c.budget is not None}):
        ax.axhline(budget, color="0.4", lw=1.0, ls="--")
        ax.annotate(
            f"budget {budget:g}",
            (0, budget),
            xytext=(2, 2),
            textcoords="offset points",
            fontsize=7,
            color="0.3",
        )
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("visual tokens")
    ax.set_ylim(0, num_visual * 1.05)
    ax.set_title(title, fontsize=8)
    ax.grid(alpha=0.3)
    # below the axes, full width: a long run label wraps the figure, never squeezes the plot away
    merged = any(np.any(c.merged_tokens) for c in curves)  # the key names only what is drawn
    fig.legend(
        loc="outside lower center",
        ncols=columns,
        fontsize=7,
        title="dotted: merged" if merged else None,
        title_fontsize=6,
    )
    return fig
