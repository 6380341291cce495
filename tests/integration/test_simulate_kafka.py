"""The simulators against the real broker: what `produce` reports is what a consumer reads."""

from __future__ import annotations

import heapq
import itertools
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest
from aiokafka import AIOKafkaConsumer

from patrol.devtools.simulate import (
    CameraSimConfig,
    DroneSimConfig,
    SimEvent,
    SimSummary,
    camera_events,
    drone_events,
    produce,
)
from patrol.domain.models import Detection
from patrol.settings import Settings, load_settings

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


def first_minutes(minutes: float) -> list[SimEvent]:
    """The simulated camera and drone detections of the first `minutes` of event time."""
    events = heapq.merge(
        camera_events(CameraSimConfig(malformed_fraction=0.05), seed=1, start=START),
        drone_events(DroneSimConfig(), seed=1, start=START),
        key=lambda e: e.event_time,
    )
    end = START + timedelta(minutes=minutes)
    return list(itertools.takewhile(lambda e: e.event_time <= end, events))


def sim_settings(bootstrap: str) -> Settings:
    run = uuid.uuid4().hex[:8]
    return load_settings(
        kafka_bootstrap=bootstrap,
        topic_camera=f"test.sim.{run}.camera",
        topic_drone=f"test.sim.{run}.drone",
        partitions=3,
    )


async def test_produced_detections_arrive_keyed_by_source(bootstrap: str) -> None:
    settings = sim_settings(bootstrap)
    # 30 minutes of event time at ×600: a drone mission and the demo scene, paced over ~3 s.
    events = first_minutes(30)
    progress: list[int] = []

    def remember(summary: SimSummary) -> None:
        progress.append(summary.sent)

    summary = await produce(events, settings, time_scale=600, progress=remember)

    assert summary.failed == 0
    assert summary.sent == len(events) > 200
    assert progress and progress[-1] == summary.sent
    by_topic = {settings.topic_camera: "camera", settings.topic_drone: "drone"}
    assert summary.topics == Counter(
        next(t for t, kind in by_topic.items() if kind == e.topic_kind) for e in events
    )
    assert summary.topics[settings.topic_camera] > 0 and summary.topics[settings.topic_drone] > 0
    assert summary.sent_by_kind == Counter(e.kind.split(":", 1)[0] for e in events)
    assert summary.sent_by_kind["malformed"] > 0

    for topic, kind in by_topic.items():
        records = await read_all(bootstrap, topic, summary.topics[topic])
        # exactly what was produced, each once
        assert Counter(records) == Counter((e.key, e.value) for e in events if e.topic_kind == kind)
        keys = Counter(key.decode() for key, _ in records)
        assert all(k.startswith("cam-" if kind == "camera" else "drone-") for k in keys)
        for key, value in records:
            try:
                detection = Detection.model_validate_json(value)
            except ValueError:
                continue  # a deliberately malformed message
            assert detection.source.id == key.decode()


async def test_a_timed_run_sends_nothing_past_its_event_time_span(bootstrap: str) -> None:
    settings = sim_settings(bootstrap)
    at = (0.0, 1.0, 2.0, 3.5, 4.0)  # event seconds; at ×1, a 3 s run ends before the fourth
    events = [
        SimEvent(START + timedelta(seconds=s), "camera", b"cam-0001", b'{"n": %d}' % n, "heartbeat")
        for n, s in enumerate(at)
    ]

    summary = await produce(events, settings, time_scale=1, duration=3)

    assert summary.failed == 0
    assert 0 < summary.sent <= 3
    assert summary.last_event_time is not None
    assert summary.last_event_time <= START + timedelta(seconds=3)
    records = await read_all(bootstrap, settings.topic_camera, summary.sent)
    assert [value for _, value in records] == [e.value for e in events[: summary.sent]]
