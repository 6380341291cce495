"""The simulators against the real broker: what `produce` reports is what a consumer reads; the
feedback simulator answers the tasks it reads; the world learns resolutions from the topics."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import math
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from patrol.devtools.simulate import (
    CameraSimConfig,
    DroneSimConfig,
    SimEvent,
    SimSummary,
    camera_events,
    drone_events,
    produce,
)
from patrol.devtools.simulate.dispatcher import answer_tasks
from patrol.devtools.simulate.feedback import FeedbackSchedule, scripted
from patrol.devtools.simulate.hazards import HazardWorld
from patrol.devtools.simulate.resolutions import ResolutionFeed, learn_resolutions
from patrol.domain.models import Detection, EnforcementTask, Location, TaskFeedback
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


def hazard_task(n: int, *, lat: float = 29.056, lon: float = 120.4425) -> EnforcementTask:
    created = START + timedelta(minutes=2 * n)
    kind = ("roadside_vending", "illegal_parking", "open_burning")[n % 3]
    return EnforcementTask(
        task_id=f"task-{n:03d}",
        task_type=kind,
        created_at=created,
        priority="normal",
        due_by=created + timedelta(minutes=30 if kind == "open_burning" else 120),
        department="comprehensive_enforcement",
        township="安文街道",
        zone_id="anwen-market",
        location=Location(lat=lat, lon=lon),
        plate="浙G12345" if kind == "illegal_parking" else None,
        evidence=[],
        sms=None,
        summary="…",
    )


def loop_settings(bootstrap: str) -> Settings:
    run = uuid.uuid4().hex[:8]
    return load_settings(
        kafka_bootstrap=bootstrap,
        topic_dispatch=f"test.sim.{run}.dispatch",
        topic_feedback=f"test.sim.{run}.feedback",
        topic_status=f"test.sim.{run}.status",
        partitions=3,
    )


async def send(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


async def wait_for(bootstrap: str, topic: str, count: int) -> list[tuple[bytes, bytes]]:
    return await read_all(bootstrap, topic, count)


async def test_the_feedback_simulator_answers_the_tasks_it_reads_and_a_reopening(
    bootstrap: str,
) -> None:
    settings = loop_settings(bootstrap)
    tasks = [hazard_task(n) for n in range(24)]
    await send(
        bootstrap,
        settings.topic_dispatch,
        [(t.task_id.encode(), t.model_dump_json().encode()) for t in tasks],
    )
    expected = scripted(tasks, seed=3)
    stop = asyncio.Event()
    schedule = FeedbackSchedule(seed=3)
    running = asyncio.create_task(
        answer_tasks(schedule, settings, start=START, time_scale=math.inf, stop=stop)
    )
    try:
        first = await wait_for(bootstrap, settings.topic_feedback, len(expected))
        # each task's answers, keyed by task id, exactly as its seeded script says
        assert Counter(first) == Counter((a.key, a.value) for a in expected)
        for key, value in first:
            assert TaskFeedback.model_validate_json(value).task_id == key.decode()

        # the worker reopens a vending task whose vendor is back: the team goes again
        vending = next(
            t
            for t in tasks
            if t.task_type == "roadside_vending"
            and any(a.task_id == t.task_id and a.status.value == "resolved" for a in expected)
        )
        resolved = max(a.at for a in expected if a.task_id == vending.task_id)
        reopened = {
            "task_id": vending.task_id,
            "status": "reopened",
            "at": (resolved + timedelta(minutes=20)).isoformat(),
            "due_by": (resolved + timedelta(minutes=140)).isoformat(),
            "lamp": "green",
            "cause": "redetected",
        }
        await send(
            bootstrap,
            settings.topic_status,
            [(vending.task_id.encode(), json.dumps(reopened).encode())],
        )
        again = [
            (k, v)
            for k, v in await wait_for(bootstrap, settings.topic_feedback, len(expected) + 2)
            if (k, v) not in set(first)
        ]
        assert again and all(k == vending.task_id.encode() for k, _ in again)
        statuses = [json.loads(v)["status"] for _, v in again]
        assert statuses[-1] == "resolved"
        assert all(json.loads(v)["feedback_id"].split("-")[2] == "r2" for _, v in again)
    finally:
        stop.set()
        summary = await running
    assert summary.failed == 0 and summary.tasks == len(tasks) and summary.reopened == 1
    assert summary.sent == len(expected) + len(again)


async def test_a_paced_feedback_run_sends_no_answer_before_its_time(bootstrap: str) -> None:
    settings = loop_settings(bootstrap)
    tasks = [hazard_task(n) for n in range(6)]
    await send(
        bootstrap,
        settings.topic_dispatch,
        [(t.task_id.encode(), t.model_dump_json().encode()) for t in tasks],
    )
    schedule = FeedbackSchedule(seed=4)
    summary = await answer_tasks(schedule, settings, start=START, time_scale=600, duration=4)
    assert summary.failed == 0
    records = await read_all(bootstrap, settings.topic_feedback, summary.sent)
    assert len(records) == summary.sent
    clock_end = START + timedelta(seconds=summary.elapsed_seconds * 600)
    assert all(TaskFeedback.model_validate_json(v).at <= clock_end for _, v in records)
    assert summary.pending > 0  # answers due after the run's event time were kept back


async def test_the_world_learns_a_resolution_from_the_dispatch_and_feedback_topics(
    bootstrap: str,
) -> None:
    settings = loop_settings(bootstrap)
    world = HazardWorld(CameraSimConfig().world(), seed=7)
    vendor = next(h for h in world.until(3600) if h.hazard_id == "scripted-vendor")
    task = hazard_task(0, lat=vendor.lat, lon=vendor.lon)
    answer = {
        "schema_version": 1,
        "feedback_id": "fb-world-1",
        "task_id": task.task_id,
        "status": "resolved",
        "at": (START + timedelta(minutes=40)).isoformat(),
    }
    await send(
        bootstrap, settings.topic_feedback, [(task.task_id.encode(), json.dumps(answer).encode())]
    )
    await send(
        bootstrap,
        settings.topic_dispatch,
        [(task.task_id.encode(), task.model_dump_json().encode())],
    )
    feed = ResolutionFeed(world, START, settings.incident_radius_m)
    stop = asyncio.Event()
    learning = asyncio.create_task(learn_resolutions(feed, settings, stop, client_id="test"))
    try:
        for _ in range(150):
            if feed.removed:
                break
            await asyncio.sleep(0.2)
    finally:
        stop.set()
        await learning
    assert feed.removed == 1
    assert world.present(vendor, 39 * 60) and not world.present(vendor, 41 * 60)
