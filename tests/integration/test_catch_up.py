"""Catching up after an outage (issue 18): a worker is down while an hour of event time piles up
on its topics — parking cases that stay past their grace and cases that leave, hazards, and the
field teams' feedback on tasks dispatched before the outage — then started again. A second app
id on the same broker took the same input live, in event-time order, with no outage; the
restarted worker must give every ticket and every self-correction of that hour, and the same
tasks and status records as the live run."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from patrol.audit.compare import compare

from .helpers import Topics, read_json
from .stack import (
    T0,
    WATER_SOURCE,
    Stack,
    detection,
    gateway_process,
    heartbeat,
    minutes,
    point_in,
    report,
)

STREETS = ["anwen-wenxi-rd", "anwen-hailuo-st", "anwen-xincheng-rd", "xinwo-xinwo-st"]
CAMERAS = [f"cam-{n:04d}" for n in range(1, 9)]
OUTAGE_START, OUTAGE_END = 20, 80  # minutes after T0: the hour that piles up


@dataclass
class SharedInputs(Topics):
    """Another app id's topics, reading the detection and feedback topics of `inputs`."""

    inputs: Topics = field(default_factory=Topics)

    @property
    def camera(self) -> str:
        return self.inputs.camera

    @property
    def drone(self) -> str:
        return self.inputs.drone

    @property
    def feedback(self) -> str:
        return self.inputs.feedback


@dataclass
class Timeline:
    """The input, each record with its event minute: detections, and feedback by task."""

    items: list[tuple[float, dict[str, Any]]] = field(default_factory=list)

    def read(self, plate: str, minute: float, street: str, camera: str) -> None:
        event_id = f"cu-{plate[-5:]}-{minute:g}"
        at = T0 + minutes(minute)
        self.items.append(
            (minute, detection(event_id, at, plate=plate, zone=street, source=camera))
        )

    def add(self, minute: float, item: dict[str, Any]) -> None:
        self.items.append((minute, item))

    def between(self, start: float, end: float) -> list[dict[str, Any]]:
        return [
            item for minute, item in sorted(self.items, key=lambda i: i[0]) if start <= minute < end
        ]


def hazard(event_id: str, minute: float, kind: str, where: dict[str, float], camera: str) -> dict:
    return detection(
        event_id, T0 + minutes(minute), kind=kind, location=where, confidence=0.9, source=camera
    )


def before_outage() -> Timeline:
    """Minutes 0–20, taken in by both app ids while both run: two tickets, a vendor, a fire."""
    line = Timeline()
    line.read("浙G90001", 0, STREETS[0], CAMERAS[0])
    line.read("浙G90001", 10.5, STREETS[0], CAMERAS[0])
    line.read("浙G90002", 2, STREETS[1], CAMERAS[1])
    line.read("浙G90002", 13, STREETS[1], CAMERAS[1])
    market = point_in("anwen-market")
    line.add(1, hazard("cu-vend-1", 1, "roadside_vending", market, CAMERAS[2]))
    line.add(3, hazard("cu-fire-3", 3, "open_burning", point_in(WATER_SOURCE), CAMERAS[3]))
    for minute in range(0, OUTAGE_START, 5):
        for camera in CAMERAS:
            line.add(minute, heartbeat(f"cu-hb-{camera}-{minute}", T0 + minutes(minute), camera))
    return line


OVERSTAYING = {  # plate: (opened at, confirmed at), minutes after T0
    "浙G91001": (22, 32.5),
    "浙G91002": (27, 39),
    "浙G91003": (33, 47.5),
    "浙G91004": (41, 51.5),
    "浙G91005": (50, 61),
    "浙G91006": (58, 72.5),
}
LEAVING = {"浙G92001": 24, "浙G92002": 30, "浙G92003": 37, "浙G92004": 45, "浙G92005": 55}
# left within its grace, back 16 minutes later (a new case) and then stays: one of each
RETURNING = ("浙G93001", 21, 37, 48)


