"""Cluster (scene) bootstrap confidence intervals for ratio-of-sums metrics, paired across runs.

Samples of one scene are strongly correlated (the same road, agents and lights, 0.5 s apart), so
the resampling unit is the scene: a replicate draws as many scenes as there are, with replacement,
and takes all their samples. A replicate is a weight per sample (how often its scene was drawn),
so every statistic below is a matrix product, vectorised over replicates.

When the evaluation set is built with a fixed design (the synthetic set: scene ``i`` has scenario
family ``FAMILIES[i % 6]``, as many scenes per family), :func:`stratified_weights` mirrors it: each
stratum (family) draws as many of its own scenes as it holds, so no replicate over- or
under-represents a family that the design holds fixed.

Every metric of :mod:`planners.metrics` is a ratio of sums ``sum_b num[b] / sum_b den[b]`` (see
:func:`planners.metrics.sample_terms_at`); means are the case ``den = 1``. Paired comparisons use
the same weights for both runs, so differences and ratios keep the pairing by sample.

Shapes: ``S`` samples, ``G`` clusters (scenes), ``R`` resamples, ``...`` any trailing metric axes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from vla_autoprune.errors import ConfigError, DataError

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
    return stratified_weights(clusters, np.zeros(len(clusters), dtype=np.int64), resamples, seed)


def check_resamples(resamples: int) -> None:
    """A one-line :class:`ConfigError` unless ``resamples`` is a whole number >= 1."""
    if isinstance(resamples, bool) or not isinstance(resamples, (int, np.integer)) or resamples < 1:
        raise ConfigError(f"resamples={resamples!r}; pass a whole number >= 1 (e.g. 2000)")


def stratified_weights(
    clusters: Sequence[str] | np.ndarray, strata: Sequence[str] | np.ndarray, resamples: int, seed: int
) -> np.ndarray:
    """Stratified cluster bootstrap weights: each stratum draws as many of its own clusters as it
    holds, with replacement (strata in sorted order, each from the one generator).

    With a single stratum this is :func:`cluster_weights` draw for draw; a stratum holding one
    cluster takes it in every replicate.

    :param clusters: [S] cluster label of each sample (scene token).
    :param strata: [S] stratum label of each sample (scenario family); constant within a cluster.
    :param resamples: R >= 1 replicates.
    :param seed: seed of the generator; equal inputs and seed give equal weights.
    :return: float64 [R, S]: how many times the sample's cluster was drawn in each replicate.
    :raises DataError: a cluster whose samples lie in more than one stratum.
    """
    check_resamples(resamples)
    names, ids = np.unique(np.asarray(clusters), return_inverse=True)
    ids = ids.reshape(-1)
    _, stratum_ids = np.unique(np.asarray(strata), return_inverse=True)
    stratum_ids = stratum_ids.reshape(-1)
    if stratum_ids.shape != ids.shape:
        raise ValueError(f"{stratum_ids.size} strata labels for {ids.size} samples; pass one per sample")
    pairs = np.unique(np.stack([ids, stratum_ids]), axis=1)  # [2, P] distinct (cluster, stratum), by cluster
    if pairs.shape[1] != names.size:
        split = names[np.flatnonzero(np.bincount(pairs[0]) > 1)]
        raise DataError(
            f"clusters {split[:3].tolist()} lie in more than one stratum; stratify by a scene label"
        )
    counts = np.zeros((resamples, names.size), dtype=np.int64)  # [R, G]
    rng = np.random.default_rng(seed)
    for stratum in np.unique(pairs[1]):
        members = pairs[0, pairs[1] == stratum]  # cluster ids of this stratum, sorted
        size = members.size
        counts[:, members] = rng.multinomial(size, np.full(size, 1.0 / size), size=resamples)
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
