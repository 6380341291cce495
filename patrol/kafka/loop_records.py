"""The records of the closed loop's internal topic, and of the watches sent to the hazards topic.

The loop agent owns each task's state on partition hash(task_id) of `<app>-task-loop`. Every
input it needs reaches that partition there, so the order it applies them in is the topic's
order, the same after a restart as before:

* `task-opened`: a task the grace or hazard agent emitted, sent with its dispatch record (and
  before the offset commit that follows), so every emitted task is known to the loop;
* `feedback`: a validated feedback record, with where it came from (for a dead letter);
* `tick`: the event-time clock, from each worker's intake, to every partition;
* `watch-outcome`: the hazard agent's verdict on a resolved hazard task under watch.

The hazard agent gets `watch` records on the hazards topic, on its kind's partition.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from pydantic_core import from_json, to_json

from patrol.domain.models import TaskType
from patrol.domain.tasks import Watch
from patrol.domain.verification import WatchOutcome

HEADER = "patrol-record"


class LoopRecord(StrEnum):
    task_opened = "task-opened"
    feedback = "feedback"
    tick = "tick"
    watch_outcome = "watch-outcome"
    watch = "watch"


def headers(kind: LoopRecord) -> list[tuple[str, bytes]]:
    return [(HEADER, kind.value.encode())]


def kind_of(record_headers: Iterable[tuple[str, bytes]] | None) -> LoopRecord | None:
    for name, value in record_headers or ():
        if name == HEADER:
            try:
                return LoopRecord(value.decode())
            except ValueError:
                return None
    return None


@dataclass(frozen=True, slots=True)
class ForwardedFeedback:
    """A feedback record as the feedback topic held it, and where (for a dead letter)."""

    value: bytes
    key: bytes | None
    topic: str
    partition: int
    offset: int
    timestamp_ms: int


def feedback_record(fed: ForwardedFeedback) -> bytes:
    return to_json(
        {
            "v": base64.b64encode(fed.value).decode(),
            "k": None if fed.key is None else base64.b64encode(fed.key).decode(),
            "t": fed.topic,
            "p": fed.partition,
            "o": fed.offset,
            "ms": fed.timestamp_ms,
        }
    )


def decode_feedback_record(raw: bytes) -> ForwardedFeedback:
    data = from_json(raw)
    key = data["k"]
    return ForwardedFeedback(
        value=base64.b64decode(data["v"]),
        key=None if key is None else base64.b64decode(key),
        topic=data["t"],
        partition=data["p"],
        offset=data["o"],
        timestamp_ms=data["ms"],
    )


def tick_record(clock: datetime) -> bytes:
    return to_json({"clock": clock.isoformat()})


def decode_tick(raw: bytes) -> datetime:
    clock = datetime.fromisoformat(from_json(raw)["clock"])
    return clock if clock.tzinfo is not None else clock.replace(tzinfo=UTC)


def watch_outcome_record(outcome: WatchOutcome) -> bytes:
    return to_json(
        {
            "task_id": outcome.task_id,
            "outcome": outcome.outcome,
            "at": outcome.at.isoformat(),
            "event_id": outcome.event_id,
        }
    )


def decode_watch_outcome(raw: bytes) -> WatchOutcome:
    data = from_json(raw)
    outcome = data["outcome"]
    if outcome not in ("redetected", "verified"):
        raise ValueError(f"unknown watch outcome {outcome!r}")
    return WatchOutcome(
        task_id=data["task_id"],
        outcome=outcome,
        at=datetime.fromisoformat(data["at"]),
        event_id=data["event_id"],
    )


def watch_record(watch: Watch) -> bytes:
    return to_json(
        {
            "task_id": watch.task_id,
            "task_type": watch.task_type.value,
            "lat": watch.lat,
            "lon": watch.lon,
            "since": watch.since.isoformat(),
            "until": watch.until.isoformat(),
        }
    )


def decode_watch(raw: bytes) -> Watch:
    data = from_json(raw)
    return Watch(
        task_id=data["task_id"],
        task_type=TaskType(data["task_type"]),
        lat=data["lat"],
        lon=data["lon"],
        since=datetime.fromisoformat(data["since"]),
        until=datetime.fromisoformat(data["until"]),
    )
