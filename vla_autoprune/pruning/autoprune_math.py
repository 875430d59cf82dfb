"""AutoPrune's pure math: complexity (mutual information), slope, and the retention schedule.

Based on "AutoPrune: Each Complexity Deserves a Pruning Policy" (NeurIPS 2025,
https://arxiv.org/abs/2509.23931); the contract is docs/AUTOPRUNE.md.
Everything here is a pure function of tensors or numbers: the engine calls it, nothing here
touches a model.

Schedules
    A schedule is an int64 ``[B, L]`` tensor. Entry ``l`` is the number of visual tokens decoder
    layer ``l`` HANDS ON to layer ``l + 1`` after it has run and pruned: kept tokens plus recycled
    (merged) ones; :func:`~vla_autoprune.pruning.recycling.split_handed_on` turns "processed ->
    handed on" into (kept, merged) counts. Counts are monotone non-increasing along the layers
    and lie in ``[1, V]``. The last entry is what the last layer would hand on; no layer processes
    it, so it never counts against the budget.

Accounting: "actual" (this project's default)
    The tokens a layer PROCESSES are what entered it. Layer 0 processes all ``V`` visual tokens;
    layer ``l >= 1`` processes ``schedule[l - 1]``, kept and recycled alike. With
    ``stage0 == "before"`` the selection runs before the decoder instead: layer 0 processes
    ``schedule[0]`` tokens and hands them all on (its entry is both what it sees and what it
    hands on); layers ``l >= 1`` again process ``schedule[l - 1]``. The budget ``B`` is met on
    this count: ``floor(B * L) - 1 <= tokens_processed <= B * L`` (within one token of ``B`` on
    average, never above it) for every budget in ``reachable_budget``.

Accounting: "reference" (the authors' integers)
    ``reference_schedule``: the Appendix of AUTOPRUNE.md in float64 Python arithmetic, stage 0
    and recycling included. Its total is ``sum(schedule)``: layer 0 counted at its post-stage-0
    size ``v0 = schedule[0]``, layer ``l`` at what it hands on. It does not always reach ``B * L``
    (budget 64 on a 32-layer, 576-token model can end at a mean of 64.19).

Stage 0 ("actual" accounting)
    ``"reference"``: layer 0 hands on ``v0 = min(int(2.5 B), V)`` tokens (the reference's stage 0,
    no recycling), capped so that the budget stays reachable with one token per later layer
    (:func:`~vla_autoprune.pruning.budget.stage0_count`, as for ``"before"``); the
    logistic curve then runs from layer 1 on ``v0``. ``"none"``: no stage 0; the curve runs from
    layer 0 on ``V`` (layer 0 prunes too, after it has run). ``"before"``: the curve runs from
    layer 0 on ``V``, and its layer-0 count is selected before the decoder (see "actual" above),
    which makes tight budgets reachable. Layer ``l`` keeps ``ceil(base * min(1, s p_l))`` tokens
    (at least 1, at most what it processed) plus ``recycle_count`` of the dropped ones; ``base`` is
    ``v0`` or ``V`` (not the reference's ``v0 - 1``: without recycling it could never keep all).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Literal, overload

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vla_autoprune.devices import device_ints, to_device
from vla_autoprune.errors import ConfigError
from vla_autoprune.pruning.budget import (
    STAGE0_BUDGET_MULTIPLE,
    check_reachable,
    min_budget,
    stage0_count,
    token_layers,
)
from vla_autoprune.pruning.options import Accounting, HeadReduce, Stage0, check_choice
from vla_autoprune.pruning.recycling import RECYCLE_FRACTION, TOKENS_PER_CLUSTER, recycle_count

MI_EPS = 1e-6  # the reference's eps, both in the denominator and in the log clamp
DEFAULT_K0 = 0.4  # slope at zero complexity (paper default)
DEFAULT_GAMMA = 0.2  # slope decrease per bit of mutual information (paper default)
CURVE_PLATEAU = 0.75  # keep fraction of the logistic curve on early layers, before scaling by s
REFERENCE_X0 = 14.9  # the paper's curve centre (32-layer decoder)
X0_DEPTH_FRACTION = 0.4656  # 14.9 / 32 as the contract rounds it: the centre for other depths
MIN_LAYERS = 2  # a schedule needs at least one layer after the one that prunes

# The reference bisection, verbatim from the Appendix.
REF_SCALE_HI = 20.0
REF_MAX_STEPS = 200
REF_STOP_DIFF = 0.01
REF_EARLY_EXIT_TOL = 1.0

# Bisection on log(s) for "actual": 40 halvings shrink the bracket (about 20 wide in log space for
# k <= 0.4, L = 32) below 1e-10, far below any scale change that moves a count by one token. The
# bracket only shapes the curve: the integer fix-up in `_fill_to_target` makes the total exact.
ACTUAL_BISECTION_STEPS = 40
SEARCH_LEVELS = 5  # halvings evaluated together (31 scales per sample, 8 rounds): fastest measured


class ScheduleError(ConfigError):
    """Invalid schedule or complexity arguments (shapes, depth, option combinations)."""


# --------------------------------------------------------------------------- complexity


def mutual_information(
    attn_tv: Tensor,
    head_reduce: HeadReduce = "sum",
    eps: float = MI_EPS,
    text_valid: Tensor | None = None,
) -> Tensor:
    """Mutual information between text queries and visual keys, per sample (no host sync).

    ``p(x) = 1/T``, ``p(x, y) = A[x, y] / T``, ``p(y) = sum_x p(x, y)``;
    ``MI_h = sum p(x, y) log2(clamp(p(x, y) / (p(x) p(y) + eps), eps))``.

    Args:
        attn_tv: ``[B, H, T, V]`` attention probabilities of the ``T`` text queries over the ``V``
            visual keys: rows of the full softmax, NOT renormalised over the visual columns.
        head_reduce: ``"sum"`` over heads (reference), ``"mean"`` over heads, or ``"sum_over_T"``
            (sum over heads divided by ``T``: the reference's stage-0 variant).
        eps: clamp / denominator epsilon (the reference's 1e-6).
        text_valid: optional bool ``[B, T]``; False marks padded query rows, which are ignored
            (``p(x) = 1/T_b`` with ``T_b`` the valid rows of sample ``b``).

    Returns:
        ``[B]`` MI in bits (float32; float64 for float64 input), on the input's device.
    """
    _check_attention(attn_tv, head_reduce, text_valid)
    probs = attn_tv if attn_tv.dtype == torch.float64 else attn_tv.to(torch.float32)
    num_text = _valid_text_counts(probs, text_valid)  # [B]
    if text_valid is not None:
        # where, not multiply: padded rows may hold NaN or garbage
        probs = torch.where(text_valid[:, None, :, None], probs, torch.zeros_like(probs))
    t = num_text.to(probs.dtype)[:, None, None, None]
    p_xy = probs / t  # [B, H, T, V]
    p_y = p_xy.sum(dim=2, keepdim=True)  # [B, H, 1, V]
    ratio = p_xy / (p_y / t + eps)  # p(x) p(y) = p(y) / T
    # in place on the fresh ratio: the same values as p_xy * log2(clamp(ratio)), two [B, H, T, V] less
    mi_heads = ratio.clamp_(min=eps).log2_().mul_(p_xy).sum(dim=(2, 3))  # [B, H]
    if head_reduce == "mean":
        return mi_heads.mean(dim=-1)
    if head_reduce == "sum_over_T":
        return mi_heads.sum(dim=-1) / num_text.to(mi_heads.dtype)
    return mi_heads.sum(dim=-1)


def _check_attention(attn_tv: Tensor, head_reduce: str, text_valid: Tensor | None) -> None:
    if attn_tv.dim() != 4:
        raise ScheduleError(
            f"attn_tv must be [B, H, T, V], got shape {tuple(attn_tv.shape)}; slice the text rows "
            "and visual columns of the attention first"
        )
    check_choice("head_reduce", head_reduce, HeadReduce)
    b, _, t, _ = attn_tv.shape
    if text_valid is not None and tuple(text_valid.shape) != (b, t):
        raise ScheduleError(f"text_valid must be bool [B, T] = {(b, t)}, got {tuple(text_valid.shape)}")


def _valid_text_counts(probs: Tensor, text_valid: Tensor | None) -> Tensor:
    """int64 ``[B]``: valid query rows per sample (at least 1, so an empty sample gives MI 0)."""
    b, _, t, _ = probs.shape
    if text_valid is None:
        return torch.full((b,), t, dtype=torch.int64, device=probs.device)
    return text_valid.to(torch.int64).sum(dim=-1).clamp(min=1)


def slope(mi: Tensor, k0: float = DEFAULT_K0, gamma: float = DEFAULT_GAMMA) -> Tensor:
    """Logistic slope from complexity: ``k = max(k0 - gamma * mi, 0)``, ``[B] -> [B]``."""
    return (k0 - gamma * mi).clamp(min=0.0)


#: MI quantiles a calibration maps to the steepest slope and to a flat curve (:func:`calibrate_slope`).
CALIBRATION_QUANTILES = (0.05, 0.95)


def calibrate_slope(
    mi: Tensor, k_max: float = DEFAULT_K0, quantiles: tuple[float, float] = CALIBRATION_QUANTILES
) -> tuple[float, float]:
    """``(k0, gamma)`` fitting :func:`slope` to a model's own range of mutual information.

    The paper's ``k0 = 0.4``, ``gamma = 0.2`` suit LLaVA-1.5's MI; a model whose text attends more
    to its visual tokens has larger MI and every slope clamps at 0 (a flat, non-adaptive curve).
    This keeps the paper's form and direction (more MI, flatter curve) and its steepest typical
    slope: ``k = k_max`` at the low quantile of ``mi``, ``k = 0`` at the high one, linear between
    (samples below the low quantile get a little more than ``k_max``).

    Args:
        mi: float ``[N]``, MI of ``N`` samples (training data, measured as the pruner measures it).
        k_max: the slope at the low quantile.
        quantiles: ``(low, high)`` quantiles of ``mi``, ``0 <= low < high <= 1``.

    Returns:
        ``(k0, gamma)``, ``gamma = k_max / (q_high - q_low)``, ``k0 = gamma * q_high``.
    """
    low, high = quantiles
    if mi.dim() != 1 or mi.numel() < 2 or not 0.0 <= low < high <= 1.0 or not k_max > 0:
        raise ScheduleError(
            f"calibrate_slope needs MI of at least 2 samples as a 1-D tensor, 0 <= low < high <= 1 "
            f"quantiles and k_max > 0; got shape {tuple(mi.shape)}, quantiles {quantiles}, k_max {k_max}"
        )
    q = torch.quantile(mi.double(), torch.tensor([low, high], dtype=torch.float64))
    q_low, q_high = float(q[0]), float(q[1])
    if (
        not math.isfinite(q_low)
        or not math.isfinite(q_high)
        or q_high - q_low <= 1e-9 * max(1.0, abs(q_high))
    ):
        raise ScheduleError(
            f"MI does not vary over these samples ({q_low:.6g} to {q_high:.6g} between the {low:g} and "
            f"{high:g} quantiles): no slope map can tell them apart; calibrate on more varied scenes"
        )
    gamma = k_max / (q_high - q_low)
    return gamma * q_high, gamma


# --------------------------------------------------------------------------- curve


def default_x0(num_layers: int, accounting: Accounting) -> float:
    """Curve centre: 14.9 for ``"reference"`` (any depth), ``0.4656 * L`` for ``"actual"``."""
    check_choice("accounting", accounting, Accounting)
    return REFERENCE_X0 if accounting == "reference" else X0_DEPTH_FRACTION * num_layers


def logistic_curve(k: Tensor, num_layers: int, x0: float) -> Tensor:
    """Unscaled keep fraction ``p_l = 0.75 / (1 + exp(k (l - x0 - k)))`` for ``l = 0..L-1``.

    Args:
        k: ``[B]`` slopes.
        num_layers: ``L``.
        x0: curve centre (the reference shifts it by ``k``, kept here).

    Returns:
        ``[B, L]`` in ``k``'s floating dtype (float64 for integer ``k``).
    """
    return CURVE_PLATEAU * torch.sigmoid(-_curve_exponent(k, num_layers, x0))


def _curve_exponent(k: Tensor, num_layers: int, x0: float) -> Tensor:
    """``[B, L]``: ``k (l - x0 - k)``."""
    k = k if k.is_floating_point() else k.to(torch.float64)
    layers = torch.arange(num_layers, device=k.device, dtype=k.dtype)
    return k[:, None] * (layers[None, :] - x0 - k[:, None])


def _log_curve(k: Tensor, num_layers: int, x0: float) -> Tensor:
    """float64 ``[B, L]``: ``log p_l``, stable where ``p_l`` underflows."""
    z = _curve_exponent(k.to(torch.float64), num_layers, x0)
    return math.log(CURVE_PLATEAU) + F.logsigmoid(-z)


# --------------------------------------------------------------------------- budget & accounting


def reachable_budget(
    num_layers: int,
    num_visual: int,
    accounting: Accounting = "actual",
    stage0: Stage0 = "reference",
) -> tuple[float, float]:
    """``(lo, hi)`` budgets (mean visual tokens per layer) a schedule can meet.

    ``"actual"``: ``hi = V``; ``lo = (V + L - 1) / L`` (layer 0 sees all ``V``, later layers at
    least one token each), or ``lo = 1`` with ``stage0 == "before"``. ``"reference"``: the range
    where the authors' schedule is defined (``v0 = int(2.5 B) >= 1``); it may miss the budget.
    """
    _check_depth(num_layers, num_visual)
    check_choice("accounting", accounting, Accounting)
    check_choice("stage0", stage0, Stage0)
    if accounting == "reference":
        return 1.0 / STAGE0_BUDGET_MULTIPLE, float(num_visual)
    return min_budget(num_layers, num_visual, 0 if stage0 == "before" else 1), float(num_visual)


def tokens_processed(
    schedule: Tensor,
    num_visual: int,
    accounting: Accounting = "actual",
    stage0: Stage0 = "reference",
) -> Tensor:
    """Total visual token-layers of a schedule, ``[..., L] -> [...]`` (int64).

    ``"actual"``: ``V + schedule[:-1].sum()`` (layer 0 sees all ``V``, layer ``l`` sees what layer
    ``l - 1`` handed on); with ``stage0 == "before"`` layer 0 counts ``schedule[0]`` instead of
    ``V``. ``"reference"``: ``schedule.sum()``, the authors' count (layer 0 at ``v0``).
    """
    check_choice("accounting", accounting, Accounting)
    check_choice("stage0", stage0, Stage0)
    schedule = schedule.to(torch.int64)
    if accounting == "reference":
        return schedule.sum(dim=-1)
    first = schedule[..., 0] if stage0 == "before" else num_visual
    return first + schedule[..., :-1].sum(dim=-1)


# --------------------------------------------------------------------------- reference schedule


def reference_schedule(
    k: float, budget: float, num_layers: int, num_visual: int, x0: float = REFERENCE_X0
) -> list[int]:
    """The authors' schedule for one sample, exactly (AUTOPRUNE.md, Appendix).

    Float64 Python arithmetic, so their integers are reproduced. Returns ``L`` hand-on counts,
    the first being the stage-0 size ``v0 = min(int(2.5 B), V)``.
    """
    _check_budget(budget, num_layers, num_visual, "reference", "reference")
    v0 = min(int(STAGE0_BUDGET_MULTIPLE * budget), num_visual)
    cap = min(int(STAGE0_BUDGET_MULTIPLE * num_layers * budget), num_visual)
    curve = [_reference_logistic(k, layer, x0) for layer in range(1, num_layers)]
    scale = _reference_scale(curve, v0, cap, num_layers * budget)
    return _reference_counts(scale, curve, v0, cap)


def _reference_logistic(k: float, layer: int, x0: float) -> float:
    """``0.75 / (1 + exp(k (l - (x0 + k))))``; its limit 0 where exp overflows."""
    try:
        return CURVE_PLATEAU / (1.0 + math.exp(k * (layer - (x0 + k))))
    except OverflowError:
        return 0.0


def _reference_counts(scale: float, curve: list[float], v0: int, cap: int) -> list[int]:
    """The Appendix's ``counts(s)``: ``[v0]`` then what each layer 1..L-1 hands on."""
    cur = v0
    out = [v0]
    for p in curve:
        keep = min(math.ceil((v0 - 1) * min(1.0, scale * p)), cap)
        cur = keep + recycle_count(cur - keep)
        out.append(cur)
    return out


def _reference_scale(curve: list[float], v0: int, cap: int, target: float) -> float:
    """The Appendix's early exit and bisection for ``s``, verbatim."""
    u = [int(v0 * p) for p in curve]
    if abs(sum(u) + u[-1] - target) < REF_EARLY_EXIT_TOL:
        return 1.0
    lo, hi = 0.0, REF_SCALE_HI
    best_s, best_diff = 1.0, math.inf
    for _ in range(REF_MAX_STEPS):
        mid = (lo + hi) / 2
        total = sum(_reference_counts(mid, curve, v0, cap))
        diff = abs(total - target)
        if diff < best_diff:
            best_s, best_diff = mid, diff
            if diff < REF_STOP_DIFF:
                break
        if total < target:
            lo = mid
        else:
            hi = mid
    return best_s


# --------------------------------------------------------------------------- batched schedule


def retention_schedule(
    k: Tensor,
    budget: float,
    num_layers: int,
    num_visual: int,
    accounting: Accounting = "actual",
    x0: float | None = None,
    stage0: Stage0 = "reference",
    recycle: bool = True,
) -> Tensor:
    """Visual tokens each layer hands on, for a batch of slopes.

    Args:
        k: ``[B]`` slopes (``slope`` output, ``>= 0``).
        budget: ``B``, the mean visual tokens per layer over all ``L`` layers.
        num_layers: ``L`` decoder layers.
        num_visual: ``V`` visual tokens entering the decoder.
        accounting: ``"actual"`` (budget met exactly, see the module docstring) or
            ``"reference"`` (the authors' integers; needs ``stage0="reference"``, ``recycle``).
        x0: curve centre; ``default_x0(L, accounting)`` when None.
        stage0: ``"reference"`` | ``"none"`` | ``"before"`` (module docstring).
        recycle: count merged tokens (``recycle_count`` of the dropped ones) in the hand-on counts.

    Returns:
        int64 ``[B, L]`` on ``k``'s device, solved on the host in float64 (one copy of ``k`` to
        the host per call): ``"actual"`` bisects ``log s`` for the whole batch in a few numpy
        operations, then fixes the integers up; ``"reference"`` loops over the batch.
    """
    _check_budget(budget, num_layers, num_visual, accounting, stage0)
    if k.dim() != 1:
        raise ScheduleError(f"k must be a 1-D [B] tensor of slopes, got shape {tuple(k.shape)}")
    x0 = default_x0(num_layers, accounting) if x0 is None else x0
    check_options(accounting, stage0, recycle)
    if accounting == "reference":
        rows = [
            reference_schedule(kb, budget, num_layers, num_visual, x0)
            for kb in k.detach().to("cpu", torch.float64).tolist()
        ]
        return device_ints(rows, k.device).view(-1, num_layers)
    plan = _actual_plan(budget, num_layers, num_visual, stage0, recycle)
    log_p = _log_curve(k.detach().to("cpu", torch.float64), num_layers, x0).numpy()
    return to_device(torch.from_numpy(_solve_actual(log_p, plan)), k.device)


@dataclass(frozen=True)
class _ActualPlan:
    """Integer facts of one "actual" schedule problem."""

    num_layers: int
    num_visual: int
    stage0: Stage0
    recycle: bool
    target: int  # floor(B * L): the processed total to reach, never exceed
    stage0_count: int | None  # what layer 0 hands on with stage0 == "reference", else None
    base: int  # tokens the curve's fractions apply to

    @property
    def first_curve_layer(self) -> int:
        return 0 if self.stage0_count is None else 1

    @functools.cached_property
    def recycle_table(self) -> np.ndarray:
        """int64 ``[V + 1]``: ``recycle_count(d)`` for ``d = 0..V`` (a lookup per layer, not ~8 array ops)."""
        return _recycle_count_np(np.arange(self.num_visual + 1, dtype=np.int64))


@functools.lru_cache(maxsize=64)  # one problem per (budget, depth, V, options): reused every forward
def _actual_plan(
    budget: float, num_layers: int, num_visual: int, stage0: Stage0, recycle: bool
) -> _ActualPlan:
    target = token_layers(budget, num_layers)
    v0 = None
    base = num_visual
    if stage0 == "reference":
        # layer 0 sees V, layer 1 the v0 survivors, layers 2..L-1 at least one token each
        v0 = stage0_count(budget, num_layers, num_visual, first_layer=1)
        base = v0
    return _ActualPlan(num_layers, num_visual, stage0, recycle, target, v0, base)


def _solve_actual(log_p: np.ndarray, plan: _ActualPlan) -> np.ndarray:
    """Bisection on ``log s`` over the batch, then the exact integer fix-up. ``[B, L] -> [B, L]``.

    Float64 numpy on the host. The ``ACTUAL_BISECTION_STEPS`` halvings run as rounds of
    ``SEARCH_LEVELS``: each round evaluates every midpoint the next levels of halving could visit
    (computed as ``0.5 * (lo + hi)``, exactly as one halving would) and, the fit being monotone in
    ``s``, lands on the bracket those halvings would end in, in a few array operations. A row
    leaves the rounds once no later halving can change the counts at its bracket's ends
    (:func:`_search_round`): the result is the one all ``ACTUAL_BISECTION_STEPS`` halvings give.
    """
    lo, hi = _log_scale_bracket(log_p, plan)
    active = np.arange(log_p.shape[0])  # rows still searching
    for _ in range(ACTUAL_BISECTION_STEPS // SEARCH_LEVELS):
        lo[active], hi[active], settled = _search_round(lo[active], hi[active], log_p[active], plan)
        active = active[~settled]
        if not active.size:
            break
    lower = _actual_counts(lo[:, None], log_p, plan)[:, 0]
    lower_fits = _processed(lower, plan) <= plan.target
    # below the smallest curve total (tight budgets with recycling) fall back to one token a layer
    lower = np.where(lower_fits[:, None], lower, _floor_counts(lower, plan))
    return _fill_to_target(lower, _actual_counts(hi[:, None], log_p, plan)[:, 0], plan)


def _search_round(
    lo: np.ndarray, hi: np.ndarray, log_p: np.ndarray, plan: _ActualPlan
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``SEARCH_LEVELS`` halvings of the ``[B]`` brackets ``[lo, hi]`` at once, and which rows are
    settled (bool ``[B]``).

    A row is settled when its new ``lo`` fits, its new ``hi`` does not, and their per-layer wanted
    counts (before the hand-on recurrence) differ by one token in one layer: each layer's count is
    monotone in ``s``, so every later midpoint has the counts of ``lo`` (and fits, becoming the new
    ``lo``) or those of ``hi`` (and becomes the new ``hi``). The counts at the ends of the bracket
    the remaining halvings would reach are then those of ``lo`` and ``hi`` now.
    """
    points = np.stack([lo, hi], axis=1)  # [B, 2], ascending
    for _ in range(SEARCH_LEVELS):
        mids = 0.5 * (points[:, :-1] + points[:, 1:])
        both = np.empty((points.shape[0], 2 * points.shape[1] - 1))
        both[:, 0::2], both[:, 1::2] = points, mids
        points = both  # [B, 2^j + 1]
    counts, wanted = _actual_counts(points, log_p, plan, with_wanted=True)  # ends included
    fits = _processed(counts, plan) <= plan.target  # [B, S + 2]
    j = fits[:, 1:-1].sum(axis=1)  # fits then misfits along s: the last fitting point is inner[j - 1]
    rows = np.arange(points.shape[0])
    step = wanted[rows, j + 1] - wanted[rows, j]  # [B, L], >= 0
    settled = fits[rows, j] & ~fits[rows, j + 1] & (step.sum(axis=-1) == 1)
    return points[rows, j], points[rows, j + 1], settled


def _log_scale_bracket(log_p: np.ndarray, plan: _ActualPlan) -> tuple[np.ndarray, np.ndarray]:
    """``[B]`` log-scales where every curve layer keeps 1 token (lo) and all ``base`` tokens (hi)."""
    used = log_p[:, plan.first_curve_layer :]
    lo = -math.log(2.0 * plan.base) - used.max(axis=-1)  # s p base <= 1/2: ceil keeps 1
    hi = math.log(2.0) - used.min(axis=-1)  # s p >= 2: fraction capped at 1
    return lo, hi


def _recycle_count_np(num_dropped: np.ndarray) -> np.ndarray:
    """:func:`recycle_count` on an int64 array (float64 ``0.3 d``, as the tensor form)."""
    groups = np.floor(num_dropped.astype(np.float64) * RECYCLE_FRACTION).astype(np.int64) + 1
    merged = np.minimum(groups // TOKENS_PER_CLUSTER + 1, groups)
    return np.where(num_dropped > 0, merged, 0)


@overload
def _actual_counts(log_s: np.ndarray, log_p: np.ndarray, plan: _ActualPlan) -> np.ndarray: ...


@overload
def _actual_counts(
    log_s: np.ndarray, log_p: np.ndarray, plan: _ActualPlan, with_wanted: Literal[True]
) -> tuple[np.ndarray, np.ndarray]: ...


def _actual_counts(
    log_s: np.ndarray, log_p: np.ndarray, plan: _ActualPlan, with_wanted: bool = False
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """int64 ``[B, S, L]`` hand-on counts for scales ``exp(log_s)`` ``[B, S]``; monotone in ``s``.

    ``with_wanted``: also each layer's wanted count before the hand-on recurrence, ``[B, S, L]``.
    """
    frac = np.minimum(np.exp(log_s[:, :, None] + log_p[:, None, :]), 1.0)  # [B, S, L]
    wanted = np.maximum(np.ceil(plan.base * frac).astype(np.int64), 1)  # <= base <= V
    if plan.stage0_count is not None:
        wanted[..., 0] = plan.stage0_count  # stage 0 hands on v0 and recycles nothing
    if not plan.recycle:
        out = np.minimum.accumulate(wanted, axis=-1)  # a layer cannot hand on more than it got
        return (out, wanted) if with_wanted else out
    table = plan.recycle_table
    first = plan.first_curve_layer  # read once: the loop runs for every bisection round
    out = np.empty_like(wanted)
    cur = np.full(log_s.shape, plan.num_visual, dtype=np.int64)
    for layer in range(plan.num_layers):
        keep = np.minimum(wanted[..., layer], cur)
        cur = keep + table[cur - keep] if layer >= first else keep
        out[..., layer] = cur
    return (out, wanted) if with_wanted else out


def _floor_counts(like: np.ndarray, plan: _ActualPlan) -> np.ndarray:
    """``[B, L]``: the smallest schedule (stage-0 count, then one token per layer)."""
    floor = np.ones_like(like)
    if plan.stage0_count is not None:
        floor[:, 0] = plan.stage0_count
    return floor


def _processed(counts: np.ndarray, plan: _ActualPlan) -> np.ndarray:
    """``[..., L] -> [...]``: :func:`tokens_processed` ("actual") on an int64 array."""
    first = counts[..., 0] if plan.stage0 == "before" else plan.num_visual
    return first + counts[..., :-1].sum(axis=-1)


def _layer_weights(plan: _ActualPlan) -> np.ndarray:
    """int64 ``[L]``: how often each entry is processed (the last never; with "before" the first twice)."""
    weights = np.ones(plan.num_layers, dtype=np.int64)
    weights[-1] = 0
    if plan.stage0 == "before":
        weights[0] += 1
    return weights


def _fill_to_target(lower: np.ndarray, upper: np.ndarray, plan: _ActualPlan) -> np.ndarray:
    """Raise ``lower`` towards ``upper`` (``lower <= upper``, both monotone) to hit the target.

    Taking ``upper`` on the first ``j`` layers and ``lower`` after stays monotone and its total
    grows with ``j``. Pick the largest ``j`` within the target, then add the remaining deficit to
    layer ``j`` (less than ``upper[j] - lower[j]``, so still monotone). The total lands on the
    target (one below where the layer counts twice and the deficit is odd).
    """
    weights = _layer_weights(plan)
    base_total = _processed(lower, plan)  # [B]
    gains = ((upper - lower) * weights).cumsum(axis=-1)  # [B, L]
    totals = np.concatenate([base_total[:, None], base_total[:, None] + gains], axis=-1)  # [B, L + 1]
    j = (totals <= plan.target).sum(axis=-1) - 1  # [B]; totals[:, 0] <= target always
    layers = np.arange(plan.num_layers)
    mixed = np.where(layers[None, :] < j[:, None], upper, lower)
    deficit = plan.target - np.take_along_axis(totals, j[:, None], axis=-1)[:, 0]
    weight_j = np.maximum(weights[np.minimum(j, plan.num_layers - 1)], 1)
    raise_by = deficit // weight_j  # zero where j == L (nothing left at layer L)
    return mixed + (layers[None, :] == j[:, None]).astype(np.int64) * raise_by[:, None]


# --------------------------------------------------------------------------- checks


def check_options(accounting: Accounting, stage0: Stage0, recycle: bool, who: str = "") -> None:
    """Raise :class:`ConfigError` for unknown options or ``reference`` accounting without its stage 0."""
    check_choice("accounting", accounting, Accounting, who)
    check_choice("stage0", stage0, Stage0, who)
    if accounting == "reference" and (stage0 != "reference" or not recycle):
        prefix = f"{who}: " if who else ""
        raise ScheduleError(
            f"{prefix}accounting='reference' reproduces the authors' stage 0 and recycling; "
            "use stage0='reference' and recycle=True, or accounting='actual'"
        )


def _check_depth(num_layers: int, num_visual: int) -> None:
    if num_layers < MIN_LAYERS or num_visual < 1:
        raise ScheduleError(
            f"need num_layers >= {MIN_LAYERS} and num_visual >= 1, got L={num_layers}, "
            f"V={num_visual}; pruning needs a layer after the one that prunes"
        )


def _check_budget(
    budget: float, num_layers: int, num_visual: int, accounting: Accounting, stage0: Stage0
) -> None:
    reachable = reachable_budget(num_layers, num_visual, accounting, stage0)
    who = f"autoprune(accounting={accounting!r}, stage0={stage0!r})"
    hint = " (stage0='before' reaches down to 1)" if reachable[0] > 1 else ""
    check_reachable(budget, reachable, num_layers, num_visual, who, hint)
