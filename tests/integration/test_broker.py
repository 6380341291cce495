"""The local Apache Kafka broker, for real: groups, restarts, idempotent start."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench.processes import free_port
from patrol.devtools.broker import BrokerError, LocalBroker, check_port_free

pytestmark = pytest.mark.integration


async def produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for i, value in enumerate(values):
            await producer.send_and_wait(topic, value, key=str(i).encode())
    finally:
        await producer.stop()


async def consume_group(bootstrap: str, topic: str, group: str, count: int) -> list[bytes]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    got: list[bytes] = []
    try:
        while len(got) < count:
            batch = await consumer.getmany(timeout_ms=20_000)
            assert batch, f"no records within 20 s, have {len(got)} of {count}"
            for records in batch.values():
                got.extend(r.value for r in records if r.value is not None)
        await consumer.commit()
    finally:
        await consumer.stop()
    return got


async def test_produce_and_consume_through_a_consumer_group(bootstrap: str) -> None:
    topic = f"test.broker.{uuid.uuid4().hex[:8]}"
    values = [f"detection-{i}".encode() for i in range(50)]
    await produce(bootstrap, topic, values)
    got = await consume_group(bootstrap, topic, f"g-{uuid.uuid4().hex[:6]}", len(values))
    assert sorted(got) == sorted(values)


@pytest.fixture
def own_broker(tmp_path: Path):
    port = free_port()
    broker = LocalBroker(tmp_path / "broker", port=port, controller_port=free_port(), heap="512m")
    yield broker
    broker.stop()


async def test_data_survives_a_broker_restart(own_broker: LocalBroker) -> None:
    await asyncio.to_thread(own_broker.start)
    topic = "test.restart"
    await produce(own_broker.bootstrap, topic, [b"before-restart-1", b"before-restart-2"])
    assert own_broker.stop() is True
    assert not own_broker.status().running
    _, started = await asyncio.to_thread(own_broker.start)
    assert started
    got = await consume_group(own_broker.bootstrap, topic, "after-restart", 2)
    assert sorted(got) == [b"before-restart-1", b"before-restart-2"]


def test_second_start_reports_the_running_broker(own_broker: LocalBroker) -> None:
    cmd = [
        sys.executable,
        "-m",
        "patrol.cli",
        "broker",
        "start",
        "--port",
        str(own_broker.port),
        "--state-dir",
        str(own_broker.state_dir),
    ]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("started")
    pid = own_broker.running_pid()
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert second.returncode == 0, second.stderr
    assert second.stdout.startswith("already running")
    assert f"pid {pid}" in second.stdout
    assert own_broker.running_pid() == pid
    status = subprocess.run(
        [*cmd[:4], "status", *cmd[5:]], capture_output=True, text=True, timeout=60, check=False
    )
    assert status.returncode == 0
    assert f"127.0.0.1:{own_broker.port}" in status.stdout
    assert "4." in status.stdout


def _neighbouring_free_ports() -> int:
    for _ in range(50):
        port = free_port()
        try:
            check_port_free(port + 1)
        except BrokerError:
            continue
        return port
    raise AssertionError("no two neighbouring free ports")


async def test_brokers_on_neighbouring_ports_run_side_by_side(tmp_path: Path) -> None:
    port = _neighbouring_free_ports()
    first = LocalBroker(tmp_path / "first", port=port, heap="512m")
    second = LocalBroker(tmp_path / "second", port=port + 1, heap="512m")
    try:
        await asyncio.to_thread(first.start)
        await asyncio.to_thread(second.start)
        await produce(first.bootstrap, "side.by.side", [b"first"])
        await produce(second.bootstrap, "side.by.side", [b"second"])
        assert await consume_group(first.bootstrap, "side.by.side", "g1", 1) == [b"first"]
        assert await consume_group(second.bootstrap, "side.by.side", "g2", 1) == [b"second"]
    finally:
        first.stop()
        second.stop()
