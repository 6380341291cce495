"""A three-broker cluster loses the leader of its busiest partitions under parking load, then
gets it back: every violation ticketed, one task id per case, one SMS per case."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import socket
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from patrol.devtools import processes as processes_module
from patrol.devtools.broker import LocalCluster
from patrol.kafka.topics import InternalTopics

from . import stack as stack_module
from .helpers import Topics, read_json, read_records
from .stack import T0, Stack, detection, gateway_process, minutes

pytestmark = pytest.mark.integration

# This file's own ports, apart from the other tests' (brokers 19500-19502, web 16500-16599).
CLUSTER_PORT = int(os.environ.get("PATROL_TEST_CLUSTER_PORT", "19500"))
WEB_PORTS = range(16500, 16600)
NODES = 3
CASES = 150
BURST = 10  # records a send round, every PACE seconds: load spread over the outage
PACE = 0.3


def _web_ports() -> Iterator[int]:
    for port in itertools.cycle(WEB_PORTS):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        yield port


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    local = LocalCluster(tmp_path_factory.mktemp("cluster"), nodes=NODES, port=CLUSTER_PORT)
    try:
        local.start()
        yield local
    finally:
        local.stop()


@pytest.fixture
def cluster_stack(cluster: LocalCluster, tmp_path: Path) -> Iterator[Stack]:
    ports = _web_ports()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stack_module, "free_port", lambda: next(ports))
        patch.setattr(processes_module, "free_port", lambda: next(ports))  # the gateway's
        gateway = gateway_process(tmp_path)
        running = Stack(cluster.bootstrap, Topics(), gateway, tmp_path)
        try:
            yield running
        finally:
            running.stop()
            gateway.process.stop()


async def _describe(bootstrap: str, names: list[str]) -> list[dict[str, Any]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return list(await admin.describe_topics(names))
    finally:
        await admin.close()


async def _min_insync(bootstrap: str, names: list[str]) -> dict[str, str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        responses = await admin.describe_configs(
            [
                ConfigResource(ConfigResourceType.TOPIC, name, {"min.insync.replicas": None})
                for name in names
            ]
        )
    finally:
        await admin.close()
    found = {}
    for response in responses:
        for _code, _msg, _type, name, entries in response.resources:
            found[name] = next(value for key, value, *_ in entries if key == "min.insync.replicas")
    return found


async def _changelogs(bootstrap: str, app_id: str) -> list[str]:
    """The faust app's changelog topics (it names them `<app id>-state-<table>-changelog`)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = await admin.list_topics()
    finally:
        await admin.close()
    return sorted(t for t in names if t.startswith(app_id) and t.endswith("-changelog"))


async def _busiest_leader(bootstrap: str, names: list[str]) -> int:
    """The broker that leads the partitions holding the most records of these topics."""
    described = await _describe(bootstrap, names)
    leaders = {
        TopicPartition(t["topic"], p["partition"]): p["leader"]
        for t in described
        for p in t["partitions"]
    }
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(list(leaders))
    finally:
        await consumer.stop()
    load: Counter[int] = Counter()
    for tp, leader in leaders.items():
        load[leader] += ends[tp]
    return load.most_common(1)[0][0]


async def _wait_full_isr(bootstrap: str, names: list[str], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        short = [
            (t["topic"], p["partition"])
            for t in await _describe(bootstrap, names)
            for p in t["partitions"]
            if len(p["isr"]) < NODES
        ]
        if not short:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"replicas not back in sync after {timeout} s: {short[:5]}")
        await asyncio.sleep(1.0)


