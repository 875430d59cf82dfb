"""Deterministic DPC-kNN token merging (AutoPrune's recycling of dropped tokens).

Density-peak clustering with k-nearest-neighbour density, as in TCFormer's ``cluster_dpc_knn``
(Zeng et al., CVPR 2022, https://arxiv.org/abs/2203.09710, default ``k = 5``). The SparseVLM and
AutoPrune reference code (``cluster_and_merge`` in Gumpest/SparseVLMs
``llava/model/language_model/utils.py`` line 188, AutoLab-SAI-SJTU/AutoPrune same file line 163)
call it with ``k`` = **the number of clusters** and add random noise to the density. Here ``k`` is
an argument (an int, or one per sample), and ties are broken by token index instead of noise, so
the result is a deterministic function of the inputs:

- distances are Euclidean, divided by ``sqrt(D)`` (the TCFormer convention; keeps the density
  away from underflow for wide hidden states);
- density ``rho = exp(-mean squared distance to the k nearest tokens)`` (the token itself is its
  own nearest neighbour, as in TCFormer);
- ``delta`` = distance to the nearest denser token (the sample's largest distance for the
  densest one); equal densities: the lower index counts as denser;
- centres are the ``C`` tokens with the largest ``rho * delta`` (compared as
  ``log rho + log delta``, same order, no underflow); each token joins its nearest centre (a
  centre always joins itself); a cluster is the mean of its members.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

DEFAULT_NEIGHBOURS = 5  # TCFormer's k for the density (the SparseVLM/AutoPrune code: the cluster count)
_BLOCK_ROWS = 16  # _euclidean's row blocks: at least this many rows each ...
_MAX_BLOCKS = 8  # ... and at most this many blocks (more calls cost more than they skip)
_TINY = 1e-30  # floor for log(delta) when two tokens coincide


class MergeError(ValueError):
    """Invalid merging arguments."""


def dpc_knn_merge(
    x: Tensor,
    num_clusters: int | Tensor,
    k: int | Tensor = DEFAULT_NEIGHBOURS,
    valid: Tensor | None = None,
    max_clusters: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Merge ``M`` tokens per sample into ``C`` cluster means by DPC-kNN.

    Args:
        x: ``[B, M, D]`` token features (hidden states).
        num_clusters: clusters per sample, an int or int64 ``[B]``. A sample gets
            ``c_b = min(num_clusters_b, valid tokens)`` clusters.
        k: neighbours for the density, an int or int64 ``[B]`` (fewer when a sample has fewer
            valid tokens).
        valid: optional bool ``[B, M]``; False tokens are ignored (no density, never a centre,
            not merged).
        max_clusters: ``max_b num_clusters_b`` when the caller knows it on the host (sizes the
            output of a tensor ``num_clusters`` without a host sync).

    Returns:
        ``merged`` ``[B, C, D]`` in ``x``'s dtype, ``C = min(max_b num_clusters_b, M)``; slots
        ``>= c_b`` are zero. ``assign`` int64 ``[B, M]``: each token's cluster slot, -1 for
        invalid tokens. Slot order is by decreasing ``rho * delta``. No host sync for an int
        ``num_clusters`` (or a tensor with ``max_clusters``); a tensor alone costs one.
    """
    _check_inputs(x, num_clusters, k, valid)
    b, m, d = x.shape
    valid = torch.ones(b, m, dtype=torch.bool, device=x.device) if valid is None else valid
    width, per_sample = _cluster_counts(num_clusters, valid, m, max_clusters)
    if width == 1:  # one cluster takes every valid token, whichever is its centre: no distances
        assign = torch.where(valid & (per_sample > 0).unsqueeze(1), 0, -1)
        return _cluster_means(x, assign, width), assign
    dist = _pairwise_distance(x, valid)  # [B, M, M], inf on invalid pairs
    centres, slot_ok = _pick_centres(dist, valid, k, width, per_sample)
    assign = _assign(dist, centres, slot_ok, valid)
    return _cluster_means(x, assign, width), assign


