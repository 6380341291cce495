"""The SMS notifier against a mocked gateway, on a fake clock: no network, no real waiting."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from patrol.domain.grace import SmsRequest
from patrol.domain.models import SmsRecord, SmsStatus
from patrol.settings import Settings
from patrol.sms.notifier import (
    BACKOFF_FIRST_SECONDS,
    BACKOFF_MAX_SECONDS,
    NOTIFIER_STOPPED,
    QUEUE_FULL,
    SmsNotifier,
    backoff_seconds,
    retry_after_seconds,
)

CST = timezone(timedelta(hours=8))
PLATE = "浙G12345"


def warning(n: int = 1, deadline: datetime | None = None) -> SmsRequest:
    return SmsRequest(
        message_id=f"sms-case-{n}",
        case_id=f"case-{n}",
        plate=PLATE,
        zone_id="panan-anwen-old-street",
        text="【磐安综合执法】您的车辆浙G12345在安文老街违停,请于10:10前驶离,逾期将依法处理。",
        deadline=deadline or datetime(2026, 11, 27, 10, 10, tzinfo=CST),
    )


class FakeTime:
    """A monotonic clock that only moves when the notifier sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


Reply = Callable[[httpx.Request], Awaitable[httpx.Response]]


def replies(*steps: int | type[Exception]) -> tuple[Reply, list[httpx.Request]]:
    """A gateway that answers each POST with the next status (or raises the next error)."""
    seen: list[httpx.Request] = []
    remaining = list(steps)

    async def reply(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        step = remaining.pop(0) if len(remaining) > 1 else remaining[0]
        if isinstance(step, int):
            return httpx.Response(step, json={"status": step})
        raise step("injected", request=request)

    return reply, seen


def settings(**overrides: object) -> Settings:
    values: dict[str, object] = {
        "sms_url": "http://gateway.test",
        "sms_retry_seconds": 60.0,
        "sms_concurrency": 2,
        "sms_queue_size": 100,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


class Harness:
    def __init__(self, reply: Reply, **overrides: object) -> None:
        self.time = FakeTime()
        self.outcomes: list[SmsRecord] = []
        self.recorded = asyncio.Condition()
        self.notifier = SmsNotifier(
            settings(**overrides),
            self.record,
            transport=httpx.MockTransport(reply),
            clock=self.time.clock,
            sleep=self.time.sleep,
        )

    async def record(self, outcome: SmsRecord) -> None:
        async with self.recorded:
            self.outcomes.append(outcome)
            self.recorded.notify_all()

    async def outcomes_for(self, *requests: SmsRequest) -> list[SmsRecord]:
        await self.notifier.start()
        for request in requests:
            assert self.notifier.submit(request)
        await self.wait_for(len(requests))
        await self.notifier.stop()
        return self.outcomes

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(5), self.recorded:
            await self.recorded.wait_for(lambda: len(self.outcomes) >= count)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def metric_delta() -> Iterator[Callable[[str], float]]:
    names = {
        "accepted": ("patrol_sms_attempts_total", {"result": "accepted"}),
        "rejected": ("patrol_sms_attempts_total", {"result": "rejected"}),
        "error": ("patrol_sms_attempts_total", {"result": "error"}),
        "sent": ("patrol_sms_total", {"status": "sent"}),
        "failed": ("patrol_sms_total", {"status": "failed"}),
        "observed": ("patrol_sms_send_seconds_count", {}),
    }
    before = {key: sample(name, **labels) for key, (name, labels) in names.items()}
    yield lambda key: sample(names[key][0], **names[key][1]) - before[key]


async def test_accepted_sms_is_recorded_as_sent_once(
    metric_delta: Callable[[str], float],
) -> None:
    reply, seen = replies(201)
    harness = Harness(reply)

    [outcome] = await harness.outcomes_for(warning())

    assert outcome.status is SmsStatus.sent
    assert outcome.attempts == 1
    assert outcome.error is None
    assert (outcome.message_id, outcome.case_id, outcome.plate, outcome.zone_id) == (
        "sms-case-1",
        "case-1",
        PLATE,
        "panan-anwen-old-street",
    )
    assert outcome.at.utcoffset() == timedelta(0)
    assert abs(outcome.at - datetime.now(UTC)) < timedelta(seconds=5)
    assert len(seen) == 1
    assert metric_delta("accepted") == 1
    assert metric_delta("sent") == 1
    assert metric_delta("observed") == 1


async def test_request_carries_idempotency_key_and_contract_body() -> None:
    reply, seen = replies(201)

    await Harness(reply).outcomes_for(warning())

    [request] = seen
    assert request.method == "POST"
    assert str(request.url) == "http://gateway.test/messages"
    assert request.headers["Idempotency-Key"] == "sms-case-1"
    assert json.loads(request.content) == {
        "message_id": "sms-case-1",
        "plate": PLATE,
        "zone_id": "panan-anwen-old-street",
        "text": warning().text,
        "deadline": "2026-11-27T10:10:00+08:00",
    }


async def test_transient_failures_are_retried_with_growing_backoff_until_sent(
    metric_delta: Callable[[str], float],
) -> None:
    reply, seen = replies(503, httpx.ReadTimeout, httpx.ConnectError, 500, 202)
    harness = Harness(reply)

    [outcome] = await harness.outcomes_for(warning())

    assert outcome.status is SmsStatus.sent
    assert outcome.attempts == 5
    assert len(seen) == 5
    assert {r.headers["Idempotency-Key"] for r in seen} == {"sms-case-1"}
    assert metric_delta("error") == 4
    assert metric_delta("accepted") == 1
    for failures, slept in enumerate(harness.time.sleeps, start=1):
        ceiling = min(BACKOFF_MAX_SECONDS, BACKOFF_FIRST_SECONDS * 2 ** (failures - 1))
        assert ceiling / 2 <= slept <= ceiling


async def test_gives_up_when_the_retry_window_has_passed(
    metric_delta: Callable[[str], float],
) -> None:
    reply, seen = replies(503)
    harness = Harness(reply, sms_retry_seconds=30.0)

    [outcome] = await harness.outcomes_for(warning())

    assert outcome.status is SmsStatus.failed
    assert outcome.error == "http 503"
    assert outcome.attempts == len(seen) > 3
    assert sum(harness.time.sleeps) == pytest.approx(30.0)
    assert metric_delta("failed") == 1
    assert metric_delta("sent") == 0


async def test_gateway_never_reachable_ends_failed_with_the_connection_error() -> None:
    reply, _ = replies(httpx.ConnectError)

    [outcome] = await Harness(reply, sms_retry_seconds=5.0).outcomes_for(warning())

    assert outcome.status is SmsStatus.failed
    assert outcome.error == "connection (ConnectError)"
    assert outcome.attempts > 1


@pytest.mark.parametrize("status", [400, 401, 404, 422])
async def test_client_errors_fail_at_once_without_retry(
    status: int, metric_delta: Callable[[str], float]
) -> None:
    reply, seen = replies(status, 201)
    harness = Harness(reply)

    [outcome] = await harness.outcomes_for(warning())

    assert outcome.status is SmsStatus.failed
    assert outcome.attempts == 1
    assert outcome.error is not None and outcome.error.startswith(f"http {status}")
    assert len(seen) == 1
    assert harness.time.sleeps == []
    assert metric_delta("rejected") == 1


async def test_request_timeout_408_is_retried() -> None:
    reply, _ = replies(408, 201)

    [outcome] = await Harness(reply).outcomes_for(warning())

    assert (outcome.status, outcome.attempts) == (SmsStatus.sent, 2)


async def test_too_many_requests_waits_as_long_as_retry_after_says() -> None:
    seen: list[httpx.Request] = []

    async def reply(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) == 1:
            return httpx.Response(429, headers={"Retry-After": "7"})
        return httpx.Response(201)

    harness = Harness(reply)
    [outcome] = await harness.outcomes_for(warning())

    assert (outcome.status, outcome.attempts) == (SmsStatus.sent, 2)
    assert harness.time.sleeps == [pytest.approx(7.0)]


async def test_retry_after_beyond_the_retry_window_fails_without_waiting() -> None:
    async def reply(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, headers={"Retry-After": "120"})

    harness = Harness(reply, sms_retry_seconds=60.0)
    [outcome] = await harness.outcomes_for(warning())

    assert (outcome.status, outcome.attempts, outcome.error) == (SmsStatus.failed, 1, "http 429")
    assert harness.time.sleeps == []


async def test_full_queue_records_a_failed_outcome_without_raising(
    metric_delta: Callable[[str], float],
) -> None:
    release = asyncio.Event()

    async def reply(request: httpx.Request) -> httpx.Response:
        await release.wait()
        return httpx.Response(201)

    harness = Harness(reply, sms_queue_size=1, sms_concurrency=1)
    await harness.notifier.start()

    assert harness.notifier.submit(warning(1)) is True
    assert harness.notifier.submit(warning(2)) is False
    await harness.wait_for(1)
    release.set()
    await harness.wait_for(2)
    await harness.notifier.stop()

    by_id = {o.message_id: o for o in harness.outcomes}
    assert by_id["sms-case-2"].status is SmsStatus.failed
    assert by_id["sms-case-2"].attempts == 0
    assert by_id["sms-case-2"].error == QUEUE_FULL
    assert by_id["sms-case-1"].status is SmsStatus.sent
    assert metric_delta("failed") == 1


async def test_submit_never_waits_on_a_slow_gateway() -> None:
    async def reply(request: httpx.Request) -> httpx.Response:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    harness = Harness(reply, sms_queue_size=50, sms_concurrency=1)
    await harness.notifier.start()
    accepted = [harness.notifier.submit(warning(n)) for n in range(50)]
    await asyncio.sleep(0)

    assert all(accepted)
    assert harness.notifier.pending == 50
    await harness.notifier.stop(drain_seconds=0.01)


async def test_stop_drains_queued_sms_before_closing() -> None:
    async def reply(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.001)
        return httpx.Response(201)

    harness = Harness(reply, sms_concurrency=2)
    await harness.notifier.start()
    for n in range(20):
        harness.notifier.submit(warning(n))

    await harness.notifier.stop(drain_seconds=5.0)

    assert len(harness.outcomes) == 20
    assert {o.status for o in harness.outcomes} == {SmsStatus.sent}
    assert harness.notifier.pending == 0


async def test_stop_gives_up_after_the_drain_time_and_records_what_was_not_sent() -> None:
    async def reply(request: httpx.Request) -> httpx.Response:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    harness = Harness(reply, sms_concurrency=1)
    await harness.notifier.start()
    harness.notifier.submit(warning(1))
    harness.notifier.submit(warning(2))
    await asyncio.sleep(0)

    async with asyncio.timeout(2):
        await harness.notifier.stop(drain_seconds=0.05)

    by_id = {o.message_id: o for o in harness.outcomes}
    assert set(by_id) == {"sms-case-1", "sms-case-2"}
    assert by_id["sms-case-1"].attempts == 1  # it was on the wire
    assert by_id["sms-case-2"].attempts == 0  # it never left the queue
    assert {o.error for o in by_id.values()} == {NOTIFIER_STOPPED}
    assert {o.status for o in by_id.values()} == {SmsStatus.failed}


async def test_submit_after_stop_is_refused_and_recorded() -> None:
    reply, seen = replies(201)
    harness = Harness(reply)
    await harness.notifier.start()
    await harness.notifier.stop()

    assert harness.notifier.submit(warning()) is False
    await harness.wait_for(1)
    assert harness.outcomes[0].error == NOTIFIER_STOPPED
    assert seen == []


async def test_a_failing_outcome_handler_does_not_stop_the_senders() -> None:
    reply, _ = replies(201)
    recorded: list[str] = []

    async def flaky(outcome: SmsRecord) -> None:
        if outcome.message_id == "sms-case-1":
            raise RuntimeError("SMS topic unavailable")
        recorded.append(outcome.message_id)

    notifier = SmsNotifier(settings(sms_concurrency=1), flaky, transport=httpx.MockTransport(reply))
    await notifier.start()
    notifier.submit(warning(1))
    notifier.submit(warning(2))
    await notifier.stop()

    assert recorded == ["sms-case-2"]


async def test_deadline_without_offset_fails_without_calling_the_gateway() -> None:
    reply, seen = replies(201)
    naive = warning(deadline=datetime(2026, 11, 27, 10, 10))

    [outcome] = await Harness(reply).outcomes_for(naive)

    assert outcome.status is SmsStatus.failed
    assert outcome.error is not None and "offset" in outcome.error
    assert seen == []


async def test_logs_name_the_message_never_the_plate(caplog: pytest.LogCaptureFixture) -> None:
    reply, _ = replies(503, 400)
    caplog.set_level(logging.DEBUG, logger="patrol.sms")

    await Harness(reply).outcomes_for(warning())

    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "sms-case-1" in text
    assert PLATE not in text


@given(message_id=st.text(min_size=1, max_size=40), failures=st.integers(1, 30))
def test_backoff_is_bounded_and_the_same_for_the_same_message(
    message_id: str, failures: int
) -> None:
    first = backoff_seconds(random.Random(message_id), failures)
    again = backoff_seconds(random.Random(message_id), failures)

    ceiling = min(BACKOFF_MAX_SECONDS, BACKOFF_FIRST_SECONDS * 2 ** (failures - 1))
    assert first == again
    assert ceiling / 2 <= first <= ceiling


def test_retry_after_reads_seconds_and_http_dates() -> None:
    now = datetime(2026, 11, 27, 2, 0, 0, tzinfo=UTC)

    assert retry_after_seconds("3", now) == 3.0
    assert retry_after_seconds("Fri, 27 Nov 2026 02:00:30 GMT", now) == 30.0
    assert retry_after_seconds("Fri, 27 Nov 2026 01:00:00 GMT", now) == 0.0
    assert retry_after_seconds("soon", now) is None
    assert retry_after_seconds(None, now) is None


async def test_the_grace_rule_request_is_accepted_as_is() -> None:
    grace = pytest.importorskip("patrol.domain.grace")
    request = grace.SmsRequest(**{f: getattr(warning(), f) for f in SmsRequest.__slots__})
    reply, seen = replies(201)

    [outcome] = await Harness(reply).outcomes_for(request)

    assert (outcome.status, outcome.case_id) == (SmsStatus.sent, "case-1")
    assert seen[0].headers["Idempotency-Key"] == "sms-case-1"
