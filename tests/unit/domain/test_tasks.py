"""The closed loop's rule (CONTRACT §10): transitions, lamps, verification, replays."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from patrol.domain import tasks
from patrol.domain.models import (
    DeadLetterReason,
    EnforcementTask,
    FeedbackStatus,
    Lamp,
    Location,
    Priority,
    StatusCause,
    TaskFeedback,
    TaskState,
    TaskStatus,
    TaskType,
)

T0 = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)
LIMIT = timedelta(hours=2)
POLICY = tasks.LoopPolicy(verify_window=timedelta(minutes=60), max_extensions=1)


def make_task(
    task_type: TaskType = TaskType.open_burning, limit: timedelta = LIMIT
) -> EnforcementTask:
    return EnforcementTask(
        task_id=f"{task_type.value}-0001",
        task_type=task_type,
        created_at=T0,
        priority=Priority.high,
        due_by=T0 + limit,
        department="ecology_environment",
        township="安文街道",
        zone_id="z1",
        location=Location(lat=29.05, lon=120.45),
        plate="浙G12345" if task_type is TaskType.illegal_parking else None,
        evidence=[],
        sms=None,
        summary="s",
    )


def feedback(
    status: str, minutes: float, fid: str | None = None, extend_until: datetime | None = None
) -> TaskFeedback:
    return TaskFeedback(
        schema_version=1,
        feedback_id=fid or f"fb-{status}-{minutes}",
        task_id="open_burning-0001",
        status=FeedbackStatus(status),
        at=T0 + timedelta(minutes=minutes),
        extend_until=extend_until,
    )


def opened(task_type: TaskType = TaskType.open_burning) -> tasks.TaskRecord:
    state, decision = tasks.open_task(None, make_task(task_type))
    assert [r.status for r in decision.statuses] == [TaskState.dispatched]
    return state


def apply(state: tasks.TaskRecord, fb: TaskFeedback) -> tuple[tasks.TaskRecord, tasks.LoopDecision]:
    new, decision = tasks.apply_feedback(state, fb, POLICY)
    assert new is not None
    return new, decision


def test_a_dispatched_task_gets_one_green_dispatched_record_and_a_second_emit_gives_none() -> None:
    state, decision = tasks.open_task(None, make_task())
    (record,) = decision.statuses
    assert (record.status, record.cause, record.lamp) == (
        TaskState.dispatched,
        StatusCause.dispatched,
        Lamp.green,
    )
    assert record.at == T0 and record.due_by == T0 + LIMIT
    again, replay = tasks.open_task(state, make_task())
    assert again is state and replay.statuses == () and replay.duplicate


def test_accepted_arrived_resolved_each_give_one_feedback_record_with_its_id() -> None:
    state = opened()
    seen = []
    for status, minute in (("accepted", 5), ("arrived", 20), ("resolved", 40)):
        state, decision = apply(state, feedback(status, minute))
        (record,) = decision.statuses
        assert record.cause is StatusCause.feedback
        assert record.feedback_id == f"fb-{status}-{minute}"
        assert record.lamp is Lamp.green
        seen.append(record.status)
    assert seen == [TaskState.accepted, TaskState.arrived, TaskState.resolved]


def test_a_forward_step_may_skip_straight_to_resolved() -> None:
    state, decision = apply(opened(), feedback("resolved", 3))
    assert decision.rejection is None and state.status is TaskState.resolved


@pytest.mark.parametrize(
    ("first", "then"),
    [("resolved", "accepted"), ("arrived", "accepted"), ("accepted", "accepted")],
)
def test_a_step_back_is_an_invalid_transition_and_changes_nothing(first: str, then: str) -> None:
    state, _ = apply(opened(), feedback(first, 5))
    after, decision = apply(state, feedback(then, 10))
    assert decision.rejection is not None
    assert decision.rejection.reason is DeadLetterReason.invalid_transition
    assert decision.statuses == ()
    # Nothing changes but that its feedback_id is known: a replay of it changes nothing.
    ids = (f"fb-{first}-5", f"fb-{then}-10")
    assert after == state.model_copy(update={"feedback_ids": ids, "refused": 1})


def test_feedback_for_a_task_never_dispatched_is_an_unknown_task() -> None:
    state, decision = tasks.apply_feedback(None, feedback("accepted", 1), POLICY)
    assert state is None
    assert decision.rejection is not None
    assert decision.rejection.reason is DeadLetterReason.unknown_task


def test_a_repeated_feedback_id_changes_nothing_and_is_not_a_dead_letter() -> None:
    state, _ = apply(opened(), feedback("accepted", 5, fid="fb-1"))
    again, decision = apply(state, feedback("accepted", 5, fid="fb-1"))
    assert again is state and decision.statuses == () and decision.rejection is None
    assert decision.duplicate


def test_an_extension_moves_due_by_and_a_second_one_is_refused() -> None:
    state = opened()
    new_due = T0 + LIMIT + timedelta(hours=1)
    state, decision = apply(state, feedback("extended", 30, extend_until=new_due))
    (record,) = decision.statuses
    assert record.status is TaskState.extended and record.due_by == new_due
    second, refused = apply(state, feedback("extended", 40, extend_until=new_due + LIMIT))
    assert refused.rejection is not None
    assert refused.rejection.reason is DeadLetterReason.invalid_transition
    assert "PATROL_MAX_EXTENSIONS" in refused.rejection.detail
    ids = ("fb-extended-30", "fb-extended-40")
    assert second == state.model_copy(update={"feedback_ids": ids, "refused": 1})
    assert refused.statuses == ()


def test_an_extension_not_later_than_due_by_is_refused() -> None:
    _, decision = apply(opened(), feedback("extended", 30, extend_until=T0 + LIMIT))
    assert decision.rejection is not None
    assert "not later" in decision.rejection.detail


def test_an_extension_of_a_red_task_turns_it_back_by_the_new_due_time() -> None:
    state, _ = tasks.advance_clock(opened(), T0 + LIMIT)
    assert state.lamp is Lamp.red
    state, decision = apply(
        state, feedback("extended", 121, extend_until=T0 + LIMIT + timedelta(hours=10))
    )
    assert decision.statuses[-1].lamp is Lamp.green


def test_lamps_turn_yellow_at_due_minus_a_fifth_and_red_at_due_not_a_second_before() -> None:
    state = opened()
    yellow_at = T0 + LIMIT - LIMIT / 5
    state, decision = tasks.advance_clock(state, yellow_at - timedelta(seconds=1))
    assert decision.statuses == () and state.lamp is Lamp.green
    state, decision = tasks.advance_clock(state, yellow_at)
    (record,) = decision.statuses
    assert (record.lamp, record.cause, record.at) == (Lamp.yellow, StatusCause.clock, yellow_at)
    assert record.status is TaskState.dispatched
    state, decision = tasks.advance_clock(state, T0 + LIMIT - timedelta(seconds=1))
    assert decision.statuses == ()
    state, decision = tasks.advance_clock(state, T0 + LIMIT)
    (record,) = decision.statuses
    assert (record.lamp, record.at) == (Lamp.red, T0 + LIMIT)
    assert tasks.next_due(state) is None


def test_one_clock_step_past_both_lamp_times_gives_both_records_at_their_own_times() -> None:
    _, decision = tasks.advance_clock(opened(), T0 + 10 * LIMIT)
    assert [(r.lamp, r.at) for r in decision.statuses] == [
        (Lamp.yellow, T0 + LIMIT - LIMIT / 5),
        (Lamp.red, T0 + LIMIT),
    ]


def test_a_clock_record_carries_the_tasks_current_status() -> None:
    state, _ = apply(opened(), feedback("accepted", 5))
    _, decision = tasks.advance_clock(state, T0 + LIMIT)
    assert {r.status for r in decision.statuses} == {TaskState.accepted}


def test_a_resolved_task_keeps_its_lamp() -> None:
    state, _ = apply(opened(), feedback("resolved", 5))
    after, decision = tasks.advance_clock(state, T0 + 10 * LIMIT)
    assert decision.statuses == () and after.lamp is Lamp.green


def test_a_feedback_steps_the_lamps_to_its_own_time_first() -> None:
    _, decision = apply(opened(), feedback("resolved", 110))
    assert [(r.lamp, r.cause) for r in decision.statuses] == [
        (Lamp.yellow, StatusCause.clock),
        (Lamp.yellow, StatusCause.feedback),
    ]


def test_a_resolved_hazard_is_watched_for_the_verify_window() -> None:
    state, decision = apply(opened(), feedback("resolved", 30))
    assert decision.watch is not None
    assert decision.watch.until == T0 + timedelta(minutes=90)
    assert (decision.watch.lat, decision.watch.lon) == (29.05, 120.45)
    closed, verified = tasks.verified(state, decision.watch.until)
    assert closed is not None and closed.status is TaskState.closed
    (record,) = verified.statuses
    assert (record.status, record.cause, record.at) == (
        TaskState.closed,
        StatusCause.verified,
        T0 + timedelta(minutes=90),
    )
    assert verified.closed_on_time is True


def test_a_redetected_hazard_reopens_with_a_new_due_time_and_a_green_lamp() -> None:
    state, _ = tasks.advance_clock(opened(), T0 + LIMIT - LIMIT / 5)
    state, _ = apply(state, feedback("resolved", 100))
    seen_at = T0 + timedelta(minutes=120)
    reopened, decision = tasks.redetected(state, "ev-9", seen_at)
    (record,) = decision.statuses
    assert (record.status, record.cause, record.event_id, record.lamp) == (
        TaskState.reopened,
        StatusCause.redetected,
        "ev-9",
        Lamp.green,
    )
    assert record.due_by == seen_at + LIMIT
    assert reopened is not None
    again, decision = tasks.apply_feedback(reopened, feedback("accepted", 125), POLICY)
    assert decision.rejection is None and again is not None
    assert again.status is TaskState.accepted


def test_a_watch_outcome_for_a_task_no_longer_watched_gives_nothing() -> None:
    state, _ = apply(opened(), feedback("resolved", 30))
    closed, _ = tasks.verified(state, T0 + timedelta(minutes=90))
    assert tasks.redetected(closed, "ev", T0 + timedelta(minutes=91))[1].statuses == ()
    assert tasks.verified(closed, T0 + timedelta(minutes=91))[1].statuses == ()


def test_a_resolved_parking_task_closes_at_once_as_verified() -> None:
    _, decision = apply(opened(TaskType.illegal_parking), feedback("resolved", 30))
    assert [(r.status, r.cause) for r in decision.statuses] == [
        (TaskState.resolved, StatusCause.feedback),
        (TaskState.closed, StatusCause.verified),
    ]
    assert decision.watch is None and decision.closed_on_time is True


def test_an_unresolvable_task_closes_at_once() -> None:
    state, decision = apply(opened(), feedback("unresolvable", 30))
    # One record for the feedback (§10 rule 2), then the closing, as a resolved parking task's.
    assert [(r.status, r.cause, r.feedback_id) for r in decision.statuses] == [
        (TaskState.unresolvable, StatusCause.feedback, "fb-unresolvable-30"),
        (TaskState.closed, StatusCause.verified, None),
    ]
    assert decision.closed_on_time is True
    _, after = apply(state, feedback("accepted", 40))
    assert after.rejection is not None and "closed" in after.rejection.detail


def test_a_returned_task_starts_over_and_may_be_accepted_again() -> None:
    state, _ = apply(opened(), feedback("accepted", 5))
    state, decision = apply(state, feedback("returned", 10))
    assert decision.statuses[-1].status is TaskState.returned
    state, decision = apply(state, feedback("accepted", 15))
    assert decision.rejection is None
    _, twice = apply(state, feedback("returned", 20, fid="r2"))
    assert twice.rejection is None


@pytest.mark.parametrize("reset", ["returned", "redetected"])
def test_a_refused_feedback_replayed_after_the_task_started_over_changes_nothing(
    reset: str,
) -> None:
    state, _ = apply(opened(), feedback("resolved", 30, fid="fb-15"))
    state, refused = apply(state, feedback("accepted", 31, fid="fb-16"))  # a step back
    assert refused.rejection is not None
    if reset == "returned":
        state, _ = apply(opened(), feedback("arrived", 30, fid="fb-15"))
        state, refused = apply(state, feedback("accepted", 31, fid="fb-16"))
        assert refused.rejection is not None
        state, _ = apply(state, feedback("returned", 35, fid="fb-17"))
    else:
        reopened, _ = tasks.redetected(state, "ev-9", T0 + timedelta(minutes=40))
        assert reopened is not None and reopened.status is TaskState.reopened
        state = reopened
    # Now `accepted` would be a step forward, but fb-16 was answered already (with a dead letter).
    again, replayed = apply(state, feedback("accepted", 31, fid="fb-16"))
    assert replayed.duplicate and replayed.statuses == () and replayed.rejection is None
    assert again is state


def test_a_closed_task_keeps_no_refused_id_and_an_open_one_keeps_a_bounded_number() -> None:
    closed, _ = apply(opened(), feedback("unresolvable", 30))
    after, refused = apply(closed, feedback("accepted", 40))
    assert refused.rejection is not None and after is closed  # it never opens again

    state, _ = apply(opened(), feedback("arrived", 5))
    for n in range(tasks.MAX_REFUSED_IDS + 3):
        state, refused = apply(state, feedback("accepted", 6, fid=f"retry-{n}"))
        assert refused.rejection is not None
    assert state.refused == tasks.MAX_REFUSED_IDS
    assert len(state.feedback_ids) == 1 + tasks.MAX_REFUSED_IDS


def test_a_state_survives_encoding() -> None:
    state, _ = apply(opened(), feedback("accepted", 5))
    assert tasks.decode_task(tasks.encode_task(state)) == state


# --- any interleaving of feedback with clock steps gives the same records -------------------

STEPS = ("accepted", "arrived", "resolved")


@st.composite
def scripts(draw: st.DrawFn) -> tuple[list[TaskFeedback], list[datetime]]:
    """Feedback in event-time order, and clock times (the clock never passes a later feedback
    before it arrives: it is the latest detection time, and feedback is not late)."""
    count = draw(st.integers(0, 3))
    minutes = sorted(draw(st.lists(st.integers(0, 300), min_size=count, max_size=count)))
    fbs = [feedback(STEPS[i], m, fid=f"f{i}") for i, m in enumerate(minutes)]
    clocks = sorted(draw(st.lists(st.integers(0, 400), max_size=6)))
    return fbs, [T0 + timedelta(minutes=c) for c in clocks]


def run(fbs: list[TaskFeedback], clocks: list[datetime], replay: bool) -> list[TaskStatus]:
    state, decision = tasks.open_task(None, make_task())
    records = list(decision.statuses)
    events: list[tuple[datetime, int, object]] = [(f.at, 1, f) for f in fbs]
    events += [(c, 0, c) for c in clocks]
    for _, _, event in sorted(events, key=lambda e: (e[0], e[1])):
        for _ in range(2 if replay else 1):
            if isinstance(event, TaskFeedback):
                new, decision = tasks.apply_feedback(state, event, POLICY)
                assert new is not None
                state = new
            else:
                assert isinstance(event, datetime)
                state, decision = tasks.advance_clock(state, event)
            records.extend(decision.statuses)
    return records


@settings(max_examples=200, deadline=None)
@given(scripts(), st.booleans())
def test_records_depend_on_event_times_not_on_clock_steps_or_replays(
    script: tuple[list[TaskFeedback], list[datetime]], replay: bool
) -> None:
    fbs, clocks = script
    # The clock moved only where the feedback lay (no clock steps at all) must give the same
    # records as any set of clock steps up to the last feedback, and a replay adds nothing.
    last = fbs[-1].at if fbs else T0
    bounded = [c for c in clocks if c <= last]
    assert run(fbs, bounded, replay) == run(fbs, [], False)


def test_a_closed_task_is_forgotten_exactly_the_retention_after_it_closed() -> None:
    policy = tasks.LoopPolicy(
        verify_window=timedelta(minutes=60), max_extensions=1, retention=timedelta(hours=24)
    )
    # each way of closing stamps when: 挂账, a resolved parking task, a verified hazard task
    unresolvable, _ = tasks.apply_feedback(opened(), feedback("unresolvable", 30), policy)
    parking, _ = tasks.apply_feedback(
        opened(TaskType.illegal_parking), feedback("resolved", 40), policy
    )
    resolved, decision = tasks.apply_feedback(opened(), feedback("resolved", 50), policy)
    assert decision.watch is not None
    verified, _ = tasks.verified(resolved, decision.watch.until)
    for state, closed_at in (
        (unresolvable, T0 + timedelta(minutes=30)),
        (parking, T0 + timedelta(minutes=40)),
        (verified, decision.watch.until),
    ):
        assert state is not None and state.closed_at == closed_at
        forget = closed_at + timedelta(hours=24)
        assert tasks.forget_at(state, policy) == tasks.next_step(state, policy) == forget
        assert not tasks.forgotten(state, forget - timedelta(seconds=1), policy)
        assert tasks.forgotten(state, forget, policy)
    # an open task is never forgotten; its next step is its lamp
    state = opened()
    assert tasks.forget_at(state, policy) is None
    assert tasks.next_step(state, policy) == state.yellow_at
    assert not tasks.forgotten(state, T0 + timedelta(days=30), policy)


def test_a_task_closed_before_closed_at_was_kept_counts_from_its_last_event_time() -> None:
    state, _ = apply(opened(), feedback("unresolvable", 30))
    legacy = state.model_copy(update={"closed_at": None})  # as an earlier release stored it
    raw = tasks.encode_task(legacy).replace(b',"closed_at":null', b"")
    assert tasks.decode_task(raw) == legacy
    assert tasks.forget_at(legacy, POLICY) == T0 + POLICY.retention  # its start, nothing later


def test_opening_a_task_older_than_the_retention_is_a_replay() -> None:
    task = make_task()
    assert not tasks.beyond_retention(task, None, POLICY)
    assert not tasks.beyond_retention(task, T0 + POLICY.retention, POLICY)
    assert tasks.beyond_retention(task, T0 + POLICY.retention + timedelta(seconds=1), POLICY)
