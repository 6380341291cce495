"""Where patrol goes around faust, and why: every faust, mode and aiokafka internal the worker
relies on is used in this module and nowhere else, and `tests/unit/worker/test_faust_ext.py`
pins each one, so an upgrade that changes them fails a test instead of the worker.

- `AIOKafkaConsumerThread._create_worker_consumer` and `AIOKafkaConsumer._fetch_max_wait_ms`:
  a 20 ms fetch wait for the agents' consumer (faust's is 1.5 s);
- `Consumer.pause_partitions`, `resume_partitions` and `_is_changelog_tp`,
  `AIOKafkaConsumerThread._consumer` and `thread_loop`: the changelog partitions paused in
  aiokafka as well as in faust;
- `faust_aiokafka.Producer._ensure_producer`, `AIOKafkaProducer.create_batch` and `send_batch`:
  whole record batches from the agents (`patrol.kafka.batches`), placed by the partition count
  of the client's `cluster.partitions_for_topic` where the topic is not patrol's own;
- `drivers.TRANSPORTS.aliases` and `stores.STORES.aliases`: this transport and store by URL;
- `faust.stores.memory.Store.data`, `persisted_offset` and `on_rebalance`: tables loaded in bulk
  from their changelogs on assignment;
- `app.rebalancing` and `app.tables.recovery.completed` (in `patrol.worker.app`), and the
  producer's `AIOKafkaClient.force_metadata_update` (`Producer.broker_reachable`): readiness.

**The fetch wait.** faust builds its consumer with `fetch_max_wait_ms=1500`. A consumer leaves
partitions that still hold fetched records out of its next fetch, so when the agents are a batch
behind, the fetch in flight can name only partitions nothing is written to, and the broker holds
it the full wait: the busy partitions' next records then sit on the broker for up to 1.5 s. In
the latency benchmark that happened in about half the runs (tasks 1.2–1.8 s late at 1,000
detections/s instead of tens of milliseconds). A short wait bounds that stall; an idle worker
pays for it with a few empty fetches a second.

**Changelogs paused in the client.** faust pauses a partition by leaving it out of the set it
asks aiokafka for; aiokafka is never told, so it goes on fetching every assigned partition. faust
pauses the worker's changelog partitions (its three tables' own output, every partition of
each) once recovery has read them, or at once when there is nothing to read, which is every
assignment here (`BulkLoadedStore` below). aiokafka then fetched them anyway, and faust never took
those records from its buffer: a partition with buffered records holds every fetch to its broker
back for `prefetch_backoff` (100 ms), and the broker sent data that was thrown away. The worker's
`Consumer` passes faust's pause and resume of changelog partitions on to aiokafka.

**Batches.** The producer hands whole record batches to aiokafka, which faust's producer does
not offer.

**Tables loaded in bulk.** faust restores a table by passing every changelog record through its
recovery loop, one event at a time (~60 µs each here), which made a worker that takes over
100,000 open cases spend most of its start-up reading them. On assignment `BulkLoadedStore`
reads its new changelog partitions itself, with a plain consumer, straight into the dict (a few
µs a record), up to the end offsets it found, and reports the last offset it read as the
partition's persisted offset. faust's recovery then starts from there and only reads what was
written meanwhile. Keys of partitions taken away are dropped, so a table holds exactly what this
worker owns. All three of the worker's tables (cases, hazard incidents, task loop) are kept
this way; a table whose keys do not all live on their hash's partition says where they do
(`BulkLoadedStore.key_partition`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Set
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition
from faust import stores
from faust.stores.memory import Store as MemoryStore
from faust.transport import drivers
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from faust.types import TP

from patrol.kafka.partitioning import partition_of

log = logging.getLogger("patrol.store")

BROKER_SCHEME = "patrol-kafka"
FETCH_MAX_WAIT_MS = 20


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # read by AIOKafkaConsumer.start() when it builds its fetcher
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS
        return consumer


class Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def pause_partitions(self, tps: Iterable[TP]) -> None:
        tps = list(tps)
        super().pause_partitions(tps)
        self._fetch_changelogs(tps, fetching=False)

    def resume_partitions(self, tps: Iterable[TP]) -> None:
        tps = list(tps)
        super().resume_partitions(tps)
        self._fetch_changelogs(tps, fetching=True)

    def fetching(self) -> dict[str, int]:
        """How many partitions the client fetches, stream and changelog, as counted in the
        consumer's thread after the previous call (empty before the first count)."""
        loop = self._thread_loop()
        if loop is not None and loop.is_running():
            loop.call_soon_threadsafe(self._count_fetching)
        return dict(self.__dict__.get("_patrol_fetching", {}))

    def _count_fetching(self) -> None:
        client: AIOKafkaConsumer | None = self._thread._consumer
        if client is None:
            return
        fetched = client.assignment() - client.paused()
        changelogs = sum(1 for tp in fetched if self._is_changelog_tp(tp))
        self.__dict__["_patrol_fetching"] = {
            "stream": len(fetched) - changelogs,
            "changelog": changelogs,
        }

    def _thread_loop(self) -> asyncio.AbstractEventLoop | None:
        loop: asyncio.AbstractEventLoop | None = getattr(self._thread, "thread_loop", None)
        return None if loop is None or loop.is_closed() else loop

    def _fetch_changelogs(self, tps: Iterable[TP], *, fetching: bool) -> None:
        """Tell aiokafka too, for the changelog partitions among `tps` (the stream partitions'
        flow stays faust's). The client lives in the consumer's own thread and loop, so the
        call goes there, in the order faust made it."""
        changelogs = [
            TopicPartition(tp.topic, tp.partition) for tp in tps if self._is_changelog_tp(tp)
        ]
        loop = self._thread_loop()
        if changelogs and loop is not None:
            loop.call_soon_threadsafe(_set_fetching, self._thread, changelogs, fetching)


