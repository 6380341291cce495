"""The closed loop on the real broker and worker (CONTRACT §10): feedback in, status records out.

The tests share one worker (the module's `stack`), whose event-time clock only moves forward,
so each works on its own day after T0, in file order.
"""

from __future__ import annotations

import asyncio
import json
import signal
from datetime import datetime, timedelta
from typing import Any

from .helpers import read_json
from .stack import STREAM_PARTITIONS, T0, Stack, detection, heartbeat, minutes, point_in, report

MARKET = "anwen-market"


def vending(event_id: str, at: datetime, where: dict[str, float] | None = None) -> dict[str, Any]:
    return detection(
        event_id,
        at,
        kind="roadside_vending",
        zone=MARKET,
        location=where or point_in(MARKET),
        confidence=0.9,
        source="cam-0104",
    )


async def statuses(stack: Stack, task_id: str, count: int, timeout: float = 60) -> list[dict]:
    """The status records of one task, in order, once there are at least `count` of them."""
    deadline = asyncio.get_running_loop().time() + timeout
    mine: list[dict] = []
    while True:
        records = await read_json(stack.bootstrap, stack.topics.status, timeout=5, settle=1)
        mine = [r for r in records if r["task_id"] == task_id]
        if len(mine) >= count or asyncio.get_running_loop().time() > deadline:
            return mine
        await asyncio.sleep(0.5)


async def new_task(stack: Stack, event_id: str, at: datetime, known: int) -> dict[str, Any]:
    await stack.send(stack.topics.camera, vending(event_id, at))
    tasks = await stack.tasks(min_count=known + 1, timeout=60)
    return next(t for t in tasks if t["evidence"][0]["event_id"] == event_id)


def day(n: int) -> datetime:
    return T0 + timedelta(days=n)


def summary(records: list[dict]) -> list[tuple[str, str, str]]:
    return [(r["status"], r["cause"], r["lamp"]) for r in records]


async def test_a_task_accepted_and_resolved_in_time_closes_as_verified_with_no_lamp_change(
    stack: Stack,
) -> None:
    start = day(0)
    task = await new_task(stack, "vendor-day0", start, known=0)
    task_id = task["task_id"]
    await stack.send_feedback(
        report(task_id, "accepted", start + minutes(5), "fb-d0-1"),
        report(task_id, "resolved", start + minutes(30), "fb-d0-2"),
    )
    await statuses(stack, task_id, 3)
    # the verify window (60 min) passes with nothing seen at the market
    await stack.send(stack.topics.camera, heartbeat("hb-d0", start + minutes(30 + 61)))
    records = await statuses(stack, task_id, 4)
    assert summary(records) == [
        ("dispatched", "dispatched", "green"),
        ("accepted", "feedback", "green"),
        ("resolved", "feedback", "green"),
        ("closed", "verified", "green"),
    ]
    assert [r["feedback_id"] for r in records] == [None, "fb-d0-1", "fb-d0-2", None]
    assert datetime.fromisoformat(records[-1]["at"]) == start + minutes(90)
    assert all(r["due_by"] == records[0]["due_by"] for r in records)


async def test_an_unanswered_task_turns_yellow_then_red_at_its_lamp_times(stack: Stack) -> None:
    start = day(1)
    task = await new_task(stack, "vendor-day1", start, known=1)
    task_id = task["task_id"]
    due = datetime.fromisoformat(task["due_by"])
    limit = due - start
    await stack.send(
        stack.topics.camera, heartbeat("hb-d1-a", due - limit / 5 + timedelta(seconds=1))
    )
    records = await statuses(stack, task_id, 2)
    assert summary(records) == [
        ("dispatched", "dispatched", "green"),
        ("dispatched", "clock", "yellow"),
    ]
    assert datetime.fromisoformat(records[1]["at"]) == due - limit / 5
    await stack.send(stack.topics.camera, heartbeat("hb-d1-b", due + minutes(1)))
    records = await statuses(stack, task_id, 3)
    assert summary(records)[2] == ("dispatched", "clock", "red")
    assert datetime.fromisoformat(records[2]["at"]) == due


