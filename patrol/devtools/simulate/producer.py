"""Producing simulated detections to Kafka, paced so event time runs time_scale× the wall clock."""

from __future__ import annotations

import asyncio
import contextlib
import math
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TextIO

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError
from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, SpinnerColumn, Task, TaskID
from rich.text import Text

from patrol.devtools.simulate.events import SimEvent
from patrol.kafka.security import client_options
from patrol.kafka.topics import durability_config, replication_for
from patrol.settings import Settings

PROGRESS_EVERY_SECONDS = 0.25
# Deliveries not yet acknowledged before the loop waits for the broker to catch up.
MAX_IN_FLIGHT = 10_000


class BrokerUnreachable(RuntimeError):
    """The Kafka cluster did not answer; the message says where we looked and what to do."""


@dataclass
class SimSummary:
    """What was sent so far (acknowledged by the broker), by kind, with sizes and times."""

    time_scale: float = 1.0
    sent_by_kind: Counter[str] = field(default_factory=Counter)
    topics: Counter[str] = field(default_factory=Counter)
    bytes_sent: int = 0
    plate_reads: int = 0
    failed: int = 0
    first_error: str | None = None
    first_event_time: datetime | None = None
    last_event_time: datetime | None = None
    elapsed_seconds: float = 0.0
    finished: bool = False
    _plates: set[str] = field(default_factory=set, repr=False)

    @property
    def sent(self) -> int:
        return sum(self.sent_by_kind.values())

    @property
    def distinct_vehicles(self) -> int:
        return len(self._plates)

    @property
    def rate(self) -> float:
        return self.sent / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0

    def record(self, event: SimEvent, topic: str) -> None:
        self.sent_by_kind[event.kind.split(":", 1)[0]] += 1
        self.topics[topic] += 1
        self.bytes_sent += len(event.key) + len(event.value)
        if event.plate is not None and not event.is_malformed:
            self.plate_reads += 1
            self._plates.add(event.plate)
        if self.first_event_time is None:
            self.first_event_time = event.event_time
        self.last_event_time = event.event_time

    def kinds(self) -> str:
        return ", ".join(f"{kind} {count}" for kind, count in sorted(self.sent_by_kind.items()))

    def progress_line(self) -> str:
        event_time = f"{self.last_event_time:%H:%M:%S}" if self.last_event_time else "--:--:--"
        return (
            f"{self.elapsed_seconds:6.1f}s  sent {self.sent} ({self.kinds() or 'nothing yet'})  "
            f"{self.rate:.1f}/s  event time {event_time}"
            + (f"  failed {self.failed}" if self.failed else "")
        )

    def report(self) -> str:
        lines = [
            f"sent {self.sent} detections in {self.elapsed_seconds:.1f} s "
            f"({self.rate:.1f}/s, {self.bytes_sent / 1024:.1f} KiB) to "
            + (", ".join(sorted(self.topics)) or "no topic"),
            f"  by kind: {self.kinds() or 'none'}",
            f"  plate reads: {self.plate_reads} of {self.distinct_vehicles} distinct vehicles",
        ]
        if self.first_event_time and self.last_event_time:
            span = (self.last_event_time - self.first_event_time).total_seconds()
            lines.append(
                f"  event time: {self.first_event_time.isoformat(timespec='seconds')} to "
                f"{self.last_event_time.isoformat(timespec='seconds')} "
                f"({span / 60:.1f} min at ×{self.time_scale:g})"
            )
        if self.failed:
            lines.append(f"  NOT delivered: {self.failed} (first error: {self.first_error})")
        return "\n".join(lines)


ProgressCallback = Callable[[SimSummary], None]


class ProgressSource(Protocol):
    """What a progress display reads of a simulator's summary."""

    @property
    def finished(self) -> bool: ...

    @property
    def elapsed_seconds(self) -> float: ...

    def progress_line(self) -> str: ...


def topic_for(event: SimEvent, settings: Settings) -> str:
    return settings.topic_camera if event.topic_kind == "camera" else settings.topic_drone


def unreachable_message(bootstrap: str, error: object) -> str:
    return (
        f"cannot reach Kafka at {bootstrap} ({error}). Start a local broker with "
        "`patrol broker start`, or point PATROL_KAFKA_BOOTSTRAP (or --bootstrap) at your cluster."
    )


