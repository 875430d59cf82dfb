"""Scene-bootstrap intervals, plain and stratified: hand-worked values, exact invariances, coverage,
determinism."""

from __future__ import annotations

import numpy as np
import pytest

from planners.metrics import aggregate_at, sample_terms_at
from vla_autoprune.errors import ConfigError, DataError
from vla_autoprune.pipeline.bootstrap import (
    cluster_weights,
    paired_difference,
    paired_ratio,
    percentile_interval,
    ratio_interval,
    stratified_weights,
    weighted_ratio,
)


def _clustered(
    rng: np.random.Generator, scenes: int, per_scene: int, spread: float = 1.0, noise: float = 0.1
):
    """Samples whose scene shares a random effect (true mean 0): values [S] and scene labels [S]."""
    effect = rng.normal(0.0, spread, scenes)
    labels = np.repeat(np.arange(scenes), per_scene)
    return effect[labels] + rng.normal(0.0, noise, labels.size), labels


def test_weights_draw_whole_scenes_with_replacement() -> None:
    scenes = np.array(["a", "a", "b", "c", "c", "c"])
    w = cluster_weights(scenes, resamples=500, seed=3)
    assert w.shape == (500, 6)
    # samples of one scene always get the same weight: whole scenes are drawn
    assert np.array_equal(w[:, 0], w[:, 1]) and np.array_equal(w[:, 3], w[:, 5])
    # each replicate draws 3 scenes: the distinct scene weights (a, b, c) sum to 3
    assert np.all(w[:, [0, 2, 3]].sum(axis=1) == 3)
    assert w.min() == 0 and w.max() == 3  # some scene left out, some drawn 3 times
    # one sample per cluster: every replicate reweights exactly S samples
    assert np.all(cluster_weights(np.arange(7), 50, 0).sum(axis=1) == 7)


def test_same_seed_same_weights_other_seed_other_weights() -> None:
    scenes = np.repeat(np.arange(12), 5)
    assert np.array_equal(cluster_weights(scenes, 200, 7), cluster_weights(scenes, 200, 7))
    assert not np.array_equal(cluster_weights(scenes, 200, 7), cluster_weights(scenes, 200, 8))


@pytest.mark.parametrize("resamples", [0, -3, 2.5, True])
def test_bad_resamples_is_a_config_error(resamples) -> None:
    with pytest.raises(ConfigError, match="resamples"):
        cluster_weights(np.arange(3), resamples, 0)


def test_weighted_ratio_hand_worked() -> None:
    # the third sample is excluded (stp3: not every step valid): numerator and weight 0
    num = np.array([[1.0, 10.0], [2.0, 20.0], [0.0, 0.0]])
    den = np.array([1.0, 1.0, 0.0])
    weights = np.array([[2.0, 0.0, 1.0], [1.0, 3.0, 5.0], [0.0, 0.0, 4.0]])
    got = weighted_ratio(weights, num, den)
    # row 0: 2*1 / 2 = 1; row 1: (1 + 3*2) / 4; row 2: no weight on a counted sample -> nan
    np.testing.assert_allclose(got[0], [1.0, 10.0])
    np.testing.assert_allclose(got[1], [7 / 4, 70 / 4])
    assert np.isnan(got[2]).all()
    np.testing.assert_allclose(weighted_ratio(np.ones(3), num, den), [1.5, 15.0])


def test_percentile_interval_hand_worked_and_nan_aware() -> None:
    reps = np.column_stack([np.arange(101.0), np.full(101, np.nan)])
    reps[0, 0] = np.nan  # a replicate without any sample of a subgroup is left out
    ci = percentile_interval(np.array([50.0, 1.0]), reps)
    np.testing.assert_allclose([ci.low[0], ci.high[0]], [3.475, 97.525])
    assert np.isnan(ci.low[1]) and np.isnan(ci.high[1])
    with pytest.raises(ConfigError, match="level"):
        percentile_interval(np.zeros(1), np.zeros((3, 1)), level=95)