async def test_a_resolved_vendor_seen_again_20_minutes_later_is_reopened_and_no_task_is_added(
    stack: Stack,
) -> None:
    start = day(2)
    task = await new_task(stack, "vendor-day2", start, known=2)
    task_id = task["task_id"]
    await stack.send_feedback(report(task_id, "resolved", start + minutes(10), "fb-d2-1"))
    await statuses(stack, task_id, 2)
    await stack.send(stack.topics.camera, vending("vendor-day2-back", start + minutes(30)))
    records = await statuses(stack, task_id, 3)
    assert summary(records) == [
        ("dispatched", "dispatched", "green"),
        ("resolved", "feedback", "green"),
        ("reopened", "redetected", "green"),
    ]
    reopened = records[2]
    assert reopened["event_id"] == "vendor-day2-back"
    limit = datetime.fromisoformat(task["due_by"]) - start
    assert datetime.fromisoformat(reopened["due_by"]) == start + minutes(30) + limit
    tasks = await stack.tasks(min_count=3, timeout=10)
    assert len(tasks) == 3  # the vendor's return reopened the task; it added none


async def test_bad_feedback_is_dead_lettered_with_its_reason_and_changes_nothing(
    stack: Stack,
) -> None:
    start = day(3) - timedelta(hours=12)
    task = await new_task(stack, "vendor-day3", start, known=3)
    task_id = task["task_id"]
    far_ahead = datetime.now(start.tzinfo) + timedelta(days=1)
    await stack.send_feedback(
        report(task_id, "resolved", start + minutes(10), "fb-d3-1"),
        report(task_id, "accepted", start + minutes(11), "fb-d3-2"),  # a step back
        report("no-such-task", "accepted", start + minutes(11), "fb-d3-3"),
        report(task_id, "arrived", far_ahead, "fb-d3-4"),
        b"{not json",
        report(task_id, "resolved", start + minutes(10), "fb-d3-1"),  # a replay
    )
    records = await statuses(stack, task_id, 2)
    letters = await read_json(stack.bootstrap, stack.topics.deadletter, min_count=4, timeout=60)
    reasons = sorted(letter["reason"] for letter in letters)
    assert reasons == ["clock_skew", "invalid_json", "invalid_transition", "unknown_task"]
    assert all(letter["topic"] == stack.topics.feedback for letter in letters)
    await asyncio.sleep(2)
    records = await statuses(stack, task_id, 2)
    assert summary(records) == [
        ("dispatched", "dispatched", "green"),
        ("resolved", "feedback", "green"),
    ]
    assert stack.metric("patrol_task_feedback_total", outcome="duplicate") == 1


async def test_a_worker_killed_after_a_feedback_gives_its_record_once_or_the_same_again(
    stack: Stack,
) -> None:
    start = day(3)
    task = await new_task(stack, "vendor-day3b", start, known=4)
    task_id = task["task_id"]
    await stack.wait_committed()
    await stack.send_feedback(report(task_id, "accepted", start + minutes(3), "fb-k-1"))
    stack.workers[-1].proc.send_signal(signal.SIGKILL)
    stack.workers[-1].proc.wait()
    stack.start_worker("restarted")
    await stack.send_feedback(report(task_id, "arrived", start + minutes(20), "fb-k-2"))
    records = await statuses(stack, task_id, 3)
    distinct = {json.dumps(r, sort_keys=True) for r in records}
    assert [r["status"] for r in records if r["feedback_id"] == "fb-k-2"] == ["arrived"]
    accepted = [r for r in records if r["feedback_id"] == "fb-k-1"]
    assert len(accepted) >= 1
    assert len({json.dumps(r, sort_keys=True) for r in accepted}) == 1  # only ever the same record
    assert len(distinct) == 3


async def test_the_restarted_worker_fetches_its_streams_and_none_of_its_tables_changelogs(
    stack: Stack,
) -> None:
    # Its three tables came back from changelogs every test above wrote to. Once recovered,
    # its client must not fetch them: records fetched from a partition faust has paused stay
    # in aiokafka's buffer, and each such partition holds the next fetch back 100 ms.
    for _ in range(5):
        assert await stack.fetching() == {"stream": STREAM_PARTITIONS, "changelog": 0}
        await asyncio.sleep(1.2)  # counted again each second
