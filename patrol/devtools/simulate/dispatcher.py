"""`patrol simulate feedback` on Kafka: read the tasks (and reopenings), answer when due.

The simulation's event-time clock is `start` + wall seconds × `time_scale`, as for the camera and
drone simulators started with the same --start and --time-scale; an answer is produced when
that clock reaches its `at` (at once when it is already past, e.g. a task read late).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError
from pydantic import ValidationError

from patrol.devtools.simulate.events import CHINA_STANDARD_TIME
from patrol.devtools.simulate.feedback import FeedbackSchedule
from patrol.devtools.simulate.producer import (
    PROGRESS_EVERY_SECONDS,
    BrokerUnreachable,
    ensure_topic,
    unreachable_message,
)
from patrol.devtools.simulate.tail import TopicTail
from patrol.domain.models import EnforcementTask
from patrol.kafka.security import client_options
from patrol.settings import Settings

FAR_FUTURE = datetime(9999, 1, 1, tzinfo=CHINA_STANDARD_TIME)


@dataclass
class FeedbackSummary:
    """What the simulated dispatch system did so far."""

    time_scale: float = 1.0
    tasks: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    sent_by_status: Counter[str] = field(default_factory=Counter)
    pending: int = 0
    reopened: int = 0
    unreadable: int = 0
    failed: int = 0
    first_error: str | None = None
    clock: datetime | None = None
    elapsed_seconds: float = 0.0
    finished: bool = False

    @property
    def sent(self) -> int:
        return sum(self.sent_by_status.values())

    def _statuses(self) -> str:
        return ", ".join(f"{s} {n}" for s, n in sorted(self.sent_by_status.items())) or "none"

    def progress_line(self) -> str:
        clock = (
            f"{self.clock:%H:%M:%S}"
            if self.clock is not None and self.clock < FAR_FUTURE
            else "--:--:--"
        )
        return (
            f"{self.elapsed_seconds:6.1f}s  tasks {self.tasks} (reopened {self.reopened})  "
            f"sent {self.sent} ({self._statuses()})  pending {self.pending}  event time {clock}"
            + (f"  failed {self.failed}" if self.failed else "")
        )

    def report(self) -> str:
        outcomes = ", ".join(f"{o} {n}" for o, n in sorted(self.outcomes.items())) or "none"
        lines = [
            f"answered {self.tasks} tasks with {self.sent} feedback records in "
            f"{self.elapsed_seconds:.1f} s (×{self.time_scale:g})",
            f"  by status: {self._statuses()}",
            f"  scripts: {outcomes}; reopened tasks answered again: {self.reopened}",
            f"  not yet due when stopped: {self.pending}",
        ]
        if self.unreadable:
            lines.append(f"  unreadable dispatch/status records skipped: {self.unreadable}")
        if self.failed:
            lines.append(f"  NOT delivered: {self.failed} (first error: {self.first_error})")
        return "\n".join(lines)


def simulation_clock(start: datetime, elapsed_seconds: float, time_scale: float) -> datetime:
    """Event time after `elapsed_seconds` of wall time (time_scale inf: every answer is due)."""
    if math.isinf(time_scale):
        return FAR_FUTURE
    return start + timedelta(seconds=elapsed_seconds * time_scale)


def take(schedule: FeedbackSchedule, topic: str, value: bytes | None, settings: Settings) -> bool:
    """Feed one dispatch or status record to the schedule; False if it could not be read."""
    if value is None:
        return True
    try:
        if topic == settings.topic_dispatch:
            schedule.add_task(EnforcementTask.model_validate_json(value))
            return True
        status: dict[str, Any] = json.loads(value)
        if status.get("status") == "reopened":
            schedule.reopen(
                str(status["task_id"]),
                datetime.fromisoformat(status["at"]),
                datetime.fromisoformat(status["due_by"]),
            )
        return True
    except (ValidationError, ValueError, KeyError, TypeError):
        return False


async def answer_tasks(
    schedule: FeedbackSchedule,
    settings: Settings,
    *,
    start: datetime,
    time_scale: float = 1.0,
    duration: float | None = None,
    progress: Any = None,
    stop: asyncio.Event | None = None,
) -> FeedbackSummary:
    """Read tasks from the dispatch topic and reopenings from the status topic, and produce each
    scripted answer (key task_id) to the feedback topic once the clock reaches its `at`.

    Runs until `duration` wall seconds pass or `stop` is set. Raises BrokerUnreachable if the
    cluster does not answer."""
    if not time_scale > 0:
        raise ValueError(f"time_scale must be positive, got {time_scale}")
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    summary = FeedbackSummary(time_scale=time_scale)
    tail = TopicTail(
        settings.kafka_bootstrap,
        [settings.topic_dispatch, settings.topic_status],
        client_id="patrol-simulate-feedback",
        security=client_options(settings),
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        **client_options(settings),
        client_id="patrol-simulate-feedback",
        linger_ms=5,
        request_timeout_ms=15_000,
    )
    try:
        await producer.start()
    except KafkaConnectionError as exc:
        await producer.stop()
        raise BrokerUnreachable(unreachable_message(settings.kafka_bootstrap, exc)) from exc
    in_flight: set[asyncio.Future[Any]] = set()

    def delivered(status: str, future: asyncio.Future[Any]) -> None:
        in_flight.discard(future)
        if future.cancelled():
            return
        if future.exception() is None:
            summary.sent_by_status[status] += 1
        else:
            summary.failed += 1
            summary.first_error = summary.first_error or repr(future.exception())

    wall_start = loop.time()
    last_progress = -math.inf
    try:
        await tail.start()
        await ensure_topic(settings, settings.topic_feedback)
        while not stop.is_set():
            elapsed = loop.time() - wall_start
            if duration is not None and elapsed >= duration:
                break
            for record in await tail.poll(timeout_ms=100):
                if not take(schedule, record.topic, record.value, settings):
                    summary.unreadable += 1
            clock = simulation_clock(start, loop.time() - wall_start, time_scale)
            for answer in schedule.due(clock):
                future = await producer.send(settings.topic_feedback, answer.value, key=answer.key)
                in_flight.add(future)
                future.add_done_callback(lambda f, s=answer.status.value: delivered(s, f))
            summary.clock = clock
            summary.tasks = len(schedule.tasks)
            summary.outcomes = Counter(schedule.outcomes)
            summary.pending = schedule.pending
            summary.reopened = schedule.reopened
            summary.elapsed_seconds = loop.time() - wall_start
            if progress is not None and loop.time() - last_progress >= PROGRESS_EVERY_SECONDS:
                last_progress = loop.time()
                progress(summary)
        await producer.flush()
        if in_flight:
            await asyncio.wait(set(in_flight))
    finally:
        with contextlib.suppress(Exception):
            await tail.stop()
        await producer.stop()
        summary.finished = True
        summary.pending = schedule.pending
        summary.elapsed_seconds = loop.time() - wall_start
        if progress is not None:
            progress(summary)
    return summary