def _check_inputs(x: Tensor, num_clusters: int | Tensor, k: int | Tensor, valid: Tensor | None) -> None:
    if x.dim() != 3:
        raise MergeError(f"x must be [B, M, D] token features, got shape {tuple(x.shape)}")
    if isinstance(k, Tensor) and tuple(k.shape) != (x.shape[0],):
        raise MergeError(f"k must be an int or int64 [B] = ({x.shape[0]},), got {tuple(k.shape)}")
    if bool((k < 1).any()) if isinstance(k, Tensor) else k < 1:
        raise MergeError(f"k={k} neighbours is invalid; use k >= 1")
    if valid is not None and tuple(valid.shape) != tuple(x.shape[:2]):
        raise MergeError(f"valid must be bool [B, M] = {tuple(x.shape[:2])}, got {tuple(valid.shape)}")
    if isinstance(num_clusters, Tensor) and tuple(num_clusters.shape) != (x.shape[0],):
        raise MergeError(
            f"num_clusters must be an int or int64 [B] = ({x.shape[0]},), got {tuple(num_clusters.shape)}"
        )


def _cluster_counts(
    num_clusters: int | Tensor, valid: Tensor, m: int, max_clusters: int | None = None
) -> tuple[int, Tensor]:
    """Output width ``C`` and per-sample cluster counts int64 ``[B]`` (``max_clusters``: the host max)."""
    if isinstance(num_clusters, Tensor):
        requested = num_clusters.to(device=valid.device, dtype=torch.int64)
        if max_clusters is None:
            max_clusters = int(requested.max()) if requested.numel() else 0
        width = min(max_clusters, m)
    else:
        requested = torch.full((valid.shape[0],), num_clusters, dtype=torch.int64, device=valid.device)
        width = min(num_clusters, m)
    per_sample = torch.minimum(requested, valid.sum(dim=-1)).clamp(min=0)
    return max(width, 0), per_sample


def _pairwise_distance(x: Tensor, valid: Tensor) -> Tensor:
    """float ``[B, M, M]``: Euclidean distance / sqrt(D); inf where either token is invalid."""
    feats = x.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
    dist = _euclidean(feats)
    dist.div_(math.sqrt(max(x.shape[-1], 1)))  # in place on cdist's fresh output: the same values
    pair_ok = valid[:, :, None] & valid[:, None, :]
    return dist.masked_fill_(~pair_ok, math.inf)


def _euclidean(feats: Tensor) -> Tensor:
    """float ``[B, M, M]``: ``cdist``'s direct (non-matmul) kernel: exact zeros on the diagonal, deterministic.

    Each entry is computed from its two rows alone, and ``|a - b| == |b - a|`` exactly, so the
    matrix is symmetric bit for bit. On the CPU, for ``M >= 3 * _BLOCK_ROWS``, it is built from row
    blocks: block ``i`` against itself and the later rows, mirrored below the diagonal, which skips
    ~40% of the kernel's work (issue 14) and gives the same values as one call.
    """
    direct = "donot_use_mm_for_euclid_dist"
    b, m, _ = feats.shape
    blocks = min(m // _BLOCK_ROWS, _MAX_BLOCKS)
    if feats.device.type != "cpu" or blocks < 3:  # small M: the extra calls cost more than they skip
        return torch.cdist(feats, feats, compute_mode=direct)
    dist = feats.new_empty(b, m, m)
    bounds = [m * i // blocks for i in range(blocks + 1)]
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=False):
        upper = torch.cdist(feats[:, lo:hi], feats[:, lo:], compute_mode=direct)  # [B, hi - lo, m - lo]
        dist[:, lo:hi, lo:] = upper
        dist[:, hi:, lo:hi] = upper[:, :, hi - lo :].transpose(1, 2)
    return dist


def _log_density(dist: Tensor, valid: Tensor, k: int | Tensor) -> Tensor:
    """``[B, M]``: ``log rho = -mean squared distance to the k nearest valid tokens`` (``k`` per sample)."""
    if not isinstance(k, Tensor):  # one k for all: every one of the k_eff <= k nearest counts (no sync)
        k_eff = max(min(k, dist.shape[-1]), 1)
        nearest = dist.topk(k_eff, dim=-1, largest=False).values  # [B, M, k]
        finite = torch.isfinite(nearest)
    else:
        per_sample = k.to(dist.device).long()
        k_eff = max(min(int(per_sample.max()) if per_sample.numel() else 1, dist.shape[-1]), 1)
        nearest = dist.topk(k_eff, dim=-1, largest=False).values  # [B, M, k]
        finite = torch.isfinite(nearest) & (
            torch.arange(k_eff, device=dist.device) < per_sample.view(-1, 1, 1)
        )
    sq = torch.where(finite, nearest.square(), torch.zeros_like(nearest))
    count = finite.sum(dim=-1).clamp(min=1)
    return -(sq.sum(dim=-1) / count)


def _log_delta(dist: Tensor, log_rho: Tensor, valid: Tensor) -> Tensor:
    """``[B, M]``: log distance to the nearest denser token (densest: the sample's max distance)."""
    m = dist.shape[-1]
    index = torch.arange(m, device=dist.device)
    rho_i, rho_j = log_rho[:, :, None], log_rho[:, None, :]
    tie_lower = (rho_j == rho_i) & (index[None, None, :] < index[None, :, None])
    denser = ((rho_j > rho_i) | tie_lower) & valid[:, None, :]  # [B, i, j]: j denser than i
    finite = dist.nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)  # non-finite -> 0, one pass
    max_dist = finite.flatten(1).amax(dim=-1, keepdim=True)  # [B, 1]
    to_denser = dist.masked_fill(~denser, math.inf).min(dim=-1).values
    delta = torch.where(torch.isfinite(to_denser), to_denser, max_dist)
    return torch.log(delta.clamp(min=_TINY))


