"""Comparing the tasks a replay gave with the tasks that were dispatched. Pure.

Two tasks are the same when their JSON is the same but for `sms.status`: that is a snapshot of
what the worker knew of the warning when it confirmed the case, and a replay sends no SMS.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any


def comparable(task: Mapping[str, Any]) -> dict[str, Any]:
    """The task without the parts a replay cannot reproduce (the SMS status snapshot)."""
    copy = json.loads(json.dumps(task))
    if isinstance(copy.get("sms"), dict):
        copy["sms"].pop("status", None)
    return dict(copy)


def within(task: Mapping[str, Any], start: datetime, end: datetime) -> bool:
    """Whether the whole task lies in [start, end): every detection of its evidence, and so its
    creation. A task whose first read came before `start` is not one a replay from `start` can
    give again."""
    times = [datetime.fromisoformat(e["observed_at"]) for e in task.get("evidence", [])]
    created = datetime.fromisoformat(task["created_at"])
    return start <= created < end and all(start <= t < end for t in times)


@dataclass(frozen=True, slots=True)
class Difference:
    task_id: str
    what: str
    """`missing` (dispatched, not replayed), `extra` (replayed, not dispatched) or the first
    field that differs."""
    dispatched: Mapping[str, Any] | None
    replayed: Mapping[str, Any] | None


@dataclass(frozen=True, slots=True)
class Comparison:
    dispatched: int
    replayed: int
    identical: int
    differences: tuple[Difference, ...]

    @property
    def same(self) -> bool:
        return not self.differences

    def text(self) -> str:
        head = (
            f"{self.dispatched} tasks dispatched in the range, {self.replayed} replayed, "
            f"{self.identical} identical"
        )
        if self.same:
            return f"{head}: the replay reproduces every task."
        first = self.differences[0]
        lines = [f"{head}; {len(self.differences)} differ. The first, {first.task_id}:"]
        if first.what == "missing":
            lines.append("  dispatched, but the replay did not give it:")
            lines.append("  " + json.dumps(first.dispatched, ensure_ascii=False))
        elif first.what == "extra":
            lines.append("  the replay gave it, but it was never dispatched:")
            lines.append("  " + json.dumps(first.replayed, ensure_ascii=False))
        else:
            assert first.dispatched is not None and first.replayed is not None
            lines.append(f"  {first.what} differs:")
            lines.append(f"    dispatched {json.dumps(first.dispatched, ensure_ascii=False)}")
            lines.append(f"    replayed   {json.dumps(first.replayed, ensure_ascii=False)}")
        return "\n".join(lines)


def _first_field(a: Mapping[str, Any], b: Mapping[str, Any]) -> tuple[str, Any, Any]:
    for name in sorted(set(a) | set(b)):
        if a.get(name) != b.get(name):
            return name, a.get(name), b.get(name)
    return "", None, None


def compare(
    dispatched: Iterable[Mapping[str, Any]],
    replayed: Iterable[Mapping[str, Any]],
    start: datetime,
    end: datetime,
) -> Comparison:
    """The tasks of [start, end) on both sides, by task id, in the order of creation."""
    ours = {t["task_id"]: comparable(t) for t in dispatched if within(t, start, end)}
    theirs = {t["task_id"]: comparable(t) for t in replayed if within(t, start, end)}
    differences = []
    identical = 0
    for task_id in sorted(ours.keys() | theirs.keys(), key=lambda i: _created(ours, theirs, i)):
        a, b = ours.get(task_id), theirs.get(task_id)
        if a is None:
            differences.append(Difference(task_id, "extra", None, b))
        elif b is None:
            differences.append(Difference(task_id, "missing", a, None))
        elif a == b:
            identical += 1
        else:
            name, left, right = _first_field(a, b)
            differences.append(Difference(task_id, name, {name: left}, {name: right}))
    return Comparison(len(ours), len(theirs), identical, tuple(differences))


def _created(
    ours: Mapping[str, Mapping[str, Any]], theirs: Mapping[str, Mapping[str, Any]], task_id: str
) -> tuple[datetime, str]:
    task = ours.get(task_id) or theirs[task_id]
    return datetime.fromisoformat(task["created_at"]), task_id
