"""CONTRACT §5 rules 6 and 7 through the real broker, worker and gateway: one ticket a day for a
car that stays on, and restricted hours."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import timedelta
from importlib import resources
from pathlib import Path

import pytest

from .helpers import Topics
from .stack import NO_PARKING, T0, Stack, detection, gateway_process, minutes

STAYS_ON = "浙G66001"
MORNING_ONLY = "test-morning-gate"
MORNING_PLATE = "浙G66002"
SQUARE = [[120.46, 29.07], [120.461, 29.07], [120.461, 29.071], [120.46, 29.071], [120.46, 29.07]]


def zones_with_a_morning_zone(path: Path) -> Path:
    """The shipped zones plus one no-parking zone restricted 07:00–09:00 only."""
    shipped = resources.files("patrol").joinpath("data", "zones.geojson").read_text("utf-8")
    document = json.loads(shipped)
    document["features"].append(
        {
            "type": "Feature",
            "properties": {
                "zone_id": MORNING_ONLY,
                "name": "测试校门",
                "township": "安文街道",
                "scene": "urban_road",
                "no_parking": True,
                "no_parking_hours": ["07:00-09:00"],
            },
            "geometry": {"type": "Polygon", "coordinates": [SQUARE]},
        }
    )
    path.write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def day_stack(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("day-rules")
    gateway = gateway_process(base)
    zones = zones_with_a_morning_zone(base / "zones.geojson")
    running = Stack(bootstrap, Topics(), gateway, base, extra_env={"PATROL_ZONES": str(zones)})
    try:
        running.start_worker()
        yield running
    finally:
        running.stop()
        gateway.process.stop()


def wait_metric(stack: Stack, name: str, value: float, timeout: float = 60, **labels: str) -> None:
    deadline = time.monotonic() + timeout
    seen = stack.metric(name, **labels)
    while seen < value and time.monotonic() < deadline:
        time.sleep(0.3)
        seen = stack.metric(name, **labels)
    assert seen == value, f"{name}{labels} is {seen}, expected {value}"


def warnings_for(stack: Stack, plate: str, timeout: float = 60) -> list[dict[str, object]]:
    """The SMS the gateway accepted for `plate`, once there is at least one."""
    deadline = time.monotonic() + timeout
    warned = [m for m in stack.gateway.messages() if m["plate"] == plate]
    while not warned and time.monotonic() < deadline:
        time.sleep(0.3)
        warned = [m for m in stack.gateway.messages() if m["plate"] == plate]
    return warned


async def test_a_car_that_stays_on_is_ticketed_once_a_day(day_stack: Stack) -> None:
    stack = day_stack
    hour = [
        detection(f"stay-{n:02d}", T0 + minutes(3 * n), plate=STAYS_ON, zone=NO_PARKING)
        for n in range(21)  # 10:00, 10:03, ... 11:00
    ]
    await stack.send(stack.topics.camera, *hour)
    tasks = await stack.tasks(min_count=1, timeout=60)
    # Every read of the hour taken in: the 16 after the ticket were suppressed by the cap.
    wait_metric(stack, "patrol_detections_total", 16, outcome="already_ticketed")
    sms = [m for m in stack.gateway.messages() if m["plate"] == STAYS_ON]
    assert len(sms) == 1 and "10:10" in sms[0]["text"]
    tasks = [t for t in await stack.tasks(min_count=1) if t["plate"] == STAYS_ON]
    assert len(tasks) == 1
    assert [e["event_id"] for e in tasks[0]["evidence"]] == ["stay-00", "stay-04"]

    next_morning = T0 + timedelta(days=1) - timedelta(hours=2)  # 08:00 the next local day
    assert next_morning.isoformat() == "2026-11-28T08:00:00+08:00"
    await stack.send(
        stack.topics.camera,
        detection("stay-next-0800", next_morning, plate=STAYS_ON),
        detection("stay-next-0811", next_morning + minutes(11), plate=STAYS_ON),
    )
    all_tasks = await stack.tasks(min_count=2, timeout=60)
    # tasks sit on the dispatch partitions of their ids: order them by event time to compare
    tasks = sorted((t for t in all_tasks if t["plate"] == STAYS_ON), key=lambda t: t["created_at"])
    assert len(tasks) == 2
    assert [e["event_id"] for e in tasks[1]["evidence"]] == ["stay-next-0800", "stay-next-0811"]
    sms = [m for m in stack.gateway.wait_for(2) if m["plate"] == STAYS_ON]
    assert len(sms) == 2 and "11月28日08:00" in sms[1]["text"]  # the gateway keeps arrival order
    assert len({t["task_id"] for t in tasks}) == 2


async def test_a_read_outside_restricted_hours_opens_nothing(day_stack: Stack) -> None:
    stack = day_stack
    before = stack.metric("patrol_detections_total", outcome="outside_hours")
    noon = T0.replace(day=28, hour=12)
    point = {"lat": 29.0705, "lon": 120.4605}
    await stack.send(
        stack.topics.camera,
        detection("gate-1200", noon, plate=MORNING_PLATE, location=point),
        detection("gate-1211", noon + minutes(11), plate=MORNING_PLATE, location=point),
    )
    wait_metric(stack, "patrol_detections_total", before + 2, outcome="outside_hours")
    assert not [m for m in stack.gateway.messages() if m["plate"] == MORNING_PLATE]
    assert not [t for t in await stack.tasks() if t["plate"] == MORNING_PLATE]
    # The same zone in its hours is under the rule: the next morning's read is warned.
    await stack.send(
        stack.topics.camera,
        detection(
            "gate-0750", noon + timedelta(hours=19, minutes=50), plate=MORNING_PLATE, location=point
        ),
    )
    warned = warnings_for(stack, MORNING_PLATE)
    assert len(warned) == 1 and warned[0]["zone_id"] == MORNING_ONLY
