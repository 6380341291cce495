"""Comparing replayed tasks with dispatched ones: what counts as the same, what is reported."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta
from typing import Any

from patrol.audit.compare import comparable, compare, within

T0 = datetime.fromisoformat("2026-11-27T10:00:00+08:00")
DAY = (T0.replace(hour=0), T0.replace(hour=0) + timedelta(days=1))


def task(task_id: str, minute: int, *, status: str = "sent", **changes: Any) -> dict[str, Any]:
    at = T0 + timedelta(minutes=minute)
    value: dict[str, Any] = {
        "task_id": task_id,
        "created_at": (at + timedelta(minutes=10)).isoformat(),
        "priority": "normal",
        "evidence": [
            {"event_id": f"{task_id}-0", "observed_at": at.isoformat()},
            {"event_id": f"{task_id}-1", "observed_at": (at + timedelta(minutes=10)).isoformat()},
        ],
        "sms": {"message_id": f"sms-{task_id}", "status": status},
    }
    value.update(changes)
    return value


def test_the_sms_status_snapshot_is_not_compared() -> None:
    result = compare([task("a", 0, status="sent")], [task("a", 0, status="pending")], *DAY)
    assert result.same and result.identical == 1
    assert "identical: the replay reproduces every task" in result.text()
    assert comparable(task("a", 0))["sms"] == {"message_id": "sms-a"}


def test_a_task_the_replay_lacks_or_adds_is_named() -> None:
    result = compare([task("a", 0), task("b", 5)], [task("b", 5), task("c", 7)], *DAY)
    assert [(d.task_id, d.what) for d in result.differences] == [("a", "missing"), ("c", "extra")]
    assert "The first, a:" in result.text() and "did not give it" in result.text()


def test_the_first_differing_field_is_shown() -> None:
    replayed = task("a", 0)
    replayed["evidence"] = copy.deepcopy(replayed["evidence"])
    replayed["evidence"][0]["event_id"] = "other"
    result = compare([task("a", 0)], [replayed], *DAY)
    (difference,) = result.differences
    assert difference.what == "evidence"
    assert "evidence differs" in result.text()


def test_only_tasks_wholly_in_the_range_are_compared() -> None:
    start = T0
    early = task("early", -5)  # its first read came before the range
    assert not within(early, start, start + timedelta(hours=1))
    result = compare([early, task("a", 0)], [task("a", 0)], start, start + timedelta(hours=1))
    assert result.same and result.dispatched == 1
