"""Hazard incidents through the real broker and worker: one task per real fire or vendor."""

from __future__ import annotations

import asyncio
import math
from datetime import datetime

from patrol.domain.models import TaskType
from patrol.domain.routing import load_routing
from patrol.domain.zones import Scene

from .stack import T0, WATER_SOURCE, Stack, detection, minutes, point_in

FARMLAND = "jianshan-guantou-farmland"
MARKET = "anwen-market"


def moved(
    location: dict[str, float], east_m: float = 0.0, north_m: float = 0.0
) -> dict[str, float]:
    lat = location["lat"] + north_m / 111_320
    lon = location["lon"] + east_m / (111_320 * math.cos(math.radians(location["lat"])))
    return {"lat": round(lat, 7), "lon": round(lon, 7)}


def burning(event_id: str, at: datetime, where: dict[str, float], **kw: object) -> dict:
    return detection(event_id, at, kind="open_burning", location=where, confidence=0.9, **kw)


async def test_fires_become_one_task_each_routed_by_scene(stack: Stack) -> None:
    fire_a = point_in(FARMLAND)
    fire_b = moved(fire_a, east_m=500)
    drone = {"source": "drone-jianshan-01", "source_type": "drone"}
    await stack.send(
        stack.topics.drone, burning("fire-a-drone", T0, moved(fire_a, north_m=20), **drone)
    )
    # Kafka orders nothing across topics: the drone's sighting opens fire A only if it is taken
    # in before the camera's frames, which a single intake round need not do.
    await stack.tasks(min_count=1, timeout=60)
    await stack.send(
        stack.topics.camera,
        burning("fire-a-frame-1", T0 + minutes(1), fire_a, source="cam-0101"),
        burning("fire-a-frame-2", T0 + minutes(1.1), moved(fire_a, east_m=15), source="cam-0101"),
        burning("fire-a-frame-3", T0 + minutes(1.2), moved(fire_a, east_m=30), source="cam-0101"),
        burning("fire-b", T0 + minutes(2), fire_b, source="cam-0102"),
        burning("fire-water", T0 + minutes(3), point_in(WATER_SOURCE), source="cam-0103"),
        detection(
            "vendor-unsure",
            T0 + minutes(3),
            kind="roadside_vending",
            zone=MARKET,
            confidence=0.3,
            source="cam-0104",
        ),
    )
    tasks = await stack.tasks(min_count=3, timeout=60)
    assert sorted(t["evidence"][0]["event_id"] for t in tasks) == [
        "fire-a-drone",
        "fire-b",
        "fire-water",
    ]
    assert {t["task_type"] for t in tasks} == {"open_burning"}

    await stack.send(
        stack.topics.camera,
        burning("fire-a-again", T0 + minutes(1.2 + 40), fire_a, source="cam-0101"),
    )
    tasks = await stack.tasks(min_count=4, timeout=60)
    assert len(tasks) == 4
    assert "fire-a-again" in [t["evidence"][0]["event_id"] for t in tasks]

    water = next(t for t in tasks if t["evidence"][0]["event_id"] == "fire-water")
    route = load_routing().route(TaskType.open_burning, Scene.water_source)
    assert water["priority"] == "urgent"
    assert water["department"] == "ecology_environment"
    assert water["zone_id"] == WATER_SOURCE
    created = datetime.fromisoformat(water["created_at"])
    assert datetime.fromisoformat(water["due_by"]) - created == route.due_within
    assert water["sms"] is None and water["plate"] is None
    assert water["township"] and water["summary"]

    farm = next(t for t in tasks if t["evidence"][0]["event_id"] == "fire-a-drone")
    assert farm["department"] == "agriculture_rural"

    for _ in range(50):
        if stack.metric("patrol_incident_detections_merged_total", kind="open_burning") >= 3:
            break
        await asyncio.sleep(0.2)
    assert stack.metric("patrol_incident_detections_merged_total", kind="open_burning") == 3
    assert (
        stack.metric("patrol_detections_total", kind="roadside_vending", outcome="low_confidence")
        == 1
    )
    assert stack.metric("patrol_tasks_total", task_type="roadside_vending") == 0
