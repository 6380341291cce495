"""The parking grace rule (CONTRACT §5): each numbered rule, its boundaries, replays."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from patrol.domain import grace, ids
from patrol.domain.grace import (
    CaseState,
    GraceDecision,
    GracePolicy,
    PlateRead,
    advance_clock,
    apply_read,
    case_key,
    decode_case_state,
    encode_case_state,
    record_sms_outcome,
    screen_plate_read,
)
from patrol.domain.models import (
    EARLIEST_EVENT_TIME,
    LATEST_EVENT_TIME,
    Detection,
    Priority,
    TaskType,
)
from patrol.domain.routing import Route
from patrol.domain.zones import OUTSIDE, Scene, Zone

ZONE = Zone("anwen-wancang-rd", "万苍路", "安文街道", Scene.urban_road, True, 10)
OTHER_ZONE = Zone("anwen-market", "安文菜市场", "安文街道", Scene.market, True, 15)
ROUTE = Route("comprehensive_enforcement", Priority.normal, timedelta(hours=2))
LOCAL = ZoneInfo("Asia/Shanghai")
POLICY = GracePolicy(recheck=timedelta(minutes=5), retention=timedelta(hours=24), tz=LOCAL)
T0 = datetime.fromisoformat("2026-11-27T10:00:00+08:00")
PLATE = "浙G12345"
G = timedelta(minutes=10)
R = timedelta(minutes=5)
SECOND = timedelta(seconds=1)


def event_times(zones: st.SearchStrategy[Any]) -> st.SearchStrategy[datetime]:
    """Times a detection may carry (the model refuses others), shown in `zones`."""
    return st.datetimes(
        min_value=EARLIEST_EVENT_TIME.replace(tzinfo=None) + timedelta(days=1),
        max_value=LATEST_EVENT_TIME.replace(tzinfo=None) - timedelta(days=1),
        timezones=zones,
    )


def detection(
    event_id: str,
    at: datetime,
    *,
    plate: str = PLATE,
    confidence: float = 0.93,
    lat: float = 29.0552,
) -> Detection:
    return Detection.model_validate(
        {
            "schema_version": 1,
            "event_id": event_id,
            "kind": "plate_read",
            "source": {"type": "camera", "id": "cam-0017"},
            "observed_at": at.isoformat(),
            "location": {"lat": lat, "lon": 120.4411},
            "confidence": confidence,
            "plate": plate,
            "media": [f"https://evidence.example/cam-0017/{event_id}.jpg"],
        }
    )


def read(event_id: str, at: datetime, **kwargs: object) -> PlateRead:
    return PlateRead.of(detection(event_id, at, **kwargs))  # type: ignore[arg-type]


def run(
    reads: list[PlateRead], state: CaseState | None = None, zone: Zone = ZONE
) -> tuple[CaseState | None, list[GraceDecision]]:
    decisions = []
    for r in reads:
        state, decision = apply_read(state, r, zone, ROUTE, POLICY)
        decisions.append(decision)
    return state, decisions


# Rule 1 — the first read opens a case and warns the driver once.


def test_first_read_opens_a_case_and_sends_one_warning() -> None:
    state, decision = apply_read(None, read("r1", T0), ZONE, ROUTE, POLICY)

    assert decision.outcome == "accepted"
    assert decision.opened
    assert decision.task is None
    assert decision.closed == ()
    sms = decision.sms
    assert sms is not None
    assert sms.plate == PLATE
    assert sms.zone_id == ZONE.zone_id
    assert sms.deadline == T0 + G
    assert sms.case_id == ids.case_id(PLATE, ZONE.zone_id, T0)
    assert sms.message_id == ids.message_id(sms.case_id)
    assert "浙G12345" in sms.text and "10:10前" in sms.text
    assert state is not None and state.open_case is not None
    assert state.open_case.deadline == T0 + G


def test_deadline_uses_the_zone_grace_minutes() -> None:
    _, decision = apply_read(None, read("r1", T0), OTHER_ZONE, ROUTE, POLICY)
    assert decision.sms is not None
    assert decision.sms.deadline == T0 + timedelta(minutes=15)


# Rule 2 — reads before the deadline change nothing visible.


def test_read_one_second_before_the_deadline_changes_nothing() -> None:
    state, (_, decision) = run([read("r1", T0), read("r2", T0 + G - SECOND)])

    assert decision == GraceDecision(outcome="accepted")
    assert state is not None and state.open_case is not None
    assert state.open_case.first_seen == T0


# Rule 3 — the first read in [deadline, deadline + R] confirms the violation.


@pytest.mark.parametrize("after_open", [G, G + R], ids=["at-deadline", "at-deadline-plus-R"])
def test_read_in_the_recheck_window_emits_one_task(after_open: timedelta) -> None:
    confirm_at = T0 + after_open
    state, (opening, confirming) = run([read("r1", T0), read("r2", confirm_at, lat=29.0553)])

    task = confirming.task
    assert task is not None
    assert confirming.sms is None
    case_id = ids.case_id(PLATE, ZONE.zone_id, T0)
    assert confirming.closed == (grace.ClosedCase(case_id, "violation"),)
    assert task.task_id == ids.case_task_id(case_id)
    assert task.task_type is TaskType.illegal_parking
    assert [e.event_id for e in task.evidence] == ["r1", "r2"]
    assert task.evidence[0].observed_at == T0
    assert task.created_at == confirm_at
    assert task.location.lat == 29.0553
    assert task.due_by == confirm_at + ROUTE.due_within
    assert task.priority is Priority.normal
    assert task.department == "comprehensive_enforcement"
    assert (task.township, task.zone_id, task.plate) == ("安文街道", ZONE.zone_id, PLATE)
    assert opening.sms is not None
    assert task.sms is not None
    assert (task.sms.message_id, task.sms.status) == (opening.sms.message_id, "pending")
    assert "浙G12345" in task.summary and "安文街道" in task.summary
    assert state is not None and state.open_case is None


def test_only_the_first_confirming_read_emits_a_task() -> None:
    _, decisions = run([read("r1", T0), read("r2", T0 + G), read("r3", T0 + G + 2 * SECOND)])
    assert [d.task is not None for d in decisions] == [False, True, False]
    # rule 7: the vehicle that stays on after its ticket is not warned again that day
    assert [d.sms is not None for d in decisions] == [True, False, False]
    assert decisions[2].outcome == "already_ticketed"


def test_task_carries_the_sms_outcome_once_known() -> None:
    state, (opening,) = run([read("r1", T0)])
    assert opening.sms is not None
    state = record_sms_outcome(state, opening.sms.message_id, "sent")
    _, (confirming,) = run([read("r2", T0 + G)], state)

    assert confirming.task is not None and confirming.task.sms is not None
    assert confirming.task.sms.status == "sent"


def test_sms_outcome_of_another_message_is_ignored() -> None:
    state, _ = run([read("r1", T0)])
    assert record_sms_outcome(state, "sms-of-another-case", "failed") == state
    assert record_sms_outcome(None, "sms-x", "sent") is None


# Rule 4 — a read after deadline + R closes the case as self-corrected and opens another.


def test_read_one_second_after_the_recheck_window_reopens() -> None:
    reopen_at = T0 + G + R + SECOND
    state, (_, decision) = run([read("r1", T0), read("r2", reopen_at)])

    assert decision.task is None
    assert decision.closed == (
        grace.ClosedCase(ids.case_id(PLATE, ZONE.zone_id, T0), "self_corrected"),
    )
    assert decision.opened
    assert decision.sms is not None
    assert decision.sms.case_id == ids.case_id(PLATE, ZONE.zone_id, reopen_at)
    assert decision.sms.deadline == reopen_at + G
    assert state is not None and state.open_case is not None
    assert state.open_case.first_seen == reopen_at


def test_reopened_case_is_confirmed_on_its_own_deadline() -> None:
    reopen_at = T0 + timedelta(hours=1)
    _, decisions = run([read("r1", T0), read("r2", reopen_at), read("r3", reopen_at + G)])
    task = decisions[2].task
    assert task is not None
    assert [e.event_id for e in task.evidence] == ["r2", "r3"]


# Rule 5 — replays never send another SMS or emit another task.


def test_replayed_opening_read_is_a_duplicate() -> None:
    state, decisions = run([read("r1", T0), read("r1", T0)])
    assert decisions[1] == GraceDecision(outcome="duplicate")
    assert state is not None and state.open_case is not None


def test_replays_after_a_violation_change_nothing() -> None:
    reads = [read("r1", T0), read("r2", T0 + G)]
    state, _ = run(reads)
    state, replays = run([reads[1], reads[0], reads[1]], state)
    assert [d.outcome for d in replays] == ["duplicate"] * 3
    assert all(d.sms is None and d.task is None for d in replays)


def test_replays_of_a_self_corrected_case_after_reopening_change_nothing() -> None:
    reads = [read("r1", T0), read("r2", T0 + G - SECOND), read("r3", T0 + timedelta(hours=1))]
    state, _ = run(reads)
    state, replays = run([reads[1], reads[0], reads[2]], state)
    assert [d.outcome for d in replays] == ["late", "late", "duplicate"]
    assert all(d.sms is None and d.task is None for d in replays)


def test_read_older_than_the_open_case_is_late() -> None:
    _, (_, decision) = run([read("r1", T0), read("r0", T0 - SECOND)])
    assert decision == GraceDecision(outcome="late")


def test_state_of_another_key_is_refused() -> None:
    state, _ = run([read("r1", T0)])
    with pytest.raises(ValueError, match="applied to the state of"):
        apply_read(state, read("r2", T0, plate="浙G54321"), ZONE, ROUTE, POLICY)


# The event-time clock closes cases that can no longer be confirmed, then forgets the key.


def test_clock_at_deadline_plus_r_keeps_the_case_open() -> None:
    state, _ = run([read("r1", T0)])
    after, decision = advance_clock(state, T0 + G + R, POLICY)
    assert after == state
    assert decision.closed == ()


def test_clock_past_deadline_plus_r_closes_the_case_as_self_corrected() -> None:
    state, _ = run([read("r1", T0)])
    after, decision = advance_clock(state, T0 + G + R + SECOND, POLICY)
    assert decision.outcome is None
    assert decision.closed == (
        grace.ClosedCase(ids.case_id(PLATE, ZONE.zone_id, T0), "self_corrected"),
    )
    assert after is not None and after.open_case is None
    # A straggler from before the deadline is not a new case.
    _, (early,) = run([read("r2", T0 + G - SECOND)], after)
    assert early.outcome == "duplicate"
    assert early.sms is None and early.task is None


def test_confirming_read_arriving_after_the_clock_closed_the_case_still_confirms_it() -> None:
    state, _ = run([read("r1", T0)])
    swept, _ = advance_clock(state, T0 + G + R + SECOND, POLICY)
    confirmed, (late,) = run([read("r2", T0 + G + R)], swept)
    assert late.task is not None and late.late_confirmation
    assert [e.event_id for e in late.task.evidence] == ["r1", "r2"]
    assert late.task.task_id == ids.case_task_id(ids.case_id(PLATE, ZONE.zone_id, T0))
    assert late.sms is None and late.closed == ()
    # ...exactly once: the same read again, or another in the window, is a duplicate.
    _, again = run([read("r2", T0 + G + R), read("r3", T0 + G + SECOND)], confirmed)
    assert [d.outcome for d in again] == ["duplicate", "duplicate"]
    assert all(d.task is None for d in again)


def test_confirming_read_for_a_case_closed_by_a_later_read_still_confirms_it() -> None:
    # Rule 4 closed the first case when a read after deadline + R arrived first.
    state, decisions = run([read("r1", T0), read("r9", T0 + G + R + 10 * SECOND)])
    assert decisions[1].opened and decisions[1].closed[0].result == "self_corrected"
    _, (late,) = run([read("r2", T0 + G + SECOND)], state)
    assert late.task is not None
    assert [e.event_id for e in late.task.evidence] == ["r1", "r2"]
    assert late.sms is None


def test_key_is_forgotten_after_retention() -> None:
    state, _ = run([read("r1", T0), read("r2", T0 + G)])
    horizon = T0 + G
    kept, _ = advance_clock(state, horizon + POLICY.retention, POLICY)
    assert kept == state
    gone, _ = advance_clock(state, horizon + POLICY.retention + SECOND, POLICY)
    assert gone is None
    assert advance_clock(None, horizon, POLICY) == (None, GraceDecision(outcome=None))


def test_reads_beyond_retention_are_recognised_before_applying() -> None:
    clock = T0 + POLICY.retention + SECOND
    assert grace.beyond_retention(T0, clock, POLICY)
    assert not grace.beyond_retention(T0, T0 + POLICY.retention, POLICY)
    assert not grace.beyond_retention(T0, None, POLICY)


# Screening: which reads the rule applies to at all.


@pytest.mark.parametrize(
    ("plate", "confidence", "zone", "expected"),
    [
        ("浙G12345", 0.8, ZONE, "accepted"),
        ("浙G12345", 0.79, ZONE, "low_confidence"),
        ("浙G1234警", 0.99, ZONE, "exempt"),
        ("浙A88888", 0.99, ZONE, "exempt"),
        ("浙G12345", 0.99, OUTSIDE, "outside_zone"),
        ("浙G12345", 0.99, Zone("scenic", "花溪", "尖山镇", Scene.scenic, False), "outside_zone"),
    ],
)
def test_screen_plate_read(plate: str, confidence: float, zone: Zone, expected: str) -> None:
    d = detection("r1", T0, plate=plate, confidence=confidence)
    outcome = screen_plate_read(
        d, zone, min_confidence=0.8, exempt=frozenset({"浙A88888"}), tz=LOCAL
    )
    assert outcome == expected


# Keys, ids and the encoded state.


def test_one_plate_in_two_zones_is_two_cases() -> None:
    assert case_key(PLATE, ZONE.zone_id) != case_key(PLATE, OTHER_ZONE.zone_id)
    assert ids.case_id(PLATE, ZONE.zone_id, T0) != ids.case_id(PLATE, OTHER_ZONE.zone_id, T0)


def test_ids_depend_on_the_instant_not_its_offset_and_never_change() -> None:
    utc = T0.astimezone(UTC)
    case_id = ids.case_id(PLATE, ZONE.zone_id, T0)
    assert case_id == ids.case_id(PLATE, ZONE.zone_id, utc)
    # Pinned: tasks and SMS already sent carry these ids, so the scheme must not drift.
    assert case_id == "case-db53d3bf0caa8e4c0f71"
    assert ids.message_id(case_id) == "sms-39f9cdf85b70f4c456c3"
    assert ids.case_task_id(case_id) == "task-880b9d605fdafae493d2"


def test_typical_open_case_encodes_small() -> None:
    state, _ = run([read("cam-0017-20261127T100000-0001", T0)])
    assert state is not None
    raw = encode_case_state(state)
    assert len(raw) <= 300
    assert decode_case_state(raw) == state


def test_decoding_garbage_says_what_it_is() -> None:
    with pytest.raises(ValueError, match="grace case state"):
        decode_case_state(b"not json")
    with pytest.raises(ValueError, match="version"):
        decode_case_state(b'[99,"a","b",null,null]')


# Properties: order of arrival, duplicates and replays.

MAX_OFFSET_S = 3 * 3600
seconds = st.integers(min_value=0, max_value=MAX_OFFSET_S)
plates = st.sampled_from(["浙G12345", "浙GD12345", "浙A1B2C3"])


def _effects(
    decisions: list[GraceDecision],
) -> tuple[Counter[str], Counter[tuple[str, tuple[str, ...]]]]:
    sms = Counter(d.sms.case_id for d in decisions if d.sms is not None)
    tasks = Counter(
        (d.task.task_id, tuple(e.event_id for e in d.task.evidence))
        for d in decisions
        if d.task is not None
    )
    return sms, tasks


def _reference(
    plate: str, times: list[int]
) -> tuple[Counter[str], Counter[tuple[str, tuple[str, ...]]]]:
    """CONTRACT §5 written out for distinct reads in event-time order, one case at a time."""
    sms: Counter[str] = Counter()
    tasks: Counter[tuple[str, tuple[str, ...]]] = Counter()
    opened: int | None = None
    ticket_day = None
    g, r = int(G.total_seconds()), int(R.total_seconds())
    for t in sorted(times):
        day = (T0 + timedelta(seconds=t)).astimezone(LOCAL).date()
        if day == ticket_day:  # rule 7: nothing more that local day
            continue
        if opened is not None and t < opened + g:
            continue
        if opened is not None and t <= opened + g + r:
            case_id = ids.case_id(plate, ZONE.zone_id, T0 + timedelta(seconds=opened))
            tasks[(ids.case_task_id(case_id), (_eid(plate, opened), _eid(plate, t)))] += 1
            opened, ticket_day = None, day
            continue
        opened = t
        sms[ids.case_id(plate, ZONE.zone_id, T0 + timedelta(seconds=t))] += 1
    return sms, tasks


def _eid(plate: str, offset_s: int) -> str:
    return f"{plate}-{offset_s}"


def _read_at(plate: str, offset_s: int) -> PlateRead:
    return read(_eid(plate, offset_s), T0 + timedelta(seconds=offset_s), plate=plate)


def _process(deliveries: list[tuple[str, int]]) -> list[GraceDecision]:
    """Apply deliveries as the agent would: one state per key, stored as bytes between reads."""
    table: dict[str, bytes] = {}
    decisions = []
    for plate, offset_s in deliveries:
        key = case_key(plate, ZONE.zone_id)
        raw = table.get(key)
        state = None if raw is None else decode_case_state(raw)
        state, decision = apply_read(state, _read_at(plate, offset_s), ZONE, ROUTE, POLICY)
        if state is not None:
            table[key] = encode_case_state(state)
        decisions.append(decision)
    return decisions


@st.composite
def in_order_with_replays(draw: st.DrawFn) -> tuple[dict[str, list[int]], list[tuple[str, int]]]:
    """Several cases' distinct reads, each case's first deliveries in event-time order, keys
    interleaved at random, with replays of already delivered reads inserted anywhere."""
    chosen = draw(st.lists(plates, min_size=1, max_size=3, unique=True))
    times = {
        p: sorted(draw(st.lists(seconds, min_size=1, max_size=12, unique=True))) for p in chosen
    }
    pending = {p: list(ts) for p, ts in times.items()}
    delivered: list[tuple[str, int]] = []
    deliveries: list[tuple[str, int]] = []
    while any(pending.values()):
        replay_now: bool = draw(st.booleans())
        if delivered and replay_now:
            deliveries.append(draw(st.sampled_from(delivered)))
            continue
        plate = draw(st.sampled_from(sorted(p for p, ts in pending.items() if ts)))
        item = (plate, pending[plate].pop(0))
        delivered.append(item)
        deliveries.append(item)
    replays = draw(st.lists(st.sampled_from(delivered), max_size=10))
    return times, deliveries + replays


@settings(max_examples=300, deadline=None)
@given(in_order_with_replays())
def test_duplicates_and_replays_change_no_effect(
    case: tuple[dict[str, list[int]], list[tuple[str, int]]],
) -> None:
    times, deliveries = case
    sms, tasks = _effects(_process(deliveries))

    expected_sms: Counter[str] = Counter()
    expected_tasks: Counter[tuple[str, tuple[str, ...]]] = Counter()
    for plate, ts in times.items():
        plate_sms, plate_tasks = _reference(plate, ts)
        expected_sms += plate_sms
        expected_tasks += plate_tasks
    assert sms == expected_sms
    assert tasks == expected_tasks


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(plates, seconds), min_size=1, max_size=30).flatmap(
        lambda reads: st.permutations(reads + reads[: len(reads) // 2])
    )
)
def test_any_arrival_order_sends_at_most_one_sms_and_one_task_per_case(
    deliveries: list[tuple[str, int]],
) -> None:
    decisions = _process(deliveries)
    sms, tasks = _effects(decisions)
    assert all(n == 1 for n in sms.values())
    task_ids = Counter(task_id for task_id, _ in tasks.elements())
    assert all(n == 1 for n in task_ids.values())
    # Every task belongs to a case whose driver was warned.
    warned = {ids.case_task_id(case_id) for case_id in sms}
    assert set(task_ids) <= warned


@settings(max_examples=200, deadline=None)
@given(
    plate=plates,
    zone_id=st.text(min_size=1, max_size=40),
    horizon=st.none() | event_times(st.just(UTC)),
    first_seen=st.none() | event_times(st.sampled_from([UTC, T0.tzinfo])),
    grace_minutes=st.integers(min_value=0, max_value=240),
    sms_status=st.sampled_from(["pending", "sent", "failed"]),
    confidence=st.none() | st.floats(min_value=0, max_value=1),
    route_id=st.none() | st.text(min_size=1, max_size=20),
    media=st.lists(st.just("https://evidence.example/a.jpg"), max_size=3),
)
def test_encoded_state_round_trips(
    plate: str,
    zone_id: str,
    horizon: datetime | None,
    first_seen: datetime | None,
    grace_minutes: int,
    sms_status: grace.SmsState,
    confidence: float | None,
    route_id: str | None,
    media: list[str],
) -> None:
    open_case = None
    if first_seen is not None:
        opener = read("r1", first_seen).evidence.model_copy(
            update={"confidence": confidence, "media": media}
        )
        opener = opener.model_copy(
            update={"source": opener.source.model_copy(update={"route_id": route_id})}
        )
        open_case = grace.OpenCase(
            first_seen=first_seen,
            deadline=first_seen + timedelta(minutes=grace_minutes),
            opener=opener,
            sms_status=sms_status,
        )
    state = CaseState(plate=plate, zone_id=zone_id, open_case=open_case, horizon=horizon)

    decoded = decode_case_state(encode_case_state(state))

    assert decoded == state
    if open_case is not None:
        assert decoded.open_case is not None
        assert decoded.open_case.first_seen.utcoffset() == first_seen.utcoffset()  # type: ignore[union-attr]
        assert decoded.open_case.opener.model_dump() == open_case.opener.model_dump()
