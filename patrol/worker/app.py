"""The worker's wiring: decode → call a rule → emit what it returned.

* intake (`patrol.intake.consumer`, camera + drone topics, keyed by source id, consumer group
  `PATROL_APP_ID`): validates, dead-letters what it cannot use, locates each detection in its
  zone, screens it, and re-keys accepted plate reads by case (zone, plate) and hazards by kind
  onto internal topics, in batches that end with its event-time clock. It takes the dispatch
  system's feedback too: validates it, dead-letters what it cannot use, and forwards the rest
  to the loop topic by task id, in batches. It runs in a child process
  (`patrol.intake.process`) that reports its counts and gauges to this one.
* grace (faust agent on the internal cases topic): owns the parking grace cases in a
  changelogged table.
* hazards (faust agent on the internal hazards topic): owns the hazard incidents, one table key
  per kind — hazard detections are few, and one key per kind makes grouping exact across any
  partition boundary — and the watches of resolved hazard tasks.
* loop (faust agent on the internal loop topic): owns each task's state in a changelogged table
  keyed by task id — its lamps, feedback, verification — and writes the dispatch topic (each
  task in the step that opens its state) and the status topic. Its inputs (tasks decided by the
  grace and hazard agents, feedback, clock ticks, watch outcomes) all travel on that one topic,
  so a restart applies them in the same order again (`patrol.kafka.loop_records`).

The faust app (agents, tables, web pages) is the consumer group `<PATROL_APP_ID>-state`, and its
changelog topics carry that prefix.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, cast

import faust
from aiokafka.errors import KafkaError
from faust.web import Request, Response, View
from mode import Service
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from patrol import metrics
from patrol.domain import grace, incidents, tasks
from patrol.domain.models import DeadLetter, DetectionKind, EnforcementTask, TaskStatus
from patrol.domain.routing import RoutingTable, load_routing
from patrol.domain.verification import WatchOutcome
from patrol.domain.zones import ZoneMap, load_zones
from patrol.intake.process import IntakeProcess
from patrol.kafka import loop_records
from patrol.kafka.batches import PartitionBatches
from patrol.kafka.loop_records import LoopRecord
from patrol.kafka.partitioning import partition_of
from patrol.kafka.security import faust_credentials
from patrol.kafka.topics import MAX_REQUEST_BYTES, InternalTopics, durability_config
from patrol.settings import Settings
from patrol.sms.sender import SmsSenderProcess
from patrol.worker import faust_ext
from patrol.worker.agent import RecordAgent
from patrol.worker.faust_ext import BROKER_SCHEME, STORE_URL, BulkLoadedStore
from patrol.worker.grace_agent import GraceAgent
from patrol.worker.hazard_agent import HazardAgent, table_partition
from patrol.worker.loop_agent import LoopAgent

log = logging.getLogger("patrol.worker")

HAZARD_KINDS = (DetectionKind.roadside_vending, DetectionKind.open_burning)
MAX_BATCH_BYTES = 1024 * 1024
YIELD_EVERY = 500
# A close-out that emits more tasks than this in one stream event sends them as it goes.
EMIT_BATCH = 500
# Readiness asks a broker for metadata this often, and a worker that had no answer for
# BROKER_READY_SECONDS is not ready: it holds its partitions but can take in nothing.
BROKER_PROBE_SECONDS = 1.0
BROKER_PROBE_TIMEOUT_SECONDS = 4.0
BROKER_READY_SECONDS = 5.0
CHANGELOG_TOPIC_CONFIG = {
    "segment.bytes": str(1024 * 1024),
    "segment.ms": str(60 * 60 * 1000),
    "min.cleanable.dirty.ratio": "0.3",
}


class PatrolWorker:
    """One worker process: the faust app, its topics, tables, agents and web pages."""

    def __init__(
        self,
        settings: Settings,
        *,
        replication_factor: int = 1,
        zones: ZoneMap | None = None,
        routing: RoutingTable | None = None,
    ) -> None:
        self.settings = settings
        self.zones: ZoneMap = zones or load_zones(settings.zones)
        self.routing: RoutingTable = routing or load_routing(settings.routing)
        metrics.precreate_task_series(self.routing.all_routes())
        partitions = settings.partitions
        static: dict[str, Any] = {}
        if settings.instance_id:
            # The URL names the member in faust's assignment, and a static member may be handed
            # back the assignment it had before its restart: it must not change with the port.
            static = {
                "consumer_group_instance_id": settings.instance_id,
                "canonical_url": f"http://{settings.instance_id}",
            }
        self.app = faust.App(
            f"{settings.app_id}-state",
            broker=[f"{BROKER_SCHEME}://{host}" for host in settings.kafka_bootstrap.split(",")],
            store="memory://",
            datadir=str(settings.data_dir),
            autodiscover=False,
            web_enabled=True,
            web_bind=settings.web_host,
            web_host=settings.web_host,
            web_port=settings.web_port,
            topic_partitions=partitions,
            topic_replication_factor=replication_factor,
            topic_allow_declare=True,
            consumer_auto_offset_reset="earliest",
            broker_credentials=faust_credentials(settings),
            producer_max_request_size=MAX_REQUEST_BYTES,
            producer_acks=-1,
            producer_linger_ms=1,
            producer_max_batch_size=MAX_BATCH_BYTES,
            # Each stream event is a batch of up to 500 detections (patrol.envelopes), so a
            # short buffer holds thousands of detections; a long one held up to 60 MB of
            # batches while the agents caught up. Polls stay large for changelog recovery,
            # which reads one record per case and was twice as slow at 100 records a poll.
            broker_max_poll_records=1000,
            stream_buffer_maxsize=16,
            stream_wait_empty=False,
            broker_commit_interval=1.0,
            # A killed worker's partitions move after this long; faust's 60 s default made a
            # replacement wait a minute before it could recover and serve.
            broker_session_timeout=settings.session_timeout_seconds,
            broker_heartbeat_interval=1.0,
            table_standby_replicas=0,
            web_in_thread=False,
            # Tables hold bytes the rules encode themselves (compact, and fast to restore).
            key_serializer="raw",
            value_serializer="raw",
            **static,
        )
        raw: dict[str, Any] = {"key_serializer": "raw", "value_serializer": "raw"}
        # With three replicas an acknowledged changelog write survives the loss of a broker.
        changelog_config = {**CHANGELOG_TOPIC_CONFIG, **durability_config(replication_factor)}
        self.dispatch = self.app.topic(settings.topic_dispatch, partitions=partitions, **raw)
        internal = InternalTopics.of(settings.app_id)
        self.cases_topic = self.app.topic(
            internal.cases, partitions=partitions, internal=True, **raw
        )
        self.hazards_topic = self.app.topic(
            internal.hazards, partitions=partitions, internal=True, **raw
        )
        self.sms_outbox = self.app.topic(
            internal.sms_outbox, partitions=partitions, internal=True, **raw
        )
        self.status_topic = self.app.topic(settings.topic_status, partitions=partitions, **raw)
        self.deadletter_topic = self.app.topic(settings.topic_deadletter, **raw)
        self.loop_topic = self.app.topic(
            internal.task_loop, partitions=partitions, internal=True, **raw
        )
        # Loaded in bulk from its changelog when partitions are assigned (patrol.worker.faust_ext).
        self.cases = self.app.Table(
            "grace-cases",
            store=STORE_URL,
            partitions=partitions,
            key_type=bytes,
            value_type=bytes,
            # Compaction only cleans closed segments: small ones (1 MiB, Kafka's least) keep
            # the changelog near one record per live case, which a replacement reads back.
            extra_topic_configs=changelog_config,
        )
        self._cases_changelog = self.cases.changelog_topic.get_topic_name()
        self._sms_outbox_name = internal.sms_outbox
        # Changelog and outbox records, sent a batch per partition after each stream event; a
        # case's changelog records only once its warnings and tasks are acknowledged.
        self._batches = self._batches_of(self._cases_changelog)
        self.hazard_states = self.app.Table(
            "hazard-incidents",
            store=STORE_URL,  # stored as the cases are, so both recover the same way
            partitions=partitions,
            key_type=bytes,
            value_type=bytes,
            extra_topic_configs=changelog_config,
        )
        hazard_changelog = self.hazard_states.changelog_topic.get_topic_name()
        # An incident's changelog records only once its task (or a watch's end only once its
        # outcome) is acknowledged, as for the cases.
        self._hazard_batches = self._batches_of(hazard_changelog)
        self.task_states = self.app.Table(
            "task-loop",
            store=STORE_URL,
            partitions=partitions,
            key_type=bytes,
            value_type=bytes,
            extra_topic_configs=changelog_config,
        )
        # SMS go out from a child process that works the outbox topic: httpx costs more CPU
        # than the stream itself, and a backlog of warnings waits on the topic, not in memory.
        self.notifier = SmsSenderProcess(settings)
        # The intake validates and re-keys the input in a child process, beside the agents
        # rather than taking turns with them on one core (`patrol.intake_process`).
        self.intake = IntakeProcess(settings)

        self._crashing: asyncio.Future[None] | None = None

        # The agents are plain classes (patrol.worker.grace_agent, hazard_agent); faust feeds
        # them. The cases table's store dict itself is handed over: faust's table lookup adds
        # a few hooks per call that the cases table does not use.
        store = self.cases.data
        assert isinstance(store, BulkLoadedStore)
        # Each agent's tasks go out through its own output, whose acknowledgements its own
        # changelog waits for.
        self._grace_tasks = _TaskOutput(self, self._batches)
        self._hazard_tasks = _TaskOutput(self, self._hazard_batches)
        self.grace = GraceAgent(
            policy=grace.GracePolicy.from_settings(settings),
            zones=self.zones,
            routing=self.routing,
            partitions=partitions,
            cases=store.data,
            records=self._batches,
            changelog_topic=self.cases.changelog_topic.get_topic_name(),
            outbox_topic=internal.sms_outbox,
            emit_task=self._grace_tasks.emit,
        )
        hazard_store = self.hazard_states.data
        assert isinstance(hazard_store, BulkLoadedStore)
        hazard_store.key_partition = table_partition
        self.hazards = HazardAgent(
            policy=incidents.IncidentPolicy.from_settings(settings),
            zones=self.zones,
            routing=self.routing,
            partitions=partitions,
            states=hazard_store.data,
            records=self._hazard_batches,
            changelog_topic=hazard_changelog,
            emit_task=self._hazard_tasks.emit,
            send_watch_outcome=self._send_watch_outcome,
        )
        task_store = self.task_states.data
        assert isinstance(task_store, BulkLoadedStore)
        # The loop's changelog and status records, sent a batch per partition after each event;
        # the changelog's only once the status records are acknowledged.
        self._loop_batches = self._batches_of(self.task_states.changelog_topic.get_topic_name())
        self.loop = LoopAgent(
            policy=tasks.LoopPolicy.from_settings(settings),
            partitions=partitions,
            states=task_store.data,
            records=self._loop_batches,
            changelog_topic=self.task_states.changelog_topic.get_topic_name(),
            effects=_LoopOutput(self),
            max_message_bytes=settings.max_message_bytes,
        )
        self._ticked: float | None = None
        self._broker_answered: float | None = None
        # concurrency stays 1: with more, faust can commit offsets past events still in flight,
        # and a case's reads must be applied in partition order anyway.
        self.app.agent(self.cases_topic, name="patrol.grace")(
            _feeds(self.grace, self._grace_tasks.send)
        )
        self.app.agent(self.hazards_topic, name="patrol.hazards")(
            _feeds(self.hazards, self._hazard_tasks.send)
        )
        self.app.agent(self.loop_topic, name="patrol.loop")(_feeds(self.loop))
        self.app.timer(1.0, name="patrol.gauges")(self._refresh_gauges)
        self.app.timer(1.0, name="patrol.loop-clock")(self._tick_loop)
        self.app.timer(BROKER_PROBE_SECONDS, name="patrol.broker-probe")(self._probe_broker)
        self._add_pages()
        self.app.on_partitions_revoked.connect(self._on_partitions_revoked)  # type: ignore[arg-type]

        if settings.sms_enabled:
            self.app.service(_runs_with_app(self.notifier.start, self.notifier.stop))
        self.app.service(_runs_with_app(self.intake.start, self.intake.stop))

    # --- output --------------------------------------------------------------------------

    def _batches_of(self, changelog: str) -> PartitionBatches:
        """An agent's record batches, whose `changelog` records wait for its effects."""
        return PartitionBatches(
            cast(faust_ext.Producer, self.app.producer),
            self._stop_on_lost_records,
            state_topics={changelog},
        )

    def _stop_on_lost_records(self, exc: BaseException) -> None:
        """Records the producer or broker refused: stop the worker rather than carry on with a
        table the changelog no longer matches, a warning never sent or a task never dispatched
        (a restart replays from the last commit)."""
        if self._crashing is None:
            log.error("could not produce the worker's records (%r); stopping the worker", exc)
            self._crashing = asyncio.ensure_future(self.app.crash(exc))

    async def _send(
        self,
        topic: faust.TopicT,
        key: bytes | None,
        value: bytes,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> asyncio.Future[Any]:
        """Hand a record to the producer without faust's per-message channel machinery.

        The consumer flushes the producer before it commits offsets, so this keeps
        at-least-once delivery; the await only waits when the producer's buffer is full. The
        future is done once the broker acknowledged the record.
        """
        pending = cast(
            "asyncio.Future[Any]",
            await self.app.producer.send(
                topic.get_topic_name(), key, value, partition, None, headers
            ),
        )
        pending.add_done_callback(self._check_sent)
        return pending

    def _check_sent(self, sent: asyncio.Future[Any]) -> None:
        # A task, status record or dead letter the broker refused is lost to its topic while
        # faust may commit past its trigger: stop, as for the batches, and replay on restart.
        # (Cancelled: the producer is stopping, and what it had not sent is replayed.)
        if not sent.cancelled() and (exc := sent.exception()) is not None:
            self._stop_on_lost_records(exc)

    # --- the closed loop's plumbing ----------------------------------------------------------

    async def _to_loop(
        self, kind: LoopRecord, key: bytes | None, value: bytes, partition: int | None = None
    ) -> asyncio.Future[Any]:
        if partition is None:
            assert key is not None
            partition = partition_of(key, self.settings.partitions)
        return await self._send(self.loop_topic, key, value, partition, loop_records.headers(kind))

    async def _send_watch_outcome(self, outcome: WatchOutcome) -> None:
        sent = await self._to_loop(
            LoopRecord.watch_outcome,
            outcome.task_id.encode(),
            loop_records.watch_outcome_record(outcome),
        )
        self._hazard_batches.after(sent)  # the watch's end waits for its outcome

    async def _send_dead_letter(self, key: bytes | None, letter: DeadLetter) -> asyncio.Future[Any]:
        return await self._send(self.deadletter_topic, key, letter.model_dump_json().encode())

    async def _tick_loop(self) -> None:
        """The intake's event-time clock to every loop partition, when it moved: the lamps
        turn on it. Each worker ticks with its own intake's clock; the loop keeps the latest."""
        clock = self.intake.clock
        if clock is None or (self._ticked is not None and clock <= self._ticked):
            return
        self._ticked = clock
        value = loop_records.tick_record(datetime.fromtimestamp(clock, UTC))
        for partition in range(self.settings.partitions):
            await self._to_loop(LoopRecord.tick, None, value, partition)

    # --- health, readiness, gauges ---------------------------------------------------------

    def is_ready(self) -> bool:
        app = self.app
        if not self.intake.started.is_set():
            return False
        answered = self._broker_answered
        if answered is None or time.monotonic() - answered > BROKER_READY_SECONDS:
            return False
        if app.rebalancing or not app.consumer.assignment():
            return False
        tables: Any = app.tables
        return bool(tables.recovery.completed.is_set())

    async def _probe_broker(self) -> None:
        producer = cast(faust_ext.Producer, self.app.producer)
        try:
            reached = await asyncio.wait_for(
                producer.broker_reachable(), BROKER_PROBE_TIMEOUT_SECONDS
            )
        except (TimeoutError, KafkaError):
            reached = False
        if reached:
            self._broker_answered = time.monotonic()

    async def _refresh_gauges(self) -> None:
        metrics.worker_ready.set(1 if self.is_ready() else 0)
        fetching = cast(faust_ext.Consumer, self.app.consumer).fetching()
        for kind, count in fetching.items():
            metrics.fetching_partitions.labels(kind).set(count)
        intake = self.intake
        if intake.clock is not None:
            metrics.event_time_lag_seconds.set(time.time() - intake.clock)

    async def _on_partitions_revoked(self, sender: Any, *args: Any, **kwargs: Any) -> None:
        self.grace.revoked()
        self.hazards.revoked()
        self.loop.revoked()

    def _add_pages(self) -> None:
        @self.app.page("/metrics")
        async def metrics_page(view: View, request: Request) -> Response:
            # `?name[]=...` restricts the page to those samples, as prometheus_client's own
            # exposition does: a frequent poller of one counter need not render them all.
            query: Any = request.query  # aiohttp's MultiDict: a name may repeat
            names = query.getall("name[]", [])
            registry = REGISTRY.restricted_registry(names) if names else REGISTRY
            return view.bytes(
                generate_latest(registry),
                headers={"Content-Type": CONTENT_TYPE_LATEST},
            )

        @self.app.page("/healthz")
        async def healthz_page(view: View, request: Request) -> Response:
            # Answering at all proves the event loop runs.
            return view.json({"status": "ok"})

        @self.app.page("/readyz")
        async def readyz_page(view: View, request: Request) -> Response:
            if self.is_ready():
                return view.json({"status": "ready"})
            return view.json({"status": "not ready"}, status=503)


class _TaskOutput:
    """The tasks one agent decided in the stream event at hand: gathered by `emit`, sent to the
    loop by `send` at the end of the event (or once EMIT_BATCH tasks are waiting, in a large
    close-out), one `tasks-decided` batch record per loop partition, each registered with the
    agent's batches, so the state that decided a task reaches its changelog only once the loop
    has it: a kill between the two must not leave a state that says "ticketed" (or "incident
    tasked") and no task.

    The loop agent dispatches each task in the step that opens its state. So the loop knows
    every task before anyone reading the dispatch topic can answer it, on any number of
    brokers. When this agent sent the tasks to the dispatch topic itself, right after their
    loop records, the producer could still send the dispatch record first (a batch whose linger
    ran out goes before a younger one): in a catch-up answered at once by the bench's
    responder, 27 of 81,993 feedback records reached the loop before their task and were
    dead-lettered as `unknown_task`.
    """

    def __init__(self, worker: PatrolWorker, batches: PartitionBatches) -> None:
        self._worker = worker
        self._batches = batches
        self._deciding: dict[int, list[bytes]] = {}
        """`tasks-decided` items per loop partition"""

    async def emit(self, task: EnforcementTask, ingested_ms: int) -> None:
        key = task.task_id.encode()
        partitions = self._worker.settings.partitions
        item = loop_records.decided_item(task.model_dump_json(), ingested_ms)
        self._deciding.setdefault(partition_of(key, partitions), []).append(item)
        metrics.tasks(task.task_type.value, task.department, task.priority.value).inc()
        log.info(
            "task %s %s to %s (%s) in %s",
            task.task_id,
            task.task_type.value,
            task.department,
            task.priority.value,
            task.zone_id,
        )
        if sum(map(len, self._deciding.values())) >= EMIT_BATCH:
            await self.send()

    async def send(self) -> None:
        """The tasks gathered so far, to the loop before the agent's changelog records (and so
        before faust can commit the event). Live, a stream event is a few detections, so a task
        waits a fraction of a millisecond here."""
        deciding, self._deciding = self._deciding, {}
        worker, after = self._worker, self._batches.after
        for partition, items in deciding.items():
            for value in loop_records.batch_records(items):
                after(await worker._to_loop(LoopRecord.tasks_decided, None, value, partition))


class _LoopOutput:
    """The loop agent's effects, through the worker's producer."""

    def __init__(self, worker: PatrolWorker) -> None:
        self._worker = worker

    async def dispatch(self, decided: loop_records.DecidedTask) -> None:
        worker = self._worker
        await self._effect(worker.dispatch, decided.task.task_id.encode(), decided.value)
        metrics.dispatch_latency_seconds.observe(max(0.0, time.time() - decided.ingested_ms / 1000))

    async def status(self, record: TaskStatus, feedback_ms: int | None) -> None:
        worker = self._worker
        await self._effect(
            worker.status_topic, record.task_id.encode(), record.model_dump_json().encode()
        )
        if feedback_ms is not None:
            metrics.status_latency_seconds.observe(max(0.0, time.time() - feedback_ms / 1000))

    async def _effect(self, topic: faust.TopicT, key: bytes, value: bytes) -> None:
        """In the loop's batches (the default partitioner's partition of the task id, on the
        partition count the cluster has for the topic), or on its own while that is unknown;
        the loop's changelog records wait for it either way."""
        worker = self._worker
        name = topic.get_topic_name()
        partitions = cast(faust_ext.Producer, worker.app.producer).partitions_for(name)
        if partitions is None:
            worker._loop_batches.after(await worker._send(topic, key, value))
        else:
            await worker._loop_batches.add(name, partition_of(key, partitions), key, value)

    async def dead_letter(self, key: bytes | None, letter: DeadLetter) -> None:
        sent = await self._worker._send_dead_letter(key, letter)
        self._worker._loop_batches.after(sent)  # a refused feedback_id's state waits for it

    async def watch(self, watch: tasks.Watch) -> None:
        """To the hazard agent, on the partition of the watched task's kind."""
        kind = DetectionKind(watch.task_type.value)
        key = incidents.hazard_key(kind)
        sent = await self._worker._send(
            self._worker.hazards_topic,
            key,
            loop_records.watch_record(watch),
            partition_of(key, self._worker.settings.partitions),
            loop_records.headers(LoopRecord.watch),
        )
        self._worker._loop_batches.after(sent)  # the task's "under watch" state waits for it


def _runs_with_app(
    start: Callable[[], Awaitable[None]], stop: Callable[[], Awaitable[None]]
) -> type[Service]:
    """A service class that starts and stops something with the faust app."""

    class RunsWithApp(Service):
        async def on_start(self) -> None:
            await start()

        async def on_stop(self) -> None:
            await stop()

    return RunsWithApp


def _feeds(
    agent: RecordAgent, before_commit: Callable[[], Awaitable[None]] | None = None
) -> Callable[[faust.StreamT[bytes]], Awaitable[None]]:
    """The faust agent function that hands each record of its stream to `agent`; after each,
    `before_commit` (if given) and the agent's `after_event` run before the next is taken."""

    async def feed(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            message = event.message
            await agent.take(message.partition, message.headers, event.value)
            if before_commit is not None:
                await before_commit()
            await agent.after_event()

    return feed
