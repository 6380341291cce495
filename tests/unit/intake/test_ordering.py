"""The intake's event-time merger: order across partitions, waiting only on known lag, bounded."""

from __future__ import annotations

from datetime import datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from patrol.intake.ordering import EventTimeMerger, OrderKey

T0 = datetime.fromisoformat("2026-11-27T10:00:00+08:00")
WAIT = 0.5


def key(second: int, source: str = "cam", event: str = "e") -> OrderKey:
    return (T0 + timedelta(seconds=second), source, event)


def records(partition: str, seconds: list[int]) -> list[tuple[OrderKey, str]]:
    return [
        (key(s, partition, f"{partition}-{i}"), f"{partition}@{s}#{i}")
        for i, s in enumerate(seconds)
    ]


def test_the_smallest_event_time_goes_first_across_partitions() -> None:
    merger: EventTimeMerger[str, str] = EventTimeMerger(WAIT)
    merger.assign(["drone", "camera"])
    merger.add("drone", records("drone", [8]))
    merger.add("camera", records("camera", [0, 4, 12]))
    released = merger.release(0.0, lagging=lambda p: False)
    assert released == ["camera@0#0", "camera@4#1", "drone@8#0", "camera@12#2"]


def test_ties_go_by_source_id_then_event_id() -> None:
    merger: EventTimeMerger[int, str] = EventTimeMerger(WAIT)
    merger.assign([0, 1])
    merger.add(1, [(key(5, "cam-a", "x2"), "a-x2")])
    merger.add(0, [(key(5, "cam-b", "x1"), "b-x1")])
    assert merger.release(0.0, lagging=lambda p: False) == ["a-x2", "b-x1"]


def test_an_empty_partition_with_lag_holds_the_others_back_until_it_is_fetched() -> None:
    merger: EventTimeMerger[str, str] = EventTimeMerger(WAIT)
    merger.assign(["camera", "drone"])
    merger.add("camera", records("camera", [0, 4, 12]))
    assert merger.release(0.0, lagging=lambda p: p == "drone") == []
    merger.add("drone", records("drone", [8]))
    assert merger.release(0.1, lagging=lambda p: False) == [
        "camera@0#0",
        "camera@4#1",
        "drone@8#0",
        "camera@12#2",
    ]


def test_a_partition_that_runs_dry_with_lag_stops_the_release_there() -> None:
    merger: EventTimeMerger[str, str] = EventTimeMerger(WAIT)
    merger.assign(["camera", "drone"])
    merger.add("camera", records("camera", [0, 10]))
    merger.add("drone", records("drone", [5]))
    # the drone's next records (after second 5) are still on the broker
    assert merger.release(0.0, lagging=lambda p: p == "drone") == ["camera@0#0", "drone@5#0"]
    assert merger.holding("camera")


def test_lag_never_holds_past_the_bound() -> None:
    merger: EventTimeMerger[str, str] = EventTimeMerger(WAIT)
    merger.assign(["camera", "drone"])
    merger.add("camera", records("camera", [0]))
    assert merger.release(10.0, lagging=lambda p: True) == []
    assert merger.release(10.0 + WAIT / 2, lagging=lambda p: True) == []
    assert merger.release(10.0 + WAIT, lagging=lambda p: True) == ["camera@0#0"]


def test_a_revoked_partition_neither_holds_nor_keeps_its_records() -> None:
    merger: EventTimeMerger[str, str] = EventTimeMerger(WAIT)
    merger.assign(["camera", "drone"])
    merger.add("drone", records("drone", [3]))
    merger.add("camera", records("camera", [1]))
    merger.assign(["camera"])
    assert merger.release(0.0, lagging=lambda p: p == "drone") == ["camera@1#0"]
    assert merger.buffered == 0


# Properties.

partitions_st = st.dictionaries(
    st.sampled_from(["p0", "p1", "p2", "p3"]),
    st.lists(st.integers(min_value=0, max_value=3600), max_size=20).map(sorted),
    min_size=1,
)


@st.composite
def fetch_plans(draw: st.DrawFn) -> tuple[dict[str, list[int]], list[tuple[str, int]]]:
    """Per-partition sequences, and an interleaving of fetches: (partition, how many)."""
    sequences = draw(partitions_st)
    remaining = {p: len(s) for p, s in sequences.items()}
    fetches = []
    while any(remaining.values()):
        partition = draw(st.sampled_from(sorted(p for p, n in remaining.items() if n)))
        count = draw(st.integers(min_value=1, max_value=remaining[partition]))
        remaining[partition] -= count
        fetches.append((partition, count))
    return sequences, fetches


@settings(max_examples=300, deadline=None)
@given(fetch_plans())
def test_with_lag_known_the_release_is_in_event_time_order(
    plan: tuple[dict[str, list[int]], list[tuple[str, int]]],
) -> None:
    sequences, fetches = plan
    merger: EventTimeMerger[str, OrderKey] = EventTimeMerger(max_wait=3600)
    merger.assign(sequences)
    fetched = dict.fromkeys(sequences, 0)
    released: list[OrderKey] = []
    for partition, count in fetches:
        seconds = sequences[partition][fetched[partition] : fetched[partition] + count]
        items = [
            (
                key(s, partition, f"{fetched[partition] + i:04d}"),
                key(s, partition, f"{fetched[partition] + i:04d}"),
            )
            for i, s in enumerate(seconds)
        ]
        fetched[partition] += count
        merger.add(partition, items)
        released += merger.release(0.0, lagging=lambda p: fetched[p] < len(sequences[p]))
    released += merger.release(0.0, lagging=lambda p: False)
    assert released == sorted(released)
    assert len(released) == sum(len(s) for s in sequences.values())


@settings(max_examples=200, deadline=None)
@given(fetch_plans())
def test_with_no_lag_nothing_fetched_is_held_back(
    plan: tuple[dict[str, list[int]], list[tuple[str, int]]],
) -> None:
    sequences, fetches = plan
    merger: EventTimeMerger[str, int] = EventTimeMerger(max_wait=3600)
    merger.assign(sequences)
    for partition, count in fetches:
        merger.add(partition, [(key(0, partition, str(i)), i) for i in range(count)])
        assert len(merger.release(0.0, lagging=lambda p: False)) == count
        assert merger.buffered == 0


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(min_value=0, max_value=0.3), st.integers(0, 3), st.booleans()),
        min_size=1,
        max_size=40,
    )
)
def test_no_record_waits_past_the_bound(steps: list[tuple[float, int, bool]]) -> None:
    """Whatever the lag says, a record added at t is out by the first release at t + max_wait."""
    merger: EventTimeMerger[int, tuple[int, float]] = EventTimeMerger(WAIT)
    merger.assign(range(4))
    now = 0.0
    added: dict[tuple[int, float], float] = {}
    for n, (advance, partition, lag) in enumerate(steps):
        now += advance
        item = (n, now)
        added[item] = now
        merger.add(partition, [(key(n), item)])
        for out in merger.release(now, lagging=lambda p, lag=lag: lag):
            added.pop(out)
        assert all(now < at + WAIT for at in added.values())
