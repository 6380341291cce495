"""The network between patrol and what it talks to (issue 18): 500 ms of latency to the broker, the
broker out of reach for 20 s, the SMS gateway out of reach for 20 s. Afterwards every parking
case is decided once (one task id per violation, no task for a vehicle that left), one SMS per
case reached the gateway, nothing is dead-lettered, the worker lives, and while the broker was
out of reach `/readyz` said so.

The test starts its own broker, advertised through a toxiproxy proxy (`ProxiedListener`), and
one worker that reaches the broker and the gateway only through proxies; the test itself sends
the devices' reads and reads the outcome on the broker's own listener, past the proxy, as a
camera or a dispatch system elsewhere in the network would. The three experiments run one after
the other on the same worker, each on its own plates and its own hour of event time."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from patrol.devtools.broker import LocalBroker, ProxiedListener
from patrol.devtools.processes import wait_committed
from patrol.waits import free_port

from .helpers import Topics, read_json, read_records
from .stack import PARTITIONS, T0, Stack, detection, gateway_process, heartbeat, minutes
from .toxiproxy import Proxy, Toxiproxy, server_binary, toxiproxy_server

pytestmark = pytest.mark.integration

CAMERAS = [f"cam-{n:04d}" for n in range(1, 7)]
TICKETS = 24  # cases per experiment that stay past their grace: one task each
LEAVING = 8  # cases per experiment whose vehicle leaves within its grace: self-corrected
BURST, PACE = 4, 1.0  # reads a round and seconds between rounds: ~20 s of input an experiment
CUT_SECONDS = 20.0
CUT_AFTER = 4.0  # seconds into the input the cut begins: reads arrive before, during, after it
LATENCY_MS = 500


@dataclass
class Net:
    """The broker, the proxies in front of it and of the gateway, and the worker behind them."""

    direct: str  # the broker's own listener: the test's reads and writes
    broker: Proxy
    gateway: Proxy
    stack: Stack

    @property
    def ready_url(self) -> str:
        return f"http://127.0.0.1:{self.stack.web_ports[-1]}/readyz"


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    binary = server_binary()
    if binary is None:
        message = "toxiproxy-server is not installed: run scripts/deploy-tools (make test does)"
        if os.environ.get("PATROL_TEST_RUN"):
            pytest.fail(message)  # inside `make test` a missing tool is a failure, not a skip
        pytest.skip(message)
    base = tmp_path_factory.mktemp("net")
    with toxiproxy_server(binary, base / "toxiproxy.log") as toxiproxy:
        yield from _net(toxiproxy, base)


def _net(toxiproxy: Toxiproxy, base: Path) -> Iterator[Net]:
    broker_port, proxied_port, listen_port = free_port(), free_port(), free_port()
    broker_proxy = toxiproxy.proxy("broker", f"127.0.0.1:{proxied_port}", listen_port)
    broker = LocalBroker(
        base / "broker",
        port=broker_port,
        heap="512m",
        proxied=ProxiedListener(proxied_port, broker_proxy.listen),
    )
    gateway = gateway_process(base)
    try:
        broker.start()
        gateway_proxy = toxiproxy.proxy("gateway", gateway.url.removeprefix("http://"))
        stack = Stack(broker_proxy.listen, Topics(), gateway, base)
        try:
            stack.start_worker(
                "worker",
                PATROL_SMS_URL=f"http://{gateway_proxy.listen}",
                # a warning whose gateway is out of reach is retried past the cut
                PATROL_SMS_RETRY_SECONDS="120",
            )
            yield Net(broker.bootstrap, broker_proxy, gateway_proxy, stack)
        finally:
            stack.stop()
    finally:
        gateway.process.stop()
        broker.stop()


@dataclass
class Cases:
    """One experiment's parking cases, in the hour of event time from `start_minute`."""

    letter: str
    start_minute: float
    tickets: list[str] = field(init=False)
    leaving: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.tickets = [f"浙{self.letter}{n:05d}" for n in range(TICKETS)]
        self.leaving = [f"浙{self.letter}{n:05d}" for n in range(TICKETS, TICKETS + LEAVING)]

    @property
    def plates(self) -> list[str]:
        return self.tickets + self.leaving

    def reads(self) -> list[dict[str, Any]]:
        """In event-time order: every opening read, a second look at the leaving vehicles
        (still within their grace), the confirming reads, then heartbeats from every camera past
        the leaving cases' recheck, which close them by the clock."""
        base = T0 + minutes(self.start_minute)
        step = minutes(0.2 / 60)  # 0.2 s of event time between reads of one kind
        camera = {plate: CAMERAS[i % len(CAMERAS)] for i, plate in enumerate(self.plates)}
        out = [
            detection(f"o-{p}", base + i * step, plate=p, source=camera[p])
            for i, p in enumerate(self.plates)
        ]
        out += [
            detection(f"l-{p}", base + minutes(4) + i * step, plate=p, source=camera[p])
            for i, p in enumerate(self.leaving)
        ]
        out += [
            detection(f"c-{p}", base + minutes(10.5) + i * step, plate=p, source=camera[p])
            for i, p in enumerate(self.tickets)
        ]
        for minute in (17, 25):
            out += [
                heartbeat(f"hb-{c}-{self.letter}{minute}", base + minutes(minute), c)
                for c in CAMERAS
            ]
        return out


