"""The same input gives the same tasks (CONTRACT §5-6 on event time): a day waiting on the
topics, one incident's frames on the camera and drone topics in an order opposite to their
event times, processed by two fresh app ids and by a worker that was stopped while the input
piled up, gives byte-identical tasks (but for the SMS status snapshot)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.kafka import create_topics
from bench.processes import clean_env, free_port
from patrol.audit.compare import comparable
from patrol.settings import topic_names

from .helpers import ManagedProcess, produce_values, read_json, uncommitted, wait_http
from .stack import NO_PARKING, T0, WATER_SOURCE, detection, heartbeat, minutes, point_in

PARTITIONS = 3
VENDING_SPOT = {"lat": 29.05625, "lon": 120.4427}  # by the Anwen market


def vending(
    event_id: str, minute: float, source: str, source_type: str = "camera"
) -> dict[str, Any]:
    return detection(
        event_id,
        T0 + minutes(minute),
        kind="roadside_vending",
        location=VENDING_SPOT,
        confidence=0.9,
        source=source,
        source_type=source_type,
    )


def fire(event_id: str, minute: float, source: str) -> dict[str, Any]:
    return detection(
        event_id,
        T0 + minutes(minute),
        kind="open_burning",
        location=point_in(WATER_SOURCE),
        confidence=0.9,
        source=source,
    )


def first_part() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(camera, drone) detections of the first hour."""
    camera = [
        vending("v-cam-0", 0, "cam-0008"),
        vending("v-cam-4", 4, "cam-0008"),
        vending("v-cam2-12", 12, "cam-0007"),
        detection("p-a-0", T0, plate="浙G80001", source="cam-0001", zone=NO_PARKING),
        detection("p-a-11", T0 + minutes(11), plate="浙G80001", source="cam-0001", zone=NO_PARKING),
        detection("p-b-2", T0 + minutes(2), plate="浙G80002", source="cam-0002", zone=NO_PARKING),
        # a camera whose partition holds an hour of heartbeats before its fire frames
        *[heartbeat(f"hb-15-{m}", T0 + minutes(m), source="cam-0015") for m in range(0, 60, 2)],
        fire("fire-15-5", 5, "cam-0015"),
        fire("fire-15-9", 9, "cam-0015"),
    ]
    drone = [
        vending("v-drone-8", 8, "uav-dock1", "drone"),  # produced before the camera's frames
        *[heartbeat(f"hb-uav-{m}", T0 + minutes(m), source="uav-dock2") for m in range(0, 120, 5)],
    ]
    for item in drone:
        item["source"]["type"] = "drone"
        item["source"]["route_id"] = "route-anwen-01"
    return camera, drone


def second_part() -> list[dict[str, Any]]:
    """Camera detections of the next hours, sent after a worker stopped."""
    return [
        detection(
            "p-c-100", T0 + minutes(100), plate="浙G80003", source="cam-0003", zone=NO_PARKING
        ),
        detection(
            "p-c-111", T0 + minutes(111), plate="浙G80003", source="cam-0003", zone=NO_PARKING
        ),
        fire("fire-15-130", 130, "cam-0015"),
        heartbeat("hb-1-200", T0 + minutes(200), source="cam-0001"),
    ]


class Inputs:
    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        suffix = uuid.uuid4().hex[:8]
        names = topic_names(f"t{suffix}")
        self.camera, self.drone = names["camera"], names["drone"]

    async def send(self, topic: str, items: list[dict[str, Any]]) -> None:
        values = [
            (d["source"]["id"].encode(), json.dumps(d, ensure_ascii=False).encode()) for d in items
        ]
        await produce_values(self.bootstrap, topic, values)


def worker_for(inputs: Inputs, app_id: str, base: Path) -> ManagedProcess:
    env = clean_env(
        {
            **{f"PATROL_TOPIC_{k.upper()}": v for k, v in topic_names(app_id).items()},
            "PATROL_TOPIC_CAMERA": inputs.camera,
            "PATROL_TOPIC_DRONE": inputs.drone,
            "PATROL_APP_ID": app_id,
            "PATROL_KAFKA_BOOTSTRAP": inputs.bootstrap,
            "PATROL_PARTITIONS": str(PARTITIONS),
            "PATROL_SMS_ENABLED": "false",
            "PATROL_DATA_DIR": str(base / f"{app_id}-data"),
            "PATROL_WEB_PORT": str(free_port()),
        }
    )
    return ManagedProcess(app_id, ["worker"], env, base / f"{app_id}.log")


async def run_until_caught_up(inputs: Inputs, app_id: str, base: Path) -> None:
    """Start a worker of `app_id`, wait until it has committed its input and its agents their
    internal topics, and stop it."""
    process = worker_for(inputs, app_id, base).start()
    try:
        port = process.env["PATROL_WEB_PORT"]
        await asyncio.to_thread(wait_http, f"http://127.0.0.1:{port}/readyz", 90, process.proc)
        internal = [f"{app_id}-grace-cases", f"{app_id}-hazard-detections"]
        for _ in range(600):
            behind = await uncommitted(
                inputs.bootstrap, app_id, [inputs.camera, inputs.drone], PARTITIONS
            )
            behind_state = await uncommitted(
                inputs.bootstrap, f"{app_id}-state", internal, PARTITIONS
            )
            if not behind and not behind_state:
                break
            await asyncio.sleep(0.5)
        else:
            raise AssertionError(f"{app_id} did not catch up:\n{process.log_tail()}")
    finally:
        process.stop()


async def tasks_of(inputs: Inputs, app_id: str, count: int) -> dict[str, dict[str, Any]]:
    tasks = await read_json(inputs.bootstrap, topic_names(app_id)["dispatch"], min_count=count)
    return {t["task_id"]: comparable(t) for t in tasks}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield tmp_path_factory.mktemp("event-time-order")


async def test_the_same_input_gives_the_same_tasks_whatever_the_arrival_order(
    bootstrap: str, base: Path
) -> None:
    inputs = Inputs(bootstrap)
    await create_topics(bootstrap, [inputs.camera, inputs.drone], PARTITIONS)
    camera, drone = first_part()
    await inputs.send(inputs.drone, drone)  # the drone's later frame first
    await inputs.send(inputs.camera, camera)

    stopped = f"patrol-o{uuid.uuid4().hex[:6]}"
    await run_until_caught_up(inputs, stopped, base)  # then stopped while input piles up
    await inputs.send(inputs.camera, second_part())
    await run_until_caught_up(inputs, stopped, base)

    fresh = [f"patrol-f{uuid.uuid4().hex[:6]}", f"patrol-g{uuid.uuid4().hex[:6]}"]
    for app_id in fresh:
        await run_until_caught_up(inputs, app_id, base)

    expected = 5  # two parking tickets, one vending incident, two fires (minute 5 and 130)
    results = [await tasks_of(inputs, app_id, expected) for app_id in (*fresh, stopped)]
    first = results[0]
    assert len(first) == expected
    vending_tasks = [t for t in first.values() if t["task_type"] == "roadside_vending"]
    assert [e["event_id"] for e in vending_tasks[0]["evidence"]] == ["v-cam-0"]
    fires = sorted(t["created_at"] for t in first.values() if t["task_type"] == "open_burning")
    assert fires == [(T0 + minutes(5)).isoformat(), (T0 + minutes(130)).isoformat()]
    for other in results[1:]:
        assert other == first
