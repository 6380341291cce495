"""100,000 generated messages, valid, near-valid and garbage, through a live worker: each one is
taken in or dead-lettered, once, and the worker is alive and healthy afterwards."""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import random
import socket
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from patrol.devtools import processes as processes_module
from patrol.domain.decode import Rejection, check_clock, decode_detection, future_limit
from patrol.settings import Settings

from . import stack as stack_module
from .helpers import Topics, read_records
from .stack import (
    NO_PARKING,
    PARKING_ALLOWED,
    T0,
    Stack,
    detection,
    gateway_process,
    minutes,
    point_in,
)

pytestmark = pytest.mark.integration

MESSAGES = 100_000
WEB_PORTS = range(16500, 16600)
SEED = 18
MAX_MESSAGE_BYTES = 1_048_576  # the worker's default PATROL_MAX_MESSAGE_BYTES
ODD_VALUES: list[Any] = [
    None,
    "",
    -1,
    1.5,
    1e308,
    2**64,
    True,
    [],
    {},
    "\ud800",
    "x" * 300,
    "2026-11-27T10:00:00",
    "2026-02-30T10:00:00+08:00",
    "2098-11-27T10:00:00+08:00",  # a clock far ahead: clock_skew
    "9999-12-31T23:59:59+14:00",
    {"lat": 91, "lon": 181},
    {"lat": "29.05"},
    ["javascript:alert(1)"],
    "浙G1234警",
    "jaywalking",
    {"type": "satellite", "id": "s-1"},
]


def _web_ports() -> Iterator[int]:
    for port in itertools.cycle(WEB_PORTS):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        yield port


@pytest.fixture
def fuzz_stack(bootstrap: str, tmp_path: Path) -> Iterator[Stack]:
    ports = _web_ports()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stack_module, "free_port", lambda: next(ports))
        patch.setattr(processes_module, "free_port", lambda: next(ports))  # the gateway's
        gateway = gateway_process(tmp_path)
        running = Stack(bootstrap, Topics(), gateway, tmp_path)
        try:
            yield running
        finally:
            running.stop()
            gateway.process.stop()


def _valid(rng: random.Random, n: int, where: dict[str, dict[str, float]]) -> dict[str, Any]:
    """A detection the worker takes in; mostly reads it screens out, so the stub gateway gets
    a few SMS, not tens of thousands."""
    at = T0 + minutes(n / 6000)  # event time: 100,000 messages span under 17 minutes
    source = f"cam-{n % 40:04d}"
    choice = rng.random()
    if choice < 0.4:
        return detection(
            f"v-{n}",
            at,
            plate=f"浙G{n % 100_000:05d}",
            location=where[PARKING_ALLOWED],
            source=source,
        )
    if choice < 0.7:
        plate = f"浙G{n % 100_000:05d}"
        return detection(
            f"v-{n}", at, plate=plate, confidence=0.3, location=where[NO_PARKING], source=source
        )
    if choice < 0.9:
        return detection(
            f"v-{n}",
            at,
            kind="heartbeat",
            confidence=None,
            location=where[NO_PARKING],
            source=source,
        )
    return detection(
        f"v-{n}",
        at,
        kind="roadside_vending",
        confidence=0.9,
        location=where[NO_PARKING],
        source=source,
    )


def _near_valid(rng: random.Random, n: int, where: dict[str, dict[str, float]]) -> dict[str, Any]:
    value = copy.deepcopy(_valid(rng, n, where))
    for _ in range(rng.randint(1, 2)):
        field = rng.choice(sorted(value))
        if rng.random() < 0.3:
            value.pop(field)
        else:
            value[field] = rng.choice(ODD_VALUES)
    return value


def _garbage(rng: random.Random, n: int, where: dict[str, dict[str, float]]) -> bytes | None:
    choice = rng.random()
    if choice < 0.3:
        return rng.randbytes(rng.randint(0, 200))
    if choice < 0.5:
        return json.dumps(_valid(rng, n, where)).encode()[: rng.randint(0, 150)]  # cut short
    if choice < 0.7:
        return json.dumps(rng.choice([[1, 2], "text", 42, None, {"a": {"b": []}}])).encode()
    if choice < 0.85:
        # nested past pydantic's limit, not Python's: deeper, the decoder raises RecursionError
        # (tests/unit/domain/test_decode_fuzz.py)
        return ("[" * rng.randint(100, 900)).encode()
    if choice < 0.99:
        return b"\xef\xbb\xbf" + json.dumps(_valid(rng, n, where)).encode()  # a byte-order mark
    return None  # a tombstone


