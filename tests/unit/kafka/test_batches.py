"""Changelog and outbox records gathered per partition into aiokafka batches (patrol.batches).

The batches are aiokafka's own `BatchBuilder`s; the producer here only keeps what it was handed
and reads the records back out of the built batch, as the broker would.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.default_records import DefaultRecordBatch

from patrol.kafka.batches import PartitionBatches


class Producer:
    """Takes batches like `patrol.transport.Producer`; the broker's answer is up to the test."""

    def __init__(self, batch_bytes: int = 16 * 1024, refuse: BaseException | None = None) -> None:
        self.batch_bytes = batch_bytes
        self.refuse = refuse
        self.sent: list[tuple[str, int, list[tuple[bytes | None, bytes | None]]]] = []
        self.acks: list[asyncio.Future[Any]] = []
        self.held: list[asyncio.Future[Any]] = []

    def hold_flush(self, pending: asyncio.Future[Any]) -> None:
        self.held.append(pending)

    def create_batch(self) -> BatchBuilder:
        return BatchBuilder(self.batch_bytes, 0)

    async def send_batch(self, batch: Any, topic: str, partition: int) -> asyncio.Future[Any]:
        if self.refuse is not None:
            raise self.refuse
        records = [(r.key, r.value) for r in DefaultRecordBatch(batch._build())]
        self.sent.append((topic, partition, records))
        ack: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.acks.append(ack)
        return ack


async def test_an_events_records_leave_together_one_batch_per_partition_in_order() -> None:
    producer, failures = Producer(), list[BaseException]()
    batches = PartitionBatches(producer, failures.append)
    await batches.add("changelog", 3, b"k1", b"v1")
    await batches.add("outbox", 3, b"k1", b"sms")
    await batches.add("changelog", 5, b"k2", b"v2")
    await batches.add("changelog", 3, b"k1", None)  # a delete (tombstone) of the same key
    assert producer.sent == [] and batches.filling == 3

    await batches.submit()

    assert producer.sent == [
        ("changelog", 3, [(b"k1", b"v1"), (b"k1", None)]),
        ("outbox", 3, [(b"k1", b"sms")]),
        ("changelog", 5, [(b"k2", b"v2")]),
    ]
    assert batches.filling == 0
    await batches.submit()  # nothing new: nothing sent
    assert len(producer.sent) == 3 and failures == []


async def test_a_full_batch_goes_at_once_and_the_partitions_order_is_kept() -> None:
    producer = Producer(batch_bytes=512)
    batches = PartitionBatches(producer, lambda exc: None)
    values = [f"state-{n:03d}".encode() * 8 for n in range(12)]  # 72 bytes each
    for n, value in enumerate(values):
        await batches.add("changelog", 0, f"k{n}".encode(), value)

    assert len(producer.sent) >= 1  # handed over before the event ended
    await batches.submit()

    sent = [value for _, _, records in producer.sent for _, value in records]
    assert sent == values
    assert len(producer.sent) > 1


async def test_a_record_larger_than_a_batch_goes_in_one_of_its_own() -> None:
    producer = Producer(batch_bytes=128)
    batches = PartitionBatches(producer, lambda exc: None)
    await batches.add("changelog", 0, b"small", b"x")
    await batches.add("changelog", 0, b"big", b"y" * 4096)
    await batches.submit()
    assert producer.sent == [
        ("changelog", 0, [(b"small", b"x")]),
        ("changelog", 0, [(b"big", b"y" * 4096)]),
    ]


async def test_a_batch_the_broker_refuses_stops_the_worker() -> None:
    producer, failures = Producer(), list[BaseException]()
    batches = PartitionBatches(producer, failures.append)
    await batches.add("changelog", 1, b"k", b"v")
    await batches.submit()
    refused = RuntimeError("NotEnoughReplicas")
    producer.acks[0].set_exception(refused)
    await asyncio.sleep(0)
    assert failures == [refused]


async def test_an_acknowledged_or_cancelled_batch_is_no_failure() -> None:
    producer, failures = Producer(), list[BaseException]()
    batches = PartitionBatches(producer, failures.append)
    for partition in (0, 1):
        await batches.add("changelog", partition, b"k", b"v")
    await batches.submit()
    producer.acks[0].set_result(None)
    producer.acks[1].cancel()  # the producer stopped; the next worker replays the event
    await asyncio.sleep(0)
    assert failures == []


async def test_a_producer_that_will_not_take_a_batch_stops_the_worker_and_raises() -> None:
    closed = RuntimeError("producer closed")
    failures: list[BaseException] = []
    batches = PartitionBatches(Producer(refuse=closed), failures.append)
    await batches.add("outbox", 2, b"k", b"sms")
    with pytest.raises(RuntimeError, match="producer closed"):
        await batches.submit()
    assert failures == [closed]


# --- state after its effects ------------------------------------------------------------------


async def _settle() -> None:
    for _ in range(20):  # chained hand-overs take a few loop turns each
        await asyncio.sleep(0)


def _topics(producer: Producer) -> list[str]:
    return [f"{topic}/{partition}" for topic, partition, _ in producer.sent]


