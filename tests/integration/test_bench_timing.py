"""The bench's task watcher on a broker-timed topic, on the real broker: a task is timed when
the broker appended it, not when the producer stamped it nor when the watcher fetched it."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import UTC, datetime

from aiokafka import AIOKafkaProducer

from bench.kafka import BROKER_TIMED, TaskWatcher, create_topics
from bench.stages import read_hop_times
from patrol.kafka import envelopes, loop_records
from patrol.kafka.topics import InternalTopics


def _task(event_id: str) -> bytes:
    return json.dumps({"task_id": f"t-{event_id}", "evidence": [{"event_id": event_id}]}).encode()


async def test_a_broker_timed_watcher_times_each_task_by_its_append(bootstrap: str) -> None:
    topic = f"t{uuid.uuid4().hex[:8]}.dispatch"
    await create_topics(bootstrap, [topic], 2, BROKER_TIMED)
    watcher = TaskWatcher(bootstrap, topic, broker_timed=True)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    await watcher.start(2)
    try:
        appended: dict[str, tuple[float, float]] = {}
        for i in range(2):
            before = time.time()
            # stamped an hour ago by its producer: the broker's time replaces it
            await producer.send_and_wait(
                topic, _task(f"e{i}"), key=b"k", timestamp_ms=int((before - 3600) * 1000)
            )
            appended[f"e{i}"] = (before, time.time())
            await asyncio.sleep(0.3)
        assert await watcher.wait_for(appended, timeout=30)
    finally:
        await watcher.stop()
        await producer.stop()
    for event_id, (before, acknowledged) in appended.items():
        received = watcher.received[event_id]
        # the broker's clock is this host's, in whole milliseconds
        assert before - 0.001 <= received <= acknowledged + 0.001


async def test_the_hop_reader_takes_each_reads_records_by_their_producers_stamps(
    bootstrap: str,
) -> None:
    """What the latency run reads after its load: the intake's batch records and the grace
    agent's `tasks-decided` records, each by its CreateTime; other kinds are passed over."""
    internal = InternalTopics.of(f"t{uuid.uuid4().hex[:8]}")
    await create_topics(bootstrap, [internal.cases, internal.task_loop], 3)
    detection = json.dumps({"event_id": "read-1", "source_id": "cam"}).encode()
    routed = list(envelopes.batch_records([envelopes.routed_item(detection, "z", 1)], None))
    decided = loop_records.decided_item(_task("read-1").decode(), 1)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        sends = [
            (internal.cases, routed[0], None, 1_000_020),
            (internal.cases, b"{}", [("patrol-record", b"sms-outcome")], 1_000_021),
            (
                internal.task_loop,
                next(loop_records.batch_records([decided])),
                loop_records.headers(loop_records.LoopRecord.tasks_decided),
                1_000_050,
            ),
            (
                internal.task_loop,
                loop_records.tick_record(datetime.now(UTC)),
                loop_records.headers(loop_records.LoopRecord.tick),
                1_000_060,
            ),
        ]
        for partition, (topic, value, headers, stamp) in enumerate(sends):
            await producer.send_and_wait(
                topic, value, partition=partition % 3, headers=headers, timestamp_ms=stamp
            )
    finally:
        await producer.stop()
    hops = await asyncio.wait_for(
        read_hop_times(bootstrap, internal, ["read-1", "read-2"]), timeout=60
    )
    assert hops.routed == {"read-1": 1000.020}
    assert hops.decided == {"read-1": 1000.050}
