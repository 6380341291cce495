"""The benchmark's Kafka edges: create topics, pre-produce, read committed offsets, watch tasks."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.workload import BenchRecord

PRODUCE_CHUNK = 20_000


async def create_topics(bootstrap: str, names: Iterable[str], partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [NewTopic(n, partitions, 1) for n in names if n not in existing]
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


@dataclass
class TaskWatcher:
    """Reads the dispatch topic and notes the wall time each task arrives (same host clock)."""

    bootstrap: str
    topic: str
    received: dict[str, float] = field(default_factory=dict)
    tasks: dict[str, dict[str, object]] = field(default_factory=dict)
    _consumer: AIOKafkaConsumer | None = None
    _runner: asyncio.Task[None] | None = None
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self, partitions: int) -> None:
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # A fetch names only the partitions with nothing fetched yet, and the broker holds
            # it this long when they are empty: a task on another partition waits meanwhile.
            fetch_max_wait_ms=10,
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
                    task = json.loads(record.value)
                    confirming = task["evidence"][-1]["event_id"]
                    self.received.setdefault(confirming, now)
                    self.tasks[confirming] = task
            if batch:
                self._arrived.set()

    async def wait_for(self, confirming: Iterable[str], timeout: float) -> bool:
        """Whether the tasks of these confirming reads (event ids) arrived within `timeout` s."""
        awaited = set(confirming)
        deadline = time.monotonic() + timeout
        while not awaited <= self.received.keys():
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
