"""Killed workers and a failing gateway: still exactly one SMS and one task per case."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from .helpers import Topics, read_json
from .stack import T0, WATER_SOURCE, Stack, detection, gateway_process, minutes, point_in


@pytest.fixture
def fresh_stack(bootstrap: str, tmp_path: Path) -> Iterator[Stack]:
    gateway = gateway_process(tmp_path, "--fail-rate", "0.5", "--seed", "7")
    gateway.set_faults(fail_rate=0.0)
    running = Stack(bootstrap, Topics(), gateway, tmp_path)
    try:
        yield running
    finally:
        running.stop()
        gateway.process.stop()


async def test_sigkill_between_warning_and_confirmation(fresh_stack: Stack) -> None:
    stack = fresh_stack
    plate = "浙G5K321"
    first = stack.start_worker("first")
    await stack.send(stack.topics.camera, detection("k-read-0", T0, plate=plate))
    sms = stack.gateway.wait_for(1)
    await read_json(stack.bootstrap, stack.topics.sms, min_count=1, timeout=30)
    await stack.wait_committed()  # the SMS has gone out, and its outcome is recorded
    first.kill()

    stack.start_worker("second")
    await stack.send(stack.topics.camera, detection("k-read-10.5", T0 + minutes(10.5), plate=plate))
    await stack.tasks(min_count=1, timeout=90)
    await asyncio.sleep(3)  # time for a second task, were one coming
    tasks = await stack.tasks(min_count=1)
    assert len(tasks) == 1
    assert tasks[0]["plate"] == plate
    assert [e["event_id"] for e in tasks[0]["evidence"]] == ["k-read-0", "k-read-10.5"]
    assert tasks[0]["sms"]["message_id"] == sms[0]["message_id"]
    assert tasks[0]["sms"]["status"] == "sent"
    after = stack.gateway.messages()
    assert len(after) == 1
    assert after[0]["attempt_count"] == 1, "the second worker sent the warning again"


async def test_warnings_waiting_when_a_worker_is_killed_are_sent_by_its_replacement(
    fresh_stack: Stack,
) -> None:
    stack = fresh_stack
    stack.gateway.set_faults(fail_rate=1.0)  # the gateway is down: the warnings wait
    plates = [f"浙G{n:05d}" for n in range(40, 48)]
    first = stack.start_worker("first")
    await stack.send(
        stack.topics.camera,
        *(detection(f"w-{p}", T0 + minutes(i * 0.1), plate=p) for i, p in enumerate(plates)),
    )
    for _ in range(200):  # opened, and the sender is retrying
        if stack.metric("patrol_sms_attempts_total", result="error") > 0:
            break
        await asyncio.sleep(0.3)
    assert stack.metric("patrol_sms_attempts_total", result="error") > 0
    assert stack.gateway.messages() == []
    first.kill()

    stack.gateway.set_faults(fail_rate=0.0)
    stack.start_worker("second")
    accepted = stack.gateway.wait_for(len(plates), timeout=60)
    records = await read_json(stack.bootstrap, stack.topics.sms, min_count=len(plates), timeout=30)
    assert sorted(m["plate"] for m in accepted) == sorted(plates)
    # nothing was recorded as failed for the killed worker: each warning's outcome is "sent"
    # (a warning the killed worker's sender finished while an older one in its partition was
    # still unsent is sent and recorded again; the gateway keeps it once)
    outcomes: dict[str, set[str]] = {}
    for record in records:
        outcomes.setdefault(record["plate"], set()).add(record["status"])
    assert outcomes == {p: {"sent"} for p in plates}

    # and the cases' tasks say their owners were warned
    await stack.send(
        stack.topics.camera,
        *(
            detection(f"w2-{p}", T0 + minutes(10.5 + i * 0.1), plate=p)
            for i, p in enumerate(plates)
        ),
    )
    tasks = await stack.tasks(min_count=len(plates), timeout=60)
    assert sorted((t["plate"], t["sms"]["status"]) for t in tasks) == [(p, "sent") for p in plates]


async def test_a_worker_restarted_under_its_instance_id_takes_its_cases_back_at_once(
    fresh_stack: Stack,
) -> None:
    stack = fresh_stack
    # A session far longer than the test waits: only static membership hands the killed
    # worker's partitions to its replacement in time.
    static = {"PATROL_INSTANCE_ID": "worker-a", "PATROL_SESSION_TIMEOUT_SECONDS": "90"}
    plate = "浙G6M777"
    first = stack.start_worker("first", **static)
    await stack.send(stack.topics.camera, detection("s-read-0", T0, plate=plate))
    stack.gateway.wait_for(1)
    await read_json(stack.bootstrap, stack.topics.sms, min_count=1, timeout=30)
    await stack.wait_committed()
    first.kill()

    stack.start_worker("second", **static)
    await stack.send(stack.topics.camera, detection("s-read-10.5", T0 + minutes(10.5), plate=plate))
    tasks = await stack.tasks(min_count=1, timeout=45)
    assert [e["event_id"] for e in tasks[0]["evidence"]] == ["s-read-0", "s-read-10.5"]
    assert tasks[0]["sms"]["status"] == "sent"


async def test_an_open_fire_incident_survives_a_killed_worker(fresh_stack: Stack) -> None:
    stack = fresh_stack
    fire = point_in("jianshan-guantou-farmland")

    def burning(event_id: str, at_minutes: float) -> dict[str, object]:
        return detection(
            event_id, T0 + minutes(at_minutes), kind="open_burning", location=fire, confidence=0.9
        )

    first = stack.start_worker("first")
    await stack.send(stack.topics.camera, burning("fire-0", 0), burning("fire-1", 1))
    assert len(await stack.tasks(min_count=1, timeout=60)) == 1
    await stack.wait_committed()  # the incident is in the changelog behind a committed offset
    first.kill()

    stack.start_worker("second")
    # the same fire, and a new one: the second worker must know the first is still open
    elsewhere = point_in(WATER_SOURCE)
    await stack.send(
        stack.topics.camera,
        burning("fire-5", 5),
        detection(
            "fire-far", T0 + minutes(6), kind="open_burning", location=elsewhere, confidence=0.9
        ),
    )
    await stack.tasks(min_count=2, timeout=60)
    await asyncio.sleep(3)  # time for a third task, were one coming
    tasks = await stack.tasks(min_count=2, timeout=10)
    assert sorted(t["evidence"][0]["event_id"] for t in tasks) == ["fire-0", "fire-far"]


async def test_every_case_gets_exactly_one_accepted_sms_when_half_the_requests_fail(
    fresh_stack: Stack,
) -> None:
    stack = fresh_stack
    stack.gateway.set_faults(fail_rate=0.5)
    stack.start_worker()
    plates = [f"浙G{n:05d}" for n in range(10, 30)]
    reads = [
        detection(f"f-{plate}", T0 + minutes(i * 0.1), plate=plate, source=f"cam-{i % 4}")
        for i, plate in enumerate(plates)
    ]
    await stack.send(stack.topics.camera, *reads)
    accepted = stack.gateway.wait_for(len(plates), timeout=90)
    records = await read_json(stack.bootstrap, stack.topics.sms, min_count=len(plates), timeout=60)
    assert sorted(m["plate"] for m in accepted) == sorted(plates)
    assert len({m["message_id"] for m in accepted}) == len(plates)
    assert len(records) == len(plates)
    assert {r["status"] for r in records} == {"sent"}
    attempts = {r["message_id"]: r["attempts"] for r in records}
    assert any(n > 1 for n in attempts.values()), "a 50 % failure rate caused no retry"
    for message in accepted:
        assert message["attempt_count"] == attempts[message["message_id"]]
    assert stack.metric("patrol_sms_total", status="sent") == len(plates)
    assert stack.metric("patrol_sms_attempts_total", result="error") == sum(
        attempts.values()
    ) - len(plates)


def _intake_children(worker_pid: int) -> list[psutil.Process]:
    found = []
    for child in psutil.Process(worker_pid).children():
        try:
            if "patrol.intake.process" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:  # a killed child not yet reaped (a zombie), or gone
            continue
    return found


async def _one_intake(worker_pid: int, other_than: int | None = None) -> psutil.Process:
    for _ in range(300):
        found = [c for c in _intake_children(worker_pid) if c.pid != other_than]
        if len(found) == 1:
            return found[0]
        await asyncio.sleep(0.1)
    raise AssertionError(f"worker {worker_pid} has no (new) intake child")


async def test_a_killed_intake_is_restarted_and_a_killed_worker_leaves_none_behind(
    fresh_stack: Stack,
) -> None:
    stack = fresh_stack
    plate = "浙G7Q210"
    worker = stack.start_worker("first")
    assert worker.proc is not None
    intake = await _one_intake(worker.proc.pid)

    intake.kill()
    replacement = await _one_intake(worker.proc.pid, other_than=intake.pid)
    # the replacement takes the input: the case opens and is confirmed
    await stack.send(stack.topics.camera, detection("i-read-0", T0, plate=plate))
    stack.gateway.wait_for(1)
    await stack.send(stack.topics.camera, detection("i-read-10.5", T0 + minutes(10.5), plate=plate))
    tasks = await stack.tasks(min_count=1, timeout=60)
    assert [t["plate"] for t in tasks] == [plate]

    worker.kill()
    # its stdin and its report pipe closed with the worker: it commits what it took in and exits
    _gone, alive = psutil.wait_procs([replacement], timeout=20)
    assert alive == [], "the killed worker's intake is still running"
