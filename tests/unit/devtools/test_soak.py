"""The soak's pure analysis: samples and changelog tallies in, PASS/FAIL out."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from functools import partial
from pathlib import Path

from click.testing import CliRunner
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from patrol.devtools.soak import (
    Changelog,
    Plan,
    Sample,
    _ppid,
    changelog_check,
    classify_case,
    classify_task,
    fitted_line,
    horizon,
    judged_window,
    metric_sums,
    open_cases_check,
    proc_rss_mib,
    rss_check,
    soak_command,
    tally,
    worker_processes,
)
from patrol.domain import grace, tasks
from patrol.domain.models import Location, TaskState, TaskType
from patrol.settings import Settings

HOUR = 3600.0
NOON = datetime(2026, 12, 2, 4, 0, tzinfo=UTC)
DAY = timedelta(days=1)
LOOP = tasks.LoopPolicy(verify_window=timedelta(hours=1), max_extensions=1, retention=DAY)


def samples(rss: list[float], cases: list[float] | None = None, step: float = 30.0) -> list[Sample]:
    cases = cases or [100.0] * len(rss)
    return [
        Sample(
            wall=i * step,
            event_time="2026-12-01T00:00:00+08:00",
            rss_mib={"app": r * 0.5, "intake": r * 0.25, "sms": r * 0.25},
            cases_open=c,
            incidents_open=2,
            tasks_open=10 + i,
            detections=1000.0 * i,
            consumer_lag=0,
            dead_letters=0,
        )
        for i, (r, c) in enumerate(zip(rss, cases, strict=True))
    ]


def test_the_time_scale_is_the_event_span_over_the_wall_duration() -> None:
    assert Plan().time_scale == 48
    assert Plan(duration=300, event_hours=4).time_scale == 48


def test_the_horizon_is_a_case_keys_day_plus_grace_and_recheck() -> None:
    settings = Settings()
    assert horizon(settings, timedelta(minutes=15)) == timedelta(hours=24, minutes=20)


def test_the_line_through_points_on_a_line_is_that_line() -> None:
    slope, intercept = fitted_line([0, 1, 2, 3], [5, 7, 9, 11])
    assert (slope, intercept) == (2, 5)


def test_a_flat_rss_after_the_horizon_passes() -> None:
    flat = samples([300 + (i % 3) for i in range(121)])  # one hour, noise of 2 MiB
    check = rss_check(flat, horizon_wall=1800)
    assert check.ok, check.detail
    assert "judged from 1800 s" in check.detail


def test_a_steadily_growing_rss_fails_on_its_slope() -> None:
    growing = samples([300 + i * 0.5 for i in range(121)])  # 60 MiB an hour, 5 % over the half
    check = rss_check(growing, horizon_wall=1800)
    assert not check.ok
    assert "+60.0 MiB/h" in check.detail


def test_an_rss_growing_by_more_than_a_tenth_fails_on_its_growth() -> None:
    growing = samples([100 + i * 0.2 for i in range(121)])
    check = rss_check(growing, horizon_wall=1800, max_slope=1000)
    assert not check.ok
    assert "limit +10%" in check.detail


def test_growth_before_the_horizon_is_not_judged() -> None:
    # memory fills until the horizon (2400 s), then stays
    filling = samples([100 + min(i, 80) * 3 for i in range(121)])
    assert rss_check(filling, horizon_wall=2400).ok
    assert not rss_check(filling, horizon_wall=0).ok


def test_a_run_shorter_than_the_horizon_says_so() -> None:
    window, note = judged_window(samples([100.0] * 11), horizon_wall=1800)
    assert [s.wall for s in window] == [150, 180, 210, 240, 270, 300]
    assert "not a soak verdict" in note


def test_too_few_samples_fail() -> None:
    assert not rss_check(samples([100.0] * 3), horizon_wall=0).ok


def test_open_cases_that_level_off_pass() -> None:
    level = samples([300.0] * 120, cases=[min(i * 10, 400) + (i % 4) for i in range(120)])
    check = open_cases_check(level, warmup=360)
    assert check.ok, check.detail


def test_open_cases_that_keep_growing_fail() -> None:
    growing = samples([300.0] * 120, cases=[i * 10.0 for i in range(120)])
    check = open_cases_check(growing, warmup=360)
    assert not check.ok
    assert "last half's 1192" in check.detail


def changelog(**counts: int) -> Changelog:
    return Changelog("soak-x-state-task-loop-changelog", **counts)


def test_a_changelog_of_open_keys_only_passes() -> None:
    log = changelog(records=900, distinct_keys=300, live_keys=100, live_open=100)
    assert changelog_check([log], {log.topic: 100}).ok


def test_finished_keys_left_live_fail() -> None:
    log = changelog(records=900, distinct_keys=300, live_keys=300, live_open=100, live_stale=200)
    check = changelog_check([log], {log.topic: 100})
    assert not check.ok
    assert "200 stale live keys" in check.detail


def test_more_open_keys_than_the_worker_reports_fail() -> None:
    log = changelog(records=900, distinct_keys=300, live_keys=300, live_open=300)
    check = changelog_check([log], {log.topic: 100})
    assert not check.ok
    assert "the worker reports 100" in check.detail


def test_fewer_open_keys_than_the_worker_reports_fail() -> None:
    log = changelog(records=0, distinct_keys=0, live_keys=0, live_open=0)
    check = changelog_check([log], {log.topic: 119})
    assert not check.ok
    assert "0 open keys" in check.detail


def test_a_few_keys_of_the_last_events_are_within_the_margin() -> None:
    log = changelog(records=900, distinct_keys=300, live_keys=104, live_open=103, live_stale=1)
    assert changelog_check([log], {log.topic: 100}).ok


def test_no_changelog_at_all_fails() -> None:
    assert not changelog_check([], {}).ok


def test_a_tally_keeps_the_latest_value_of_each_key() -> None:
    records = [(b"a", b"1"), (b"b", b"x"), (b"a", None), (b"c", b"2"), (b"b", b"y")]
    log = tally("t", records, lambda raw: "stale" if raw == b"y" else "open")
    assert (log.records, log.distinct_keys, log.live_keys) == (5, 3, 2)
    assert (log.live_open, log.live_stale, log.live_held) == (1, 1, 0)


def test_an_unreadable_value_is_counted() -> None:
    log = tally("t", [(b"a", b"{")], partial(classify_task, clock=NOON, policy=LOOP))
    assert log.undecodable == 1


def case_state(horizon_at: datetime, ticketed: date | None = None) -> bytes:
    state = grace.CaseState(
        plate="浙G12345", zone_id="anwen-wenxi-rd", horizon=horizon_at, ticketed_on=ticketed
    )
    return grace.encode_case_state(state)


def test_a_closed_case_key_is_held_for_its_retention_then_stale() -> None:
    policy = grace.GracePolicy.from_settings(Settings())
    at = datetime(2026, 12, 1, 1, 0, tzinfo=UTC)
    assert classify_case(case_state(at), at + timedelta(hours=23), policy) == "held"
    assert classify_case(case_state(at), at + timedelta(hours=25), policy) == "stale"


def test_a_ticketed_key_is_held_to_the_end_of_its_local_day() -> None:
    policy = grace.GracePolicy(
        recheck=timedelta(minutes=5), retention=timedelta(hours=1), tz=Settings().tz
    )
    at = datetime(2026, 12, 1, 1, 0, tzinfo=UTC)  # 09:00 in Shanghai
    ticketed = case_state(at, ticketed=date(2026, 12, 1))
    assert classify_case(ticketed, at + timedelta(hours=14), policy) == "held"
    assert classify_case(ticketed, at + timedelta(hours=15, minutes=11), policy) == "stale"


def task(status: TaskState, start: datetime, resolved: datetime | None = None) -> bytes:
    record = tasks.TaskRecord(
        task_id="task-1",
        task_type=TaskType.illegal_parking,
        department="comprehensive_enforcement",
        township="安文街道",
        zone_id="anwen-wenxi-rd",
        location=Location(lat=29.05, lon=120.44),
        created_at=start,
        start=start,
        due_by=start + timedelta(hours=2),
        status=status,
        resolved_at=resolved,
        closed_at=resolved if status is TaskState.closed else None,
    )
    return tasks.encode_task(record)


def test_an_open_task_is_open_however_old() -> None:
    old = task(TaskState.dispatched, NOON - 3 * DAY)
    assert classify_task(old, NOON, LOOP) == "open"


def test_a_closed_task_is_held_for_the_retention_then_stale() -> None:
    recent = task(TaskState.closed, NOON - 2 * DAY, resolved=NOON - timedelta(hours=20))
    old = task(TaskState.closed, NOON - 2 * DAY, resolved=NOON - timedelta(hours=25))
    assert classify_task(recent, NOON, LOOP) == "held"
    assert classify_task(old, NOON, LOOP) == "stale"


def test_metric_sums_add_up_labels() -> None:
    registry = CollectorRegistry()
    opened = Gauge("patrol_tasks_open", "t", ["department"], registry=registry)
    opened.labels("a").set(3)
    opened.labels("b").set(4)
    seen = Counter("patrol_detections_total", "d", ["kind"], registry=registry)
    seen.labels("heartbeat").inc(5)
    seen.labels("plate_read").inc(2)
    sums = metric_sums(generate_latest(registry).decode())
    assert sums["patrol_tasks_open"] == 7
    assert sums["patrol_detections"] == 7


def test_the_processes_of_a_parent_are_found_with_their_roles() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)", "patrol.intake.process"]
    )
    try:
        found = worker_processes(os.getpid())
    finally:
        child.kill()
        child.wait()
    assert found == {"app": os.getpid(), "intake": child.pid}
    assert proc_rss_mib(os.getpid()) > 1


def test_the_parent_pid_is_read_past_a_command_name_with_spaces(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text("4242 (a (b) c) S 17 4242 4242 0 -1")
    assert _ppid(stat) == 17


def test_the_help_explains_the_options() -> None:
    result = CliRunner().invoke(soak_command, ["--help"])
    assert result.exit_code == 0
    for option in ("--duration", "--event-hours", "--load", "--sample-seconds", "--seed"):
        assert option in result.output
