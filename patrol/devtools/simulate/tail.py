"""Reading whole topics from their beginning with no consumer group: what the simulators learn
from the worker's output (tasks, feedback, status), and what the demo shows."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaConnectionError

from patrol.devtools.simulate.producer import BrokerUnreachable, unreachable_message

# How often to look again for a topic (or partitions) that is not there yet.
METADATA_EVERY_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class TailRecord:
    topic: str
    key: bytes | None
    value: bytes | None


class TopicTail:
    """Every partition of `topics`, from the first offset, no group and no commit: a run's own
    topics hold only that run's records, and a reader that starts again reads them all again
    (the simulators and the demo are idempotent on what they read). A topic that does not
    exist yet (the worker creates its outputs) is picked up when it appears."""

    def __init__(
        self,
        bootstrap: str,
        topics: Sequence[str],
        *,
        client_id: str,
        security: Mapping[str, Any] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.security = dict(security or {})
        """aiokafka's security arguments (`patrol.kafka.security.client_options`)."""
        self.topics = tuple(topics)
        self.client_id = client_id
        self._consumer: Any = None
        self._assigned: set[TopicPartition] = set()
        self._looked = -float("inf")

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            **self.security,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            client_id=self.client_id,
        )
        try:
            await self._consumer.start()
        except KafkaConnectionError as exc:
            await self._consumer.stop()
            raise BrokerUnreachable(unreachable_message(self.bootstrap, exc)) from exc

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def _assign_new(self) -> None:
        if time.monotonic() - self._looked < METADATA_EVERY_SECONDS:
            return
        self._looked = time.monotonic()
        consumer = self._consumer
        # All topics' metadata, asked without naming any: a metadata request naming a missing
        # topic would have the broker auto-create it with its default partitions, before the
        # worker creates it with its own (and assign() tracks only the assigned topics).
        metadata = await consumer._client.fetch_all_metadata()
        wanted = set(self._assigned)
        for topic in self.topics:
            partitions = metadata.partitions_for_topic(topic) or set()
            wanted |= {TopicPartition(topic, p) for p in partitions}
        if wanted == self._assigned:
            return
        positions = {tp: await consumer.position(tp) for tp in self._assigned}
        consumer.assign(sorted(wanted))
        for tp, offset in positions.items():
            consumer.seek(tp, offset)  # assign() starts over; keep what was read
        self._assigned = wanted

    @property
    def complete(self) -> bool:
        """Every topic found (its partitions assigned)."""
        return {tp.topic for tp in self._assigned} == set(self.topics)

    async def poll(self, timeout_ms: int = 200) -> list[TailRecord]:
        """The records that arrived since the last poll (waits at most `timeout_ms`)."""
        if not self.complete:
            await self._assign_new()
        if not self._assigned:
            await asyncio.sleep(timeout_ms / 1000)
            return []
        batch = await self._consumer.getmany(timeout_ms=timeout_ms)
        return [
            TailRecord(tp.topic, record.key, record.value)
            for tp, records in sorted(batch.items())
            for record in records
        ]
