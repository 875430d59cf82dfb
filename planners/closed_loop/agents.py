"""Logged agents between 2 Hz keyframes, replayed at 10 Hz (non-reactive).

As navsim v1.1 ``metric_cache_processor.py`` (``_interpolate_gt_observation``): each agent is
interpolated between the first and the last keyframe where it exists (across gaps), absent
outside them, and an agent seen at a single keyframe is held there for the whole horizon.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from planners.closed_loop.geometry import wrap_angle
from vla_autoprune.data.schema import CATEGORIES, KEYFRAME_DT_S

#: nuScenes classes that nuPlan counts as agents (AGENT_TYPES: vehicle, pedestrian, bicycle);
#: the rest (animals, barriers, cones, debris, bicycle racks) are static objects.
AGENT_PREFIXES: tuple[str, ...] = ("vehicle.", "human.")


@dataclass(frozen=True)
class AgentTracks:
    """Agents at the simulation rate. ``B`` samples, ``T`` steps, ``N`` agent slots."""

    boxes: np.ndarray  # float [B, T, N, 5] (x, y, width, length, yaw), ego frame at t = 0
    valid: np.ndarray  # bool [B, T, N] the agent exists at that step
    speed: np.ndarray  # float [B, T, N] m/s (0 for static objects)
    is_agent: np.ndarray  # bool [B, N] a vehicle or pedestrian (nuPlan AGENT_TYPES)


def is_agent_label(labels: np.ndarray) -> np.ndarray:
    """bool [...]: the label (index into CATEGORIES, -1 = padding) is a vehicle or a human."""
    table = np.array([name.startswith(AGENT_PREFIXES) for name in CATEGORIES] + [False])
    return table[np.where(labels < 0, len(CATEGORIES), labels)]


def interpolate_agents(
    boxes: np.ndarray,
    valid: np.ndarray,
    labels: np.ndarray,
    keyframe_dt_s: float = KEYFRAME_DT_S,
    dt_s: float = 0.1,
) -> AgentTracks:
    """Keyframe boxes (slot n = the same agent at every keyframe) -> boxes every ``dt_s``.

    Position, size and yaw (the short way round) are linear between the bracketing keyframes
    where the agent exists; speed is that interval's displacement over its duration (the
    annotations carry no velocity), at a keyframe the interval to the next one (the previous
    one at the last), 0 for static objects and for agents seen once.

    :param boxes: float [B, K, N, 5] at t = 0, keyframe_dt, ..., (K - 1) keyframe_dt.
    :param valid: bool [B, K, N]; ``labels``: int [B, N] index into CATEGORIES (-1 = padding).
    :return: :class:`AgentTracks` with T = (K - 1) keyframe_dt / dt + 1 steps.
    """
    batch, keys, slots = valid.shape
    per_key = round(keyframe_dt_s / dt_s)
    times = np.arange((keys - 1) * per_key + 1) / per_key  # [T] in keyframe units
    index = np.arange(keys)[None, :, None]
    # Previous / next valid keyframe at or around each keyframe (-1 / K when none).
    prev_valid = np.maximum.accumulate(np.where(valid, index, -1), axis=1)  # [B, K, N]
    next_valid = np.minimum.accumulate(np.where(valid, index, keys)[:, ::-1], axis=1)[:, ::-1]
    low = np.minimum(np.floor(times).astype(int), keys - 1)  # [T] keyframe at or before t
    high = np.minimum(low + (times > low), keys - 1)
    before = prev_valid[:, low]  # [B, T, N] last valid keyframe <= floor(t)
    after = next_valid[:, high]  # [B, T, N] first valid keyframe >= ceil(t)
    seen = valid.sum(1)  # [B, N]
    inside = (before >= 0) & (after < keys)
    single = (seen == 1)[:, None, :]
    k0 = np.where(single, np.argmax(valid, axis=1)[:, None], np.clip(before, 0, keys - 1))
    k1 = np.where(single, k0, np.clip(after, 0, keys - 1))
    box0 = np.take_along_axis(boxes, k0[..., None], axis=1)  # [B, T, N, 5]
    box1 = np.take_along_axis(boxes, k1[..., None], axis=1)
    span = np.maximum(k1 - k0, 1)
    frac = np.where(k1 > k0, (times[None, :, None] - k0) / span, 0.0)[..., None]
    out = box0 + frac * (box1 - box0)
    out[..., 4] = wrap_angle(box0[..., 4] + frac[..., 0] * wrap_angle(box1[..., 4] - box0[..., 4]))
    agent = is_agent_label(labels)  # [B, N]
    speed = np.linalg.norm(box1[..., :2] - box0[..., :2], axis=-1) / (span * keyframe_dt_s)
    on_key = np.take_along_axis(_keyframe_speeds(boxes, prev_valid, next_valid, keyframe_dt_s), k0, axis=1)
    speed = np.where(agent[:, None], np.where(k1 > k0, speed, on_key), 0.0)
    exists = (inside | single) & (labels >= 0)[:, None, :]
    return AgentTracks(np.where(exists[..., None], out, 0.0), exists, np.where(exists, speed, 0.0), agent)


def _keyframe_speeds(
    boxes: np.ndarray, prev_valid: np.ndarray, next_valid: np.ndarray, keyframe_dt_s: float
) -> np.ndarray:
    """float [B, K, N]: speed at each keyframe, to the next valid keyframe (the previous one for
    the last); 0 for an agent seen once."""
    keys = boxes.shape[1]
    after = np.concatenate([next_valid[:, 1:], np.full_like(next_valid[:, :1], keys)], axis=1)
    before = np.concatenate([np.full_like(prev_valid[:, :1], -1), prev_valid[:, :-1]], axis=1)
    index = np.arange(keys)[None, :, None]
    other = np.where(after < keys, after, before)  # [B, K, N]
    known = (other >= 0) & (other < keys)
    other = np.clip(other, 0, keys - 1)
    moved = np.linalg.norm(
        np.take_along_axis(boxes, other[..., None], axis=1)[..., :2] - boxes[..., :2], axis=-1
    )
    return np.where(known, moved / (np.maximum(np.abs(other - index), 1) * keyframe_dt_s), 0.0)
