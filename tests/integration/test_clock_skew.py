"""CONTRACT §2 clock_skew through the real broker, a real worker and the real gateway: a camera
whose clock runs a day ahead is dead-lettered, and the event-time clock does not follow it.

Times here are relative to the wall clock, unlike the other modules' fixed day. Had the
heartbeat a day ahead moved the clock, the warned case would have been closed as
self-corrected and every later read of today dropped as late (older than the 24 h retention):
no task, no second SMS.
"""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import datetime, timedelta, timezone
from typing import Any

from .helpers import read_json
from .stack import NO_PARKING, Stack, detection, heartbeat, minutes

CST = timezone(timedelta(hours=8))
WARNED = "浙G31001"
NEWCOMER = "浙G31002"
WRONG_CLOCK = "cam-0042"


async def wait_metric(stack: Stack, name: str, want: float, source_type: str) -> None:
    """Until the worker's /metrics show `want` (the intake reports its counts every 0.1 s and
    its gauges every second)."""
    for _ in range(100):
        if stack.metric(name, source_type=source_type) == want:
            return
        await asyncio.sleep(0.3)
    assert stack.metric(name, source_type=source_type) == want, f"{name}{{{source_type}}}"


def evidence(task: dict[str, Any]) -> list[str]:
    return [item["event_id"] for item in task["evidence"]]


async def test_a_device_a_day_ahead_is_dead_lettered_and_the_rule_runs_on(stack: Stack) -> None:
    now = datetime.now(CST).replace(microsecond=0)

    # A vehicle read 20 minutes ago opens a case: its owner is warned.
    await stack.send(
        stack.topics.camera, detection("skew-warned-0", now - minutes(20), plate=WARNED)
    )
    assert [m["plate"] for m in stack.gateway.wait_for(1)] == [WARNED]

    # A camera whose clock runs a day (and 5 minutes) ahead sends a heartbeat.
    tomorrow = now + timedelta(days=1, minutes=5)
    wrong = heartbeat("skew-hb-tomorrow", tomorrow, source=WRONG_CLOCK)
    await stack.send(stack.topics.camera, wrong)
    [letter] = await read_json(stack.bootstrap, stack.topics.deadletter, min_count=1, timeout=60)
    assert letter["reason"] == "clock_skew"
    assert letter["key"] == WRONG_CLOCK
    assert letter["topic"] == stack.topics.camera
    assert json.loads(base64.b64decode(letter["value_b64"])) == wrong
    assert letter["detail"].startswith(f"observed_at {tomorrow.isoformat()} is 1 d 0 h ")
    assert "(limit 10 min, PATROL_MAX_FUTURE_MINUTES)" in letter["detail"]
    assert letter["detail"].endswith(f"check the clock of camera {WRONG_CLOCK}")

    # The warned vehicle is still there after its deadline (20 - 10 = 10 minutes ago); a new
    # one arrives 8 minutes ago and is read again 3 minutes from now, within the 10-minute limit.
    await stack.send(
        stack.topics.camera,
        detection("skew-warned-11", now - minutes(9), plate=WARNED),
        detection("skew-newcomer-0", now - minutes(8), plate=NEWCOMER),
        detection("skew-newcomer-11", now + minutes(3), plate=NEWCOMER),
    )
    tasks = await stack.tasks(min_count=2, timeout=60)
    sms = stack.gateway.wait_for(2)

    assert [m["plate"] for m in sms] == [WARNED, NEWCOMER]
    by_plate = {task["plate"]: task for task in tasks}
    assert len(tasks) == 2 and set(by_plate) == {WARNED, NEWCOMER}
    for plate, reads in (
        (WARNED, ["skew-warned-0", "skew-warned-11"]),
        (NEWCOMER, ["skew-newcomer-0", "skew-newcomer-11"]),
    ):
        task = by_plate[plate]
        assert task["task_type"] == "illegal_parking"
        assert task["zone_id"] == NO_PARKING
        assert evidence(task) == reads
        assert task["sms"]["message_id"] == next(
            m["message_id"] for m in sms if m["plate"] == plate
        )

    await wait_metric(stack, "patrol_clock_skew_detections_total", 1, source_type="camera")
    assert stack.metric("patrol_clock_skew_detections_total", source_type="drone") == 0
    assert stack.metric("patrol_deadletters_total", reason="clock_skew") == 1
    assert stack.metric("patrol_grace_cases_closed_total", result="self_corrected") == 0
    assert stack.metric("patrol_detections_total", outcome="late") == 0
    # The event-time clock is the newcomer's read, minutes ahead at most, not tomorrow.
    assert stack.metric("patrol_event_time_lag_seconds") > -15 * 60
    # Only cam-0017 was heard from: a device with a wrong clock does not count as active.
    await wait_metric(stack, "patrol_sources_active", 1, source_type="camera")