def _pick_centres(
    dist: Tensor, valid: Tensor, k: int | Tensor, width: int, per_sample: Tensor
) -> tuple[Tensor, Tensor]:
    """Centre token indices int64 ``[B, C]`` and which slots are real (``slot < c_b``) ``[B, C]``."""
    log_rho = _log_density(dist, valid, k)
    score = (log_rho + _log_delta(dist, log_rho, valid)).masked_fill(~valid, -math.inf)
    # stable sort: equal scores keep index order, so the choice is deterministic
    order = torch.sort(score, dim=-1, descending=True, stable=True).indices
    centres = order[:, :width]
    slots = torch.arange(width, device=dist.device)
    return centres, slots[None, :] < per_sample[:, None]


def _assign(dist: Tensor, centres: Tensor, slot_ok: Tensor, valid: Tensor) -> Tensor:
    """int64 ``[B, M]``: nearest real centre slot per token, -1 for invalid tokens."""
    b, m, _ = dist.shape
    width = centres.shape[1]
    if width == 0:
        return torch.full((b, m), -1, dtype=torch.int64, device=dist.device)
    to_centre = dist.gather(2, centres[:, None, :].expand(b, m, width))  # [B, M, C]
    is_self = centres[:, None, :] == torch.arange(m, device=dist.device)[None, :, None]
    to_centre = to_centre.masked_fill(is_self, -1.0)  # a centre joins its own cluster
    to_centre = to_centre.masked_fill(~slot_ok[:, None, :], math.inf)
    assign = to_centre.argmin(dim=-1)
    has_cluster = valid & slot_ok.any(dim=-1, keepdim=True)
    return torch.where(has_cluster, assign, torch.full_like(assign, -1))


def _cluster_means(x: Tensor, assign: Tensor, width: int) -> Tensor:
    """``[B, C, D]``: mean of each slot's members (zero for empty slots), in ``x``'s dtype."""
    feats = x if x.dtype == torch.float64 else x.to(torch.float32)
    slots = torch.arange(width, device=x.device)
    members = (assign[:, :, None] == slots[None, None, :]).to(feats.dtype)  # [B, M, C]
    sums = torch.einsum("bmc,bmd->bcd", members, feats)
    counts = members.sum(dim=1).clamp(min=1.0)[:, :, None]  # [B, C, 1]
    return (sums / counts).to(x.dtype)
