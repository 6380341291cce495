"""The in-order offset tracker the intake and the SMS sender commit by."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from patrol.kafka.offsets import OffsetTracker

A, B = ("outbox", 0), ("outbox", 1)


def test_nothing_taken_nothing_to_commit() -> None:
    offsets: OffsetTracker[tuple[str, int]] = OffsetTracker()
    assert offsets.committable() == {}
    assert offsets.position(A) is None
    assert offsets.rewind(A) is None
    assert offsets.pending() == 0


def test_a_record_finished_behind_an_unfinished_one_is_not_committed_past_it() -> None:
    offsets: OffsetTracker[tuple[str, int]] = OffsetTracker()
    for offset in (10, 11, 12):
        offsets.track(A, offset)
    offsets.done(A, 12)
    offsets.done(A, 11)
    assert offsets.committable() == {A: 10}
    offsets.done(A, 10)
    assert offsets.committable() == {A: 13}


def test_partitions_are_committed_each_on_its_own() -> None:
    offsets: OffsetTracker[tuple[str, int]] = OffsetTracker()
    offsets.track(A, 0)
    offsets.track(B, 5)
    offsets.done(B, 5)
    assert offsets.committable() == {A: 0, B: 6}
    assert offsets.committable(only=[B]) == {B: 6}
    assert offsets.pending() == 1 and offsets.pending(A) == 1 and offsets.pending(B) == 0


def test_only_positions_that_moved_since_the_last_commit_are_committable() -> None:
    offsets: OffsetTracker[tuple[str, int]] = OffsetTracker()
    offsets.track(A, 0, 9)
    offsets.done(A, 0)
    offsets.track(B, 0)
    offsets.committed(offsets.committable())
    assert offsets.committable() == {}
    offsets.done(B, 0)
    assert offsets.committable() == {B: 1}


def test_a_round_is_one_span_committed_after_its_last_record() -> None:
    offsets: OffsetTracker[tuple[str, int]] = OffsetTracker()
    offsets.track(A, 0, 99)
    assert offsets.committable() == {A: 0}
    assert offsets.taken_up_to(A) == 100
    offsets.done(A, 0)
    assert offsets.committable() == {A: 100}


def test_a_failed_round_is_fetched_again_from_its_first_record() -> None:
    offsets: OffsetTracker[tuple[str, int]] = OffsetTracker()
    offsets.track(A, 0, 49)
    offsets.done(A, 0)
    offsets.track(A, 50, 99)  # this round's send fails

    assert offsets.rewind(A) == 50
    assert offsets.committable() == {A: 50}
    offsets.track(A, 50, 99)  # fetched again
    offsets.done(A, 50)
    assert offsets.committable() == {A: 100}


def test_a_rewind_drops_what_finished_after_the_first_unfinished_record() -> None:
    offsets: OffsetTracker[tuple[str, int]] = OffsetTracker()
    for offset in (3, 4, 5):
        offsets.track(A, offset)
    offsets.done(A, 5)
    assert offsets.rewind(A) == 3
    offsets.done(A, 5)  # a late acknowledgement of the dropped record
    assert offsets.committable() == {A: 3}
    offsets.track(A, 3, 5)  # fetched again
    assert offsets.committable() == {A: 3}


def test_a_rewind_with_everything_done_seeks_nowhere() -> None:
    offsets: OffsetTracker[tuple[str, int]] = OffsetTracker()
    offsets.track(A, 0, 4)
    offsets.done(A, 0)
    assert offsets.rewind(A) is None
    assert offsets.committable() == {A: 5}


def test_taking_an_unfinished_offset_again_without_a_rewind_is_refused() -> None:
    offsets: OffsetTracker[tuple[str, int]] = OffsetTracker()
    offsets.track(A, 0, 4)
    with pytest.raises(ValueError, match="offset 3 taken again while 4 or an earlier"):
        offsets.track(A, 3)
    with pytest.raises(ValueError, match="ends before it starts"):
        offsets.track(A, 9, 8)


def test_records_done_and_taken_again_are_tracked_again() -> None:
    offsets: OffsetTracker[tuple[str, int]] = OffsetTracker()
    offsets.track(A, 0, 4)
    offsets.done(A, 0)
    offsets.track(A, 3, 9)  # the consumer went back (it was told to seek, say)
    assert offsets.committable() == {A: 3}
    offsets.done(A, 3)
    assert offsets.committable() == {A: 10}


def test_a_revoked_partition_is_forgotten_and_late_acknowledgements_are_ignored() -> None:
    offsets: OffsetTracker[tuple[str, int]] = OffsetTracker()
    offsets.track(A, 7)
    offsets.track(B, 7)
    offsets.forget([A])
    offsets.done(A, 7)  # its acknowledgement arrives after the revoke
    assert offsets.committable() == {B: 7}
    assert offsets.partitions() == [B]
    offsets.track(A, 3)  # assigned again, from its last commit
    assert offsets.committable() == {A: 3, B: 7}


@given(
    gaps=st.lists(st.integers(min_value=1, max_value=3), min_size=1, max_size=30),
    order=st.randoms(use_true_random=False),
    stop_after=st.integers(min_value=0, max_value=30),
)
def test_any_order_of_acknowledgements_commits_up_to_the_oldest_unfinished_record(
    gaps: list[int], order: random.Random, stop_after: int
) -> None:
    offsets: OffsetTracker[tuple[str, int]] = OffsetTracker()
    taken: list[int] = []
    offset = 0
    for gap in gaps:  # offsets can skip (compaction, transaction markers)
        offset += gap
        taken.append(offset)
        offsets.track(A, offset)
    acknowledged = taken[:]
    order.shuffle(acknowledged)
    done: set[int] = set()
    for offset in acknowledged[:stop_after]:
        offsets.done(A, offset)
        done.add(offset)
        unfinished = [o for o in taken if o not in done]
        position = offsets.committable().get(A)
        if unfinished:
            # never past the oldest unfinished record, and exactly there: all before it is done
            assert position == min(unfinished)
        else:
            assert position == taken[-1] + 1
        assert offsets.pending(A) == len(unfinished)
