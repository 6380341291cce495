"""The real stub gateway process (`python -m patrol.devtools.gateway`) and the real notifier."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client import REGISTRY

from bench.processes import free_port
from patrol.domain.grace import SmsRequest, case_key
from patrol.domain.models import SmsRecord, SmsStatus
from patrol.kafka.partitioning import partition_of
from patrol.kafka.topics import InternalTopics, ensure_topics
from patrol.settings import Settings
from patrol.sms import outbox
from patrol.sms.notifier import SmsNotifier, request_body
from patrol.sms.sender import COMMIT_INTERVAL_SECONDS, SmsSenderProcess, sender_group

from .helpers import read_json, read_records

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
            [sys.executable, "-m", "patrol.devtools.gateway", "--port", str(port), "--seed", "11"],
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


class RetryClock:
    """The notifier's clock and sleep, moved only by the notifier's own waits: how long it
    retried is then what it decided, not how fast the machine was."""

    def __init__(self) -> None:
        self.now = 0.0
        self.waits: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


async def test_unreachable_gateway_ends_failed_at_the_end_of_the_retry_window() -> None:
    outcomes = Outcomes()
    retry = RetryClock()
    notifier = SmsNotifier(
        Settings(sms_url=f"http://127.0.0.1:{free_port()}", sms_retry_seconds=1.0),
        outcomes.record,
        clock=retry.clock,
        sleep=retry.sleep,
        backoff_first_seconds=0.02,
        backoff_max_seconds=0.2,
    )

    await notifier.start()
    try:
        notifier.submit(warning(1))
        await outcomes.wait_for(1, seconds=60)
    finally:
        await notifier.stop()

    [outcome] = outcomes.records
    assert outcome.status is SmsStatus.failed
    assert outcome.error is not None and outcome.error.startswith("connection")
    # one attempt, then one after each wait; the last wait ends the window, and it gave up there
    assert outcome.attempts == len(retry.waits) + 1 > 2
    assert retry.now == pytest.approx(1.0)


# --- the worker's sender process, working the outbox topic ------------------------------------


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


async def outbox_settings(bootstrap: str, url: str, **overrides: Any) -> Settings:
    """Settings of a fresh app id (so fresh topics and groups), its topics created."""
    app_id = f"sms-it-{uuid.uuid4().hex[:8]}"
    values: dict[str, Any] = {
        "kafka_bootstrap": bootstrap,
        "app_id": app_id,
        "partitions": 3,
        "topic_sms": f"{app_id}.notifications.sms",
        "sms_url": url,
        "sms_concurrency": 4,
        "sms_retry_seconds": 30.0,
    }
    values.update(overrides)
    settings = Settings(**values)
    await ensure_topics(settings)
    return settings


def warnings(first: int, count: int) -> list[SmsRequest]:
    """Warnings for distinct cases (plates), so they spread over the outbox partitions."""
    return [replace(warning(n), plate=f"浙G{n:05d}") for n in range(first, first + count)]


def case_key_of(request: SmsRequest) -> bytes:
    return case_key(request.plate, request.zone_id).encode()


async def put_in_outbox(settings: Settings, requests: list[SmsRequest]) -> None:
    """What the grace agent does for each opened case."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for request in requests:
            key = case_key_of(request)
            await producer.send_and_wait(
                InternalTopics.of(settings.app_id).sms_outbox,
                outbox.request_record(request),
                key=key,
                partition=partition_of(key, settings.partitions),
            )
    finally:
        await producer.stop()


async def audit_of(settings: Settings, count: int, timeout: float = 60) -> dict[str, list[str]]:
    """message id -> statuses recorded on the SMS topic."""
    statuses: dict[str, list[str]] = {}
    records = await read_json(
        settings.kafka_bootstrap, settings.topic_sms, min_count=count, timeout=timeout
    )
    for record in records:
        statuses.setdefault(record["message_id"], []).append(record["status"])
    return statuses


