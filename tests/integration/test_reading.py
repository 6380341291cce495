"""`read_to_end`: a whole topic as it stands, on the real broker."""

from __future__ import annotations

import uuid
from collections import Counter

from aiokafka import AIOKafkaProducer

from bench.kafka import create_topics
from patrol.kafka.reading import read_to_end


async def _topic(bootstrap: str, partitions: int) -> str:
    name = f"t{uuid.uuid4().hex[:8]}.reading"
    await create_topics(bootstrap, [name], partitions)
    return name


async def test_every_record_of_every_partition_tombstones_included(bootstrap: str) -> None:
    topic = await _topic(bootstrap, 3)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        written: list[tuple[bytes, bytes | None]] = [
            (f"k{i}".encode(), f"v{i}".encode()) for i in range(30)
        ]
        written.append((b"k3", None))  # a tombstone, as a changelog has
        for key, value in written:
            await producer.send_and_wait(topic, value, key=key)
        records = await read_to_end(bootstrap, topic)
        # written after the read: not in an earlier read, all of it in the next
        await producer.send_and_wait(topic, b"later", key=b"k99")
    finally:
        await producer.stop()
    assert len({r.partition for r in records}) == 3
    assert Counter((r.key, r.value) for r in records) == Counter(written)
    again = await read_to_end(bootstrap, topic)
    assert len(again) == len(written) + 1


async def test_a_topic_that_does_not_exist_reads_as_empty(bootstrap: str) -> None:
    assert await read_to_end(bootstrap, f"t{uuid.uuid4().hex[:8]}.missing") == []
