"""The records of the closed loop's internal topic, and of the watches sent to the hazards topic.

The loop agent owns each task's state on partition hash(task_id) of `<app>-task-loop`. Every
input it needs reaches that partition there, so the order it applies them in is the topic's
order, the same after a restart as before:

* `tasks-decided`: the tasks one stream event of the grace or hazard agent decided for one
  partition, sent at the end of that event (its changelog records wait for their
  acknowledgement, and so does the offset commit that follows). The loop agent dispatches each
  in the step that opens its state and writes its first status record, so no dispatch system
  can answer a task the loop does not know yet (`tasks-opened`, of earlier releases, held tasks
  the deciding agent had dispatched itself: still read, opened and not dispatched again);
* `feedback-batch`: the feedback records one intake round validated for one partition, each
  with where it came from (for a dead letter);
* `tick`: the event-time clock, from each worker's intake, to every partition;
* `watch-outcome`: the hazard agent's verdict on a resolved hazard task under watch.

The hazard agent gets `watch` records on the hazards topic, on its kind's partition.

Tasks and feedback travel in batch records, as the detections do (`patrol.kafka.envelopes`):
the loop agent pays faust's per-event cost once per batch, not once per task step (one record
per step had the loop taking four stream events per task and starving the grace agent). The
single-record kinds `task-opened` and `feedback` of earlier releases are still read, so a
rolling upgrade finds nothing on the topic it cannot apply.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic_core import from_json, to_json

from patrol.domain.models import EnforcementTask, TaskType
from patrol.domain.tasks import Watch
from patrol.domain.verification import WatchOutcome
from patrol.kafka.envelopes import chunks

HEADER = "patrol-record"


class LoopRecord(StrEnum):
    tasks_decided = "tasks-decided"
    tasks_opened = "tasks-opened"  # tasks dispatched already (read, no longer written)
    feedback_batch = "feedback-batch"
    task_opened = "task-opened"  # one task a record (read, no longer written)
    feedback = "feedback"  # one feedback a record (read, no longer written)
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
    return forwarded(from_json(raw))


def forwarded(data: Any) -> ForwardedFeedback:
    """A `feedback_record`'s fields, read back."""
    key = data["k"]
    return ForwardedFeedback(
        value=base64.b64decode(data["v"]),
        key=None if key is None else base64.b64decode(key),
        topic=data["t"],
        partition=data["p"],
        offset=data["o"],
        timestamp_ms=data["ms"],
    )


def batch_records(items: list[bytes]) -> Iterator[bytes]:
    """`items` (tasks' JSON, or `feedback_record`s) packed into `{"items": [...]}` records
    within the internal topics' size limits."""
    for run in chunks(items):
        if run:
            yield b'{"items":[%s]}' % b",".join(run)


def batch_items(raw: bytes) -> list[Any]:
    """The items of a batch record, each still to be read (`opened_task`, `forwarded`), so one
    that cannot be is skipped alone."""
    items = from_json(raw)["items"]
    if not isinstance(items, list):
        raise ValueError("a batch record's items are not a list")
    return items


def opened_task(item: Any) -> EnforcementTask:
    return EnforcementTask.model_validate(item)


@dataclass(frozen=True, slots=True)
class DecidedTask:
    """A task to open and dispatch: its record as the dispatch topic gets it, byte for byte
    (an audit replay compares those bytes), and when its triggering detection entered Kafka."""

    task: EnforcementTask
    value: bytes
    ingested_ms: int


def decided_item(task_json: str, ingested_ms: int) -> bytes:
    """One item of a `tasks-decided` batch record: the task's JSON as a string, kept exact."""
    return to_json({"task": task_json, "ms": ingested_ms})


def decided_task(item: Any) -> DecidedTask:
    value = item["task"].encode()
    return DecidedTask(EnforcementTask.model_validate_json(value), value, item["ms"])


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
