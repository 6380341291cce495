"""The benchmark's Kafka edges: create topics, pre-produce, read committed offsets, watch tasks."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.processes import BenchError
from bench.workload import BenchFeedback, BenchRecord

PRODUCE_CHUNK = 20_000
LOG_APPEND_TIME = 1  # a record's timestamp_type when the broker stamped it
# A broker-timed reader's fetches: held until this much arrived or this long passed.
LAZY_FETCH_WAIT_MS = 250
LAZY_FETCH_MIN_BYTES = 256 * 1024


# A topic whose records the broker stamps with the time it appended them: what the bench times
# there is when a record became readable, whenever its reader fetched it (`_TopicReader`).
BROKER_TIMED = {"message.timestamp.type": "LogAppendTime"}


async def create_topics(
    bootstrap: str,
    names: Iterable[str],
    partitions: int,
    config: dict[str, str] | None = None,
) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(n, partitions, 1, topic_configs=config or {})
            for n in names
            if n not in existing
        ]
        if missing:
            await admin.create_topics(missing)
    finally:
        await admin.close()


def bulk_producer(bootstrap: str) -> AIOKafkaProducer:
    """A producer tuned to pre-load input quickly (not to mimic devices)."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        linger_ms=20,
        max_batch_size=512 * 1024,
        max_request_size=8 * 1024 * 1024,
        acks=1,
    )


async def produce_records(
    bootstrap: str, records: Sequence[BenchRecord], topics: dict[str, str]
) -> float:
    """Produce each record to its topic (`topics`: "camera"/"drone" → name); seconds taken."""
    producer = bulk_producer(bootstrap)
    await producer.start()
    started = time.perf_counter()
    try:
        for begin in range(0, len(records), PRODUCE_CHUNK):
            futures = [
                await producer.send(topics[r.topic_kind], r.value, key=r.key)
                for r in records[begin : begin + PRODUCE_CHUNK]
            ]
            await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return time.perf_counter() - started


async def committed_offsets(bootstrap: str, group: str) -> dict[TopicPartition, int]:
    """The offsets `group` has committed, per partition (absent: nothing committed)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {tp: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}


class OffsetWatcher:
    """Polls a consumer group's committed offsets over one long-lived admin connection."""

    def __init__(self, bootstrap: str, group: str) -> None:
        self.group = group
        self._admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000)

    async def __aenter__(self) -> OffsetWatcher:
        await self._admin.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._admin.close()

    async def committed_on(self, topics: Iterable[str]) -> int:
        """Sum of committed offsets on these topics (= records consumed past, per partition)."""
        wanted = set(topics)
        offsets = await self._admin.list_consumer_group_offsets(self.group)
        return sum(m.offset for tp, m in offsets.items() if tp.topic in wanted and m.offset > 0)

    async def caught_up(self, ends: dict[TopicPartition, int]) -> bool:
        """Whether the group has committed at least these offsets (e.g. `end_offsets`)."""
        offsets = await self._admin.list_consumer_group_offsets(self.group)
        return all(
            end == 0 or (tp in offsets and offsets[tp].offset >= end) for tp, end in ends.items()
        )