async def _send_paced(bootstrap: str, topic: str, reads: list[dict[str, Any]]) -> None:
    # acks=all and idempotence, as the devices' producers should: the test's own input must
    # not be lost or doubled by the failover it causes.
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        request_timeout_ms=60_000,
    )
    await producer.start()
    try:
        pending = []
        for start in range(0, len(reads), BURST):
            for read in reads[start : start + BURST]:
                value = json.dumps(read, ensure_ascii=False).encode()
                key = read["source"]["id"].encode()
                pending.append(await producer.send(topic, value, key=key))
            await asyncio.sleep(PACE)
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def test_losing_the_busiest_leader_under_load_loses_and_doubles_nothing(
    cluster: LocalCluster, cluster_stack: Stack
) -> None:
    stack = cluster_stack
    bootstrap = cluster.bootstrap
    began = time.monotonic()
    marks: dict[str, float] = {}
    stack.start_worker("worker")
    marks["worker ready"] = time.monotonic() - began
    topics = stack.topics
    internal = InternalTopics.of(topics.app_id)
    patrol_topics = [
        topics.camera,
        topics.drone,
        topics.dispatch,
        topics.sms,
        topics.deadletter,
        topics.feedback,
        topics.status,
        *internal.names,
    ]
    changelogs = await _changelogs(bootstrap, topics.app_id)
    assert changelogs, "the worker declared no changelog topics"
    # every topic the worker uses is on all three brokers; its own require two in sync
    for topic in await _describe(bootstrap, patrol_topics + changelogs):
        assert {len(p["replicas"]) for p in topic["partitions"]} == {NODES}, topic["topic"]
    assert await _min_insync(bootstrap, patrol_topics) == dict.fromkeys(patrol_topics, "2")

    plates = [f"浙G{n:05d}" for n in range(CASES)]
    # Event time moves 0.2 s a read, so the whole load spans a minute of it however long the
    # outage holds one input partition back: no confirmation can come after its window.
    openings = [
        detection(f"o-{p}", T0 + minutes(i * 0.2 / 60), plate=p, source=f"cam-{i % 6}")
        for i, p in enumerate(plates)
    ]
    confirmations = [
        detection(f"c-{p}", T0 + minutes(10.5 + i * 0.2 / 60), plate=p, source=f"cam-{i % 6}")
        for i, p in enumerate(plates)
    ]
    sending = asyncio.create_task(_send_paced(bootstrap, topics.camera, openings + confirmations))
    await asyncio.sleep(len(openings) / BURST * PACE / 2)  # half the warnings on their way
    victim = await _busiest_leader(bootstrap, patrol_topics + changelogs)
    cluster.node(victim).kill()
    marks["leader killed"] = time.monotonic() - began
    await asyncio.sleep(len(openings) / BURST * PACE)  # into the confirmations
    await asyncio.to_thread(cluster.node(victim).start)
    marks["leader back"] = time.monotonic() - began
    await sending
    await _wait_full_isr(bootstrap, patrol_topics + changelogs)
    marks["in sync"] = time.monotonic() - began

    tasks = await stack.tasks(min_count=CASES, timeout=120)
    sms = stack.gateway.wait_for(CASES, timeout=120)
    marks["all decided"] = time.monotonic() - began
    await stack.wait_committed(timeout=120)
    await asyncio.sleep(3)  # time for a second task or SMS, were one coming
    tasks = await stack.tasks(min_count=CASES, timeout=30)
    sms = stack.gateway.messages()
    outcomes = await read_json(bootstrap, topics.sms, min_count=CASES, timeout=30)
    dead = await read_records(bootstrap, topics.deadletter, timeout=5, settle=1)

    ids_by_plate: dict[str, set[str]] = {}
    for task in tasks:
        ids_by_plate.setdefault(task["plate"], set()).add(task["task_id"])
    assert sorted(ids_by_plate) == sorted(plates), "a violation was not ticketed"
    assert all(len(ids) == 1 for ids in ids_by_plate.values()), "a case got a second task id"
    assert Counter(m["plate"] for m in sms) == dict.fromkeys(plates, 1)
    assert {o["status"] for o in outcomes} == {"sent"}
    assert {o["plate"] for o in outcomes} == set(plates)
    assert dead == []
    for task in tasks:
        assert [e["event_id"] for e in task["evidence"]] == [
            f"o-{task['plate']}",
            f"c-{task['plate']}",
        ]
    # each task names the warning the gateway took for its case (sent, or its outcome still
    # on its way back to the case when the confirming read came)
    message_ids = {m["plate"]: m["message_id"] for m in sms}
    assert {t["plate"]: t["sms"]["message_id"] for t in tasks} == message_ids
    pending = sum(t["sms"]["status"] != "sent" for t in tasks)
    assert stack.workers[0].alive(), stack.workers[0].log_tail()
    print(
        f"killed broker {victim}; cases {CASES}, task records {len(tasks)}, task ids "
        f"{sum(len(i) for i in ids_by_plate.values())}, gateway SMS {len(sms)}, SMS records "
        f"{len(outcomes)}, dead letters {len(dead)}, tasks with the SMS pending {pending}; "
        + ", ".join(f"{name} at {at:.1f} s" for name, at in marks.items())
    )
