"""The faust internals patrol relies on (patrol.worker.faust_ext), pinned."""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaClient, AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.cluster import ClusterMetadata
from aiokafka.structs import TopicPartition
from faust import stores
from faust.transport import consumer as faust_consumer
from faust.transport import drivers
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from patrol.settings import Settings
from patrol.worker import faust_ext as transport
from patrol.worker.app import PatrolWorker


async def test_the_agents_consumer_waits_at_most_briefly_for_a_fetch(tmp_path: Path) -> None:
    app = PatrolWorker(Settings(app_id="unit", data_dir=tmp_path)).app
    assert isinstance(app.transport, transport.Transport)
    thread = app.consumer._new_consumer_thread()

    consumer = thread._create_worker_consumer(app.transport)
    stock = super(transport.ConsumerThread, thread)._create_worker_consumer(app.transport)
    try:
        assert consumer._fetch_max_wait_ms == transport.FETCH_MAX_WAIT_MS == 20
        assert stock._fetch_max_wait_ms == 1500  # faust's own: what the override is for
        assert consumer._group_id == stock._group_id == "unit-state"
    finally:
        await consumer.stop()
        await stock.stop()


async def test_changelog_partitions_are_paused_in_aiokafka_as_well_as_in_faust(
    tmp_path: Path,
) -> None:
    # faust's pause only narrows the set it asks aiokafka for: the driver leaves it as it is
    stock = faust_consumer.Consumer
    assert faust_aiokafka.Consumer.pause_partitions is stock.pause_partitions
    assert faust_aiokafka.Consumer.resume_partitions is stock.resume_partitions
    worker = PatrolWorker(Settings(app_id="unit", data_dir=tmp_path))
    consumer = worker.app.consumer
    assert isinstance(consumer, transport.Consumer)
    changelog = TP(worker.task_states.changelog_topic.get_topic_name(), 2)
    revoked = TP(worker.cases.changelog_topic.get_topic_name(), 0)
    stream = TP(worker.loop_topic.get_topic_name(), 2)
    assert consumer._is_changelog_tp(changelog) and not consumer._is_changelog_tp(stream)

    client = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1")
    held = [TopicPartition(tp.topic, tp.partition) for tp in (changelog, stream)]
    client.assign(held)  # `revoked` is no longer the client's
    thread = consumer._thread
    thread._consumer = client
    thread.thread_loop = asyncio.get_running_loop()  # the call is queued on the thread's loop
    try:
        consumer.pause_partitions({changelog, revoked, stream})
        assert client.paused() == set()  # not yet: it runs in the consumer's thread
        await asyncio.sleep(0)
        assert client.paused() == {TopicPartition(changelog.topic, changelog.partition)}
        assert changelog in consumer._paused_partitions and stream in consumer._paused_partitions

        consumer.resume_partitions({changelog, stream})
        await asyncio.sleep(0)
        assert client.paused() == set()
        assert not consumer._paused_partitions & {changelog, stream}
    finally:
        thread._consumer = None
        await client.stop()


async def test_every_table_is_loaded_in_bulk_from_its_changelog(tmp_path: Path) -> None:
    worker = PatrolWorker(Settings(app_id="unit", data_dir=tmp_path))
    assert set(worker.app.tables) == {"grace-cases", "hazard-incidents", "task-loop"}
    for table in (worker.cases, worker.hazard_states, worker.task_states):
        assert isinstance(table.data, transport.BulkLoadedStore)
        assert isinstance(table.data.data, dict)  # the dict the agents are handed


def test_the_store_hooks_patrol_overrides_keep_their_shape() -> None:
    from faust.stores.memory import Store

    params = list(inspect.signature(Store.on_rebalance).parameters)
    assert params == ["self", "assigned", "revoked", "newly_assigned", "generation_id"]
    assert list(inspect.signature(Store.persisted_offset).parameters) == ["self", "tp"]
    assert stores.STORES.aliases["patrol-bulk"] == "patrol.worker.faust_ext:BulkLoadedStore"
    assert drivers.TRANSPORTS.aliases[transport.BROKER_SCHEME] == (
        "patrol.worker.faust_ext:Transport"
    )


async def test_the_producer_reaches_aiokafkas_batch_interface(tmp_path: Path) -> None:
    app = PatrolWorker(Settings(app_id="unit", data_dir=tmp_path)).app
    assert isinstance(app.producer, transport.Producer)
    # faust's producer keeps its aiokafka client behind _ensure_producer, once started
    ensure = inspect.signature(transport.Producer._ensure_producer)
    assert "AIOKafkaProducer" in str(ensure.return_annotation)
    assert list(inspect.signature(AIOKafkaProducer.create_batch).parameters) == ["self"]
    assert list(inspect.signature(AIOKafkaProducer.send_batch).parameters) == [
        "self",
        "batch",
        "topic",
        "partition",
    ]


def test_readiness_can_ask_the_producers_client_for_metadata() -> None:
    # Producer.broker_reachable awaits what the aiokafka client's force_metadata_update
    # returns: True once a broker answered a metadata request, False when none did
    assert list(inspect.signature(AIOKafkaClient.force_metadata_update).parameters) == ["self"]
    assert "self.client = AIOKafkaClient(" in inspect.getsource(AIOKafkaProducer.__init__)
    # Producer.partitions_for: the status records' partition count, from the client's metadata
    assert list(inspect.signature(ClusterMetadata.partitions_for_topic).parameters) == [
        "self",
        "topic",
    ]


async def test_readiness_reads_what_faust_still_has(tmp_path: Path) -> None:
    app = PatrolWorker(Settings(app_id="unit", data_dir=tmp_path)).app
    assert app.rebalancing is False
    tables: Any = app.tables
    assert isinstance(tables.recovery.completed, asyncio.Event)


async def test_the_producers_flush_and_so_the_commit_waits_for_state_hand_overs(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """faust's consumer flushes the producer right before it commits offsets
    (`Consumer._commit_offsets`); a state hand-over still waiting for its effects' acks must
    be part of that flush, or an offset could be committed before its changelog record."""
    source = inspect.getsource(drivers.aiokafka.Consumer.__mro__[1]._commit_offsets)
    assert "await self.app.producer.flush()" in source
    producer = PatrolWorker(Settings(app_id="unit", data_dir=tmp_path)).app.producer
    assert isinstance(producer, transport.Producer)
    flushed: list[str] = []

    async def aiokafka_flush(self: Any) -> None:
        flushed.append("aiokafka")

    monkeypatch.setattr(drivers.aiokafka.Producer, "flush", aiokafka_flush)
    pending = asyncio.get_running_loop().create_future()
    producer.hold_flush(pending)
    flush = asyncio.ensure_future(producer.flush())
    await asyncio.sleep(0.01)
    assert not flush.done() and flushed == []
    pending.set_result(True)
    await asyncio.wait_for(flush, 1)
    assert flushed == ["aiokafka"]
    await producer.flush()  # nothing held any more: straight through
    assert flushed == ["aiokafka", "aiokafka"]

    # A hand-over registered while a flush waits is not waited for by that flush: under a
    # steady load there always is one, and the commit would never come.
    first, later = (asyncio.get_running_loop().create_future() for _ in range(2))
    producer.hold_flush(first)
    flush = asyncio.ensure_future(producer.flush())
    await asyncio.sleep(0.01)
    producer.hold_flush(later)
    first.set_result(True)
    await asyncio.wait_for(flush, 1)
    assert flushed == ["aiokafka"] * 3 and not later.done()
