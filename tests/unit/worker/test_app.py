"""The worker's own decisions, without a broker: a record the broker refused stops it, it is not
ready while no broker answers, and a table's changelog records wait for what they decided."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.default_records import DefaultRecordBatch

from patrol.domain import incidents, tasks, verification
from patrol.domain.models import DetectionKind, TaskType
from patrol.kafka import envelopes, loop_records
from patrol.kafka.loop_records import LoopRecord
from patrol.kafka.partitioning import partition_of
from patrol.settings import Settings
from patrol.worker import app as app_module
from patrol.worker import faust_ext
from patrol.worker.app import PatrolWorker

from .test_hazard_agent import FIRE, POINT, T0, fire

FIRE_PARTITION = partition_of(FIRE, Settings().partitions)  # the worker's own count


@pytest.fixture
def worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> PatrolWorker:
    worker = PatrolWorker(Settings(app_id="unit", data_dir=tmp_path))
    crashes: list[BaseException] = []

    async def crash(exc: BaseException) -> None:
        crashes.append(exc)

    monkeypatch.setattr(worker.app, "crash", crash)
    worker.crashes = crashes  # type: ignore[attr-defined]
    return worker


async def test_a_task_the_broker_refused_stops_the_worker(worker: PatrolWorker) -> None:
    refused: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    refused.set_exception(KafkaTimeoutError())
    worker._check_sent(refused)
    cancelled: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    cancelled.cancel()  # the producer stopping: what it had not sent is replayed, no crash
    worker._check_sent(cancelled)
    await asyncio.sleep(0)
    assert [type(e) for e in worker.crashes] == [KafkaTimeoutError]  # type: ignore[attr-defined]


async def test_not_ready_until_a_broker_answers_and_again_once_none_does(
    worker: PatrolWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    # everything else readiness asks for holds
    worker.intake.started.set()
    monkeypatch.setattr(type(worker.app), "rebalancing", False)
    monkeypatch.setattr(worker.app.consumer, "assignment", lambda: {"a partition"})
    tables: Any = worker.app.tables
    tables.recovery.completed.set()
    answers = [True]

    async def reachable(self: Any) -> bool:
        return answers[-1]

    monkeypatch.setattr(faust_ext.Producer, "broker_reachable", reachable)
    clock = [1_000.0]
    fake_time = SimpleNamespace(monotonic=lambda: clock[-1], time=time.time)
    monkeypatch.setattr(app_module, "time", fake_time)  # the worker's clock, not the loop's

    assert not worker.is_ready()  # never heard from a broker
    await worker._probe_broker()
    assert worker.is_ready()
    answers.append(False)
    for _ in range(int(app_module.BROKER_READY_SECONDS)):
        clock.append(clock[-1] + 1)
        await worker._probe_broker()
        assert worker.is_ready()
    clock.append(clock[-1] + 1)
    await worker._probe_broker()
    assert not worker.is_ready()
    answers.append(True)
    await worker._probe_broker()
    assert worker.is_ready()


class RecordingProducer:
    """What the worker hands its producer, records alone (`send`) and whole batches
    (`send_batch`), each with an acknowledgement the test gives."""

    def __init__(self) -> None:
        self.records: list[tuple[str, bytes | None, asyncio.Future[Any]]] = []
        self.values: list[bytes] = []  # of `records`, in the same order
        self.batches: list[tuple[str, int, list[tuple[bytes | None, bytes | None]]]] = []

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        timestamp: float | None,
        headers: Any,
    ) -> asyncio.Future[Any]:
        ack: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.records.append((topic, key, ack))
        self.values.append(value or b"")
        return ack

    def create_batch(self) -> BatchBuilder:
        return BatchBuilder(1024 * 1024, 0)

    async def send_batch(self, batch: Any, topic: str, partition: int) -> asyncio.Future[Any]:
        records = [(r.key, r.value) for r in DefaultRecordBatch(batch._build())]
        self.batches.append((topic, partition, records))
        ack: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        ack.set_result(None)
        return ack

    def topics(self) -> list[str]:
        return [topic for topic, _, _ in self.batches]

    def acknowledge(self) -> None:
        for _, _, ack in self.records:
            if not ack.done():
                ack.set_result(None)


async def _feed(worker: PatrolWorker, agent: str, *records: tuple[int, Any, bytes]) -> None:
    """The faust agent function the worker registered, fed `records` as one stream."""

    async def events() -> Any:
        for partition, headers, value in records:
            message = SimpleNamespace(partition=partition, headers=headers)
            yield SimpleNamespace(message=message, value=value)

    await worker.app.agents[agent].fun(SimpleNamespace(events=events))


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


@pytest.fixture
def recorded(worker: PatrolWorker, monkeypatch: pytest.MonkeyPatch) -> RecordingProducer:
    recording = RecordingProducer()
    producer = worker.app.producer
    for name in ("send", "create_batch", "send_batch"):
        monkeypatch.setattr(producer, name, getattr(recording, name))
    return recording


async def test_an_incidents_changelog_record_waits_for_the_loop_to_have_its_task(
    worker: PatrolWorker, recorded: RecordingProducer
) -> None:
    hazard_changelog = worker.hazard_states.changelog_topic.get_topic_name()
    (value,) = envelopes.batch_records([fire("f0", T0)], T0)
    await _feed(worker, "patrol.hazards", (FIRE_PARTITION, [], value))
    await _settle()
    # The task goes to the loop only: nothing on the dispatch topic the loop does not know.
    sent = [topic for topic, _, _ in recorded.records]
    assert sent == [worker.loop_topic.get_topic_name()]
    assert hazard_changelog not in recorded.topics()  # a kill now leaves no incident untasked
    flushing = asyncio.ensure_future(worker.app.producer.flush())
    await _settle()
    assert not flushing.done()  # and faust's commit (which flushes first) waits too

    recorded.acknowledge()
    await _settle()
    ((topic, partition, records),) = recorded.batches
    assert (topic, partition, records[0][0]) == (hazard_changelog, FIRE_PARTITION, FIRE)
    flushing.cancel()  # faust's own part of the flush needs a started producer


async def test_the_loop_dispatches_a_task_with_its_first_status_and_its_state_after_both(
    worker: PatrolWorker, recorded: RecordingProducer
) -> None:
    (value,) = envelopes.batch_records([fire("f0", T0)], T0)
    await _feed(worker, "patrol.hazards", (FIRE_PARTITION, [], value))
    await _settle()
    ((topic, _, _),) = recorded.records
    assert topic == worker.loop_topic.get_topic_name()
    (decided,) = recorded.values
    (item,) = loop_records.batch_items(decided)
    task = loop_records.decided_task(item)
    partition = partition_of(task.task.task_id.encode(), Settings().partitions)
    recorded.acknowledge()
    await _settle()
    batches_before = len(recorded.batches)

    headers = loop_records.headers(LoopRecord.tasks_decided)
    await _feed(worker, "patrol.loop", (partition, headers, decided))
    await _settle()
    dispatch, status = worker.dispatch.get_topic_name(), worker.status_topic.get_topic_name()
    # the task as the hazard agent encoded it, byte for byte, then its `dispatched` record
    assert [topic for topic, _, _ in recorded.records[1:]] == [dispatch, status]
    assert recorded.values[1] == task.value
    assert json.loads(recorded.values[2])["status"] == "dispatched"
    loop_changelog = worker.task_states.changelog_topic.get_topic_name()
    assert loop_changelog not in recorded.topics()[batches_before:]  # both still unacknowledged

    recorded.acknowledge()
    await _settle()
    assert loop_changelog in recorded.topics()[batches_before:]

    # the same record again (a replay after a kill): no second task
    await _feed(worker, "patrol.loop", (partition, headers, decided))
    await _settle()
    assert [topic for topic, _, _ in recorded.records].count(dispatch) == 1


async def test_a_watchs_end_reaches_the_changelog_only_after_its_outcome(
    worker: PatrolWorker, recorded: RecordingProducer
) -> None:
    hazard_changelog = worker.hazard_states.changelog_topic.get_topic_name()
    until = T0 + timedelta(minutes=60)
    watch = tasks.Watch("t-1", TaskType.open_burning, POINT.y, POINT.x, T0, until)
    watch_record = (
        FIRE_PARTITION,
        loop_records.headers(LoopRecord.watch),
        loop_records.watch_record(watch),
    )
    (ended,) = envelopes.batch_records([], until + timedelta(seconds=1))
    await _feed(worker, "patrol.hazards", watch_record, (FIRE_PARTITION, [], ended))
    await _settle()
    key = verification.watch_key(TaskType.open_burning)
    # the watch itself is stored at once (nothing waits on it); its end is not
    ((topic, partition, [(stored, _)]),) = recorded.batches
    assert (topic, partition, stored) == (hazard_changelog, FIRE_PARTITION, key)
    ((topic, outcome_key, _),) = recorded.records  # the verified outcome, to the loop
    assert (topic, outcome_key) == (worker.loop_topic.get_topic_name(), b"t-1")

    recorded.acknowledge()
    await _settle()
    assert recorded.batches[-1] == (hazard_changelog, FIRE_PARTITION, [(key, None)])


def test_a_kinds_watches_are_dropped_with_the_kinds_partition(tmp_path: Path) -> None:
    # at 8 partitions the watch key's own hash lands on another partition than its kind's
    worker = PatrolWorker(Settings(app_id="unit", data_dir=tmp_path, partitions=8))
    store = worker.hazard_states.data
    assert isinstance(store, faust_ext.BulkLoadedStore)
    changelog = worker.hazard_states.changelog_topic.get_topic_name()
    vending = incidents.hazard_key(DetectionKind.roadside_vending)
    watches = verification.watch_key(TaskType.roadside_vending)
    kind_partition = partition_of(vending, 8)
    store.data.update({vending: b"incidents", watches: b"watches"})
    store._drop_partitions(changelog, {partition_of(watches, 8)})
    assert set(store.data) == {vending, watches}  # another partition went: both stay
    store._drop_partitions(changelog, {kind_partition})
    assert store.data == {}