async def send_paced(bootstrap: str, topic: str, reads: list[dict[str, Any]]) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5
    )
    await producer.start()
    try:
        pending = []
        for start in range(0, len(reads), BURST):
            for read in reads[start : start + BURST]:
                value = json.dumps(read, ensure_ascii=False).encode()
                pending.append(await producer.send(topic, value, key=read["source"]["id"].encode()))
            await asyncio.sleep(PACE)
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


@dataclass
class Readiness:
    """What `/readyz` answered, polled every half second: (seconds since the start, status)."""

    answers: list[tuple[float, int]] = field(default_factory=list)

    def between(self, start: float, end: float) -> list[int]:
        return [status for at, status in self.answers if start <= at <= end]


@asynccontextmanager
async def polling(url: str) -> AsyncIterator[tuple[Readiness, float]]:
    seen = Readiness()
    began = time.monotonic()

    async def poll() -> None:
        async with httpx.AsyncClient(timeout=2.0) as client:
            while True:
                try:
                    status = (await client.get(url)).status_code
                except httpx.HTTPError:
                    status = 0
                seen.answers.append((time.monotonic() - began, status))
                await asyncio.sleep(0.5)

    task = asyncio.create_task(poll())
    try:
        yield seen, began
    finally:
        task.cancel()


@dataclass
class Outcome:
    tasks: list[dict[str, Any]]
    sms: list[dict[str, Any]]
    audit: list[dict[str, Any]]
    dead: int
    self_corrected: float

    def summary(self, name: str, cases: Cases) -> str:
        attempts = sum(m["attempt_count"] for m in self.sms)
        return (
            f"{name}: cases {len(cases.plates)} ({len(cases.tickets)} to ticket, "
            f"{len(cases.leaving)} leaving), task records {len(self.tasks)}, task ids "
            f"{len({t['task_id'] for t in self.tasks})}, self-corrected {self.self_corrected:g}, "
            f"gateway SMS {len(self.sms)} ({attempts} POSTs with their Idempotency-Key), "
            f"SMS audit records {len(self.audit)}, dead letters {self.dead}"
        )


async def _until(check: Callable[[], Awaitable[bool]], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout} s")
        await asyncio.sleep(1.0)


async def decided(net: Net, cases: Cases, closed_before: float) -> Outcome:
    """Wait until every case of `cases` is decided and recorded, then collect what a dispatch
    system, the gateway and an auditor see of them."""
    stack, topics = net.stack, net.stack.topics
    ours = set(cases.plates)

    async def tickets_out() -> bool:
        tasks = await read_json(net.direct, topics.dispatch, timeout=10, settle=0.5)
        return set(cases.tickets) <= {t["plate"] for t in tasks}

    async def sms_out() -> bool:
        return ours <= {m["plate"] for m in stack.gateway.messages()}

    def closed() -> float:
        return stack.metric("patrol_grace_cases_closed_total", result="self_corrected")

    async def leaving_closed() -> bool:
        return closed() - closed_before >= LEAVING

    await _until(tickets_out, "a task for every violation", 180)
    await _until(sms_out, "an SMS for every case at the gateway", 180)
    await _until(leaving_closed, "every leaving vehicle's case self-corrected", 120)
    await wait_committed(net.direct, stack.consumer_groups(), PARTITIONS, timeout=120)
    await asyncio.sleep(3)  # time for a second task or SMS, were one coming
    tasks = await read_json(net.direct, topics.dispatch, timeout=10, settle=1)
    audit = await read_json(net.direct, topics.sms, timeout=10, settle=1)
    dead = await read_records(net.direct, topics.deadletter, timeout=5, settle=1)
    return Outcome(
        tasks=[t for t in tasks if t["plate"] in ours],
        sms=[m for m in stack.gateway.messages() if m["plate"] in ours],
        audit=[a for a in audit if a["plate"] in ours],
        dead=len(dead),
        self_corrected=closed() - closed_before,
    )


