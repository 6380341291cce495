"""Records gathered per topic partition and handed to the producer as whole batches.

`AIOKafkaProducer.send` costs about 9 µs a record: it finds the partition's batch, appends, and
makes (and later resolves) a future for that record alone; the worker's callback on each cost
more. The grace agent writes a changelog record for nearly every read and an outbox record for
every warning, so it paid that on each. Here the records of one stream event go into one
`BatchBuilder` per partition (about 2.5 µs a record), and `submit` hands each to the producer
with one future (the README's Performance section has what it did to throughput).

The agent submits at the end of every stream event, before it takes the next: faust commits an
event's offset only after that, and flushes the producer before it commits, so a record added
here is as durable as one sent with `send`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol


class BatchProducer(Protocol):
    """What `PartitionBatches` needs of a producer (`patrol.transport.Producer` has it)."""

    def create_batch(self) -> Any: ...

    async def send_batch(self, batch: Any, topic: str, partition: int) -> asyncio.Future[Any]: ...


class PartitionBatches:
    """Batches being filled, one per (topic, partition), until `submit`.

    `on_failure` hears of a batch the producer would not take or the broker refused; the
    records in it are lost to their topic, so the worker stops on it.
    """

    def __init__(
        self, producer: BatchProducer, on_failure: Callable[[BaseException], None]
    ) -> None:
        self._producer = producer
        self._on_failure = on_failure
        self._filling: dict[tuple[str, int], Any] = {}

    @property
    def filling(self) -> int:
        """Batches filled but not yet submitted."""
        return len(self._filling)

    async def add(self, topic: str, partition: int, key: bytes | None, value: bytes | None) -> None:
        """Add one record. A full batch goes to the producer at once and a new one is begun."""
        target = (topic, partition)
        batch = self._filling.get(target)
        if batch is None:
            batch = self._filling[target] = self._producer.create_batch()
        if batch.append(key=key, value=value, timestamp=None) is not None:
            return
        del self._filling[target]
        await self._send(target, batch)
        # An empty batch takes any record, even one larger than the batch size (the broker's
        # message size limit is what bounds it).
        batch = self._filling[target] = self._producer.create_batch()
        batch.append(key=key, value=value, timestamp=None)

    async def submit(self) -> None:
        """Hand every batch filled so far to the producer."""
        filled, self._filling = self._filling, {}
        for target, batch in filled.items():
            await self._send(target, batch)

    async def _send(self, target: tuple[str, int], batch: Any) -> None:
        batch.close()
        try:
            sent = await self._producer.send_batch(batch, target[0], target[1])
        except Exception as exc:
            self._on_failure(exc)
            raise
        sent.add_done_callback(self._check)

    def _check(self, sent: asyncio.Future[Any]) -> None:
        # cancelled: the producer is stopping, and what it had not sent is replayed
        if not sent.cancelled() and (exc := sent.exception()) is not None:
            self._on_failure(exc)