async def committed_behind_everything(settings: Settings) -> bool:
    """Whether the sender's group committed the outbox up to its end."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, group_id=sender_group(settings.app_id)
    )
    await consumer.start()
    try:
        topic = InternalTopics.of(settings.app_id).sms_outbox
        tps = [TopicPartition(topic, p) for p in range(settings.partitions)]
        ends = await consumer.end_offsets(tps)
        committed = {tp: await consumer.committed(tp) for tp in tps}
        return all((committed[tp] or 0) == ends[tp] for tp in tps)
    finally:
        await consumer.stop()


async def test_the_sender_sends_each_outbox_warning_once_and_records_it(
    bootstrap: str, gateway: str
) -> None:
    await set_faults(gateway, fail_rate=0.3)
    settings = await outbox_settings(bootstrap, gateway)
    requests = warnings(0, 40)
    observed = Observed()
    sender = SmsSenderProcess(settings, observer=observed)
    await put_in_outbox(settings, requests)

    await sender.start()
    try:
        audit = await audit_of(settings, len(requests))
        outcome_records = await read_records(
            bootstrap, InternalTopics.of(settings.app_id).cases, min_count=1
        )
        for _ in range(120):  # it commits every COMMIT_INTERVAL_SECONDS
            if await committed_behind_everything(settings):
                break
            await asyncio.sleep(COMMIT_INTERVAL_SECONDS / 2)
        assert await committed_behind_everything(settings)
    finally:
        await sender.stop()

    assert audit == {r.message_id: ["sent"] for r in requests}
    # each outcome went back to its case's partition, in records marked as SMS outcomes
    assert all(outbox.is_outcome(r.headers) for r in outcome_records)
    assert len(outcome_records) < len(requests)  # finished together, recorded together
    outcomes = [
        (r.partition, outcome)
        for r in outcome_records
        for outcome in outbox.outcomes_from_record(r.value)
    ]
    assert sorted(outcomes, key=repr) == sorted(
        (
            (
                partition_of(case_key_of(r), settings.partitions),
                outbox.SmsOutcome(case_key_of(r), r.message_id, "sent"),
            )
            for r in requests
        ),
        key=repr,
    )
    # the gateway saw exactly the attempts the sender reported to the worker
    stored = await accepted_later(gateway)
    assert sorted(m["message_id"] for m in stored) == sorted(r.message_id for r in requests)
    assert len(observed.attempts) == sum(m["attempt_count"] for m in stored)
    assert observed.attempts.count("accepted") == len(requests)
    assert [status for status, _ in observed.outcomes] == [SmsStatus.sent] * len(requests)
    assert all(seconds is not None and seconds >= 0 for _, seconds in observed.outcomes)
    assert observed.depths[-1] == 0


def scheduling_policies(pid: int) -> set[int]:
    """The scheduling policy of each of the process's threads."""
    policies = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):  # a thread that just ended
            policies.add(os.sched_getscheduler(int(tid)))
    return policies


async def test_the_sender_runs_only_on_cpu_the_stream_leaves_idle(
    bootstrap: str, gateway: str
) -> None:
    settings = await outbox_settings(bootstrap, gateway)
    sender = SmsSenderProcess(settings, observer=Observed())
    await sender.start()
    try:
        pid = sender.pid
        assert pid is not None
        await put_in_outbox(settings, warnings(0, 5))
        await audit_of(settings, 5)  # it has sent: every thread it uses has started
        assert scheduling_policies(pid) == {os.SCHED_IDLE}
    finally:
        await sender.stop()


async def test_a_killed_sender_is_replaced_and_what_it_held_is_still_sent(
    bootstrap: str, gateway: str
) -> None:
    await set_faults(gateway, latency_ms=3000)
    settings = await outbox_settings(bootstrap, gateway, sms_timeout_seconds=10.0)
    held = warnings(100, 5)
    sender = SmsSenderProcess(settings, observer=Observed())
    await sender.start()
    try:
        await put_in_outbox(settings, held)
        first_pid = sender.pid
        assert first_pid is not None
        await asyncio.sleep(1.5)  # fetched and on their way to the slow gateway
        os.kill(first_pid, signal.SIGKILL)
        await set_faults(gateway, latency_ms=0)
        audit = await audit_of(settings, len(held))
        assert sender.pid not in (None, first_pid)
    finally:
        await sender.stop()

    assert audit == {r.message_id: ["sent"] for r in held}
    # the gateway stored each once, though the killed sender may have reached it too
    stored = await accepted_later(gateway)
    assert sorted(m["message_id"] for m in stored) == sorted(r.message_id for r in held)


async def test_a_stopped_sender_leaves_what_it_did_not_send_to_the_next(
    bootstrap: str, gateway: str
) -> None:
    settings = await outbox_settings(bootstrap, gateway, sms_concurrency=1)
    requests = warnings(300, 20)
    sent, left = requests[:5], requests[5:]
    await put_in_outbox(settings, sent)

    observed = Observed()
    first = SmsSenderProcess(settings, observer=observed)
    await first.start()
    try:
        await audit_of(settings, len(sent))
        await set_faults(gateway, fail_rate=1.0)  # the rest cannot go out while it runs
        await put_in_outbox(settings, left)
        for _ in range(200):  # it holds them and retries
            if "error" in observed.attempts:
                break
            await asyncio.sleep(0.3)
        assert "error" in observed.attempts
    finally:
        await first.stop()
    sent_first = await audit_of(settings, len(sent), timeout=10)
    assert sent_first == {r.message_id: ["sent"] for r in sent}

    await set_faults(gateway, fail_rate=0.0)
    second = SmsSenderProcess(settings, observer=Observed())
    await second.start()
    try:
        audit = await audit_of(settings, len(requests))
    finally:
        await second.stop()

    assert audit == {r.message_id: ["sent"] for r in requests}
    stored = await accepted_later(gateway)
    assert sorted(m["message_id"] for m in stored) == sorted(r.message_id for r in requests)
    # what the first sent, the second did not send again
    attempts = {m["message_id"]: m["attempt_count"] for m in stored}
    assert {r.message_id: attempts[r.message_id] for r in sent} == {r.message_id: 1 for r in sent}
