"""The closed loop as the demo shows it: the lamps of open tasks (the latest status record per
task on the status topic), each reopened or overdue task as a line, and the closing shares.

Pure: records in, figures and lines out; unit-tested in tests/unit/devtools/test_demo.py.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from patrol.domain.models import TaskType
from patrol.domain.texts import CHINA_STANDARD_TIME, TASK_TYPE_NAMES

LAMPS = ("green", "yellow", "red")
LAMP_WORDS = {"green": "绿灯", "yellow": "黄灯", "red": "红灯"}
# Lines of reopened or overdue tasks the live table shows; the rest are counted.
ATTENTION_ROWS = 6


def mask_plate(plate: str | None) -> str:
    """浙G12345 → 浙G***45: enough for a dispatcher to tell cars apart on a shared screen."""
    if not plate:
        return ""
    return f"{plate[:2]}***{plate[-2:]}"


def _hhmm(value: Any) -> str:
    try:
        return f"{datetime.fromisoformat(str(value)).astimezone(CHINA_STANDARD_TIME):%H:%M}"
    except ValueError:
        return "--:--"


def _type_name(task_type: str) -> str:
    try:
        return TASK_TYPE_NAMES[TaskType(task_type)]
    except ValueError:
        return task_type


@dataclass
class LampBoard:
    """What the status topic says of each task, kept record by record.

    `latest` is the last record read per task (a task's records share a partition, so they are
    read in order; a redelivered copy of an earlier record is recognised and ignored)."""

    latest: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    ever_red: set[str] = field(default_factory=set)
    ever_reopened: set[str] = field(default_factory=set)
    plates: dict[str, str] = field(default_factory=dict)
    records: int = 0
    _seen: set[str] = field(default_factory=set, repr=False)

    def add_task(self, task: Mapping[str, Any]) -> None:
        """A dispatched task: its plate (masked when shown) for the attention lines."""
        plate = task.get("plate")
        if plate:
            self.plates[str(task.get("task_id", ""))] = str(plate)

    def add(self, record: Mapping[str, Any]) -> str | None:
        """Take one status record; returns a line to announce when the task just went red or
        was reopened, else None."""
        fingerprint = json.dumps(record, sort_keys=True, ensure_ascii=False, default=str)
        if fingerprint in self._seen:
            return None
        self._seen.add(fingerprint)
        task_id = str(record.get("task_id", ""))
        if not task_id:
            return None
        self.records += 1
        self.latest[task_id] = record
        if record.get("status") == "reopened":
            self.ever_reopened.add(task_id)
            return self.line(task_id, record)
        if record.get("lamp") == "red" and task_id not in self.ever_red:
            self.ever_red.add(task_id)
            return self.line(task_id, record)
        return None

    def add_value(self, value: bytes | None) -> str | None:
        try:
            record = json.loads(value or b"")
        except ValueError:
            return None
        return self.add(record) if isinstance(record, dict) else None

    # -- the figures -------------------------------------------------------------------------

    def open_by_lamp(self) -> dict[str, int]:
        counts = Counter(
            str(r.get("lamp")) for r in self.latest.values() if r.get("status") != "closed"
        )
        return {lamp: counts.get(lamp, 0) for lamp in LAMPS}

    @property
    def open(self) -> int:
        return sum(self.open_by_lamp().values())

    @property
    def closed(self) -> list[str]:
        return sorted(t for t, r in self.latest.items() if r.get("status") == "closed")

    @property
    def closed_on_time(self) -> int:
        """Closed tasks that never went red."""
        return sum(1 for t in self.closed if t not in self.ever_red)

    @property
    def closed_reopened(self) -> int:
        """Closed tasks reopened at least once (rework)."""
        return sum(1 for t in self.closed if t in self.ever_reopened)

    def shares(self) -> tuple[float | None, float | None]:
        """(on-time share, rework share) of the closed tasks; None before any closed."""
        closed = len(self.closed)
        if not closed:
            return None, None
        return self.closed_on_time / closed, self.closed_reopened / closed

    def attention(self) -> list[str]:
        """A line for each open task that is overdue (red) or was reopened, oldest due first."""
        tasks = [
            (str(r.get("due_by", "")), task_id, r)
            for task_id, r in self.latest.items()
            if r.get("status") != "closed"
            and (r.get("lamp") == "red" or task_id in self.ever_reopened)
        ]
        return [self.line(task_id, r) for _, task_id, r in sorted(tasks)]

    def line(self, task_id: str, record: Mapping[str, Any]) -> str:
        lamp = str(record.get("lamp", "?"))
        status = str(record.get("status", "?"))
        mark = "⟲ 复现" if status == "reopened" or task_id in self.ever_reopened else "● 超期"
        plate = mask_plate(self.plates.get(task_id))
        what = f"【{_type_name(str(record.get('task_type', '?')))}】{record.get('township', '')}"
        return (
            f"{mark} {_hhmm(record.get('at'))} {what}{(' ' + plate) if plate else ''} "
            f"{status}, {LAMP_WORDS.get(lamp, lamp)}, due {_hhmm(record.get('due_by'))} "
            f"({task_id[:12]})"
        )

    # -- text --------------------------------------------------------------------------------

    def lamp_text(self) -> str:
        lamps = self.open_by_lamp()
        on_time, rework = self.shares()
        closed = len(self.closed)
        text = (
            f"open {self.open}: green {lamps['green']} · yellow {lamps['yellow']} · "
            f"red {lamps['red']}   closed {closed}"
        )
        if on_time is not None and rework is not None:
            text += f" (on time {on_time:.0%}, reopened {rework:.0%})"
        return text

    def report(self) -> dict[str, Any]:
        on_time, rework = self.shares()
        return {
            "status_records": self.records,
            "tasks": len(self.latest),
            "open_by_lamp": self.open_by_lamp(),
            "closed": len(self.closed),
            "closed_on_time": self.closed_on_time,
            "closed_reopened": self.closed_reopened,
            "on_time_share": None if on_time is None else round(on_time, 3),
            "rework_share": None if rework is None else round(rework, 3),
            "reopened": len(self.ever_reopened),
            "went_red": len(self.ever_red),
            "attention": self.attention(),
        }
