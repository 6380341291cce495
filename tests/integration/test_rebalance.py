"""A second worker joins one that holds open cases and a fire incident: partitions move while
reads and clock steps flow, and every case and incident is still decided exactly once."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from .helpers import Topics, wait_http
from .stack import (
    NO_PARKING,
    STREAM_PARTITIONS,
    T0,
    WATER_SOURCE,
    Stack,
    detection,
    gateway_process,
    heartbeat,
    minutes,
    point_in,
)

PLATES = [f"浙G{n:05d}" for n in range(50000, 50040)]
CONFIRMED, LEFT = PLATES[:20], PLATES[20:]  # still there at 10:10.5; gone by then
PARKING_CAMERA = "cam-0031"  # reads and heartbeats from one camera keep their order
FIRE_CAMERA = "cam-0032"
FIRE = point_in(WATER_SOURCE)
STEP_SECONDS = 1.0  # between the batches sent while the second worker joins


@pytest.fixture(scope="module")
def rebalance_stack(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("rebalance")
    gateway = gateway_process(base)
    running = Stack(bootstrap, Topics(), gateway, base)
    try:
        running.start_worker("a")
        yield running
    finally:
        running.stop()
        gateway.process.stop()


def read(plate: str, at_minutes: float) -> dict[str, Any]:
    return detection(
        f"rb-{plate}-{at_minutes}", T0 + minutes(at_minutes), plate=plate, source=PARKING_CAMERA
    )


def clock_step(at_minutes: float) -> dict[str, Any]:
    return heartbeat(f"rb-hb-{at_minutes}", T0 + minutes(at_minutes), source=PARKING_CAMERA)


def fire_frame(n: int) -> dict[str, Any]:
    """Frame n of one fire: a minute apart, drifting 5 m north each (one incident)."""
    where = {"lat": round(FIRE["lat"] + n * 5 / 111_320, 7), "lon": FIRE["lon"]}
    return detection(
        f"rb-fire-{n}",
        T0 + minutes(n),
        kind="open_burning",
        location=where,
        confidence=0.9,
        source=FIRE_CAMERA,
    )


def summed(stack: Stack, name: str, **labels: str) -> float:
    return sum(stack.metric(name, port=port, **labels) for port in stack.web_ports)


async def test_a_joining_worker_takes_over_open_cases_and_an_incident_and_each_is_decided_once(
    rebalance_stack: Stack,
) -> None:
    stack = rebalance_stack
    # Worker A opens 40 cases (10:10 deadlines, confirmable to 10:15) and one fire incident.
    await stack.send(stack.topics.camera, *(read(p, 0) for p in PLATES))
    await stack.send(stack.topics.camera, fire_frame(0))
    warned = stack.gateway.wait_for(len(PLATES), timeout=120)
    assert sorted(m["plate"] for m in warned) == sorted(PLATES)
    [fire_task] = await stack.tasks(min_count=1, timeout=60)
    assert fire_task["task_type"] == "open_burning"
    await stack.wait_committed()  # A holds them: decided, recorded, its offsets committed

    # Worker B joins; while the partitions move, confirmations, frames and clock steps flow
    # that close nothing yet (the clock stays before 10:15).
    during_join: list[list[dict[str, Any]]] = []
    for k in range(0, 10, 2):
        during_join.append([read(p, 10.5) for p in CONFIRMED[k : k + 2]])
        during_join.append([clock_step(11 + k / 4)])
    during_join[1:1] = [[fire_frame(1)]]
    during_join[5:5] = [[fire_frame(2)]]
    joining = asyncio.create_task(asyncio.to_thread(stack.start_worker, "b"))
    for batch in during_join:
        await stack.send(stack.topics.camera, *batch)
        await asyncio.sleep(STEP_SECONDS)
    await joining
    for port in stack.web_ports:  # both ready after the rebalance B caused
        wait_http(f"http://127.0.0.1:{port}/readyz", timeout=120)

    # Then the rest, on whichever worker now holds each partition: the other confirmations,
    # one more frame of the same fire, and clock steps past 10:15 that close the cases left.
    await stack.send(stack.topics.camera, *(read(p, 10.5) for p in CONFIRMED[10:]))
    await stack.send(stack.topics.camera, fire_frame(3))
    for at in (16, 17, 18, 20):
        await stack.send(stack.topics.camera, clock_step(at))

    await stack.tasks(min_count=len(CONFIRMED) + 1, timeout=120)
    for _ in range(400):
        if summed(stack, "patrol_grace_cases_closed_total", result="self_corrected") >= len(LEFT):
            break
        await asyncio.sleep(0.3)
    await stack.wait_committed(timeout=120)
    await asyncio.sleep(3)  # time for a duplicate task or SMS, were one coming

    tasks = await stack.tasks(min_count=len(CONFIRMED) + 1)
    parking = [t for t in tasks if t["task_type"] == "illegal_parking"]
    fires = [t for t in tasks if t["task_type"] == "open_burning"]
    assert len(tasks) == len(parking) + len(fires)
    duplicated = [i for i, n in Counter(t["task_id"] for t in parking).items() if n > 1]
    assert duplicated == [], f"tickets issued twice: {duplicated}"
    assert sorted(t["plate"] for t in parking) == sorted(CONFIRMED)  # none for those who left
    assert all(t["zone_id"] == NO_PARKING for t in parking)
    assert [t["task_id"] for t in fires] == [fire_task["task_id"]], "the fire became two tasks"
    assert fires[0]["evidence"][0]["event_id"] == "rb-fire-0"

    sms = stack.gateway.messages()
    assert Counter(m["plate"] for m in sms) == Counter(PLATES)
    assert all(m["attempt_count"] == 1 for m in sms), "a warning was sent again after the move"
    warning_of = {m["plate"]: m["message_id"] for m in sms}
    for task in parking:
        assert task["sms"]["message_id"] == warning_of[task["plate"]]
        assert task["sms"]["status"] == "sent"

    closed = {
        result: [
            stack.metric("patrol_grace_cases_closed_total", port=port, result=result)
            for port in stack.web_ports
        ]
        for result in ("violation", "self_corrected")
    }
    assert sum(closed["violation"]) == len(CONFIRMED), closed
    assert sum(closed["self_corrected"]) == len(LEFT), closed
    decided_by = [v + s for v, s in zip(closed["violation"], closed["self_corrected"], strict=True)]
    assert all(n > 0 for n in decided_by), f"the partitions did not move: {decided_by}"

    # After the rebalance each stream partition is fetched by one worker, and no changelog by
    # either (each read its new partitions' changelogs, then paused them).
    for _ in range(50):
        counts = [await stack.fetching(port=port) for port in stack.web_ports]
        if sum(c["stream"] for c in counts) == STREAM_PARTITIONS and not any(
            c["changelog"] for c in counts
        ):
            break
        await asyncio.sleep(0.3)
    assert [c["changelog"] for c in counts] == [0, 0], counts
    assert sum(c["stream"] for c in counts) == STREAM_PARTITIONS, counts
