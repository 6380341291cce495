"""The intake releases detections in event-time order across its input partitions, waiting for
a lagging partition's fetch, with fakes and no broker."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

import pytest
from aiokafka.structs import TopicPartition
from prometheus_client import REGISTRY

from patrol.domain import incidents
from patrol.intake import consumer as intake_module
from patrol.intake.consumer import IntakeConsumer
from patrol.kafka import envelopes
from tests.unit.intake.test_intake_commits import FakeConsumer, FakeProducer, until
from tests.unit.intake.test_intake_consumer import SETTINGS, T0, ZONES, plate_read, record

CAMERA = TopicPartition(SETTINGS.topic_camera, 0)
DRONE = TopicPartition(SETTINGS.topic_drone, 0)


class LaggingConsumer(FakeConsumer):
    """Serves a partition's records only from the fetch numbered in `from_fetch`, while its
    highwater already says they are on the broker (as a slow partition in a catch-up)."""

    def __init__(self, from_fetch: dict[TopicPartition, int]) -> None:
        super().__init__()
        self.log = {CAMERA: [], DRONE: []}
        self.positions = {CAMERA: 0, DRONE: 0}
        self.from_fetch = from_fetch
        self.fetches = 0

    def add(self, tp: TopicPartition, n: int, minute: float) -> None:
        offset = len(self.log[tp])
        # one vehicle, so every read goes to one case's partition, in the order sent
        value = plate_read(n, T0 + timedelta(minutes=minute), plate="浙G00001")
        self.log[tp].append(record(value, offset, topic=tp.topic))

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Any]]:
        self.fetches += 1
        fetched = {}
        for tp, records in self.log.items():
            if self.fetches < self.from_fetch.get(tp, 0) or tp in self.paused:
                continue
            if self.positions[tp] < len(records):
                fetched[tp] = records[self.positions[tp] :]
                self.positions[tp] = len(records)
        await asyncio.sleep(0.005)
        return fetched


def routed_minutes(producer: FakeProducer) -> list[float]:
    """The event times (minutes after T0) of the detections the intake sent, in send order."""
    out = []
    for topic, _, value in producer.sent:
        if topic != intake_module.InternalTopics.of(SETTINGS.app_id).cases:
            continue
        for item in json.loads(value)["items"]:
            at = envelopes.RoutedDetection.model_validate(item).detection.observed_at
            out.append((at - T0).total_seconds() / 60)
    return out


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(intake_module, "COMMIT_INTERVAL_SECONDS", 0.0)


def merge_holds() -> float:
    return REGISTRY.get_sample_value("patrol_intake_merge_holds_total") or 0.0


def intake_over(consumer: FakeConsumer, producer: FakeProducer, wait_ms: int) -> IntakeConsumer:
    return IntakeConsumer(
        SETTINGS.model_copy(update={"max_partition_wait_ms": wait_ms}),
        ZONES,
        incidents.IncidentPolicy.from_settings(SETTINGS),
        consumer=consumer,  # type: ignore[arg-type]
        producer=producer,  # type: ignore[arg-type]
    )


async def test_a_lagging_partition_is_waited_for_and_merged_in_event_time_order() -> None:
    consumer = LaggingConsumer(from_fetch={DRONE: 3})
    for n, minute in enumerate([0, 4, 12]):
        consumer.add(CAMERA, n, minute)
    consumer.add(DRONE, 10, 8)  # on the broker from the start, fetched two rounds later
    producer = FakeProducer()
    intake = intake_over(consumer, producer, wait_ms=60_000)
    holds = merge_holds()
    await intake.start()
    try:
        await until(lambda: len(routed_minutes(producer)) == 4)
    finally:
        await intake.stop()
    assert routed_minutes(producer) == [0, 4, 8, 12]
    assert merge_holds() > holds  # the rounds it waited are counted
    assert consumer.committed(CAMERA) == 3 and consumer.committed(DRONE) == 1


async def test_without_lag_nothing_waits() -> None:
    consumer = LaggingConsumer(from_fetch={})
    consumer.add(CAMERA, 1, 5)
    producer = FakeProducer()
    intake = intake_over(consumer, producer, wait_ms=60_000)
    holds = merge_holds()
    await intake.start()
    try:
        await until(lambda: routed_minutes(producer) == [5], timeout=1.0)
    finally:
        await intake.stop()
    assert merge_holds() == holds


async def test_the_wait_is_bounded() -> None:
    consumer = LaggingConsumer(from_fetch={DRONE: 10**9})  # its records never come
    consumer.add(CAMERA, 1, 5)
    consumer.add(DRONE, 2, 1)
    producer = FakeProducer()
    intake = intake_over(consumer, producer, wait_ms=100)
    await intake.start()
    try:
        await until(lambda: routed_minutes(producer) == [5], timeout=2.0)
    finally:
        await intake.stop()
    assert consumer.committed(DRONE) is None  # nothing of the drone's was taken


async def test_a_partition_holding_too_much_is_paused_until_the_lagging_one_is_fetched(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(intake_module, "MERGE_PARTITION_CAP", 5)
    consumer = LaggingConsumer(from_fetch={DRONE: 4})
    for n in range(8):
        consumer.add(CAMERA, n, n + 1)
    consumer.add(DRONE, 20, 0)
    producer = FakeProducer()
    paused: list[set[TopicPartition]] = []
    original = consumer.pause

    def pause(*tps: TopicPartition) -> None:
        paused.append(set(tps))
        original(*tps)

    consumer.pause = pause  # type: ignore[method-assign]
    intake = intake_over(consumer, producer, wait_ms=60_000)
    await intake.start()
    try:
        await until(lambda: len(routed_minutes(producer)) == 9)
    finally:
        await intake.stop()
    assert paused == [{CAMERA}]  # it held 8 > 5 while the drone was behind
    assert consumer.paused == set()  # and resumed once they went
    assert routed_minutes(producer) == [0, 1, 2, 3, 4, 5, 6, 7, 8]


async def test_a_detection_is_decoded_once_live_and_again_only_if_held_past_its_round(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    decoded: list[str] = []
    original = intake_module.decode_detection

    def counting(raw: bytes, **options: Any) -> Any:
        result = original(raw, **options)
        decoded.append(getattr(result, "event_id", "rejected"))
        return result

    monkeypatch.setattr(intake_module, "decode_detection", counting)
    consumer = LaggingConsumer(from_fetch={DRONE: 3})
    consumer.add(CAMERA, 1, 5)  # held while the drone's record is on the broker, unfetched
    consumer.add(DRONE, 2, 1)
    producer = FakeProducer()
    intake = intake_over(consumer, producer, wait_ms=60_000)
    await intake.start()
    try:
        await until(lambda: routed_minutes(producer) == [1, 5])
        consumer.add(CAMERA, 3, 7)  # live: nothing lags now
        await until(lambda: routed_minutes(producer) == [1, 5, 7])
    finally:
        await intake.stop()
    assert decoded.count("cam-0017-000001") == 2  # fetched, held a round, decoded on release
    assert decoded.count("cam-0017-000002") == 1
    assert decoded.count("cam-0017-000003") == 1