def test_identical_runs_give_a_zero_width_interval_at_zero_and_ratio_one() -> None:
    rng = np.random.default_rng(0)
    values, scenes = _clustered(rng, 20, 10)
    num, den = np.abs(values)[:, None] + 0.5, np.ones(values.size)
    w = cluster_weights(scenes, 1000, 1)
    diff = paired_difference(w, num, den, num.copy(), den)
    assert diff.estimate[0] == diff.low[0] == diff.high[0] == 0.0
    ratio = paired_ratio(w, num, den, num.copy(), den)
    assert ratio.estimate[0] == ratio.low[0] == ratio.high[0] == 1.0


def test_a_constant_shift_gives_exactly_that_shift() -> None:
    rng = np.random.default_rng(1)
    values, scenes = _clustered(rng, 15, 8)
    ref = np.column_stack([values, 2 * values])  # two figures, e.g. two horizons
    den = (rng.random(values.size) > 0.2).astype(float)  # stp3: some samples not fully valid
    w = cluster_weights(scenes, 1000, 2)
    diff = paired_difference(w, ref + 0.25 * den[:, None], den, ref, den)
    np.testing.assert_allclose(diff.estimate, 0.25, atol=1e-12)
    np.testing.assert_allclose(diff.low, 0.25, atol=1e-12)
    np.testing.assert_allclose(diff.high, 0.25, atol=1e-12)
    # unpaired, the same two runs' own intervals are wide: pairing is what removes scene noise
    alone = ratio_interval(w, ref, den)
    assert (alone.high - alone.low)[0] > 0.3


def test_a_constant_factor_gives_exactly_that_retention() -> None:
    rng = np.random.default_rng(2)
    values, scenes = _clustered(rng, 15, 8)
    ref, den = np.abs(values)[:, None] + 1.0, np.ones(values.size)
    ratio = paired_ratio(cluster_weights(scenes, 500, 0), 1.25 * ref, den, ref, den)
    np.testing.assert_allclose([ratio.estimate[0], ratio.low[0], ratio.high[0]], 0.8, rtol=1e-12)


def test_scene_bootstrap_covers_the_truth_and_sample_bootstrap_does_not_on_clustered_data() -> None:
    rng = np.random.default_rng(3)
    trials, hits = 200, {"scene": 0, "sample": 0}
    for _ in range(trials):
        values, scenes = _clustered(rng, scenes=30, per_scene=12)
        den = np.ones(values.size)
        for unit, clusters in (("scene", scenes), ("sample", np.arange(values.size))):
            ci = ratio_interval(cluster_weights(clusters, 400, int(rng.integers(1 << 30))), values, den)
            hits[unit] += bool(ci.low <= 0.0 <= ci.high)
    # nominal 95 %: the scene bootstrap is close (a percentile bootstrap with 30 clusters runs a
    # little low); resampling samples ignores the scene effect and misses most of the time
    assert 0.88 <= hits["scene"] / trials <= 0.99
    assert hits["sample"] / trials < 0.6


def test_scene_resampling_is_wider_than_sample_resampling_on_clustered_data() -> None:
    rng = np.random.default_rng(4)
    values, scenes = _clustered(rng, scenes=25, per_scene=16)
    den = np.ones(values.size)
    by_scene = ratio_interval(cluster_weights(scenes, 2000, 0), values, den)
    by_sample = ratio_interval(cluster_weights(np.arange(values.size), 2000, 0), values, den)
    assert by_scene.estimate == by_sample.estimate
    assert (by_scene.high - by_scene.low) > 3 * (by_sample.high - by_sample.low)


