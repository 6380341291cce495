"""The simulated dispatch system: each task's answers are seeded, valid and realistic."""

from __future__ import annotations

import random
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest
from click.testing import CliRunner

from patrol.devtools.simulate.cli import simulate_group
from patrol.devtools.simulate.dispatcher import FeedbackSummary, simulation_clock, take
from patrol.devtools.simulate.feedback import (
    FeedbackMix,
    FeedbackSchedule,
    ScriptedFeedback,
    scripted,
    task_script,
)
from patrol.domain.models import EnforcementTask, FeedbackStatus, Location, TaskFeedback
from patrol.settings import load_settings

CST = timezone(timedelta(hours=8))
T0 = datetime(2026, 11, 27, 10, 0, tzinfo=CST)
LIMITS = {"illegal_parking": 120, "roadside_vending": 120, "open_burning": 30}


def task(n: int, task_type: str = "roadside_vending", minutes: float = 0) -> EnforcementTask:
    created = T0 + timedelta(minutes=minutes)
    return EnforcementTask(
        task_id=f"{task_type}-{n:04d}",
        task_type=task_type,
        created_at=created,
        priority="normal",
        due_by=created + timedelta(minutes=LIMITS[task_type]),
        department="comprehensive_enforcement",
        township="安文街道",
        zone_id="anwen-market",
        location=Location(lat=29.056, lon=120.4425),
        plate="浙G12345" if task_type == "illegal_parking" else None,
        evidence=[],
        sms=None,
        summary="…",
    )


def many(count: int = 600) -> list[EnforcementTask]:
    kinds = ("illegal_parking", "roadside_vending", "open_burning")
    return [task(n, kinds[n % 3], minutes=n * 0.7) for n in range(count)]


def records(answers: list[ScriptedFeedback]) -> list[tuple[datetime, bytes, bytes]]:
    return [(a.at, a.key, a.value) for a in answers]


def test_the_same_seed_and_tasks_give_the_same_feedback_in_any_order() -> None:
    tasks = many(200)
    shuffled = list(tasks)
    random.Random(3).shuffle(shuffled)
    assert records(scripted(tasks, seed=5)) == records(scripted(shuffled, seed=5))
    assert records(scripted(tasks, seed=5)) != records(scripted(tasks, seed=6))


def test_a_tasks_script_does_not_depend_on_the_other_tasks() -> None:
    seventh = many(30)[7]
    alone = task_script(seventh, seed=5).steps
    among = [a for a in scripted(many(30), seed=5) if a.task_id == seventh.task_id]
    assert alone and [a.value for a in alone] == [a.value for a in among]


def test_reading_a_task_twice_schedules_it_once() -> None:
    schedule = FeedbackSchedule(seed=1)
    assert schedule.add_task(task(1)) is not None
    pending = schedule.pending
    assert schedule.add_task(task(1)) is None
    assert schedule.pending == pending


def test_every_answer_is_valid_feedback_with_stable_ids_in_time_order() -> None:
    answers = scripted(many(), seed=11)
    ids = [a.feedback_id for a in answers]
    assert len(ids) == len(set(ids))
    by_task: dict[str, list[TaskFeedback]] = {}
    for answer in answers:
        feedback = TaskFeedback.model_validate_json(answer.value)
        assert answer.key.decode() == feedback.task_id == answer.task_id
        assert feedback.feedback_id == answer.feedback_id
        assert feedback.at == answer.at and feedback.at.utcoffset() == timedelta(hours=8)
        assert feedback.team and feedback.note
        by_task.setdefault(feedback.task_id, []).append(feedback)
    tasks = {t.task_id: t for t in many()}
    for task_id, steps in by_task.items():
        times = [f.at for f in steps]
        assert times == sorted(times) and len(set(times)) == len(times)
        assert times[0] > tasks[task_id].created_at
        extensions = [f for f in steps if f.status is FeedbackStatus.extended]
        assert len(extensions) <= 1  # PATROL_MAX_EXTENSIONS
        for f in extensions:
            assert f.extend_until is not None and f.extend_until > tasks[task_id].due_by


