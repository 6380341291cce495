"""CONTRACT §5 rules 6 and 7: restricted hours and one ticket a day, on the local calendar."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime, time, timedelta

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from patrol.domain.grace import (
    CaseState,
    GraceDecision,
    GracePolicy,
    PlateRead,
    advance_clock,
    apply_read,
    decode_case_state,
    encode_case_state,
    next_due,
    screen_plate_read,
)
from patrol.domain.zones import RestrictedHours, Scene, Zone

from .test_grace import LOCAL, POLICY, ROUTE, ZONE, detection

G = timedelta(minutes=10)
R = timedelta(minutes=5)
SECOND = timedelta(seconds=1)
DAY = datetime(2026, 11, 27, tzinfo=LOCAL)


def hhmm(text: str) -> int:
    hours, minutes = text.split(":")
    return int(hours) * 3600 + int(minutes) * 60


def hours_zone(*intervals: str) -> Zone:
    parsed = tuple(RestrictedHours(hhmm(a), hhmm(b)) for a, b in (i.split("-") for i in intervals))
    return Zone(
        "anwen-school-gate", "安文小学校门口", "安文街道", Scene.urban_road, True, 10, parsed
    )


def at(clock: str, day: int = 0) -> datetime:
    hours, minutes = clock.split(":")
    return DAY + timedelta(days=day, hours=int(hours), minutes=int(minutes))


def screen(zone: Zone, moment: datetime) -> str:
    return screen_plate_read(
        detection("r", moment), zone, min_confidence=0.8, exempt=frozenset(), tz=LOCAL
    )


def read(event_id: str, moment: datetime) -> PlateRead:
    return PlateRead.of(detection(event_id, moment))


def apply_all(
    moments: list[datetime], state: CaseState | None = None, zone: Zone = ZONE
) -> tuple[CaseState | None, list[GraceDecision]]:
    """Screen, then apply, as the intake and the grace agent do; screened-out reads give None."""
    decisions = []
    for n, moment in enumerate(moments):
        if screen(zone, moment) != "accepted":
            decisions.append(GraceDecision(outcome=None))
            continue
        state, decision = apply_read(
            state, read(f"r{n}-{moment:%d%H%M%S}", moment), zone, ROUTE, POLICY
        )
        decisions.append(decision)
    return state, decisions


# Rule 6 — restricted hours.


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (at("06:59") + 59 * SECOND, "outside_hours"),
        (at("07:00"), "accepted"),  # the start minute is restricted
        (at("08:59") + 59 * SECOND, "accepted"),
        (at("09:00"), "outside_hours"),  # the end minute is not
        (at("12:00"), "outside_hours"),
        (at("16:30"), "accepted"),
        (at("18:59"), "accepted"),
        (at("19:00"), "outside_hours"),
    ],
)
def test_reads_are_under_the_rule_only_within_restricted_hours(
    moment: datetime, expected: str
) -> None:
    zone = hours_zone("07:00-09:00", "16:30-19:00")
    assert screen(zone, moment) == expected


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (at("21:59") + 59 * SECOND, "outside_hours"),
        (at("22:00"), "accepted"),
        (at("23:59") + 59 * SECOND, "accepted"),
        (at("00:00", day=1), "accepted"),
        (at("05:59", day=1) + 59 * SECOND, "accepted"),
        (at("06:00", day=1), "outside_hours"),
        (at("12:00"), "outside_hours"),
    ],
)
def test_an_interval_may_cross_midnight(moment: datetime, expected: str) -> None:
    assert screen(hours_zone("22:00-06:00"), moment) == expected


def test_hours_are_local_time_whatever_offset_the_camera_sends() -> None:
    zone = hours_zone("07:00-09:00")
    # 23:30 UTC is 07:30 the next morning in Pan'an
    assert screen(zone, datetime(2026, 11, 26, 23, 30, tzinfo=UTC)) == "accepted"
    assert screen(zone, datetime(2026, 11, 27, 7, 30, tzinfo=UTC)) == "outside_hours"


def test_a_zone_without_hours_is_restricted_all_day_and_no_parking_false_never() -> None:
    assert all(screen(ZONE, at(f"{h:02d}:00")) == "accepted" for h in range(24))
    allowed = Zone("yard", "院子", "安文街道", Scene.residential, False, 10)
    assert screen(allowed, at("08:00")) == "outside_zone"


def test_a_read_at_noon_in_a_morning_zone_opens_nothing() -> None:
    state, (decision,) = apply_all([at("12:00")], zone=hours_zone("07:00-09:00"))
    assert state is None and decision.sms is None and decision.task is None


def test_a_case_opened_in_the_last_minutes_can_only_self_correct() -> None:
    zone = hours_zone("07:00-09:00")
    state, decisions = apply_all([at("08:55"), at("09:06"), at("09:08")], zone=zone)
    assert decisions[0].opened and decisions[0].sms is not None
    assert [d.outcome for d in decisions[1:]] == [None, None]  # outside the hours: not applied
    assert state is not None and state.open_case is not None
    state, closing = advance_clock(state, at("09:10") + SECOND, POLICY)
    assert [c.result for c in closing.closed] == ["self_corrected"]
    assert closing.task is None


def test_reads_outside_the_hours_do_not_confirm_a_case_opened_within_them() -> None:
    zone = hours_zone("16:30-19:00")
    _, decisions = apply_all([at("18:52"), at("19:02")], zone=zone)
    assert decisions[1].task is None and decisions[1].outcome is None


# Rule 7 — one ticket a day.


def test_a_car_read_every_3_minutes_for_an_hour_gets_one_sms_and_one_task() -> None:
    moments = [at("10:00") + timedelta(minutes=3 * n) for n in range(21)]
    state, decisions = apply_all(moments)
    assert sum(d.sms is not None for d in decisions) == 1
    assert sum(d.task is not None for d in decisions) == 1
    outcomes = Counter(d.outcome for d in decisions)
    assert outcomes == {"accepted": 5, "already_ticketed": 16}  # 10:00 .. 10:12, then capped
    # the next local day the rule applies afresh
    state, next_day = apply_all([at("08:00", day=1), at("08:11", day=1)], state)
    assert next_day[0].sms is not None and next_day[1].task is not None


def test_the_day_is_the_local_day_not_the_utc_day() -> None:
    # Ticketed 23:50 local (15:50 UTC); 00:03 local is 16:03 UTC, the same UTC day.
    state, decisions = apply_all([at("23:38"), at("23:50"), at("23:58")])
    assert decisions[1].task is not None
    assert decisions[2].outcome == "already_ticketed"
    state, (after_midnight,) = apply_all([at("00:03", day=1)], state)
    assert after_midnight.opened and after_midnight.sms is not None


def test_a_case_confirmed_after_midnight_caps_the_new_day() -> None:
    # opened 23:55, confirmed 00:06: the ticket's day is the confirming read's day
    state, decisions = apply_all([at("23:55"), at("00:06", day=1), at("09:00", day=1)])
    assert decisions[1].task is not None
    assert decisions[2].outcome == "already_ticketed"
    assert state is not None and state.ticketed_on == at("00:00", day=1).date()


def test_the_cap_survives_a_restart_and_outlives_a_short_retention() -> None:
    short = GracePolicy(recheck=R, retention=timedelta(hours=1), tz=LOCAL)
    state, _ = apply_all([at("10:00"), at("10:12")])
    assert state is not None
    restored = decode_case_state(encode_case_state(state))
    assert restored == state
    # an hour of retention would forget the key at 11:12; the ticket's day holds it to midnight
    kept, _ = advance_clock(restored, at("23:59"), short)
    assert kept is not None
    assert next_due(kept, short) == at("00:00", day=1)
    _, (late,) = apply_all([at("23:59")], kept)
    assert late.outcome == "already_ticketed"
    forgotten, _ = advance_clock(kept, at("00:00", day=1) + SECOND, short)
    assert forgotten is None


def test_a_version_1_state_still_decodes() -> None:
    raw = b'[1,"\xe6\xb5\x99G12345","anwen-wancang-rd",1795788600000000,null]'
    state = decode_case_state(raw)
    assert state.ticketed_on is None and state.horizon is not None


def test_a_late_confirmation_caps_a_case_opened_the_same_day() -> None:
    # 10:00 opens A; 10:30 closes A and opens B; A's confirming read (10:12) arrives late and
    # tickets A: B, the same vehicle on the same day, can no longer be ticketed.
    _, decisions = apply_all([at("10:00"), at("10:30"), at("10:12"), at("10:41")])
    assert decisions[2].task is not None and decisions[2].outcome == "accepted"
    assert decisions[3].task is None and decisions[3].outcome == "already_ticketed"


# Properties.

# Whole minutes over six hours, dense enough that a car is often read on after its ticket.
offsets = st.integers(min_value=0, max_value=6 * 60).map(lambda minute: minute * 60)
EVENING = at("21:00")  # six hours from here cross the local midnight


def _run_deliveries(
    deliveries: list[int], state: CaseState | None = None
) -> tuple[CaseState | None, list[GraceDecision]]:
    decisions = []
    for offset in deliveries:
        moment = EVENING + timedelta(seconds=offset)
        raw = None if state is None else encode_case_state(state)
        restored = None if raw is None else decode_case_state(raw)
        state, decision = apply_read(restored, read(f"e{offset}", moment), ZONE, ROUTE, POLICY)
        decisions.append(decision)
    return state, decisions


def _per_day(decisions: list[GraceDecision]) -> tuple[Counter[object], int]:
    tasks = Counter(d.task.created_at.astimezone(LOCAL).date() for d in decisions if d.task)
    return tasks, sum(d.sms is not None for d in decisions)


@settings(max_examples=300, deadline=None)
@given(st.lists(offsets, min_size=1, max_size=60, unique=True).flatmap(st.permutations))
@example([0, 12 * 60, 30 * 60, 42 * 60])  # two would-be tickets in one evening
def test_any_arrival_order_gives_at_most_one_ticket_per_local_day(deliveries: list[int]) -> None:
    _, decisions = _run_deliveries(deliveries)
    tasks, _ = _per_day(decisions)
    assert all(n == 1 for n in tasks.values())


@settings(max_examples=300, deadline=None)
@given(
    st.lists(offsets, min_size=1, max_size=60, unique=True),
    st.randoms(use_true_random=False),
)
def test_replaying_a_day_with_a_ticket_in_any_order_sends_nothing_more(
    offsets_: list[int], rng: random.Random
) -> None:
    state, first = _run_deliveries(sorted(offsets_))
    replay = list(offsets_)
    rng.shuffle(replay)
    _, again = _run_deliveries(replay, state)
    assert all(d.sms is None and d.task is None for d in again)
    tasks, _ = _per_day(first)
    assert all(n == 1 for n in tasks.values())
    # every ticket's driver was warned, once
    warned = Counter(d.sms.message_id for d in first if d.sms)
    assert all(n == 1 for n in warned.values())
    assert {d.task.sms.message_id for d in first if d.task and d.task.sms} <= set(warned)


def test_day_end_is_local_midnight() -> None:
    assert POLICY.day_end(at("00:00").date()) == at("00:00", day=1)
    assert POLICY.day_end(at("00:00").date()).astimezone(UTC).time() == time(16, 0)