async def test_a_state_batch_leaves_only_once_its_effects_are_acknowledged() -> None:
    producer, failures = Producer(), list[BaseException]()
    batches = PartitionBatches(producer, failures.append, state_topics={"changelog"})
    task = asyncio.get_running_loop().create_future()  # a task record sent on its own
    await batches.add("changelog", 0, b"case", b"ticketed")
    await batches.add("outbox", 0, b"case", b"sms")
    batches.after(task)

    await batches.submit()
    await _settle()
    assert _topics(producer) == ["outbox/0"]  # the state waits for the warning and the task
    assert len(producer.held) == 1 and not producer.held[0].done()  # the flush waits for it

    producer.acks[0].set_result(None)  # the warning acknowledged; the task not yet
    await _settle()
    assert _topics(producer) == ["outbox/0"]
    task.set_result(None)
    await _settle()
    assert _topics(producer) == ["outbox/0", "changelog/0"]
    assert producer.held[0].done() and producer.held[0].result() is True
    assert failures == []


async def test_with_nothing_to_wait_for_the_state_leaves_at_once() -> None:
    producer = Producer()
    batches = PartitionBatches(producer, list[BaseException]().append, state_topics={"changelog"})
    await batches.add("changelog", 1, b"case", b"closed")
    await batches.submit()
    assert _topics(producer) == ["changelog/1"] and producer.held == []


async def test_a_later_state_waits_behind_an_earlier_one_even_if_its_effects_come_first() -> None:
    producer = Producer()
    batches = PartitionBatches(producer, list[BaseException]().append, state_topics={"changelog"})
    first, second = (asyncio.get_running_loop().create_future() for _ in range(2))
    await batches.add("changelog", 0, b"case", b"v1")
    batches.after(first)
    await batches.submit()
    await batches.add("changelog", 0, b"case", b"v2")
    batches.after(second)
    await batches.submit()
    await batches.add("changelog", 0, b"case", b"v3")  # no effects of its own
    await batches.submit()

    second.set_result(None)
    await _settle()
    assert producer.sent == []  # v2 and v3 may not overtake v1
    first.set_result(None)
    await _settle()
    assert [records for _, _, records in producer.sent] == [
        [(b"case", b"v1")],
        [(b"case", b"v2")],
        [(b"case", b"v3")],
    ]


async def test_a_refused_effect_keeps_its_state_and_every_later_state_back() -> None:
    producer, failures = Producer(), list[BaseException]()
    batches = PartitionBatches(producer, failures.append, state_topics={"changelog"})
    await batches.add("outbox", 0, b"case", b"sms")
    await batches.add("changelog", 0, b"case", b"warned")
    await batches.submit()
    await batches.add("changelog", 0, b"case", b"later")
    await batches.submit()

    refused = RuntimeError("NotEnoughReplicas")
    producer.acks[0].set_exception(refused)
    await _settle()
    assert _topics(producer) == ["outbox/0"]  # a restart decides both again
    assert failures == [refused]
    assert all(held.done() and held.result() is False for held in producer.held)


async def test_a_full_state_batch_waits_for_the_events_effects_too() -> None:
    producer = Producer(batch_bytes=256)
    batches = PartitionBatches(producer, list[BaseException]().append, state_topics={"changelog"})
    task = asyncio.get_running_loop().create_future()
    batches.after(task)
    for i in range(20):  # more than one batch's worth
        await batches.add("changelog", 0, f"k{i}".encode(), b"x" * 40)
    assert producer.sent == []
    await batches.submit()
    task.set_result(None)
    await _settle()
    keys = [key for _, _, records in producer.sent for key, _ in records]
    assert keys == [f"k{i}".encode() for i in range(20)] and len(producer.sent) > 1


async def test_a_state_key_written_again_in_an_event_leaves_once_with_its_latest_value() -> None:
    producer = Producer()
    batches = PartitionBatches(producer, list[BaseException]().append, state_topics={"changelog"})
    await batches.add("changelog", 0, b"task-1", b"accepted")
    await batches.add("outbox", 0, b"task-1", b"sms-1")
    await batches.add("changelog", 0, b"task-2", b"dispatched")
    await batches.add("outbox", 0, b"task-1", b"sms-2")
    await batches.add("changelog", 0, b"task-1", b"arrived")
    await batches.add("changelog", 0, b"task-1", b"resolved")
    await batches.add("changelog", 0, b"task-2", None)  # forgotten: its tombstone is what leaves
    await batches.add("changelog", 1, b"task-3", b"dispatched")
    await batches.submit()
    producer.acks[0].set_result(None)  # the warnings acknowledged: the state may go
    await _settle()

    assert producer.sent == [
        ("outbox", 0, [(b"task-1", b"sms-1"), (b"task-1", b"sms-2")]),  # effects: every record
        ("changelog", 0, [(b"task-1", b"resolved"), (b"task-2", None)]),
        ("changelog", 1, [(b"task-3", b"dispatched")]),
    ]

    await batches.add("changelog", 0, b"task-1", b"closed")  # the next event's write leaves too
    await batches.submit()
    assert producer.sent[-1] == ("changelog", 0, [(b"task-1", b"closed")])


async def test_a_state_record_without_a_key_is_refused() -> None:
    batches = PartitionBatches(Producer(), list[BaseException]().append, state_topics={"cl"})
    with pytest.raises(ValueError, match="needs a key"):
        await batches.add("cl", 0, None, b"state")
