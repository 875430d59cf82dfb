"""Deterministic DPC-kNN merging: recovers separated clusters, batched, masked, edge sizes."""

from __future__ import annotations

import pytest
import torch

from vla_autoprune.pruning.merging import MergeError, dpc_knn_merge


def _blobs(seed: int, per_blob: int = 8, dim: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Three tight blobs far apart, shuffled: features ``[3 * per_blob, dim]`` and labels."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[0.0] * dim, [40.0] * dim, [-40.0] + [40.0] * (dim - 1)])
    labels = torch.arange(3).repeat_interleave(per_blob)
    feats = centres[labels] + 0.5 * torch.randn(3 * per_blob, dim, generator=gen)
    perm = torch.randperm(3 * per_blob, generator=gen)
    return feats[perm], labels[perm]


def _same_partition(assign: torch.Tensor, labels: torch.Tensor) -> bool:
    """True when ``assign`` groups tokens exactly like ``labels`` (up to renaming)."""
    pairs = set(zip(assign.tolist(), labels.tolist(), strict=True))
    return len(pairs) == len(set(labels.tolist())) == len(set(assign.tolist()))


def test_recovers_well_separated_clusters():
    (xa, la), (xb, lb) = _blobs(0), _blobs(1)
    x = torch.stack([xa, xb])
    merged, assign = dpc_knn_merge(x, 3)
    assert merged.shape == (2, 3, 6) and assign.shape == (2, 24)
    for b, labels in enumerate((la, lb)):
        assert _same_partition(assign[b], labels)
        for slot in range(3):
            members = x[b][assign[b] == slot]
            assert torch.allclose(merged[b, slot], members.mean(dim=0), atol=1e-5)


def test_deterministic_and_centres_join_themselves():
    x = torch.randn(2, 20, 5, generator=torch.Generator().manual_seed(3))
    first = dpc_knn_merge(x, 4)
    second = dpc_knn_merge(x.clone(), 4)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    # identical tokens: ties broken by index, so repeated runs agree and every slot is used
    same = torch.ones(1, 6, 3)
    merged, assign = dpc_knn_merge(same, 2)
    assert torch.equal(assign, dpc_knn_merge(same, 2)[1])
    assert assign[0, 0].item() == 0  # token 0 wins every tie, so it is the first centre
    assert set(assign[0].tolist()) == {0, 1}
    assert torch.allclose(merged, torch.ones(1, 2, 3))


def test_batch_equals_one_by_one_with_per_sample_counts():
    x = torch.randn(3, 15, 4, generator=torch.Generator().manual_seed(4))
    counts = torch.tensor([2, 5, 3])
    merged, assign = dpc_knn_merge(x, counts)
    assert merged.shape == (3, 5, 4)
    for b in range(3):
        m_b, a_b = dpc_knn_merge(x[b : b + 1], int(counts[b]))
        c = int(counts[b])
        assert torch.equal(assign[b], a_b[0])
        assert torch.allclose(merged[b, :c], m_b[0], atol=1e-6)
        assert bool((merged[b, c:] == 0).all())  # unused slots are zero


def test_more_clusters_than_tokens_and_fewer_tokens_than_k():
    x = torch.randn(1, 3, 4, generator=torch.Generator().manual_seed(5))
    merged, assign = dpc_knn_merge(x, 10, k=5)  # C >= M and M < k
    assert merged.shape == (1, 3, 4)
    assert sorted(assign[0].tolist()) == [0, 1, 2]  # every token is its own cluster
    assert torch.allclose(merged[0, assign[0]], x[0])


def test_invalid_tokens_are_ignored():
    x, labels = _blobs(6)
    noise = torch.full((5, 6), 1e3)  # far-away junk that would form its own cluster
    padded = torch.cat([x, noise])[None]
    valid = torch.cat([torch.ones(24, dtype=torch.bool), torch.zeros(5, dtype=torch.bool)])[None]
    merged, assign = dpc_knn_merge(padded, 3, valid=valid)
    ref_merged, ref_assign = dpc_knn_merge(x[None], 3)
    assert bool((assign[0, 24:] == -1).all())
    assert torch.equal(assign[0, :24], ref_assign[0])
    assert torch.allclose(merged, ref_merged, atol=1e-6)
    assert _same_partition(assign[0, :24], labels)


def test_keeps_dtype_and_rejects_bad_input():
    x = torch.randn(1, 8, 4).half()
    merged, _ = dpc_knn_merge(x, 2)
    assert merged.dtype == torch.float16
    with pytest.raises(MergeError, match=r"\[B, M, D\]"):
        dpc_knn_merge(torch.randn(8, 4), 2)
    with pytest.raises(MergeError, match="k=0"):
        dpc_knn_merge(torch.randn(1, 8, 4), 2, k=0)


@pytest.mark.parametrize("m", [5, 47, 48, 95, 130, 200])
def test_blocked_distances_equal_one_cdist_call(m):
    """The row-blocked, mirrored distance matrix is cdist's own, bit for bit (issue 14)."""
    from vla_autoprune.pruning.merging import _euclidean

    gen = torch.Generator().manual_seed(m)
    for dtype in (torch.float32, torch.float64):
        x = (torch.randn(2, m, 37, generator=gen) * 10.0 ** (m % 5 - 2)).to(dtype)
        x[1, m // 2] = x[1, 0]  # a duplicate row: an exact zero off the diagonal
        direct = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")
        assert torch.equal(_euclidean(x), direct)


@pytest.mark.parametrize("counts", [1, torch.tensor([1, 0, 1])])
def test_one_cluster_shortcut_equals_the_full_clustering(counts):
    """With one cluster every valid token joins it, whichever token is its centre: the shortcut
    (no distances, issue 14) gives the general path's assignment and means bit for bit."""
    from vla_autoprune.pruning.merging import (
        _assign,
        _cluster_counts,
        _cluster_means,
        _pairwise_distance,
        _pick_centres,
    )

    x = torch.randn(3, 9, 16, generator=torch.Generator().manual_seed(8))
    valid = torch.ones(3, 9, dtype=torch.bool)
    valid[1, 4:] = False
    valid[2, 0] = False
    merged, assign = dpc_knn_merge(x, counts, valid=valid)
    width, per_sample = _cluster_counts(counts, valid, 9)
    dist = _pairwise_distance(x, valid)
    centres, slot_ok = _pick_centres(dist, valid, 5, width, per_sample)
    expected = _assign(dist, centres, slot_ok, valid)
    assert torch.equal(assign, expected)
    assert torch.equal(merged, _cluster_means(x, expected, width))
    assert bool((assign[~valid] == -1).all()) and bool((assign[valid & (per_sample > 0)[:, None]] == 0).all())
