"""The SMS sender's commits, with a fake outbox consumer, a fake producer and a mock gateway:
an outbox offset is committed only once every warning before it has its outcome recorded."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata, TopicPartition
from prometheus_client import REGISTRY

from patrol import metrics
from patrol.domain.grace import SmsRequest
from patrol.domain.models import SmsStatus
from patrol.kafka.topics import InternalTopics
from patrol.settings import Settings
from patrol.sms import outbox
from patrol.sms import sender as sender_module
from patrol.sms.sender import OutboxSender, SmsSenderProcess, _Reports

SETTINGS = Settings(
    app_id="unit",
    partitions=2,
    sms_url="http://gateway.test",
    sms_concurrency=4,
    sms_retry_seconds=5.0,
)
OUTBOX = InternalTopics.of(SETTINGS.app_id).sms_outbox
A = TopicPartition(OUTBOX, 0)
B = TopicPartition(OUTBOX, 1)


def warning(n: int) -> SmsRequest:
    return SmsRequest(
        message_id=f"sms-{n}",
        case_id=f"case-{n}",
        plate=f"浙G{n:05d}",
        zone_id="panan-anwen-old-street",
        text="请驶离",
        deadline=datetime.now(UTC) + timedelta(minutes=10),
    )


class FakeOutbox:
    """The outbox partitions: serves what was put in them, records commits."""

    def __init__(self) -> None:
        self.log: dict[TopicPartition, list[Any]] = {A: [], B: []}
        self.positions = {A: 0, B: 0}
        self.commits: list[dict[TopicPartition, int]] = []

    def put(self, tp: TopicPartition, *numbers: int, value: bytes | None = None) -> None:
        """Warnings `numbers` (or records of `value`) at the end of `tp`."""
        for n in numbers:
            raw = value if value is not None else outbox.request_record(warning(n))
            offset = len(self.log[tp])
            self.log[tp].append(
                ConsumerRecord(
                    topic=tp.topic,
                    partition=tp.partition,
                    offset=offset,
                    timestamp=int(datetime.now(UTC).timestamp() * 1000),
                    timestamp_type=0,
                    key=f"zone|{n}".encode(),
                    value=raw,
                    checksum=None,
                    serialized_key_size=8,
                    serialized_value_size=len(raw),
                    headers=(),
                )
            )

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def subscribe(self, topics: list[str], listener: Any) -> None:
        return None

    def assignment(self) -> set[TopicPartition]:
        return set(self.log)

    def highwater(self, tp: TopicPartition) -> int:
        return len(self.log[tp])

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Any]]:
        fetched = {}
        for tp, records in self.log.items():
            if self.positions[tp] < len(records):
                fetched[tp] = records[self.positions[tp] : self.positions[tp] + max_records]
                self.positions[tp] += len(fetched[tp])
        if not fetched:
            await asyncio.sleep(0.005)
        return fetched

    async def commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        self.commits.append({tp: meta.offset for tp, meta in offsets.items()})

    def committed(self, tp: TopicPartition) -> list[int]:
        return [commit[tp] for commit in self.commits if tp in commit]


class FakeProducer:
    """Acknowledges each record at once, unless `hold` (then on `release`)."""

    def __init__(self) -> None:
        self.hold = False
        self.sent: list[tuple[str, bytes]] = []
        self._held: list[asyncio.Future[None]] = []

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def send(self, topic: str, value: bytes, **_: Any) -> asyncio.Future[None]:
        self.sent.append((topic, value))
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.hold:
            self._held.append(ack)
        else:
            ack.set_result(None)
        return ack

    def release(self) -> None:
        self.hold = False
        for ack in self._held:
            if not ack.done():
                ack.set_result(None)
        self._held.clear()

    def outcomes(self) -> list[str]:
        """Message ids whose outcome went to the cases topic."""
        return [
            o.message_id
            for topic, value in self.sent
            if topic == InternalTopics.of(SETTINGS.app_id).cases
            for o in outbox.outcomes_from_record(value)
        ]


@dataclass
class Gateway:
    """Accepts each SMS once its message id is let through."""

    through: dict[str, asyncio.Event] = field(default_factory=dict)

    def let_through(self, *numbers: int) -> None:
        for n in numbers:
            self.through.setdefault(f"sms-{n}", asyncio.Event()).set()

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        message_id = request.headers["Idempotency-Key"]
        await self.through.setdefault(message_id, asyncio.Event()).wait()
        return httpx.Response(202, json={"status": "accepted"})


@dataclass
class Running:
    sender: OutboxSender
    outbox: FakeOutbox
    producer: FakeProducer
    gateway: Gateway
    report: io.BytesIO
    reports: _Reports


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sender_module, "COMMIT_INTERVAL_SECONDS", 0.01)
    monkeypatch.setattr(sender_module, "OUTCOME_LINGER_SECONDS", 0.001)


@contextlib.asynccontextmanager
async def running() -> AsyncIterator[Running]:
    """A sender working the fake outbox until the block ends."""
    fake_outbox, producer, gateway, report = FakeOutbox(), FakeProducer(), Gateway(), io.BytesIO()
    reports = _Reports(report)
    sender = OutboxSender(
        SETTINGS,
        reports,
        consumer=fake_outbox,  # type: ignore[arg-type]
        producer=producer,  # type: ignore[arg-type]
        transport=httpx.MockTransport(gateway),
    )
    await sender.start()
    stop = asyncio.Event()
    loop = asyncio.create_task(sender.run(stop))
    try:
        yield Running(sender, fake_outbox, producer, gateway, report, reports)
    finally:
        producer.release()
        gateway.let_through(*range(100))
        stop.set()
        await loop
        await sender.stop(0.5)


async def until(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    """Waits (polling the fakes) until `condition` holds; fails after `timeout` seconds."""
    for _ in range(int(timeout / 0.002)):
        if condition():
            return
        await asyncio.sleep(0.002)
    raise AssertionError(f"still not so after {timeout} s")


async def a_few_commits() -> None:
    await asyncio.sleep(0.1)  # ten commit intervals


async def test_warnings_finished_out_of_order_are_committed_up_to_the_oldest_unsent() -> None:
    async with running() as it:
        it.outbox.put(A, 0, 1, 2)
        it.gateway.let_through(2, 1)
        await until(lambda: sorted(it.producer.outcomes()) == ["sms-1", "sms-2"])
        await a_few_commits()
        assert max(it.outbox.committed(A), default=0) == 0  # sms-0 is not sent yet

        it.gateway.let_through(0)
        await until(lambda: it.outbox.committed(A)[-1:] == [3])


async def test_a_revoke_waits_for_warnings_in_flight_then_commits_them() -> None:
    async with running() as it:
        it.outbox.put(A, 0)
        it.outbox.put(B, 1)
        it.gateway.let_through(1)
        await until(lambda: it.outbox.committed(B)[-1:] == [1])
        revoke = asyncio.create_task(it.sender.on_partitions_revoked({A}))
        await a_few_commits()
        assert not revoke.done()
        assert max(it.outbox.committed(A), default=0) == 0

        it.gateway.let_through(0)
        await asyncio.wait_for(revoke, 3)
        assert it.outbox.committed(A)[-1] == 1
        del it.outbox.log[A]  # A went to another sender
        it.outbox.put(B, 2)
        it.gateway.let_through(2)
        await until(lambda: it.outbox.committed(B)[-1:] == [2])
        assert it.outbox.committed(A)[-1] == 1  # nothing more once it was handed over


async def test_a_warning_sent_but_not_yet_recorded_is_not_committed() -> None:
    async with running() as it:
        it.producer.hold = True  # its audit and outcome records are not acknowledged
        it.outbox.put(A, 0, 1)
        it.gateway.let_through(0, 1)
        await until(lambda: sorted(it.producer.outcomes()) == ["sms-0", "sms-1"])
        await a_few_commits()
        # a crash now leaves both to the next sender
        assert max(it.outbox.committed(A), default=0) == 0

        it.producer.release()
        await until(lambda: it.outbox.committed(A)[-1:] == [2])


async def test_a_record_that_is_not_a_warning_is_skipped_and_committed_past() -> None:
    async with running() as it:
        it.outbox.put(A, 0, value=b"not json")
        it.outbox.put(A, 1)
        it.gateway.let_through(1)
        await until(lambda: it.outbox.committed(A)[-1:] == [2])


class Observed:
    def __init__(self) -> None:
        self.attempts: list[str] = []
        self.outcomes: list[tuple[SmsStatus, float | None]] = []
        self.depths: list[int] = []

    def attempt(self, result: str) -> None:
        self.attempts.append(result)

    def finished(self, status: SmsStatus, seconds: float | None) -> None:
        self.outcomes.append((status, seconds))

    def queue_depth(self, depth: int) -> None:
        self.depths.append(depth)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_what_the_sender_reports_moves_the_workers_sms_metrics() -> None:
    async with running() as it:
        it.outbox.put(A, 0, 1)
        it.gateway.let_through(0, 1)
        await until(lambda: it.outbox.committed(A)[-1:] == [2])
        it.reports.backlog(0)
        it.reports.flush()
        lines = it.report.getvalue().splitlines(keepends=True)
    observed = Observed()
    worker_side = SmsSenderProcess(SETTINGS, observer=observed)
    before = {
        "accepted": sample("patrol_sms_attempts_total", result="accepted"),
        "sent": sample("patrol_sms_total", status="sent"),
        "observed": sample("patrol_sms_send_seconds_count"),
    }
    metrics.sms_queue_depth.set(7)  # whatever it showed before

    for line in lines:
        worker_side._take_line(line)

    assert sample("patrol_sms_attempts_total", result="accepted") == before["accepted"] + 2
    assert sample("patrol_sms_total", status="sent") == before["sent"] + 2
    assert sample("patrol_sms_send_seconds_count") == before["observed"] + 2
    assert sample("patrol_sms_queue_depth") == 0
    # and a watcher hears the same in SMS terms
    assert observed.attempts == ["accepted", "accepted"]
    assert [status for status, _ in observed.outcomes] == [SmsStatus.sent] * 2
    assert all(seconds is not None and 0 <= seconds < 60 for _, seconds in observed.outcomes)
    assert observed.depths[-1] == 0