async def ensure_topic(settings: Settings, topic: str) -> None:
    """Create the topic with the worker's partition count if it is missing, so a simulator
    started before the worker does not leave an auto-created one-partition topic behind."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap,
        **client_options(settings),
        request_timeout_ms=10_000,
    )
    try:
        await admin.start()
    except KafkaConnectionError as exc:
        raise BrokerUnreachable(unreachable_message(settings.kafka_bootstrap, exc)) from exc
    try:
        if topic in await admin.list_topics():
            return
        replication = replication_for(len((await admin.describe_cluster())["brokers"]))
        wanted = NewTopic(
            topic,
            num_partitions=settings.partitions,
            replication_factor=replication,
            topic_configs=durability_config(replication),
        )
        with contextlib.suppress(TopicAlreadyExistsError):
            response: Any = await admin.create_topics([wanted])
            for _, code, *_ in getattr(response, "topic_errors", ()):
                if code not in (0, TopicAlreadyExistsError.errno):
                    raise KafkaError(f"creating topic {topic} failed with error code {code}")
    finally:
        await admin.close()


async def produce(
    events: Iterable[SimEvent],
    settings: Settings,
    *,
    time_scale: float = 1.0,
    duration: float | None = None,
    progress: ProgressCallback | None = None,
    stop: asyncio.Event | None = None,
) -> SimSummary:
    """Send `events` to their topics (key = source id), paced so that event time advances
    `time_scale` seconds per wall second from the first event (math.inf: as fast as possible).

    Stops after `duration` wall seconds, when the events run out, or when `stop` is set, and
    returns what the broker acknowledged. Raises BrokerUnreachable if the cluster does not answer.
    """
    if not time_scale > 0:
        raise ValueError(f"time_scale must be positive, got {time_scale}")
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    summary = SimSummary(time_scale=time_scale)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        **client_options(settings),
        client_id="patrol-simulate",
        linger_ms=20,
        max_batch_size=256 * 1024,
        request_timeout_ms=15_000,
    )
    try:
        await producer.start()
    except KafkaConnectionError as exc:
        await producer.stop()
        raise BrokerUnreachable(unreachable_message(settings.kafka_bootstrap, exc)) from exc

    ready_topics: set[str] = set()
    in_flight: set[asyncio.Future[Any]] = set()
    wall_start = loop.time()
    last_progress = -math.inf

    def delivered(event: SimEvent, topic: str, future: asyncio.Future[Any]) -> None:
        in_flight.discard(future)
        if future.cancelled():
            return
        error = future.exception()
        if error is None:
            summary.record(event, topic)
        else:
            summary.failed += 1
            summary.first_error = summary.first_error or repr(error)

    def report_progress(force: bool = False) -> None:
        nonlocal last_progress
        now = loop.time()
        summary.elapsed_seconds = now - wall_start
        if progress is not None and (force or now - last_progress >= PROGRESS_EVERY_SECONDS):
            last_progress = now
            progress(summary)

    try:
        anchor: datetime | None = None
        for event in events:
            if anchor is None:
                anchor = event.event_time
            offset = (event.event_time - anchor).total_seconds() / time_scale
            if duration is not None and (offset > duration or loop.time() - wall_start > duration):
                break
            delay = wall_start + offset - loop.time()
            while delay > 0 and not stop.is_set():
                report_progress()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), min(delay, PROGRESS_EVERY_SECONDS))
                delay = wall_start + offset - loop.time()
            if stop.is_set():
                break
            topic = topic_for(event, settings)
            if topic not in ready_topics:
                await ensure_topic(settings, topic)
                ready_topics.add(topic)
            future = await producer.send(topic, event.value, key=event.key)
            in_flight.add(future)
            future.add_done_callback(lambda f, e=event, t=topic: delivered(e, t, f))
            if len(in_flight) >= MAX_IN_FLIGHT:
                await asyncio.wait(set(in_flight), return_when=asyncio.FIRST_COMPLETED)
            report_progress()
        await producer.flush()
        if in_flight:
            await asyncio.wait(set(in_flight))
    finally:
        await producer.stop()
        summary.finished = True
        report_progress(force=True)
    return summary


class _SummaryColumn(ProgressColumn):
    """The summary's progress line, cut with … rather than wrapped on a narrow terminal."""

    def render(self, task: Task) -> Text:
        return Text(task.description, no_wrap=True, overflow="ellipsis")


class StderrProgress:
    """A live progress display: a rich Progress line on a terminal (a bar of the wall time when
    there is a duration), a line every few seconds otherwise (logs, CI); nothing once finished,
    the caller prints the summary."""

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        plain_every_seconds: float = 5.0,
        duration: float | None = None,
        width: int | None = None,
    ) -> None:
        self.stream = stream or sys.stderr
        self.is_tty = self.stream.isatty()
        self.plain_every_seconds = plain_every_seconds
        self.duration = duration
        self._last_plain = -math.inf
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        if self.is_tty:
            columns: list[ProgressColumn] = [SpinnerColumn(), _SummaryColumn()]
            if duration is not None:
                columns.insert(1, BarColumn(bar_width=20))
            self._progress = Progress(
                *columns,
                # force_terminal from the stream, not rich's guess: FORCE_COLOR must not make a
                # log redraw; refreshed by the producer's own progress ticks, no thread.
                console=Console(file=self.stream, force_terminal=True, width=width),
                auto_refresh=False,
            )

    def __call__(self, summary: ProgressSource) -> None:
        line = summary.progress_line()
        if self.is_tty:
            if self._progress is not None:
                self._draw(self._progress, summary, line)
            return
        now = time.monotonic()
        if summary.finished or now - self._last_plain >= self.plain_every_seconds:
            self._last_plain = now
            self.stream.write(line + "\n")
            self.stream.flush()

    def _draw(self, progress: Progress, summary: ProgressSource, line: str) -> None:
        if self._task is None:
            progress.start()
            self._task = progress.add_task(line, total=self.duration)
        completed = summary.elapsed_seconds
        if self.duration is not None:
            completed = min(completed, self.duration)
        progress.update(self._task, description=line, completed=completed, refresh=True)
        if summary.finished:
            progress.stop()  # the last line stays on screen; the summary goes below it
            self._progress = None
