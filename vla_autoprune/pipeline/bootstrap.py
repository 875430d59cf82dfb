"""Cluster (scene) bootstrap confidence intervals for ratio-of-sums metrics, paired across runs.

Samples of one scene are strongly correlated (the same road, agents and lights, 0.5 s apart), so
the resampling unit is the scene: a replicate draws as many scenes as there are, with replacement,
and takes all their samples. A replicate is a weight per sample (how often its scene was drawn),
so every statistic below is a matrix product, vectorised over replicates.

Every metric of :mod:`planners.metrics` is a ratio of sums ``sum_b num[b] / sum_b den[b]`` (see
:func:`planners.metrics.sample_terms_at`); means are the case ``den = 1``. Paired comparisons use
the same weights for both runs, so differences and ratios keep the pairing by sample.

Shapes: ``S`` samples, ``G`` clusters (scenes), ``R`` resamples, ``...`` any trailing metric axes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from vla_autoprune.errors import ConfigError

#: Two-sided confidence level of every interval in the reports.
CONFIDENCE = 0.95


class Interval(NamedTuple):
    """A point estimate and its percentile confidence interval (arrays of one shape, or floats)."""

    estimate: np.ndarray
    low: np.ndarray
    high: np.ndarray


def cluster_weights(clusters: Sequence[str] | np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """Bootstrap weights: each replicate draws ``G`` clusters with replacement.

    :param clusters: [S] cluster label of each sample (scene token; ``arange(S)`` resamples samples).
    :param resamples: R >= 1 replicates.
    :param seed: seed of the generator; equal inputs and seed give equal weights.
    :return: float64 [R, S]: how many times the sample's cluster was drawn in each replicate.
    """
    if isinstance(resamples, bool) or not isinstance(resamples, (int, np.integer)) or resamples < 1:
        raise ConfigError(f"resamples={resamples!r}; pass a whole number >= 1 (e.g. 2000)")
    _, ids = np.unique(np.asarray(clusters), return_inverse=True)
    ids = ids.reshape(-1)
    groups = int(ids.max()) + 1 if ids.size else 0
    if groups == 0:
        return np.zeros((resamples, 0))
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(groups, np.full(groups, 1.0 / groups), size=resamples)  # [R, G]
    return counts[:, ids].astype(np.float64)


def weighted_ratio(weights: np.ndarray, num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``sum_s w[s] num[s, ...] / sum_s w[s] den[s]`` per replicate; ``nan`` where the denominator is 0.

    :param weights: float [R, S] (or [S] for one weighting, e.g. all ones for the full sample).
    :param num: float [S, ...] per-sample numerators.
    :param den: float [S] per-sample weights of the metric (1 for a plain mean).
    :return: float64 [R, ...] (or [...] for 1-D ``weights``).
    """
    num = np.asarray(num, dtype=np.float64)
    flat = num.reshape(num.shape[0], -1)  # [S, M]
    top = weights @ flat  # [R, M]
    bottom = weights @ np.asarray(den, dtype=np.float64)  # [R]
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = top / np.asarray(bottom)[..., None]
    ratio = np.where(np.asarray(bottom)[..., None] > 0, ratio, np.nan)
    return ratio.reshape(np.shape(bottom) + num.shape[1:])


def percentile_interval(estimate: np.ndarray, replicates: np.ndarray, level: float = CONFIDENCE) -> Interval:
    """Percentile interval of ``replicates`` around the full-sample ``estimate``.

    :param estimate: float [...] statistic on the full sample.
    :param replicates: float [R, ...] the statistic on each replicate; ``nan`` replicates (e.g. a
        replicate that drew no sample of a subgroup) are left out.
    :return: Interval of arrays [...]; bounds are ``nan`` where every replicate is.
    """
    if not 0.0 < level < 1.0:
        raise ConfigError(f"confidence level {level!r} must lie in (0, 1), e.g. 0.95")
    tail = 100.0 * (1.0 - level) / 2.0
    replicates = np.asarray(replicates, dtype=np.float64)
    some = ~np.isnan(replicates).all(axis=0)
    safe = np.where(some[None], replicates, 0.0)
    low, high = np.nanpercentile(safe, [tail, 100.0 - tail], axis=0)
    return Interval(
        np.asarray(estimate, dtype=np.float64), np.where(some, low, np.nan), np.where(some, high, np.nan)
    )


def ratio_interval(
    weights: np.ndarray, num: np.ndarray, den: np.ndarray, level: float = CONFIDENCE
) -> Interval:
    """Interval of one metric ``sum num / sum den``.

    :param weights: float [R, S]; ``num``: float [S, ...]; ``den``: float [S].
    :return: Interval of arrays [...].
    """
    full = weighted_ratio(np.ones(len(den)), num, den)
    return percentile_interval(full, weighted_ratio(weights, num, den), level)


def paired_difference(
    weights: np.ndarray,
    num: np.ndarray,
    den: np.ndarray,
    ref_num: np.ndarray,
    ref_den: np.ndarray,
    level: float = CONFIDENCE,
) -> Interval:
    """Interval of ``metric(run) - metric(reference)`` on the same samples, resampled together.

    :param weights: float [R, S]; ``num``/``ref_num``: float [S, ...] aligned sample by sample;
        ``den``/``ref_den``: float [S].
    :return: Interval of arrays [...].
    """
    ones = np.ones(len(den))
    full = weighted_ratio(ones, num, den) - weighted_ratio(ones, ref_num, ref_den)
    reps = weighted_ratio(weights, num, den) - weighted_ratio(weights, ref_num, ref_den)
    return percentile_interval(full, reps, level)


def paired_ratio(
    weights: np.ndarray,
    num: np.ndarray,
    den: np.ndarray,
    ref_num: np.ndarray,
    ref_den: np.ndarray,
    level: float = CONFIDENCE,
) -> Interval:
    """Interval of the retention ``metric(reference) / metric(run)`` (as ``table.retention``, a fraction).

    Shapes as :func:`paired_difference`; ``nan`` where the run's metric is 0.
    """

    def ratio(w: np.ndarray) -> np.ndarray:
        value = weighted_ratio(w, num, den)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(value != 0, weighted_ratio(w, ref_num, ref_den) / value, np.nan)

    return percentile_interval(ratio(np.ones(len(den))), ratio(weights), level)
