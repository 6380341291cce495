"""The simulators against the real broker: what `produce` reports is what a consumer reads."""

from __future__ import annotations

import heapq
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest
from aiokafka import AIOKafkaConsumer

from patrol.devtools.simulate import (
    CameraSimConfig,
    DroneSimConfig,
    SimSummary,
    camera_events,
    drone_events,
    produce,
)
from patrol.domain.models import Detection
from patrol.settings import load_settings

pytestmark = pytest.mark.integration

START = datetime(2026, 11, 27, 10, 0, tzinfo=timezone(timedelta(hours=8)))


async def read_all(bootstrap: str, topic: str, expected: int) -> list[tuple[bytes, bytes]]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    records: list[tuple[bytes, bytes]] = []
    try:
        for _ in range(30):
            batches = await consumer.getmany(timeout_ms=500)
            for messages in batches.values():
                records.extend((m.key, m.value) for m in messages)
            if len(records) >= expected:
                # One more poll proves nothing beyond what was reported arrives.
                extra = await consumer.getmany(timeout_ms=500)
                records.extend((m.key, m.value) for ms in extra.values() for m in ms)
                break
    finally:
        await consumer.stop()
    return records


async def test_produced_detections_arrive_keyed_by_source(bootstrap: str) -> None:
    run = uuid.uuid4().hex[:8]
    settings = load_settings(
        kafka_bootstrap=bootstrap,
        topic_camera=f"test.sim.{run}.camera",
        topic_drone=f"test.sim.{run}.drone",
        partitions=3,
    )
    events = heapq.merge(
        camera_events(CameraSimConfig(malformed_fraction=0.05), seed=1, start=START),
        drone_events(DroneSimConfig(), seed=1, start=START),
        key=lambda e: e.event_time,
    )
    progress: list[int] = []

    def remember(summary: SimSummary) -> None:
        progress.append(summary.sent)

    # 3 wall seconds at ×600 is 30 minutes of event time: a drone mission and the demo scene.
    summary = await produce(events, settings, time_scale=600, duration=3, progress=remember)

    assert summary.failed == 0
    assert summary.sent > 200
    assert progress and progress[-1] == summary.sent
    assert summary.topics[settings.topic_camera] > 0 and summary.topics[settings.topic_drone] > 0
    assert 25 <= (summary.last_event_time - summary.first_event_time).total_seconds() / 60 <= 31  # type: ignore[operator]

    for topic, kind in ((settings.topic_camera, "camera"), (settings.topic_drone, "drone")):
        records = await read_all(bootstrap, topic, summary.topics[topic])
        assert len(records) == summary.topics[topic]
        keys = Counter(key.decode() for key, _ in records)
        assert all(k.startswith("cam-" if kind == "camera" else "drone-") for k in keys)
        for key, value in records:
            try:
                detection = Detection.model_validate_json(value)
            except ValueError:
                continue  # a deliberately malformed message
            assert detection.source.id == key.decode()
    assert summary.sent_by_kind["malformed"] > 0
