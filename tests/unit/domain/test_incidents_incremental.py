"""Hazard states carried from detection to detection (grid, seen ids, clock bookkeeping) decide
exactly as a state re-derived from its encoded form does, and old states stay usable."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from patrol.domain import incidents
from patrol.domain.incidents import (
    HazardState,
    IncidentPolicy,
    advance_clock,
    apply_hazard,
    decode_hazard_state,
    encode_hazard_state,
)
from patrol.domain.models import Detection, TaskType

from .test_incidents import LAT, LON, ROUTE, T0, ZONE, east_of, hazard, north_of

# A short window and retention, so incidents close and seen ids are forgotten within a run.
POLICY = IncidentPolicy(
    radius_m=100.0,
    window=timedelta(minutes=10),
    retention=timedelta(minutes=20),
    min_confidence={TaskType.roadside_vending: 0.6, TaskType.open_burning: 0.5},
)
# A chain of spots 60 m apart (so an incident can stretch along it and a sighting trimmed from
# one end matters), one 150 m east of the first, one far off.
SPOTS = [
    *((north_of(LAT, 60 * n), LON) for n in range(-1, 4)),
    (LAT, east_of(LAT, LON, 150)),
    (north_of(LAT, 5_000), LON),
]
SPAN_S = 90 * 60


@dataclass(frozen=True)
class Detect:
    detection: Detection


@dataclass(frozen=True)
class Clock:
    seconds: int


@dataclass(frozen=True)
class Rewind:
    """Continue from an earlier state of the run (the worker never does; callers may)."""

    back: int


Step = Detect | Clock | Rewind


@st.composite
def runs(draw: st.DrawFn) -> list[Step]:
    steps: list[Step] = []
    sent: list[Detection] = []
    now = 0
    for n in range(draw(st.integers(1, 120))):
        choice = draw(st.integers(0, 9))
        # Event time mostly drifts forward, sometimes jumps back past the window or retention.
        now = min(SPAN_S, max(0, now + draw(st.integers(-20, 60))))
        if choice == 0 and sent:
            # A replay: the same detection, or the same event id at another time and place.
            earlier = draw(st.sampled_from(sent))
            if draw(st.booleans()):
                earlier = hazard(earlier.event_id, T0 + timedelta(seconds=now), *SPOTS[1])
            steps.append(Detect(earlier))
        elif choice == 1:
            steps.append(Clock(min(SPAN_S, now + draw(st.integers(0, 30 * 60)))))
        elif choice == 2 and n > 0:
            steps.append(Rewind(draw(st.sampled_from([1, 1, 1, 2, 3, 5, 10]))))
        else:
            back = draw(st.sampled_from([0, 0, 0, 1]))
            if back:
                back = draw(st.integers(0, 25 * 60))
            at = T0 + timedelta(seconds=max(0, now - back))
            lat, lon = SPOTS[draw(st.sampled_from([0, 1, 1, 2, 2, 3, 4, 5, 6]))]
            lat += draw(st.floats(-1e-4, 1e-4))
            lon += draw(st.floats(-1e-4, 1e-4))
            detection = hazard(f"e{n}", at, lat, lon)
            sent.append(detection)
            steps.append(Detect(detection))
    return steps


def fresh(state: HazardState | None) -> HazardState | None:
    """The state as a worker restarting from the table would have it: nothing carried over."""
    return None if state is None else decode_hazard_state(encode_hazard_state(state))


def encoded(state: HazardState | None) -> bytes | None:
    return None if state is None else encode_hazard_state(state)


def advance(state: HazardState | None, seconds: int) -> HazardState | None:
    reference = fresh(state)
    clock = T0 + timedelta(seconds=seconds)
    after, closed = advance_clock(state, clock, POLICY)
    expected, expected_closed = advance_clock(reference, clock, POLICY)
    assert closed == expected_closed
    assert encoded(after) == encoded(expected)
    assert after == expected
    assert len(after.seen if after else ()) == len(expected.seen if expected else ())
    # The worker stores a state only when advance_clock hands back another one.
    assert (after is state) == (expected is reference)
    return after


@contextmanager
def shrunk(max_sightings: int, seen_slack: int) -> Iterator[None]:
    """Fewer sightings per incident than the real 20 make trimmed sightings matter in short
    runs; no slack makes the seen ids' log compact itself whenever it forgets some."""
    with (
        mock.patch.object(incidents, "MAX_SIGHTINGS", max_sightings),
        mock.patch.object(incidents, "_SEEN_SLACK", seen_slack),
    ):
        yield


@settings(max_examples=400, deadline=None)
@given(runs(), st.sampled_from([1, 2, 3, incidents.MAX_SIGHTINGS]), st.sampled_from([0, 64]))
def test_carried_state_decides_as_a_state_rebuilt_from_its_encoding(
    steps: list[Step], max_sightings: int, seen_slack: int
) -> None:
    with shrunk(max_sightings, seen_slack):
        carry_and_compare(steps)


def carry_and_compare(steps: list[Step]) -> None:
    state: HazardState | None = None
    history: list[HazardState | None] = [None]
    for step in steps:
        if isinstance(step, Rewind):
            state = history[max(0, len(history) - 1 - step.back)]
            continue
        if isinstance(step, Clock):
            state = advance(state, step.seconds)
            history.append(state)
            continue
        detection = step.detection
        reference = fresh(state)
        assert reference == state
        after, decision = apply_hazard(state, detection, ZONE, ROUTE, POLICY)
        expected, expected_decision = apply_hazard(reference, detection, ZONE, ROUTE, POLICY)
        assert decision == expected_decision
        assert encode_hazard_state(after) == encode_hazard_state(expected)
        assert after == expected
        assert len(after.seen) == len(expected.seen)
        assert (after is state) == (expected is reference)
        assert all(len(i.sightings) <= incidents.MAX_SIGHTINGS for i in after.incidents)
        # As the worker does: the detection's own event time, then (sometimes) a batch clock.
        state = advance(after, int((detection.observed_at - T0).total_seconds()))
        history.append(state)


Op = Callable[[HazardState | None], HazardState | None]


def ops(steps: list[Step]) -> list[Op]:
    """The run as the worker would take it: a detection, its event time, sometimes a clock."""

    def apply(detection: Detection) -> Op:
        return lambda state: apply_hazard(state, detection, ZONE, ROUTE, POLICY)[0]

    def clock(at: datetime) -> Op:
        return lambda state: advance_clock(state, at, POLICY)[0]

    done: list[Op] = []
    for step in steps:
        if isinstance(step, Detect):
            done += [apply(step.detection), clock(step.detection.observed_at)]
        elif isinstance(step, Clock):
            done.append(clock(T0 + timedelta(seconds=step.seconds)))
    return done


@settings(max_examples=150, deadline=None)
@given(runs(), st.sampled_from([2, incidents.MAX_SIGHTINGS]), st.sampled_from([0, 64]))
def test_an_old_state_decides_the_same_after_newer_ones_were_derived(
    steps: list[Step], max_sightings: int, seen_slack: int
) -> None:
    run = ops(steps)
    with shrunk(max_sightings, seen_slack):
        states: list[HazardState | None] = [None]
        for op in run:
            states.append(op(states[-1]))
        snapshots = [encoded(s) for s in states]
        # Every state (those between a detection and its clock too) still encodes as it did,
        # and takes the next few steps as it did.
        for n, old in enumerate(states):
            assert encoded(old) == snapshots[n]
            again = old
            for k, op in enumerate(run[n : n + 3], start=n + 1):
                again = op(again)
                assert encoded(again) == snapshots[k]
                assert again == states[k]
