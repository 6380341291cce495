"""The baseline: the least a Kafka service must do per detection, with plain aiokafka.

consume (consumer group, `getmany` batches) → `Detection.model_validate_json` → produce the
re-serialised detection to an output topic → commit once the batch is acknowledged.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from pydantic import ValidationError

from patrol.domain.models import Detection

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
    bootstrap: str, inputs: list[str], output: str, group: str, expected: int, timeout: float
) -> RawRun:
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
            for records in batch.values():
                for record in records:
                    processed += 1
                    try:
                        detection = Detection.model_validate_json(record.value or b"")
                    except ValidationError:
                        invalid += 1
                        continue
                    value = detection.model_dump_json().encode()
                    deliveries.append(await producer.send(output, value, key=record.key))
            await asyncio.gather(*deliveries)
            await consumer.commit()
    finally:
        await producer.stop()
        await consumer.stop()
    seconds = time.perf_counter() - first if first is not None else 0.0
    return RawRun(processed, invalid, seconds)
