"""Shared plumbing for integration tests: ports, processes, topics."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from patrol.devtools.processes import PatrolProcess
from patrol.devtools.processes import uncommitted as uncommitted  # re-exported for the tests
from patrol.waits import wait_http as wait_http

REPO = Path(__file__).resolve().parents[2]


@dataclass
class ManagedProcess(PatrolProcess):
    """A `patrol` subprocess run from the checkout; always stopped by its fixture."""

    cwd: Path | None = REPO


@dataclass
class Topics:
    """Unique topic names for one test, as PATROL_* variables for the worker."""

    suffix: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    @property
    def camera(self) -> str:
        return f"t{self.suffix}.detections.camera"

    @property
    def drone(self) -> str:
        return f"t{self.suffix}.detections.drone"

    @property
    def dispatch(self) -> str:
        return f"t{self.suffix}.dispatch.tasks"

    @property
    def sms(self) -> str:
        return f"t{self.suffix}.notifications.sms"

    @property
    def deadletter(self) -> str:
        return f"t{self.suffix}.deadletter"

    @property
    def feedback(self) -> str:
        return f"t{self.suffix}.dispatch.feedback"

    @property
    def status(self) -> str:
        return f"t{self.suffix}.dispatch.status"

    @property
    def app_id(self) -> str:
        return f"patrol-t{self.suffix}"

    def env(self) -> dict[str, str]:
        return {
            "PATROL_TOPIC_CAMERA": self.camera,
            "PATROL_TOPIC_DRONE": self.drone,
            "PATROL_TOPIC_DISPATCH": self.dispatch,
            "PATROL_TOPIC_SMS": self.sms,
            "PATROL_TOPIC_DEADLETTER": self.deadletter,
            "PATROL_TOPIC_FEEDBACK": self.feedback,
            "PATROL_TOPIC_STATUS": self.status,
            "PATROL_APP_ID": self.app_id,
        }


async def produce_values(
    bootstrap: str, topic: str, items: list[tuple[bytes | None, bytes]], **config: Any
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, **config)
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key) for key, value in items]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def read_topic(
    bootstrap: str, topic: str, *, min_count: int = 0, timeout: float = 30.0, settle: float = 2.0
) -> list[tuple[bytes | None, bytes]]:
    """Everything on `topic`: waits for `min_count` records, then `settle` s for stragglers."""
    records = await read_records(
        bootstrap, topic, min_count=min_count, timeout=timeout, settle=settle
    )
    return [(r.key, r.value) for r in records if r.value is not None]


async def read_records(
    bootstrap: str, topic: str, *, min_count: int = 0, timeout: float = 30.0, settle: float = 2.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """`read_topic`, as the records themselves (partition, headers, …)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=16 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    try:
        deadline = time.monotonic() + timeout
        parts: set[int] | None = None
        while parts is None and time.monotonic() < deadline:
            parts = consumer.partitions_for_topic(topic) or None
            if parts is None:
                await consumer._client.force_metadata_update()
                await asyncio.sleep(0.3)
        if parts is None:
            return records
        consumer.assign([TopicPartition(topic, p) for p in parts])
        quiet_until = None
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=300)
            for recs in batch.values():
                records.extend(r for r in recs if r.value is not None)
            if len(records) >= min_count:
                if quiet_until is None:
                    quiet_until = time.monotonic() + settle
                if batch:
                    quiet_until = time.monotonic() + settle
                if time.monotonic() >= quiet_until:
                    break
    finally:
        await consumer.stop()
    return records


async def read_json(bootstrap: str, topic: str, **kw: Any) -> list[dict[str, Any]]:
    return [json.loads(v) for _, v in await read_topic(bootstrap, topic, **kw)]