def outage_hour(tasks_before: dict[str, dict[str, Any]]) -> Timeline:
    """Minutes 20–80, piling up while the worker is down."""
    line = Timeline()
    for i, (plate, (opened, confirmed)) in enumerate(OVERSTAYING.items()):
        street, camera = STREETS[i % len(STREETS)], CAMERAS[i % len(CAMERAS)]
        line.read(plate, opened, street, camera)
        line.read(plate, opened + 5, street, camera)  # before the deadline: nothing
        line.read(plate, confirmed, street, camera)
    for i, (plate, opened) in enumerate(LEAVING.items()):
        street, camera = STREETS[(i + 1) % len(STREETS)], CAMERAS[(i + 3) % len(CAMERAS)]
        line.read(plate, opened, street, camera)
        line.read(plate, opened + 4, street, camera)  # then gone: closed by the clock
    plate, first, again, confirmed = RETURNING
    for minute in (first, again, confirmed):
        line.read(plate, minute, STREETS[2], CAMERAS[5])
    vendor = point_in("fangqian-market")
    for minute in (25, 26, 28):
        line.add(
            minute, hazard(f"cu-vend-{minute}", minute, "roadside_vending", vendor, CAMERAS[6])
        )
    field_fire = point_in("jianshan-guantou-farmland")
    for minute in (52, 53):
        line.add(
            minute, hazard(f"cu-fire-{minute}", minute, "open_burning", field_fire, CAMERAS[7])
        )
    for minute in range(OUTAGE_START, OUTAGE_END + 1, 5):
        for camera in CAMERAS:
            line.add(minute, heartbeat(f"cu-hb-{camera}-{minute}", T0 + minutes(minute), camera))

    # The teams answer the tasks dispatched before the outage. Each `at` lies where no lamp
    # time of its task falls between it and the end of the hour, so the records cannot depend
    # on whether the clock or the feedback came first (docs/interface.md, "Lamps").
    def task_of(first_event: str) -> str:
        return next(
            t for t in tasks_before.values() if t["evidence"][0]["event_id"] == first_event
        )["task_id"]

    ticket_a, ticket_b = task_of("cu-90001-0"), task_of("cu-90002-2")
    vendor_task, fire_task = task_of("cu-vend-1"), task_of("cu-fire-3")
    answers = [
        (ticket_a, "accepted", 30, "cu-fb-1"),
        (ticket_a, "resolved", 50, "cu-fb-2"),  # a parking task closes at once
        (ticket_b, "accepted", 35, "cu-fb-3"),
        (vendor_task, "resolved", 45, "cu-fb-4"),  # watched until minute 105, past the hour
        (fire_task, "arrived", 40, "cu-fb-5"),  # after its yellow (27) and red (33) lamps
    ]
    for task_id, status, minute, fid in answers:
        line.add(minute, report(task_id, status, T0 + minutes(minute), fid))
    return line


async def send(stack: Stack, items: list[dict[str, Any]]) -> None:
    detections = [i for i in items if "observed_at" in i]
    feedback = [i for i in items if "feedback_id" in i]
    if detections:
        await stack.send(stack.topics.camera, *detections)
    if feedback:
        await stack.send_feedback(*feedback)