def _set_fetching(thread: Any, tps: list[TopicPartition], fetching: bool) -> None:
    """In the consumer's thread: pause or resume those of `tps` the client still holds (a
    partition revoked meanwhile is no longer the client's to pause)."""
    client: AIOKafkaConsumer | None = thread._consumer
    if client is None:
        return
    held = client.assignment()
    mine = [tp for tp in tps if tp in held]
    if mine:
        (client.resume if fetching else client.pause)(*mine)


class Producer(faust_aiokafka.Producer):
    """faust's producer, plus aiokafka's batch interface on the same client and connection, and
    a flush that also waits for the state hand-overs of `patrol.kafka.batches` (faust's
    consumer flushes the producer before every commit: `Consumer._commit_offsets`)."""

    def hold_flush(self, pending: asyncio.Future[Any]) -> None:
        """Make `flush` wait for `pending` too."""
        held: set[asyncio.Future[Any]] = self.__dict__.setdefault("_patrol_held", set())
        held.add(pending)
        pending.add_done_callback(held.discard)

    async def flush(self) -> None:
        # Only what is pending now: faust chose the offsets to commit before it flushes, and
        # every event they cover registered its hand-over before that. Waiting also for those
        # registered meanwhile could put a commit off for as long as the load lasts.
        held: set[asyncio.Future[Any]] = self.__dict__.get("_patrol_held", set())
        if held:
            await asyncio.wait(list(held))
        await super().flush()

    def create_batch(self) -> Any:
        """An empty `aiokafka.producer.message_accumulator.BatchBuilder` of this producer."""
        return self._ensure_producer().create_batch()

    async def send_batch(self, batch: Any, topic: str, partition: int) -> asyncio.Future[Any]:
        """Queue a filled batch; the future is done when the broker has acknowledged it."""
        sent: asyncio.Future[Any] = await self._ensure_producer().send_batch(
            batch, topic, partition=partition
        )
        return sent

    def partitions_for(self, topic: str) -> int | None:
        """How many partitions the producer's metadata says `topic` has (None: unknown yet)."""
        try:
            known = self._ensure_producer().client.cluster.partitions_for_topic(topic)
        except Exception:  # not started yet, or stopping
            return None
        return len(known) if known else None

    async def broker_reachable(self) -> bool:
        """Whether a metadata request reached a broker now: nothing else tells that a worker
        holding its partitions cannot reach the cluster (the assignment stays as it was)."""
        try:
            client = self._ensure_producer().client
        except Exception:  # not started yet, or stopping
            return False
        return bool(await client.force_metadata_update())


class Transport(faust_aiokafka.Transport):
    Consumer = Consumer
    Producer = Producer


drivers.TRANSPORTS.aliases.setdefault(BROKER_SCHEME, "patrol.worker.faust_ext:Transport")


LOAD_FETCH_MAX_BYTES = 32 * 1024 * 1024
LOAD_PARTITION_FETCH_MAX_BYTES = 8 * 1024 * 1024
LOAD_POLL_MS = 500

# The store URL of a table kept in a `BulkLoadedStore`: `app.Table(..., store=STORE_URL)`.
STORE_URL = "patrol-bulk://memory"
stores.STORES.aliases.setdefault("patrol-bulk", "patrol.worker.faust_ext:BulkLoadedStore")


