"""The bench's task watcher on a broker-timed topic, on the real broker: a task is timed when
the broker appended it, not when the producer stamped it nor when the watcher fetched it."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

from aiokafka import AIOKafkaProducer

from bench.kafka import BROKER_TIMED, TaskWatcher, create_topics


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