class _TopicReader:
    """Reads every partition of a topic from the start in a task of its own, and hands each
    record to `_take` with the time it arrived (same host clock as the sends).

    On a topic created with `BROKER_TIMED` that is the broker's append time, the moment the
    record became readable, and the reader fetches lazily: a few large fetches a second rather
    than one every few milliseconds, which at 1,000 records/s cost this process a fifth of a
    core in socket writes and the broker as much again, on the cores the worker is timed on.
    Elsewhere it is the wall time its fetch returned, and the reader fetches eagerly.
    """

    def __init__(self, bootstrap: str, topic: str, *, broker_timed: bool = False) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.broker_timed = broker_timed
        self._consumer: AIOKafkaConsumer | None = None
        self._runner: asyncio.Task[None] | None = None
        self._arrived = asyncio.Event()

    async def start(self, partitions: int) -> None:
        fetching: dict[str, int] = (
            {"fetch_max_wait_ms": LAZY_FETCH_WAIT_MS, "fetch_min_bytes": LAZY_FETCH_MIN_BYTES}
            if self.broker_timed
            # A fetch names only the partitions with nothing fetched yet, and the broker holds
            # it this long when they are empty: a task on another partition waits meanwhile.
            else {"fetch_max_wait_ms": 10}
        )
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **fetching,
        )
        await self._consumer.start()
        self._consumer.assign([TopicPartition(self.topic, p) for p in range(partitions)])
        self._runner = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self._consumer is not None
        while True:
            batch = await self._consumer.getmany(timeout_ms=100)
            now = time.time()
            for records in batch.values():
                for record in records:
                    self._take(record.key, record.value, self._arrival(record, now))
            if batch:
                self._arrived.set()

    def _arrival(self, record: Any, fetched: float) -> float:
        if not self.broker_timed:
            return fetched
        if record.timestamp_type != LOG_APPEND_TIME:
            raise BenchError(
                f"{self.topic} is not broker-timed: create it with bench.kafka.BROKER_TIMED"
            )
        return float(record.timestamp) / 1000

    def _take(self, key: bytes | None, value: bytes | None, now: float) -> None:
        raise NotImplementedError

    async def _wait_until(self, done: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)
        return True

    async def stop(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        if self._consumer is not None:
            await self._consumer.stop()


def confirming_event_id(task: dict[str, Any]) -> str:
    """The read a task's JSON was decided on (its last piece of evidence): how the bench
    knows a task by the read it timed."""
    event_id: str = task["evidence"][-1]["event_id"]
    return event_id


class TaskWatcher(_TopicReader):
    """Reads the dispatch topic and notes the wall time each task arrives (same host clock);
    `on_task`, if given, is told of each task the first time it arrives."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        on_task: Callable[[dict[str, Any]], None] | None = None,
        *,
        broker_timed: bool = False,
    ) -> None:
        super().__init__(bootstrap, topic, broker_timed=broker_timed)
        self.received: dict[str, float] = {}
        self.tasks: dict[str, dict[str, Any]] = {}
        self._on_task = on_task

    def _take(self, key: bytes | None, value: bytes | None, now: float) -> None:
        task = json.loads(value or b"{}")
        confirming = confirming_event_id(task)
        first = confirming not in self.received
        self.received.setdefault(confirming, now)
        self.tasks[confirming] = task
        if first and self._on_task is not None:
            self._on_task(task)

    async def wait_for(self, confirming: Iterable[str], timeout: float) -> bool:
        """Whether the tasks of these confirming reads (event ids) arrived within `timeout` s."""
        awaited = set(confirming)
        return await self._wait_until(lambda: awaited <= self.received.keys(), timeout)


class StatusWatcher(_TopicReader):
    """Reads the status topic: the wall time each feedback's status record arrived (by its
    feedback id), and every record's (task, status, cause, feedback) to find repeats."""

    def __init__(self, bootstrap: str, topic: str, *, broker_timed: bool = False) -> None:
        super().__init__(bootstrap, topic, broker_timed=broker_timed)
        self.received: dict[str, float] = {}
        self.records: Counter[tuple[str, str, str, str | None]] = Counter()
        self.wrong_keys = 0

    def _take(self, key: bytes | None, value: bytes | None, now: float) -> None:
        status = json.loads(value or b"{}")
        feedback_id = status.get("feedback_id")
        if feedback_id is not None:
            self.received.setdefault(feedback_id, now)
        if key != status["task_id"].encode():
            self.wrong_keys += 1
        self.records[(status["task_id"], status["status"], status["cause"], feedback_id)] += 1

    def by_cause(self) -> dict[str, int]:
        counts: Counter[str] = Counter()
        for (_, status, cause, _), n in self.records.items():
            counts[f"{cause}:{status}"] += n
        return dict(sorted(counts.items()))

    def repeated(self) -> int:
        """Records beyond the first with the same task, status, cause and feedback id."""
        return sum(n - 1 for n in self.records.values() if n > 1)

    async def wait_for(self, feedback_ids: Iterable[str], timeout: float) -> bool:
        awaited = set(feedback_ids)
        return await self._wait_until(lambda: awaited <= self.received.keys(), timeout)


class FeedbackResponder(_TopicReader):
    """The throughput run's dispatch system: answers each task it reads on the dispatch topic
    (by its key, the task id) with that task's feedback records, all its steps at once and in
    order, on the feedback topic. Feedback can only follow its task: produced before it, it
    would be taken first and dead-lettered as `unknown_task`."""

    def __init__(
        self,
        bootstrap: str,
        dispatch: str,
        feedback_topic: str,
        answers: dict[str, list[BenchFeedback]],
    ) -> None:
        super().__init__(bootstrap, dispatch)
        self.feedback_topic = feedback_topic
        self._answers = answers
        self._producer: AIOKafkaProducer | None = None
        self._due: list[BenchFeedback] = []
        self.answered = 0
        self.produced = 0
        self.unexpected = 0

    async def start(self, partitions: int) -> None:
        self._producer = bulk_producer(self.bootstrap)
        await self._producer.start()
        await super().start(partitions)

    def _take(self, key: bytes | None, value: bytes | None, now: float) -> None:
        steps = self._answers.pop((key or b"").decode(), None)
        if steps is None:
            self.unexpected += 1  # a task the workload did not foresee, or one seen again
            return
        self.answered += 1
        self._due.extend(steps)

    async def _read(self) -> None:
        assert self._consumer is not None and self._producer is not None
        while True:
            batch = await self._consumer.getmany(timeout_ms=100)
            for records in batch.values():
                for record in records:
                    self._take(record.key, record.value, 0.0)
            due, self._due = self._due, []
            for step in due:
                await self._producer.send(
                    self.feedback_topic, step.value, key=step.task_id.encode()
                )
            self.produced += len(due)

    async def stop(self) -> None:
        await super().stop()
        if self._producer is not None:
            await self._producer.stop()
