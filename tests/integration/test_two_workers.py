"""Two workers with one app id share the partitions and still decide each case once."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import Topics, wait_http
from .stack import T0, Stack, detection, gateway_process, minutes


@pytest.fixture
def two_worker_stack(bootstrap: str, tmp_path: Path) -> Iterator[Stack]:
    gateway = gateway_process(tmp_path)
    running = Stack(bootstrap, Topics(), gateway, tmp_path)
    try:
        running.start_worker("one")
        running.start_worker("two")
        yield running
    finally:
        running.stop()
        gateway.process.stop()


async def test_two_workers_share_cases_without_duplicates(two_worker_stack: Stack) -> None:
    stack = two_worker_stack
    for port in stack.web_ports:  # both are ready after the rebalance the second one caused
        wait_http(f"http://127.0.0.1:{port}/readyz", timeout=60)
    plates = [f"浙G{n:05d}" for n in range(40000, 40024)]
    reads = []
    for i, plate in enumerate(plates):
        source = f"cam-{i % 6:04d}"
        reads.append(detection(f"two-{plate}-0", T0, plate=plate, source=source))
        reads.append(detection(f"two-{plate}-11", T0 + minutes(11), plate=plate, source=source))
    await stack.send(stack.topics.camera, *reads)
    await stack.tasks(min_count=len(plates), timeout=90)
    stack.gateway.wait_for(len(plates), timeout=60)
    await asyncio.sleep(2)  # time for a duplicate task or SMS, were one coming
    tasks = await stack.tasks(min_count=len(plates))
    sms = stack.gateway.messages()
    assert Counter(t["plate"] for t in tasks) == Counter(plates)
    assert sorted(m["plate"] for m in sms) == sorted(plates)
    assert all(m["attempt_count"] == 1 for m in sms)
    violations = [
        stack.metric("patrol_grace_cases_closed_total", port=port, result="violation")
        for port in stack.web_ports
    ]
    assert sum(violations) == len(plates)
    assert all(n > 0 for n in violations), f"one worker did all the work: {violations}"