class BulkLoadedStore(MemoryStore[bytes, bytes]):
    """faust's memory store, with changelog partitions loaded in bulk on assignment.

    `key_partition` says which partition a key lives on, for dropping the keys of partitions
    taken away: the default partitioner's, unless the table places some keys elsewhere (the
    hazard table keeps a kind's watches on the kind's partition).
    """

    key_partition: Callable[[bytes, int], int] = staticmethod(partition_of)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._loaded: dict[TP, int] = {}

    def persisted_offset(self, tp: TP) -> int | None:
        return self._loaded.get(tp)

    async def on_rebalance(
        self,
        assigned: Set[TP],
        revoked: Set[TP],
        newly_assigned: Set[TP],
        generation_id: int = 0,
    ) -> None:
        changelog = self.table.changelog_topic.get_topic_name()
        gone = {tp.partition for tp in revoked if tp.topic == changelog}
        if gone:
            self._drop_partitions(changelog, gone)
        new = sorted(tp.partition for tp in newly_assigned if tp.topic == changelog)
        if new:
            await self._load(changelog, new)
        kept = [tp for tp in assigned if tp.topic == changelog and tp not in newly_assigned]
        if kept:
            await self._mark_current(kept)

    async def _mark_current(self, kept: Iterable[TP]) -> None:
        """Partitions kept through a rebalance: the dict already holds everything their
        changelog has (this worker wrote it), so faust has nothing to recover. Left at the
        offset of their first load, faust re-read them from there; in about one rebalance in
        eight of the rebalance test it then waited for records that never came, and the worker
        stayed unready (a known faust-streaming recovery hang for partitions kept or returned)."""
        tps = [TopicPartition(tp.topic, tp.partition) for tp in kept]
        consumer = AIOKafkaConsumer(bootstrap_servers=_bootstrap(self.app), **_auth(self.app))
        await consumer.start()
        try:
            ends = await consumer.end_offsets(tps)
        finally:
            await consumer.stop()
        for tp in tps:
            self._mark_loaded(tp, ends[tp])

    def _drop_partitions(self, changelog: str, partitions: set[int]) -> None:
        count = self.table.partitions or self.app.conf.topic_partitions
        data = self.data
        key_partition = self.key_partition
        for key in [k for k in data if key_partition(k, count) in partitions]:
            del data[key]
        for partition in partitions:
            self._loaded.pop(TP(changelog, partition), None)

    async def _load(self, changelog: str, partitions: Iterable[int]) -> None:
        """Read the changelog partitions from the start to their current end into the dict."""
        started = time.monotonic()
        tps = [TopicPartition(changelog, p) for p in partitions]
        consumer = AIOKafkaConsumer(
            bootstrap_servers=_bootstrap(self.app),
            **_auth(self.app),
            enable_auto_commit=False,
            # no group, so every partition starts at its beginning
            auto_offset_reset="earliest",
            fetch_max_bytes=LOAD_FETCH_MAX_BYTES,
            max_partition_fetch_bytes=LOAD_PARTITION_FETCH_MAX_BYTES,
        )
        await consumer.start()
        records = 0
        try:
            consumer.assign(tps)
            ends = await consumer.end_offsets(tps)
            data = self.data
            remaining = set()
            for tp in tps:
                if await consumer.position(tp) < ends[tp]:
                    remaining.add(tp)
                else:
                    self._mark_loaded(tp, ends[tp])
            while remaining:
                fetched = await consumer.getmany(*remaining, timeout_ms=LOAD_POLL_MS)
                for tp, batch in fetched.items():
                    for record in batch:
                        if record.offset >= ends[tp]:
                            break
                        if record.value is None:
                            data.pop(record.key, None)
                        else:
                            data[record.key] = record.value
                        records += 1
                for tp in list(remaining):
                    if await consumer.position(tp) >= ends[tp]:
                        remaining.discard(tp)
                        self._mark_loaded(tp, ends[tp])
        finally:
            await consumer.stop()
        log.info(
            "loaded %d changelog records of %s partitions %s in %.1f s",
            records,
            changelog,
            ",".join(str(tp.partition) for tp in tps),
            time.monotonic() - started,
        )

    def _mark_loaded(self, tp: TopicPartition, end: int) -> None:
        # faust seeks to the persisted offset and reads on from it (re-applying that record,
        # which changes nothing); -1 when the partition is empty.
        self._loaded[TP(tp.topic, tp.partition)] = end - 1


def _bootstrap(app: Any) -> str:
    return ",".join(f"{url.host}:{url.port}" for url in app.conf.broker)


def _auth(app: Any) -> dict[str, Any]:
    """The app's security settings (PATROL_KAFKA_SECURITY_PROTOCOL, …) for a plain consumer."""
    return dict(credentials_to_aiokafka_auth(app.conf.broker_credentials, app.conf.ssl_context))
