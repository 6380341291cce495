"""The intake's at-least-once discipline, with a fake consumer and producer and no broker:
input offsets are committed only after the broker acknowledged what their round produced."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError
from aiokafka.structs import TopicPartition

from patrol.domain import incidents
from patrol.intake import consumer as intake_module
from patrol.intake.consumer import IntakeConsumer
from tests.unit.intake.test_intake_consumer import SETTINGS, T0, ZONES, plate_read, record

A = TopicPartition(SETTINGS.topic_camera, 0)
B = TopicPartition(SETTINGS.topic_camera, 1)


class FakeConsumer:
    """Serves what was appended to each partition from its position; records seeks and
    commits; `listener` is the rebalance listener the intake subscribed with."""

    def __init__(self) -> None:
        self.log: dict[TopicPartition, list[Any]] = {A: [], B: []}
        self.positions = {A: 0, B: 0}
        self.seeks: list[tuple[TopicPartition, int]] = []
        self.commits: list[dict[TopicPartition, int]] = []
        self.listener: Any = None
        self.paused: set[TopicPartition] = set()

    def append(self, tp: TopicPartition, count: int) -> None:
        for _ in range(count):
            offset = len(self.log[tp])
            value = plate_read(offset + 100 * tp.partition, T0 + timedelta(seconds=offset))
            self.log[tp].append(record(value, offset, topic=tp.topic))

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def subscribe(self, topics: list[str], listener: Any) -> None:
        self.listener = listener

    def assignment(self) -> set[TopicPartition]:
        return set(self.log)

    def pause(self, *tps: TopicPartition) -> None:
        self.paused.update(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.paused.difference_update(tps)

    def highwater(self, tp: TopicPartition) -> int:
        return len(self.log[tp])

    async def position(self, tp: TopicPartition) -> int:
        return self.positions[tp]

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))
        self.positions[tp] = offset

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Any]]:
        fetched = {}
        for tp, records in self.log.items():
            if tp in self.paused:
                continue
            if self.positions[tp] < len(records):
                fetched[tp] = records[self.positions[tp] :]
                self.positions[tp] = len(records)
        if not fetched:
            await asyncio.sleep(0.005)
        return fetched

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))

    def committed(self, tp: TopicPartition) -> int | None:
        """The last offset committed for `tp`."""
        for commit in reversed(self.commits):
            if tp in commit:
                return commit[tp]
        return None


class FakeProducer:
    """Acknowledges at once unless `hold` (then on `release`) or `fail` (then fails once)."""

    def __init__(self) -> None:
        self.hold = False
        self.fail = False
        self.sent: list[tuple[str, int | None, bytes]] = []
        self.headers: list[list[tuple[str, bytes]] | None] = []
        """Each sent record's headers, in the order of `sent`."""
        self._held: list[asyncio.Future[None]] = []

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def send(
        self,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> asyncio.Future[None]:
        self.sent.append((topic, partition, value))
        self.headers.append(headers)
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.fail:
            ack.set_exception(KafkaConnectionError("broker went away"))
        elif self.hold:
            self._held.append(ack)
        else:
            ack.set_result(None)
        return ack

    def release(self) -> None:
        self.hold = False
        for ack in self._held:
            if not ack.done():  # a cancelled round's acknowledgements were cancelled with it
                ack.set_result(None)
        self._held.clear()


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(intake_module, "RETRY_SECONDS", 0.01)
    monkeypatch.setattr(intake_module, "COMMIT_INTERVAL_SECONDS", 0.0)  # a commit every round


@pytest.fixture
def fakes() -> Iterator[tuple[IntakeConsumer, FakeConsumer, FakeProducer]]:
    consumer, producer = FakeConsumer(), FakeProducer()
    intake = IntakeConsumer(
        SETTINGS,
        ZONES,
        incidents.IncidentPolicy.from_settings(SETTINGS),
        consumer=consumer,  # type: ignore[arg-type]
        producer=producer,  # type: ignore[arg-type]
    )
    yield intake, consumer, producer


async def until(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    """Waits (polling the fakes) until `condition` holds; fails after `timeout` seconds."""
    for _ in range(int(timeout / 0.002)):
        if condition():
            return
        await asyncio.sleep(0.002)
    raise AssertionError(f"still not so after {timeout} s")


async def settle() -> None:
    """Long enough for a few idle rounds of the intake's loop."""
    await asyncio.sleep(0.05)


async def test_input_is_committed_only_once_the_broker_acknowledged_its_round(
    fakes: tuple[IntakeConsumer, FakeConsumer, FakeProducer],
) -> None:
    intake, consumer, producer = fakes
    producer.hold = True
    consumer.append(A, 5)
    await intake.start()
    try:
        await until(lambda: bool(producer.sent))
        await settle()
        assert consumer.commits == []  # sent, not acknowledged: nothing may be committed
        producer.release()
        await until(lambda: consumer.committed(A) == 5)
    finally:
        producer.release()
        await intake.stop()
    assert [c[A] for c in consumer.commits if A in c] == [5]


async def test_a_failed_send_is_fetched_again_from_the_first_record_of_its_round(
    fakes: tuple[IntakeConsumer, FakeConsumer, FakeProducer],
) -> None:
    intake, consumer, producer = fakes
    consumer.append(A, 5)
    await intake.start()
    try:
        await until(lambda: consumer.committed(A) == 5)
        producer.fail = True
        consumer.append(A, 5)  # offsets 5..9, one round that the broker refuses
        await until(lambda: bool(consumer.seeks))
        producer.fail = False
        await until(lambda: consumer.committed(A) == 10)
    finally:
        producer.release()
        await intake.stop()

    assert consumer.seeks[0] == (A, 5)  # the round's first record, not its last
    assert [c[A] for c in consumer.commits if A in c] == [5, 10]
    # every record of the failed round was sent again: its plates reached the cases topic
    resent = b"".join(value for _, _, value in producer.sent)
    assert all(f"浙G{n:05d}".encode() in resent for n in range(5, 10))


async def test_a_revoke_waits_for_the_round_in_flight_and_commits_it_first(
    fakes: tuple[IntakeConsumer, FakeConsumer, FakeProducer],
) -> None:
    intake, consumer, producer = fakes
    producer.hold = True
    consumer.append(A, 5)
    consumer.append(B, 3)
    await intake.start()
    try:
        await until(lambda: bool(producer.sent))
        revoke = asyncio.create_task(consumer.listener.on_partitions_revoked({A}))
        await settle()
        assert not revoke.done()  # the round holding A's records is not acknowledged yet
        assert consumer.commits == []
        producer.release()
        await asyncio.wait_for(revoke, 3)
        assert consumer.committed(A) == 5 and consumer.committed(B) == 3

        del consumer.log[A]  # A went to another worker; B stays
        consumer.append(B, 2)
        await until(lambda: consumer.committed(B) == 5)
    finally:
        producer.release()
        await intake.stop()
    # nothing more was committed for A once it was handed over
    assert [c[A] for c in consumer.commits if A in c] == [5]


async def test_a_crash_between_send_and_acknowledgement_leaves_the_round_uncommitted(
    fakes: tuple[IntakeConsumer, FakeConsumer, FakeProducer],
) -> None:
    intake, consumer, producer = fakes
    consumer.append(A, 5)
    await intake.start()
    try:
        await until(lambda: consumer.committed(A) == 5)
        producer.hold = True
        sent_before = len(producer.sent)
        consumer.append(A, 5)
        await until(lambda: len(producer.sent) > sent_before)
        await settle()
        # the intake dies with the round sent and not acknowledged
        runner = intake._runner
        assert runner is not None
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await intake.wait_idle()  # whatever is committed from here on (a revoke, a stop)
    finally:
        producer.release()
        await intake.stop()
    assert [c[A] for c in consumer.commits if A in c] == [5]
