"""Verification of resolved hazard tasks (核查结案, CONTRACT §10 rule 4), as pure functions.

The hazard agent sees every hazard detection, so it keeps the watches: one per resolved hazard
task, from the resolution to the end of the verify window. A detection of the same kind within
the incident radius of the task's place, at an event time inside the window (both ends
included), ends the watch as `redetected`; the clock passing the window's end ends it as
`verified`. Both outcomes go to the loop, which reopens or closes the task.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from pydantic_core import from_json, to_json

from patrol.domain.incidents import haversine_m
from patrol.domain.models import Detection, TaskType
from patrol.domain.tasks import Watch

Watches = tuple[Watch, ...]


@dataclass(frozen=True, slots=True)
class WatchOutcome:
    task_id: str
    outcome: Literal["redetected", "verified"]
    at: datetime
    """The re-detection's event time, or the end of the window."""
    event_id: str | None = None


WATCH_KEY_PREFIX = b"watch:"


def watch_key(task_type: TaskType) -> bytes:
    """The hazard table key of a kind's watches (beside the kind's incidents)."""
    return WATCH_KEY_PREFIX + task_type.value.encode()


def add_watch(watches: Watches, watch: Watch) -> Watches:
    """Watch a resolved task (a repeated watch for the same task replaces the earlier one)."""
    return (*(w for w in watches if w.task_id != watch.task_id), watch)


def match_detection(
    watches: Watches, detection: Detection, radius_m: float
) -> tuple[Watches, WatchOutcome | None]:
    """The watch a detection of its kind ends, if any (the earliest-resolved one it is near)."""
    if detection.location is None:
        return watches, None
    at, lat, lon = detection.observed_at, detection.location.lat, detection.location.lon
    for watch in watches:
        if (
            watch.since <= at <= watch.until
            and haversine_m(lat, lon, watch.lat, watch.lon) <= radius_m
        ):
            rest = tuple(w for w in watches if w is not watch)
            return rest, WatchOutcome(watch.task_id, "redetected", at, detection.event_id)
    return watches, None


def expire(watches: Watches, clock: datetime) -> tuple[Watches, list[WatchOutcome]]:
    """Watches whose window the clock has passed end as verified, at the window's end."""
    ended = [w for w in watches if w.until < clock]
    if not ended:
        return watches, []
    rest = tuple(w for w in watches if w.until >= clock)
    return rest, [WatchOutcome(w.task_id, "verified", w.until) for w in ended]


def encode_watches(watches: Watches) -> bytes:
    return to_json(
        [
            [w.task_id, w.task_type.value, w.lat, w.lon, w.since.isoformat(), w.until.isoformat()]
            for w in watches
        ]
    )


def decode_watches(raw: bytes) -> Watches:
    return tuple(
        Watch(
            task_id=task_id,
            task_type=TaskType(task_type),
            lat=lat,
            lon=lon,
            since=datetime.fromisoformat(since),
            until=datetime.fromisoformat(until),
        )
        for task_id, task_type, lat, lon, since, until in from_json(raw)
    )