def test_most_tasks_are_accepted_within_minutes_and_resolved_in_time() -> None:
    tasks = many()
    scripts = [task_script(t, seed=4) for t in tasks]
    outcomes = Counter(s.outcome for s in scripts)
    share = {name: n / len(tasks) for name, n in outcomes.items()}
    assert 0.6 < share["on_time"] < 0.8
    assert 0.07 < share["late"] < 0.18
    for few in ("extended", "returned", "unresolvable", "silent"):
        assert 0 < share[few] < 0.12, few
    accepted_in = [
        (s.steps[0].at - t.created_at).total_seconds() / 60
        for s, t in zip(scripts, tasks, strict=True)
        if s.steps
    ]
    assert sorted(accepted_in)[len(accepted_in) // 2] < 8  # median: minutes, not hours
    resolved_in_time = 0
    for script, t in zip(scripts, tasks, strict=True):
        resolved = [s for s in script.steps if s.status is FeedbackStatus.resolved]
        if script.outcome == "on_time":
            assert resolved and resolved[-1].at <= t.due_by
            resolved_in_time += 1
        if script.outcome == "late":
            assert resolved and resolved[-1].at > t.due_by
        if script.outcome == "silent":
            assert script.steps == ()
        if script.outcome == "returned":
            statuses = [s.status for s in script.steps]
            assert statuses[:2] == [FeedbackStatus.accepted, FeedbackStatus.returned]
            assert statuses[-1] is FeedbackStatus.resolved  # another team took it over
    assert resolved_in_time > len(tasks) / 2


def test_some_on_time_tasks_are_resolved_in_the_yellow_fifth() -> None:
    yellow = 0
    for t in many():
        script = task_script(t, seed=9)
        if script.outcome != "on_time":
            continue
        resolved = script.steps[-1].at
        yellow += resolved >= t.due_by - (t.due_by - t.created_at) / 5
    assert yellow > 10


def test_a_reopened_task_is_answered_again_from_its_reopening() -> None:
    always = FeedbackMix(on_time=1, late=0, extended=0, returned=0, unresolvable=0, silent=0)
    schedule = FeedbackSchedule(seed=2, mix=always)
    vending = task(1)
    schedule.add_task(vending)
    first = schedule.due(T0 + timedelta(days=1))
    reopened_at = first[-1].at + timedelta(minutes=25)
    again = schedule.reopen(vending.task_id, reopened_at, reopened_at + timedelta(minutes=120))
    assert again is not None and again.round == 2
    assert schedule.reopen(vending.task_id, reopened_at, reopened_at + timedelta(hours=2)) is None
    second = schedule.due(T0 + timedelta(days=1))
    assert second and all(a.at > reopened_at for a in second)
    assert {a.feedback_id for a in first}.isdisjoint(a.feedback_id for a in second)
    assert second[-1].status is FeedbackStatus.resolved


def test_a_reopening_read_before_its_task_waits_for_the_task() -> None:
    at = T0 + timedelta(hours=1)
    early = FeedbackSchedule(seed=2)
    early.reopen(task(1).task_id, at, at + timedelta(hours=2))
    early.add_task(task(1))
    late = FeedbackSchedule(seed=2)
    late.add_task(task(1))
    late.reopen(task(1).task_id, at, at + timedelta(hours=2))
    end = T0 + timedelta(days=1)
    assert records(early.due(end)) == records(late.due(end))


def test_answers_are_due_when_the_simulation_clock_reaches_them() -> None:
    schedule = FeedbackSchedule(seed=3)
    schedule.add_task(task(1))
    steps = task_script(task(1), seed=3).steps
    assert steps
    assert schedule.due(steps[0].at - timedelta(seconds=1)) == []
    assert schedule.due(steps[0].at) == [steps[0]]
    assert simulation_clock(T0, 10, 30) == T0 + timedelta(minutes=5)
    assert simulation_clock(T0, 0, float("inf")) > T0 + timedelta(days=3650)


def test_dispatch_and_status_records_are_read_and_bad_ones_counted() -> None:
    settings = load_settings(topic_dispatch="d", topic_status="s")
    schedule = FeedbackSchedule(seed=1)
    assert take(schedule, "d", task(1).model_dump_json().encode(), settings)
    assert not take(schedule, "d", b"not json", settings)
    reopened = (
        '{"task_id": "roadside_vending-0001", "status": "reopened", '
        '"at": "2026-11-27T12:00:00+08:00", "due_by": "2026-11-27T14:00:00+08:00"}'
    )
    assert take(schedule, "s", reopened.encode(), settings)
    assert not take(schedule, "s", b'{"status": "reopened"}', settings)
    assert take(schedule, "s", b'{"status": "accepted"}', settings)  # not for the dispatcher
    assert schedule.reopened == 1


def test_the_summary_says_what_was_answered() -> None:
    summary = FeedbackSummary(time_scale=30, tasks=4, pending=3)
    summary.sent_by_status.update({"accepted": 4, "resolved": 2})
    summary.outcomes.update({"on_time": 3, "late": 1})
    assert "tasks 4" in summary.progress_line() and "pending 3" in summary.progress_line()
    report = summary.report()
    assert "answered 4 tasks with 6 feedback records" in report
    assert "on_time 3" in report and "not yet due when stopped: 3" in report


def test_shares_that_add_up_to_more_than_one_are_refused() -> None:
    result = CliRunner().invoke(
        simulate_group, ["feedback", "--late-share", "0.6", "--silent-share", "0.6"]
    )
    assert result.exit_code == 2
    assert "at most 1" in result.output


@pytest.mark.parametrize("bad", [-1.0])
def test_negative_mix_is_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="≥ 0"):
        FeedbackMix(late=bad).outcomes()
