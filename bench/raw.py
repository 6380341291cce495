"""The baseline: the least a Kafka service must do per detection, with plain aiokafka.

consume (consumer group, `getmany` batches) → `Detection.model_validate_json` (or
`TaskFeedback`'s, on the feedback topic) → produce the re-serialised record to an output topic →
commit once the batch is acknowledged.

`run_raw_hop` is the latency run's baseline: the same hop, at the offered load, in a process of
its own (`python -m bench.raw`), timed by the same watcher as the worker's tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from pydantic import ValidationError

from patrol.domain.models import Detection, TaskFeedback

BATCH_RECORDS = 5_000


@dataclass(frozen=True, slots=True)
class RawRun:
    processed: int
    invalid: int
    seconds: float
    """From the first batch received to the last batch produced and committed."""

    @property
    def events_per_second(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0


async def run_raw_pipeline(
    bootstrap: str,
    inputs: list[str],
    output: str,
    group: str,
    expected: int,
    timeout: float,
    feedback_topics: frozenset[str] = frozenset(),
) -> RawRun:
    """Records of `feedback_topics` are TaskFeedback, the others Detections."""
    consumer = AIOKafkaConsumer(
        *inputs,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    # The same delivery guarantees as the worker's producer (acks=all, linger 5 ms).
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await consumer.start()
    await producer.start()
    processed = invalid = 0
    first: float | None = None
    deadline = time.monotonic() + timeout
    try:
        while processed < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500, max_records=BATCH_RECORDS)
            if not batch:
                continue
            if first is None:
                first = time.perf_counter()
            deliveries = []
            for tp, records in batch.items():
                model = TaskFeedback if tp.topic in feedback_topics else Detection
                for record in records:
                    processed += 1
                    try:
                        parsed = model.model_validate_json(record.value or b"")
                    except ValidationError:
                        invalid += 1
                        continue
                    value = parsed.model_dump_json().encode()
                    deliveries.append(await producer.send(output, value, key=record.key))
            await asyncio.gather(*deliveries)
            await consumer.commit()
    finally:
        await producer.stop()
        await consumer.stop()
    seconds = time.perf_counter() - first if first is not None else 0.0
    return RawRun(processed, invalid, seconds)


# The raw hop for the latency run: the same work per detection, record by record as it comes,
# so the worker's p99 can be read against what plain aiokafka does on this machine today.
HOP_FETCH_MAX_WAIT_MS = 10


def hop_output(detection: Detection) -> bytes:
    """What the hop writes per detection: enough for the bench's task watcher to time it."""
    return json.dumps({"evidence": [{"event_id": detection.event_id}]}).encode()


async def run_raw_hop(bootstrap: str, inputs: list[str], output: str, group: str) -> None:
    """consume → validate → produce (acks=all) → commit each fetched batch, until cancelled."""
    consumer = AIOKafkaConsumer(
        *inputs,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=HOP_FETCH_MAX_WAIT_MS,
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    await consumer.start()
    await producer.start()
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=100)
            deliveries = []
            for records in batch.values():
                for record in records:
                    try:
                        detection = Detection.model_validate_json(record.value or b"")
                    except ValidationError:
                        continue
                    deliveries.append(
                        await producer.send(output, hop_output(detection), key=record.key)
                    )
            if deliveries:
                await asyncio.gather(*deliveries)
                await consumer.commit()
    finally:
        await producer.stop()
        await consumer.stop()


def main(argv: list[str] | None = None) -> None:
    """`python -m bench.raw BOOTSTRAP GROUP OUTPUT INPUT...`: the raw hop, until SIGTERM."""
    bootstrap, group, output, *inputs = argv if argv is not None else sys.argv[1:]

    async def run() -> None:
        hop = asyncio.create_task(run_raw_hop(bootstrap, inputs, output, group))
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        hop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await hop

    asyncio.run(run())


if __name__ == "__main__":
    main()