@pytest.mark.parametrize("convention", ["stp3", "uniad"])
def test_sample_terms_sum_to_the_convention_rates(convention: str) -> None:
    rng = np.random.default_rng(5)
    values = rng.random((40, 6))
    mask = np.ones((40, 6), dtype=bool)
    mask[:5, 4:] = False  # five samples without a full future
    num, den = sample_terms_at(values, mask, convention)
    assert num.shape == (40, 3) and den.shape == (40,)
    rates = aggregate_at(values, mask, convention)
    np.testing.assert_allclose(num.sum(0) / den.sum(), [rates[h] for h in ("1s", "2s", "3s")], rtol=1e-12)
    if convention == "stp3":
        assert den[:5].sum() == 0 and np.all(num[:5] == 0)  # excluded, not counted as zero error


def test_strata_of_one_scene_each_give_zero_width_intervals() -> None:
    # every stratum holds one scene: every replicate takes each scene once, as the full sample does
    scenes = np.array(["a", "a", "b", "c", "c"])
    w = stratified_weights(scenes, ["x", "x", "y", "z", "z"], 300, 0)
    assert np.all(w == 1.0)
    ci = ratio_interval(w, np.array([[1.0], [2.0], [3.0], [4.0], [10.0]]), np.ones(5))
    assert ci.estimate[0] == ci.low[0] == ci.high[0] == 4.0


def test_stratified_draws_never_mix_strata_hand_checkable() -> None:
    # stratum x: scenes a (2 samples) and b; stratum y: scenes c, d, e
    scenes = np.array(["a", "a", "b", "c", "d", "e", "e"])
    strata = np.array(["x", "x", "x", "y", "y", "y", "y"])
    w = stratified_weights(scenes, strata, 4000, 5)
    assert np.array_equal(w[:, 0], w[:, 1]) and np.array_equal(w[:, 5], w[:, 6])  # whole scenes
    assert np.all(w[:, [0, 2]].sum(axis=1) == 2)  # x always draws its 2 scenes, from x only
    assert np.all(w[:, [3, 4, 5]].sum(axis=1) == 3)  # y always draws its 3
    # stratum x: (a, b) drawn (2, 0), (1, 1) or (0, 2) with probabilities 1/4, 1/2, 1/4
    shares = [np.mean(w[:, 0] == k) for k in (2, 1, 0)]
    np.testing.assert_allclose(shares, [0.25, 0.5, 0.25], atol=0.03)


def test_one_stratum_is_the_plain_scene_bootstrap_draw_for_draw() -> None:
    scenes = np.repeat([f"scene-{i}" for i in range(9)], 4)
    np.testing.assert_array_equal(
        stratified_weights(scenes, ["easy"] * scenes.size, 300, 11), cluster_weights(scenes, 300, 11)
    )


def test_stratified_weights_are_deterministic_and_check_their_input() -> None:
    scenes, strata = np.repeat(np.arange(12), 3), np.repeat(np.arange(12) % 3, 3)
    first = stratified_weights(scenes, strata, 200, 7)
    assert np.array_equal(first, stratified_weights(scenes, strata, 200, 7))
    assert not np.array_equal(first, stratified_weights(scenes, strata, 200, 8))
    with pytest.raises(DataError, match="more than one stratum"):
        stratified_weights(["a", "a", "b"], ["x", "y", "y"], 10, 0)
    with pytest.raises(ConfigError, match="resamples"):
        stratified_weights(["a"], ["x"], 0, 0)


def test_stratifying_removes_the_between_family_spread() -> None:
    # families differ a lot, scenes within a family little: a plain scene bootstrap mixes the
    # families' shares, the stratified one keeps them as designed and is much narrower
    rng = np.random.default_rng(6)
    scenes = np.repeat(np.arange(36), 6)
    families = scenes % 6
    values = 3.0 * families + 0.2 * rng.standard_normal(36)[scenes]
    den = np.ones(values.size)
    plain = ratio_interval(cluster_weights(scenes, 2000, 0), values, den)
    stratified = ratio_interval(stratified_weights(scenes, families, 2000, 0), values, den)
    assert plain.estimate == stratified.estimate
    assert (stratified.high - stratified.low) < 0.2 * (plain.high - plain.low)
