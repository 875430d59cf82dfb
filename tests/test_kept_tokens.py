"""The record's kept / merged token bookkeeping on the host (pruning/kept_tokens.py), hand-worked.

Run inputs of one sample: position 0 text, positions 1-4 the visual tokens 0-3, position 5 text.
"""

from __future__ import annotations

import numpy as np

from vla_autoprune.pruning.kept_tokens import MemberTracker, MergeEvent, packed_kept

VISUAL = np.array([[False, True, True, True, True, False]])
ORIGIN = np.array([[0, 0, 1, 2, 3, 0]])  # index among the visual tokens (visual positions only)


def _slots(src: list[int], merged: list[bool], valid: list[bool] | None = None) -> tuple[np.ndarray, ...]:
    valid = [True] * len(src) if valid is None else valid
    return np.array([src]), np.array([valid]), np.array([merged])


def test_packed_kept_lists_original_tokens_in_order_and_counts_merged_ones() -> None:
    # A filler (valid False) and a merged slot are not original tokens; the merged one is counted.
    src, valid, merged = _slots([0, 4, 1, 3, 2, 5], [False, False, False, False, True, False])
    valid[0, 3] = False
    kept, count = packed_kept(src, valid, merged, VISUAL, ORIGIN)
    assert kept.tolist() == [[3, 0]] and count.tolist() == [1]


def test_packed_kept_pads_shorter_rows_with_minus_one() -> None:
    src = np.array([[0, 1, 2, 5], [0, 1, 2, 5]])
    valid = np.array([[True, True, True, True], [True, True, False, True]])
    kept, count = packed_kept(
        src, valid, np.zeros_like(valid), np.repeat(VISUAL, 2, 0), np.repeat(ORIGIN, 2, 0)
    )
    assert kept.tolist() == [[0, 1], [0, -1]] and count.tolist() == [0, 0]


def test_a_merged_token_that_joins_a_new_merge_hands_on_what_it_held() -> None:
    tracker = MemberTracker(batch=1, num_visual=4, seq_len=6)
    # Layer 1: tokens 1 and 2 (positions 2, 3) merge into one token represented by position 2.
    first = MergeEvent(
        slot_src=np.array([[1, 2, 3, 4]]),
        slot_merged=np.zeros((1, 4), dtype=bool),
        members=np.array([[-1, 0, 0, -1]]),
        representative=np.array([[1]]),
    )
    tracker.join(first, ORIGIN)
    src, valid, merged = _slots([0, 1, 4, 2, 5], [False, False, False, True, False])
    assert tracker.merged_into(src, valid, merged, VISUAL).tolist() == [[-1, 0, 0, -1]]
    # Layer 2: token 3 (position 4) and that merged token merge, represented by position 4.
    second = MergeEvent(
        slot_src=np.array([[1, 4, 2]]),
        slot_merged=np.array([[False, False, True]]),
        members=np.array([[-1, 0, 0]]),
        representative=np.array([[1]]),
    )
    tracker.join(second, ORIGIN)
    src, valid, merged = _slots([0, 1, 4, 5], [False, False, True, False])
    assert tracker.merged_into(src, valid, merged, VISUAL).tolist() == [[-1, 0, 0, 0]]
    kept, count = packed_kept(src, valid, merged, VISUAL, ORIGIN)
    assert kept.tolist() == [[0]] and count.tolist() == [1]


def test_merged_tokens_are_numbered_in_slot_order_and_dropped_ones_hold_nothing() -> None:
    tracker = MemberTracker(batch=1, num_visual=4, seq_len=6)
    # Two merged tokens: tokens 0 and 1 into the one at position 2, tokens 2 and 3 into position 3.
    event = MergeEvent(
        slot_src=np.array([[1, 2, 3, 4]]),
        slot_merged=np.zeros((1, 4), dtype=bool),
        members=np.array([[0, 0, 1, 1]]),
        representative=np.array([[1, 2]]),
    )
    tracker.join(event, ORIGIN)
    src, valid, merged = _slots([0, 3, 2, 5], [False, True, True, False])  # position 3's first in slot order
    assert tracker.merged_into(src, valid, merged, VISUAL).tolist() == [[1, 1, 0, 0]]
    valid[0, 1] = False  # the merged token at position 3 is a filler now: its members are held by none
    assert tracker.merged_into(src, valid, merged, VISUAL).tolist() == [[0, 0, -1, -1]]
