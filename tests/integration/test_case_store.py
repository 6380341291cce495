"""The cases table's store, loaded in bulk from a real changelog topic."""

from __future__ import annotations

import uuid

import faust
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from faust.types import TP

from patrol.kafka.partitioning import partition_of
from patrol.worker.faust_ext import STORE_URL, BulkLoadedStore

pytestmark = pytest.mark.integration

PARTITIONS = 2


def keys_on(partition: int, count: int) -> list[bytes]:
    """Case-like keys that the default partitioner puts on `partition`."""
    found: list[bytes] = []
    n = 0
    while len(found) < count:
        key = f"浙G{n:05d}|zone-{n % 7}".encode()
        if partition_of(key, PARTITIONS) == partition:
            found.append(key)
        n += 1
    return found


async def test_a_store_loads_its_changelog_partitions_and_drops_revoked_ones(
    bootstrap: str,
) -> None:
    app = faust.App(
        f"store-{uuid.uuid4().hex[:8]}",
        broker=f"kafka://{bootstrap}",
        store="memory://",
        key_serializer="raw",
        value_serializer="raw",
    )
    table = app.Table(
        "cases",
        store=STORE_URL,
        partitions=PARTITIONS,
        key_type=bytes,
        value_type=bytes,
    )
    changelog = table.changelog_topic.get_topic_name()
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(changelog, PARTITIONS, 1)])
    finally:
        await admin.close()

    zero, one = keys_on(0, 3), keys_on(1, 2)
    writes: list[tuple[bytes, bytes | None]] = [
        (zero[0], b"opened"),
        (zero[1], b"opened"),
        (one[0], b"opened"),
        (zero[0], b"confirmed"),  # a later value wins
        (zero[1], None),  # deleted
        (zero[2], b"opened"),
        (one[1], b"opened"),
    ]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for key, value in writes:
            await producer.send_and_wait(
                changelog, value, key=key, partition=partition_of(key, PARTITIONS)
            )
    finally:
        await producer.stop()

    store = table.data
    assert isinstance(store, BulkLoadedStore)
    both = {TP(changelog, 0), TP(changelog, 1)}
    await store.on_rebalance(both, set(), both)

    assert dict(store.data) == {
        zero[0]: b"confirmed",
        zero[2]: b"opened",
        one[0]: b"opened",
        one[1]: b"opened",
    }
    # faust's recovery starts from the last record read, so it has nothing left to read
    assert store.persisted_offset(TP(changelog, 0)) == 4
    assert store.persisted_offset(TP(changelog, 1)) == 1

    await store.on_rebalance({TP(changelog, 0)}, {TP(changelog, 1)}, set())
    assert dict(store.data) == {zero[0]: b"confirmed", zero[2]: b"opened"}
    assert store.persisted_offset(TP(changelog, 1)) is None
