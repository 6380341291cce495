"""`patrol replay` on the real broker: a second app id reprocesses the range and gets the same
tasks, sends no SMS, and says so."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from bench.processes import clean_env
from patrol.settings import topic_names

from .helpers import REPO, Topics, read_json
from .stack import WATER_SOURCE, Stack, detection, gateway_process, heartbeat, point_in

CST = timezone(timedelta(hours=8))
# Yesterday 10:00 in Pan'an: within the topics' retention, never in the future, one local day.
DAY = datetime.now(CST).replace(hour=10, minute=0, second=0, microsecond=0) - timedelta(days=1)


def at(minute: float) -> datetime:
    return DAY + timedelta(minutes=minute)


@pytest.fixture(scope="module")
def replay_stack(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("replay")
    gateway = gateway_process(base)
    running = Stack(bootstrap, Topics(), gateway, base)
    try:
        running.start_worker()
        yield running
    finally:
        running.stop()
        gateway.process.stop()


async def produce_at_event_time(
    bootstrap: str, topic: str, detections: list[dict[str, Any]]
) -> None:
    """As devices do: each record's Kafka timestamp is its observed_at."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        sent = [
            await producer.send(
                topic,
                json.dumps(d, ensure_ascii=False).encode(),
                key=d["source"]["id"].encode(),
                timestamp_ms=int(datetime.fromisoformat(d["observed_at"]).timestamp() * 1000),
            )
            for d in detections
        ]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


def run_replay(
    stack: Stack, app_id: str, start: datetime, end: datetime
) -> subprocess.CompletedProcess[str]:
    env = clean_env(
        {**stack.topics.env(), "PATROL_KAFKA_BOOTSTRAP": stack.bootstrap, "PATROL_PARTITIONS": "3"}
    )
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "patrol.cli",
            "replay",
            "--from",
            start.isoformat(),
            "--to",
            end.isoformat(),
            "--app-id",
            app_id,
            "--timeout",
            "240",
        ],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


async def test_a_replay_under_a_new_app_id_gives_the_same_tasks_and_no_sms(
    replay_stack: Stack,
) -> None:
    stack = replay_stack
    camera = [
        detection("rp-a-0", at(0), plate="浙G70001", source="cam-0001"),
        detection("rp-a-10", at(10.5), plate="浙G70001", source="cam-0001"),
        detection("rp-b-0", at(1), plate="浙G70002", source="cam-0002"),
        detection("rp-b-4", at(5), plate="浙G70002", source="cam-0002"),
    ]
    fire = [
        detection(
            f"rp-fire-{m}",
            at(m),
            kind="open_burning",
            location=point_in(WATER_SOURCE),
            confidence=0.9,
            source="cam-0015",
        )
        for m in (2, 6)
    ]
    await produce_at_event_time(stack.bootstrap, stack.topics.camera, camera + fire)
    # a heartbeat past the second car's deadline + R closes it as self-corrected
    await produce_at_event_time(stack.bootstrap, stack.topics.camera, [heartbeat("rp-hb", at(30))])
    dispatched = await stack.tasks(min_count=2, timeout=60)
    assert {t["task_type"] for t in dispatched} == {"illegal_parking", "open_burning"}
    sms_before = len(stack.gateway.messages())

    app_id = f"replay-{uuid.uuid4().hex[:6]}"
    result = await asyncio.to_thread(run_replay, stack, app_id, at(-1), at(60))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 tasks dispatched in the range, 2 replayed, 2 identical" in result.stdout
    replayed = await read_json(stack.bootstrap, topic_names(app_id)["dispatch"], min_count=2)
    assert sorted(t["task_id"] for t in replayed) == sorted(t["task_id"] for t in dispatched)
    assert len(stack.gateway.messages()) == sms_before  # the replay texted nobody

    again = await asyncio.to_thread(run_replay, stack, app_id, at(-1), at(60))
    assert again.returncode != 0 and "was used before" in again.stderr
