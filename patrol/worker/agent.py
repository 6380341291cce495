"""What the stateful agents share: the batch records of the internal topics, taken apart; where
their changelog records go; the index of when each key next needs the clock."""

from __future__ import annotations

import heapq
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from patrol.kafka import envelopes
from patrol.kafka.envelopes import RoutedDetection


class RecordAgent(Protocol):
    """What the faust app feeds: each record of an agent's topic, then `after_event`."""

    async def take(
        self, partition: int, headers: Iterable[tuple[str, bytes]], value: bytes
    ) -> None: ...

    async def after_event(self) -> None: ...


class BatchAgent:
    """An agent that takes the intake's batch records: each detection in order, each followed
    by its own event time, then the intake's clock. A detection that fails is logged and the
    rest still apply; a record that is not a batch is logged and skipped."""

    log: logging.Logger

    async def take(
        self, partition: int, headers: Iterable[tuple[str, bytes]], value: bytes
    ) -> None:
        """One record of the agent's topic, as the faust app hands it over."""
        await self.apply_batch(partition, value)

    async def after_event(self) -> None:
        """Runs after each record, before the agent takes the next (and before faust can commit
        the record's offset)."""

    def revoked(self) -> None:
        """Partitions moved away; what the agent kept beside the table must be rebuilt."""

    async def apply_batch(self, partition: int, value: bytes) -> None:
        try:
            batch = envelopes.decode(value)
        except Exception:
            self.log.exception("could not decode a batch on partition %d", partition)
            return
        for routed in batch.items:
            try:
                await self.apply_read(partition, routed)
                await self.advance_clock(partition, routed.detection.observed_at)
            except Exception:
                self.log.exception("could not apply a detection on partition %d", partition)
        if batch.clock is not None:
            await self.advance_clock(partition, batch.clock)

    async def apply_read(self, partition: int, routed: RoutedDetection) -> None:
        raise NotImplementedError

    async def advance_clock(self, partition: int, clock: datetime) -> None:
        raise NotImplementedError


class RecordBatches(Protocol):
    """Where the agent's changelog and outbox records go (`patrol.kafka.batches` has it)."""

    async def add(
        self, topic: str, partition: int, key: bytes | None, value: bytes | None
    ) -> None: ...

    async def submit(self) -> None: ...


@dataclass
class Expiries:
    """Which case keys of one partition need a clock step, bucketed by the second they are due.

    A key may sit in a stale bucket after its state changed; a bucket's keys are re-evaluated
    when it comes due, so a stale entry costs one look and sets keep duplicates out. This keeps
    the index to one set entry per case, not a heap entry plus a dict entry.
    """

    buckets: dict[int, set[bytes]] = field(default_factory=dict)
    seconds: list[int] = field(default_factory=list)
    open_cases: int = 0

    def schedule(self, key: bytes, at: datetime | None) -> None:
        if at is None:
            return
        second = math.floor(at.timestamp())
        bucket = self.buckets.get(second)
        if bucket is None:
            bucket = self.buckets[second] = set()
            heapq.heappush(self.seconds, second)
        bucket.add(key)

    def pop_due(self, clock: datetime) -> set[bytes]:
        """Keys whose bucket lies wholly before `clock` (each key due strictly before it)."""
        now = clock.timestamp()
        keys: set[bytes] = set()
        while self.seconds and self.seconds[0] + 1 <= now:
            keys |= self.buckets.pop(heapq.heappop(self.seconds))
        return keys