def by_task(records: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Each task's status records in topic order (one partition per task id), as bytes."""
    grouped: dict[str, list[str]] = {}
    for record in records:
        grouped.setdefault(record["task_id"], []).append(json.dumps(record, sort_keys=True))
    return grouped


@pytest.fixture
def two_apps(bootstrap: str, tmp_path: Path) -> Iterator[tuple[Stack, Stack]]:
    """The worker that will be down, and a live app id reading the same input."""
    with ThreadPoolExecutor(2) as pool:  # each waits for its own /healthz
        down_gateway, live_gateway = pool.map(
            gateway_process, [tmp_path / "down", tmp_path / "live"]
        )
    down = Stack(bootstrap, Topics(), down_gateway, tmp_path / "down")
    live = Stack(bootstrap, SharedInputs(inputs=down.topics), live_gateway, tmp_path / "live")
    try:
        yield down, live
    finally:
        for stack in (down, live):
            stack.stop()
            stack.gateway.process.stop()


async def test_a_worker_down_for_an_hour_catches_up_with_the_same_tasks_and_statuses(
    two_apps: tuple[Stack, Stack],
) -> None:
    down, live = two_apps
    await asyncio.gather(*(asyncio.to_thread(s.start_worker, "worker") for s in (down, live)))
    first = before_outage()
    await send(down, first.between(0, OUTAGE_START))
    for stack in (down, live):
        await stack.tasks(min_count=4, timeout=60)
        await stack.wait_committed()
    tasks_before = {t["task_id"]: t for t in await down.tasks(min_count=4)}
    down.workers[-1].kill()  # down: nothing of the next hour reaches it

    hour = outage_hour(tasks_before)
    for start in range(OUTAGE_START, OUTAGE_END + 1, 10):  # the live app takes it as it happens
        await send(live, hour.between(start, start + 10))
        await live.wait_committed()

    down.start_worker("worker")  # the same data dir: its state is as the kill left it
    await down.wait_committed(timeout=90)
    await live.wait_committed()

    expected_tasks = 4 + len(OVERSTAYING) + 1 + 2
    caught_up = await down.tasks(min_count=expected_tasks)
    live_tasks = await live.tasks(min_count=expected_tasks)

    # every violation of the hour ticketed, once, with its reads as evidence
    in_hour = [t for t in caught_up if t["task_id"] not in tasks_before]
    tickets = {t["plate"]: t for t in in_hour if t["task_type"] == "illegal_parking"}
    assert sorted(tickets) == sorted([*OVERSTAYING, RETURNING[0]])
    for plate, (opened, confirmed) in OVERSTAYING.items():
        evidence = [e["event_id"] for e in tickets[plate]["evidence"]]
        assert evidence == [f"cu-{plate[-5:]}-{opened:g}", f"cu-{plate[-5:]}-{confirmed:g}"]
    assert sorted(t["task_type"] for t in in_hour if t["plate"] is None) == [
        "open_burning",
        "roadside_vending",
    ]
    assert len(caught_up) == len({t["task_id"] for t in caught_up}) == expected_tasks

    # every self-corrected case self-corrected: the leaving cars and the returning car's first
    assert (
        down.metric("patrol_grace_cases_closed_total", result="self_corrected") == len(LEAVING) + 1
    )
    assert (
        down.metric("patrol_grace_cases_closed_total", result="violation") == len(OVERSTAYING) + 1
    )
    # one warning per case of the hour, and the two before it
    warned = sorted(m["plate"] for m in down.gateway.messages())
    cases = [*OVERSTAYING, *LEAVING, RETURNING[0], RETURNING[0], "浙G90001", "浙G90002"]
    assert warned == sorted(cases)

    # the same tasks as the live run, by task id and byte for byte but for sms.status
    comparison = compare(caught_up, live_tasks, T0 - minutes(60), T0 + minutes(180))
    assert comparison.same, comparison.text()
    assert comparison.identical == expected_tasks

    # and the same status records, each task's in the same order, every feedback applied
    statuses = await down.statuses(min_count=expected_tasks)
    live_statuses = await live.statuses(min_count=expected_tasks)
    assert by_task(statuses) == by_task(live_statuses)
    applied = sorted(r["feedback_id"] for r in statuses if r["feedback_id"])
    assert applied == [f"cu-fb-{n}" for n in range(1, 6)]
    fire = next(t for t in tasks_before.values() if t["task_type"] == "open_burning")
    lamps = [
        (r["status"], r["cause"], r["lamp"]) for r in statuses if r["task_id"] == fire["task_id"]
    ]
    assert lamps == [
        ("dispatched", "dispatched", "green"),
        ("dispatched", "clock", "yellow"),
        ("dispatched", "clock", "red"),
        ("arrived", "feedback", "red"),
    ]
    for stack in (down, live):
        assert await read_json(stack.bootstrap, stack.topics.deadletter, timeout=3, settle=1) == []