def generate(count: int) -> list[tuple[bytes | None, bytes | None]]:
    rng = random.Random(SEED)
    where = {zone: point_in(zone) for zone in (NO_PARKING, PARKING_ALLOWED)}
    messages: list[tuple[bytes | None, bytes | None]] = []
    for n in range(count):
        kind = rng.random()
        key = f"cam-{n % 40:04d}".encode()
        if kind < 0.5:
            messages.append((key, json.dumps(_valid(rng, n, where), ensure_ascii=False).encode()))
        elif kind < 0.8:
            raw = json.dumps(_near_valid(rng, n, where), ensure_ascii=False)
            messages.append((key, raw.encode("utf-8", errors="surrogatepass")))
        else:
            value = _garbage(rng, n, where)
            keys = [key, rng.randbytes(8)] + ([None] if value is not None else [])
            messages.append((rng.choice(keys), value))
    # three values over the worker's size limit
    for n in range(3):
        messages[n * 1000 + 7] = (b"big", b'{"pad": "' + b"x" * (MAX_MESSAGE_BYTES + 10) + b'"}')
    return messages


def expected_rejections(messages: list[tuple[bytes | None, bytes | None]]) -> int:
    now = datetime.now(UTC)
    limit = future_limit(Settings().max_future_minutes)
    rejected = 0
    for _key, value in messages:
        decoded = decode_detection(value, max_bytes=MAX_MESSAGE_BYTES)
        if isinstance(decoded, Rejection) or check_clock(decoded, now, limit) is not None:
            rejected += 1
    return rejected


async def produce_fast(
    bootstrap: str, topic: str, messages: list[tuple[bytes | None, bytes | None]]
) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=20,
        max_batch_size=512 * 1024,
        max_request_size=4 * 1024 * 1024,
    )
    await producer.start()
    try:
        for start in range(0, len(messages), 5000):
            pending = [
                await producer.send(topic, value, key=key)
                for key, value in messages[start : start + 5000]
            ]
            await asyncio.gather(*pending)
    finally:
        await producer.stop()


def _detections_by_outcome(stack: Stack) -> Counter[str]:
    text = httpx.get(f"{stack.metrics_url}?name[]=patrol_detections_total", timeout=10).text
    found: Counter[str] = Counter()
    for line in text.splitlines():
        if line.startswith("patrol_detections_total{"):
            head, value = line.rsplit(" ", 1)
            outcome = head.split('outcome="', 1)[1].split('"', 1)[0]
            found[outcome] += int(float(value))
    return found


async def test_a_hundred_thousand_odd_messages_are_each_taken_in_or_dead_lettered(
    fuzz_stack: Stack,
) -> None:
    stack = fuzz_stack
    began = time.monotonic()
    messages = generate(MESSAGES)
    rejected = expected_rejections(messages)
    assert 0 < rejected < MESSAGES
    worker = stack.start_worker("worker")
    ready = time.monotonic()
    await produce_fast(stack.bootstrap, stack.topics.camera, messages)
    produced = time.monotonic()

    deadline = time.monotonic() + 180
    outcomes = _detections_by_outcome(stack)
    while sum(outcomes.values()) < MESSAGES and time.monotonic() < deadline:
        assert worker.alive(), worker.log_tail()
        await asyncio.sleep(1.0)
        outcomes = _detections_by_outcome(stack)
    counted = time.monotonic()
    dead = await read_records(
        stack.bootstrap, stack.topics.deadletter, min_count=rejected, timeout=60, settle=2
    )

    assert sum(outcomes.values()) == MESSAGES, outcomes
    assert outcomes["invalid"] == rejected
    assert len(dead) == rejected
    # each dead letter names a distinct input record: none lost, none twice
    letters = [json.loads(r.value) for r in dead]
    assert len({(d["partition"], d["offset"]) for d in letters}) == rejected
    reasons = Counter(d["reason"] for d in letters)
    assert {"invalid_json", "schema", "too_large", "clock_skew"} <= set(reasons)
    assert "processing_error" not in reasons
    assert worker.alive(), worker.log_tail()
    async with httpx.AsyncClient(timeout=10) as client:
        for page in ("healthz", "readyz"):
            response = await client.get(f"http://127.0.0.1:{stack.web_ports[-1]}/{page}")
            assert response.status_code == 200, response.text
    print(
        f"messages {MESSAGES}: taken in {MESSAGES - outcomes['invalid']} "
        f"({dict(outcomes)}), dead-lettered {len(dead)} ({dict(reasons)}); worker ready "
        f"{ready - began:.1f} s, produced in {produced - ready:.1f} s, all counted "
        f"{counted - produced:.1f} s later"
    )