def assert_decided_once(net: Net, cases: Cases, outcome: Outcome) -> None:
    ids_by_plate: dict[str, set[str]] = {}
    for task in outcome.tasks:
        ids_by_plate.setdefault(task["plate"], set()).add(task["task_id"])
    assert sorted(ids_by_plate) == sorted(cases.tickets), "a violation lost, or a leaver ticketed"
    assert all(len(ids) == 1 for ids in ids_by_plate.values()), "a case got a second task id"
    for task in outcome.tasks:
        plate = task["plate"]
        assert [e["event_id"] for e in task["evidence"]] == [f"o-{plate}", f"c-{plate}"]
    assert outcome.self_corrected == LEAVING
    assert Counter(m["plate"] for m in outcome.sms) == dict.fromkeys(cases.plates, 1)
    # the audit may repeat a record after a redo, always with the same message id
    audit_ids: dict[str, set[str]] = {}
    for record in outcome.audit:
        audit_ids.setdefault(record["plate"], set()).add(record["message_id"])
    sent = {m["plate"]: {m["message_id"]} for m in outcome.sms}
    assert audit_ids == sent, "an SMS outcome missing, or naming another message"
    assert {a["status"] for a in outcome.audit} == {"sent"}
    assert outcome.dead == 0
    worker = net.stack.workers[-1]
    assert worker.alive(), worker.log_tail()


def closed_so_far(net: Net) -> float:
    return net.stack.metric("patrol_grace_cases_closed_total", result="self_corrected")


async def intake_committed(net: Net) -> dict[TopicPartition, int]:
    """What the worker's intake has committed of the camera topic, as the broker records it."""
    topic = net.stack.topics.camera
    admin = AIOKafkaAdminClient(bootstrap_servers=net.direct)
    await admin.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        found = await admin.list_consumer_group_offsets(net.stack.topics.app_id, partitions=tps)
    finally:
        await admin.close()
    return {tp: meta.offset for tp, meta in found.items()}


async def _answers(url: str, status: int) -> bool:
    try:
        async with httpx.AsyncClient(timeout=2.0) as client:
            return (await client.get(url)).status_code == status
    except httpx.HTTPError:
        return False


@dataclass
class CutRun:
    """One experiment with a cut: its cases, their outcome, what `/readyz` answered during the
    cut and after it, and what the intake had committed early in the cut and at its end."""

    cases: Cases
    outcome: Outcome
    during: list[int]
    after: list[int]
    committed: tuple[dict[TopicPartition, int], dict[TopicPartition, int]]
    failed_attempts: float


async def run_with_cut(
    net: Net, cases: Cases, cut: Callable[[], None], restore: Callable[[], None]
) -> CutRun:
    """Send the cases' reads paced over about 20 s, straight to the broker; CUT_AFTER s into
    them, `cut` for CUT_SECONDS, then `restore`; then wait until every case is decided."""
    before = closed_so_far(net)
    errors_before = net.stack.metric("patrol_sms_attempts_total", result="error")
    async with polling(net.ready_url) as (readiness, began):
        sending = asyncio.create_task(
            send_paced(net.direct, net.stack.topics.camera, cases.reads())
        )
        await asyncio.sleep(CUT_AFTER)
        cut_at = time.monotonic() - began
        cut()
        try:
            await asyncio.sleep(2.0)  # what was on its way when the cut came has landed
            early = await intake_committed(net)
            await asyncio.sleep(CUT_SECONDS - 3.0)
            late = await intake_committed(net)
            await asyncio.sleep(1.0)
        finally:
            restored_at = time.monotonic() - began
            restore()
        await sending
        outcome = await decided(net, cases, before)
        await _until(
            lambda: _answers(net.ready_url, 200), "/readyz ready after the cut", timeout=120
        )
    failed = net.stack.metric("patrol_sms_attempts_total", result="error") - errors_before
    return CutRun(
        cases,
        outcome,
        readiness.between(cut_at, restored_at),
        readiness.between(restored_at, float("inf")),
        (early, late),
        failed,
    )


