"""The intake takes the dispatch system's feedback beside the detections, with fakes and no
broker: a valid record goes to its task's loop partition in a batch record, an unusable one is
dead-lettered with its reason, and the feedback offsets are committed as the detections' are."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka.structs import TopicPartition

from patrol.domain.models import DeadLetter
from patrol.kafka import loop_records
from patrol.kafka.loop_records import LoopRecord
from patrol.kafka.partitioning import partition_of
from patrol.kafka.topics import InternalTopics
from tests.unit.intake.test_intake_commits import FakeConsumer, FakeProducer, until
from tests.unit.intake.test_intake_consumer import SETTINGS, T0, record, sample
from tests.unit.intake.test_intake_order import LaggingConsumer, intake_over, routed_minutes
from tests.unit.worker.test_loop_agent import feedback_json

FEEDBACK = TopicPartition(SETTINGS.topic_feedback, 0)
CAMERA = TopicPartition(SETTINGS.topic_camera, 0)
LOOP = InternalTopics.of(SETTINGS.app_id).task_loop


def feedback(task_id: str, fid: str, status: str = "accepted", minutes: float = 1) -> bytes:
    return feedback_json(task_id, status, T0 + timedelta(minutes=minutes), fid)


def add_feedback(consumer: FakeConsumer, value: bytes) -> None:
    log = consumer.log.setdefault(FEEDBACK, [])
    consumer.positions.setdefault(FEEDBACK, 0)
    log.append(record(value, len(log), topic=FEEDBACK.topic))


def forwarded(producer: FakeProducer) -> list[tuple[int | None, Any]]:
    """(loop partition, feedback id) of each feedback item the intake sent, in order."""
    out = []
    for (topic, partition, value), headers in zip(producer.sent, producer.headers, strict=True):
        if topic != LOOP:
            continue
        assert loop_records.kind_of(headers) is LoopRecord.feedback_batch
        for item in loop_records.batch_items(value):
            fed = loop_records.forwarded(item)
            out.append((partition, json.loads(fed.value)["feedback_id"]))
    return out


def dead_letters(producer: FakeProducer) -> list[DeadLetter]:
    return [
        DeadLetter.model_validate_json(value)
        for topic, _, value in producer.sent
        if topic == SETTINGS.topic_deadletter
    ]


async def test_feedback_goes_to_its_tasks_loop_partition_and_the_unusable_to_dead_letters() -> None:
    consumer, producer = FakeConsumer(), FakeProducer()
    consumer.log, consumer.positions = {}, {}
    add_feedback(consumer, feedback("T-1", "fb-1"))
    add_feedback(consumer, b"{not json")
    # the sending app's clock is a day ahead of the intake's wall clock
    ahead = (datetime.now(UTC) + timedelta(days=1) - T0).total_seconds() / 60
    add_feedback(consumer, feedback("T-1", "fb-3", minutes=ahead))
    add_feedback(consumer, feedback("T-2", "fb-4", status="resolved", minutes=5))
    rejected = sample("patrol_task_feedback_total", outcome="rejected")
    intake = intake_over(consumer, producer, wait_ms=1_000)
    await intake.start()
    try:
        await until(lambda: consumer.committed(FEEDBACK) == 4)
    finally:
        await intake.stop()
    assert forwarded(producer) == [
        (partition_of(b"T-1", SETTINGS.partitions), "fb-1"),
        (partition_of(b"T-2", SETTINGS.partitions), "fb-4"),
    ]
    letters = dead_letters(producer)
    assert [(d.reason.value, d.topic, d.offset) for d in letters] == [
        ("invalid_json", SETTINGS.topic_feedback, 1),
        ("clock_skew", SETTINGS.topic_feedback, 2),
    ]
    assert sample("patrol_task_feedback_total", outcome="rejected") == rejected + 2


async def test_a_lagging_feedback_partition_holds_no_detection_back() -> None:
    consumer = LaggingConsumer(from_fetch={FEEDBACK: 1_000_000})  # never fetched in the test
    consumer.add(CAMERA, 1, 5)
    add_feedback(consumer, feedback("T-1", "fb-1"))  # on the broker: the partition has lag
    producer = FakeProducer()
    intake = intake_over(consumer, producer, wait_ms=60_000)
    await intake.start()
    try:
        await until(lambda: routed_minutes(producer) == [5])
    finally:
        await intake.stop()
    assert forwarded(producer) == []
