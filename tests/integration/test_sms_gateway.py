"""The real stub gateway process (`python -m patrol.sms`) with the real notifier against it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from bench.processes import free_port
from patrol.models import SmsRecord, SmsStatus
from patrol.rules.grace import SmsRequest
from patrol.settings import Settings
from patrol.sms.notifier import SmsNotifier, request_body
from patrol.sms.sender import SmsSenderProcess

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CST = timezone(timedelta(hours=8))


def warning(n: int) -> SmsRequest:
    return SmsRequest(
        message_id=f"sms-it-{n}",
        case_id=f"case-it-{n}",
        plate="浙G12345",
        zone_id="panan-anwen-old-street",
        text="【磐安综合执法】您的车辆在安文老街违停,请于10:10前驶离。",
        deadline=datetime(2026, 11, 27, 10, 10, tzinfo=CST),
    )


def wait_healthy(url: str, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"sms gateway exited with {proc.returncode}:\n{log_path.read_text()}"
            )
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"sms gateway at {url} not healthy in 20 s:\n{log_path.read_text()}")


@pytest.fixture(scope="module")
def gateway_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log_path = tmp_path_factory.mktemp("sms-gateway") / "gateway.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PATROL_")}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "patrol.sms", "--port", str(port), "--seed", "11"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=REPO,
            env=env,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, log_path)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def gateway(gateway_url: str) -> Iterator[str]:
    """The shared gateway, emptied and without faults for each test."""
    httpx.delete(f"{gateway_url}/messages").raise_for_status()
    httpx.put(
        f"{gateway_url}/faults",
        json={"fail_rate": 0, "latency_ms": 0, "latency_jitter_ms": 0, "fail_first": 0},
    ).raise_for_status()
    yield gateway_url


def accepted(url: str) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = httpx.get(f"{url}/messages").json()
    return listed


async def set_faults(url: str, **faults: float) -> None:
    async with httpx.AsyncClient() as client:
        (await client.put(f"{url}/faults", json=faults)).raise_for_status()


async def accepted_later(url: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient() as client:
        listed: list[dict[str, Any]] = (await client.get(f"{url}/messages")).json()
    return listed


class Outcomes:
    def __init__(self) -> None:
        self.records: list[SmsRecord] = []
        self.changed = asyncio.Condition()

    async def record(self, outcome: SmsRecord) -> None:
        async with self.changed:
            self.records.append(outcome)
            self.changed.notify_all()

    async def wait_for(self, count: int, seconds: float) -> None:
        async with asyncio.timeout(seconds), self.changed:
            await self.changed.wait_for(lambda: len(self.records) >= count)


def notifier_for(url: str, outcomes: Outcomes, **overrides: Any) -> SmsNotifier:
    values: dict[str, Any] = {"sms_url": url, "sms_concurrency": 4, "sms_retry_seconds": 30.0}
    values.update(overrides)
    return SmsNotifier(
        Settings(**values),
        outcomes.record,
        backoff_first_seconds=0.02,
        backoff_max_seconds=0.2,
    )


def test_a_repeated_key_is_stored_once(gateway: str) -> None:
    request = warning(1)
    headers = {"Idempotency-Key": request.message_id}

    first = httpx.post(f"{gateway}/messages", json=request_body(request), headers=headers)
    again = httpx.post(f"{gateway}/messages", json=request_body(request), headers=headers)

    assert first.status_code == 201
    assert again.status_code == 200 and again.json()["duplicate"] is True
    [stored] = accepted(gateway)
    assert stored["message_id"] == request.message_id
    assert stored["text"] == request.text
    assert stored["attempt_count"] == 2


def test_messages_are_listed_oldest_first(gateway: str) -> None:
    order = [5, 2, 9, 1]
    for n in order:
        request = warning(n)
        response = httpx.post(
            f"{gateway}/messages",
            json=request_body(request),
            headers={"Idempotency-Key": request.message_id},
        )
        assert response.status_code == 201

    assert [m["message_id"] for m in accepted(gateway)] == [f"sms-it-{n}" for n in order]


async def test_half_failing_gateway_still_gets_every_sms_exactly_once(gateway: str) -> None:
    await set_faults(gateway, fail_rate=0.5)
    outcomes = Outcomes()
    notifier = notifier_for(gateway, outcomes)
    requests = [warning(n) for n in range(30)]

    await notifier.start()
    try:
        assert all(notifier.submit(request) for request in requests)
        await outcomes.wait_for(len(requests), seconds=60)
    finally:
        await notifier.stop()

    assert {o.message_id: o.status for o in outcomes.records} == {
        r.message_id: SmsStatus.sent for r in requests
    }
    stored = await accepted_later(gateway)
    assert sorted(m["message_id"] for m in stored) == sorted(r.message_id for r in requests)
    attempts = {o.message_id: o.attempts for o in outcomes.records}
    assert any(n > 1 for n in attempts.values())
    # The gateway saw exactly the attempts the notifier counted: nothing lost, nothing extra.
    assert {m["message_id"]: m["attempt_count"] for m in stored} == attempts


async def test_a_slow_gateway_makes_a_short_timeout_retry_and_still_stores_once(
    gateway: str,
) -> None:
    errors_before = REGISTRY.get_sample_value("patrol_sms_attempts_total", {"result": "error"})
    await set_faults(gateway, latency_ms=800)
    outcomes = Outcomes()
    notifier = notifier_for(gateway, outcomes, sms_timeout_seconds=0.2, sms_retry_seconds=10.0)

    await notifier.start()
    try:
        notifier.submit(warning(1))
        await asyncio.sleep(0.5)  # long enough for at least one attempt to time out
        await set_faults(gateway, latency_ms=0)
        await outcomes.wait_for(1, seconds=15)
    finally:
        await notifier.stop()

    [outcome] = outcomes.records
    assert outcome.status is SmsStatus.sent
    assert outcome.attempts >= 2
    errors_after = REGISTRY.get_sample_value("patrol_sms_attempts_total", {"result": "error"})
    assert (errors_after or 0) - (errors_before or 0) >= 1
    await asyncio.sleep(1.0)  # let the timed-out requests the gateway is still serving finish
    assert [m["message_id"] for m in await accepted_later(gateway)] == ["sms-it-1"]


async def test_unreachable_gateway_ends_failed_within_the_retry_window() -> None:
    outcomes = Outcomes()
    notifier = notifier_for(f"http://127.0.0.1:{free_port()}", outcomes, sms_retry_seconds=1.0)

    started = time.monotonic()
    await notifier.start()
    try:
        notifier.submit(warning(1))
        await outcomes.wait_for(1, seconds=10)
    finally:
        await notifier.stop()

    [outcome] = outcomes.records
    assert outcome.status is SmsStatus.failed
    assert outcome.error is not None and outcome.error.startswith("connection")
    assert outcome.attempts > 1
    assert time.monotonic() - started < 5


# --- the worker's sender process ----------------------------------------------------------------


class Observed:
    """What the sender process reported to the worker, as the metrics would count it."""

    def __init__(self) -> None:
        self.attempts: list[str] = []
        self.outcomes: list[tuple[SmsStatus, float | None]] = []
        self.depths: list[int] = []

    def attempt(self, result: str) -> None:
        self.attempts.append(result)

    def finished(self, status: SmsStatus, seconds: float | None) -> None:
        self.outcomes.append((status, seconds))

    def queue_depth(self, depth: int) -> None:
        self.depths.append(depth)


def sender_for(
    url: str, outcomes: Outcomes, observed: Observed, **overrides: Any
) -> SmsSenderProcess:
    values: dict[str, Any] = {"sms_url": url, "sms_concurrency": 4, "sms_retry_seconds": 30.0}
    values.update(overrides)
    return SmsSenderProcess(
        Settings(**values), outcomes.record, observer=observed, drain_seconds=2.0
    )


async def test_the_sender_process_sends_each_sms_once_and_reports_it(gateway: str) -> None:
    await set_faults(gateway, fail_rate=0.3)
    outcomes, observed = Outcomes(), Observed()
    sender = sender_for(gateway, outcomes, observed)
    requests = [warning(n) for n in range(40)]

    await sender.start()
    try:
        assert all(sender.submit(request) for request in requests)
        await outcomes.wait_for(len(requests), seconds=60)
        assert sender.pending == 0
    finally:
        await sender.stop()

    assert {o.message_id: o.status for o in outcomes.records} == {
        r.message_id: SmsStatus.sent for r in requests
    }
    stored = await accepted_later(gateway)
    attempts = {o.message_id: o.attempts for o in outcomes.records}
    assert {m["message_id"]: m["attempt_count"] for m in stored} == attempts
    # every attempt and outcome reached the worker's side
    assert len(observed.attempts) == sum(attempts.values())
    assert observed.attempts.count("accepted") == len(requests)
    assert [status for status, _ in observed.outcomes] == [SmsStatus.sent] * len(requests)
    assert all(seconds is not None and seconds >= 0 for _, seconds in observed.outcomes)
    assert observed.depths[-1] == 0


async def test_a_sender_that_dies_fails_what_it_held_and_is_replaced(gateway: str) -> None:
    await set_faults(gateway, latency_ms=3000)
    outcomes, observed = Outcomes(), Observed()
    sender = sender_for(gateway, outcomes, observed, sms_timeout_seconds=10.0)
    await sender.start()
    try:
        held = [warning(n) for n in range(100, 105)]
        assert all(sender.submit(request) for request in held)
        first_pid = sender.pid
        assert first_pid is not None
        await asyncio.sleep(0.5)
        os.kill(first_pid, signal.SIGKILL)
        await outcomes.wait_for(len(held), seconds=20)
        assert {(o.message_id, o.status, o.error) for o in outcomes.records} == {
            (r.message_id, SmsStatus.failed, "sender_exited") for r in held
        }

        await set_faults(gateway, latency_ms=0)
        # submitted while the replacement starts: kept for it, not lost
        assert sender.submit(warning(200))
        await outcomes.wait_for(len(held) + 1, seconds=20)
        assert (outcomes.records[-1].message_id, outcomes.records[-1].status) == (
            warning(200).message_id,
            SmsStatus.sent,
        )
        assert sender.pid not in (None, first_pid)
    finally:
        await sender.stop()


async def test_stopping_the_sender_drains_and_reports_every_sms(gateway: str) -> None:
    await set_faults(gateway, latency_ms=400)
    outcomes, observed = Outcomes(), Observed()
    sender = sender_for(gateway, outcomes, observed, sms_concurrency=1)
    requests = [warning(n) for n in range(300, 320)]
    await sender.start()
    assert all(sender.submit(request) for request in requests)
    await sender.stop()

    by_status = {o.message_id: (o.status, o.error) for o in outcomes.records}
    assert sorted(by_status) == sorted(r.message_id for r in requests)
    sent = [m for m, (status, _) in by_status.items() if status is SmsStatus.sent]
    assert 0 < len(sent) < len(requests)  # 2 s of drain at 0.4 s each: some, not all
    assert all(
        error == "notifier_stopped"
        for status, error in by_status.values()
        if status is not SmsStatus.sent
    )
    assert sorted(m["message_id"] for m in await accepted_later(gateway)) == sorted(sent)
    assert not sender.submit(warning(400))  # stopped: refused, and recorded as failed
    await asyncio.sleep(0.1)
    assert outcomes.records[-1].error == "notifier_stopped"
