"""What the stateful agents share: the batch records of the internal topics, taken apart."""

from __future__ import annotations

import logging
from collections.abc import Iterable
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