@pytest_asyncio.fixture(scope="module")
async def latency_run(net: Net) -> tuple[Cases, Outcome]:
    cases = Cases("A", 0)
    before = closed_so_far(net)
    toxic = net.broker.add_latency(LATENCY_MS)
    try:
        assert [t["name"] for t in net.broker.toxics()] == [toxic]
        await send_paced(net.direct, net.stack.topics.camera, cases.reads())
        outcome = await decided(net, cases, before)
    finally:
        net.broker.remove_toxic(toxic)
    print(outcome.summary(f"{LATENCY_MS} ms to the broker", cases))
    return cases, outcome


@pytest_asyncio.fixture(scope="module")
async def broker_cut(net: Net, latency_run: tuple[Cases, Outcome]) -> CutRun:
    run = await run_with_cut(net, Cases("B", 60), net.broker.cut, net.broker.restore)
    print(run.outcome.summary(f"a {CUT_SECONDS:g} s cut to the broker", run.cases))
    print(f"  /readyz during the cut {Counter(run.during)}, after it {Counter(run.after)}")
    return run


@pytest_asyncio.fixture(scope="module")
async def broker_stall(net: Net, broker_cut: CutRun) -> CutRun:
    stall_ms = int(CUT_SECONDS * 1000)
    run = await run_with_cut(
        net, Cases("D", 120), lambda: net.broker.stall(stall_ms), net.broker.unstall
    )
    print(run.outcome.summary(f"a {CUT_SECONDS:g} s stall to the broker", run.cases))
    print(f"  /readyz during the stall {Counter(run.during)}, after it {Counter(run.after)}")
    return run


@pytest_asyncio.fixture(scope="module")
async def gateway_cut(net: Net, broker_stall: CutRun) -> CutRun:
    run = await run_with_cut(net, Cases("E", 180), net.gateway.cut, net.gateway.restore)
    print(run.outcome.summary(f"a {CUT_SECONDS:g} s cut to the gateway", run.cases))
    print(
        f"  failed SMS attempts {run.failed_attempts:g}, /readyz during the cut "
        f"{Counter(run.during)}, after it {Counter(run.after)}"
    )
    return run


def test_500_ms_of_latency_to_the_broker_decides_every_case_once(
    net: Net, latency_run: tuple[Cases, Outcome]
) -> None:
    assert_decided_once(net, *latency_run)


def test_a_20_s_cut_to_the_broker_decides_every_case_once(net: Net, broker_cut: CutRun) -> None:
    early, late = broker_cut.committed
    assert early == late, "the intake committed during the cut: the cut did not reach the worker"
    assert_decided_once(net, broker_cut.cases, broker_cut.outcome)
    assert broker_cut.after[-1] == 200


def assert_not_ready_until_restored(answers: list[int]) -> None:
    """Not ready at some point (once the broker has not answered for a few seconds), and from
    then on until the link is back."""
    assert 503 in answers, f"ready all through: {Counter(answers)}"
    assert set(answers[answers.index(503) :]) == {503}, f"ready again while cut off: {answers}"


def test_readyz_says_not_ready_while_the_broker_is_out_of_reach(broker_cut: CutRun) -> None:
    assert_not_ready_until_restored(broker_cut.during)


def test_a_20_s_stall_to_the_broker_decides_every_case_once(net: Net, broker_stall: CutRun) -> None:
    early, late = broker_stall.committed
    assert early == late, "the intake committed during the stall: it did not reach the worker"
    assert_decided_once(net, broker_stall.cases, broker_stall.outcome)
    assert broker_stall.after[-1] == 200


def test_readyz_says_not_ready_while_the_broker_stalls(broker_stall: CutRun) -> None:
    assert_not_ready_until_restored(broker_stall.during)


def test_a_20_s_cut_to_the_gateway_sends_every_warning_once(net: Net, gateway_cut: CutRun) -> None:
    assert gateway_cut.failed_attempts > 0, "no SMS attempt met the cut: nothing was injected"
    assert_decided_once(net, gateway_cut.cases, gateway_cut.outcome)
    # the gateway out of reach holds no decision back: the worker stays ready
    assert set(gateway_cut.during) == {200}
