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

**State after its effects.** A table's changelog records (the `state_topics`) must not reach the
broker before the records of what the same decision caused (a task, an SMS warning, a status
record): the producer sends a closed batch at once while a single record lingers, so the state
could leave in one produce request and its task in the next, and a kill between the two left a
case marked "ticketed" whose task never existed (the replay then rightly decides nothing new).
So `submit` hands the event's other batches over first and the state batches only once those,
and every record registered with `after`, are acknowledged: without waiting in the agent, in a
hand-over chained behind the previous one (a key's changelog stays in order), which the
producer's flush, and so faust's commit, waits for (`BatchProducer.hold_flush`). An effect the
broker refused keeps its state (and every later state) back: the worker stops on it, and a
restart decides again.

**A key's latest state only.** State records wait for `submit` by key, so a key written several
times in one stream event leaves once, with its last value (a compacted changelog keeps no
more, and all of an event's state leaves together or not at all). In a catch-up the loop takes
a task's feedback steps in one event: 55 % of its changelog writes in the bench's throughput
run were a key already written in the same event.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection
from typing import Any, Protocol


class BatchProducer(Protocol):
    """What `PartitionBatches` needs of a producer (`patrol.worker.faust_ext.Producer` has it)."""

    def create_batch(self) -> Any: ...

    async def send_batch(self, batch: Any, topic: str, partition: int) -> asyncio.Future[Any]: ...

    def hold_flush(self, pending: asyncio.Future[Any]) -> None:
        """Make the producer's flush (and so the consumer's commit) wait for `pending` too."""


_Target = tuple[str, int]


class PartitionBatches:
    """Batches being filled, one per (topic, partition), until `submit`.

    `on_failure` hears of a batch the producer would not take or the broker refused; the
    records in it are lost to their topic, so the worker stops on it. Records of
    `state_topics` leave only after the effects submitted with them are acknowledged.
    """

    def __init__(
        self,
        producer: BatchProducer,
        on_failure: Callable[[BaseException], None],
        *,
        state_topics: Collection[str] = (),
    ) -> None:
        self._producer = producer
        self._on_failure = on_failure
        self._state_topics = frozenset(state_topics)
        self._filling: dict[_Target, Any] = {}
        self._state: dict[_Target, dict[bytes, bytes | None]] = {}
        self._effects: list[asyncio.Future[Any]] = []
        self._handing: asyncio.Future[bool] | None = None

    @property
    def filling(self) -> int:
        """Partitions with records not yet submitted."""
        return len(self._filling) + len(self._state)

    def after(self, sent: asyncio.Future[Any]) -> None:
        """The state records of the next `submit` wait until this record is acknowledged."""
        self._effects.append(sent)

    async def add(self, topic: str, partition: int, key: bytes | None, value: bytes | None) -> None:
        """Add one record. A state record waits for `submit`, replacing what its key was given
        earlier in the event; a full batch of effects goes to the producer at once, and a new
        one is begun."""
        target = (topic, partition)
        if topic in self._state_topics:
            if key is None:
                raise ValueError(f"a record of state topic {topic} needs a key")
            records = self._state.get(target)
            if records is None:
                records = self._state[target] = {}
            records[key] = value
            return
        batch = self._filling.get(target)
        if batch is None:
            batch = self._filling[target] = self._producer.create_batch()
        if batch.append(key=key, value=value, timestamp=None) is not None:
            return
        del self._filling[target]
        self._effects.append(await self._send(target, batch))
        self._filling[target] = self._begun(key, value)

    async def submit(self) -> None:
        """Hand every batch filled so far to the producer: the effects now, the state once
        they are acknowledged."""
        filled, self._filling = self._filling, {}
        for target, batch in filled.items():
            self._effects.append(await self._send(target, batch))
        state = self._state_batches()
        if not state:
            if self._clear():
                self._effects = []
            return
        if self._clear():
            self._effects = []
            for target, batch in state:
                await self._send(target, batch)
            return
        effects, self._effects = self._effects, []
        handing = asyncio.ensure_future(self._hand_over(self._handing, effects, state))
        self._handing = handing
        self._producer.hold_flush(handing)

    def _state_batches(self) -> list[tuple[_Target, Any]]:
        """The event's state records, a key's latest each, in batches per partition."""
        pending, self._state = self._state, {}
        built: list[tuple[_Target, Any]] = []
        for target, records in pending.items():
            batch = self._producer.create_batch()
            for key, value in records.items():
                if batch.append(key=key, value=value, timestamp=None) is None:
                    built.append((target, batch))
                    batch = self._begun(key, value)
            built.append((target, batch))
        return built

    def _begun(self, key: bytes | None, value: bytes | None) -> Any:
        # An empty batch takes any record, even one larger than the batch size (the broker's
        # message size limit is what bounds it).
        batch = self._producer.create_batch()
        batch.append(key=key, value=value, timestamp=None)
        return batch

    def _clear(self) -> bool:
        """Whether state may go now: no hand-over pending, every effect acknowledged."""
        if self._handing is not None and not (
            self._handing.done() and not self._handing.cancelled() and self._handing.result()
        ):
            return False
        return all(_acknowledged(sent) for sent in self._effects)

    async def _hand_over(
        self,
        previous: asyncio.Future[bool] | None,
        effects: list[asyncio.Future[Any]],
        state: list[tuple[_Target, Any]],
    ) -> bool:
        """Send `state` once `previous` sent its own and `effects` are acknowledged."""
        if previous is not None:
            await asyncio.wait([previous])
            if previous.cancelled() or not previous.result():
                return False
        if effects:
            await asyncio.wait(effects)
        if not all(_acknowledged(sent) for sent in effects):
            return False  # the failure stops the worker (`on_failure`); a restart decides again
        try:
            for target, batch in state:
                await self._send(target, batch)
        except Exception:  # told to on_failure by _send
            return False
        return True

    async def _send(self, target: _Target, batch: Any) -> asyncio.Future[Any]:
        batch.close()
        try:
            sent = await self._producer.send_batch(batch, target[0], target[1])
        except Exception as exc:
            self._on_failure(exc)
            raise
        sent.add_done_callback(self._check)
        return sent

    def _check(self, sent: asyncio.Future[Any]) -> None:
        # cancelled: the producer is stopping, and what it had not sent is replayed
        if not sent.cancelled() and (exc := sent.exception()) is not None:
            self._on_failure(exc)


def _acknowledged(sent: asyncio.Future[Any]) -> bool:
    return sent.done() and not sent.cancelled() and sent.exception() is None
