"""The worker's wiring: decode → call a rule → emit what it returned.

* intake (`patrol.intake.consumer`, camera + drone topics, keyed by source id, consumer group
  `PATROL_APP_ID`): validates, dead-letters what it cannot use, locates each detection in its
  zone, screens it, and re-keys accepted plate reads by case (zone, plate) and hazards by kind
  onto internal topics, in batches that end with its event-time clock. It runs in a child
  process (`patrol.intake_process`) that reports its counts and gauges to this one.
* grace (faust agent on the internal cases topic): owns the parking grace cases in a
  changelogged table.
* hazards (faust agent on the internal hazards topic): owns the hazard incidents, one table key
  per kind — hazard detections are few, and one key per kind makes grouping exact across any
  partition boundary.

The faust app (agents, tables, web pages) is the consumer group `<PATROL_APP_ID>-state`, and its
changelog topics carry that prefix.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import faust
from faust.web import Request, Response, View
from mode import Service
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from patrol import metrics
from patrol.domain import grace, incidents
from patrol.domain.models import DetectionKind, EnforcementTask, TaskType
from patrol.domain.routing import RoutingTable, load_routing
from patrol.domain.zones import ZoneMap, load_zones
from patrol.intake.process import IntakeProcess
from patrol.kafka import envelopes
from patrol.kafka.batches import PartitionBatches
from patrol.kafka.envelopes import RoutedDetection
from patrol.kafka.partitioning import partition_of
from patrol.kafka.topics import InternalTopics
from patrol.settings import Settings
from patrol.sms import outbox
from patrol.sms.sender import SmsSenderProcess
from patrol.worker import transport
from patrol.worker.case_store import STORE_URL, BulkLoadedStore
from patrol.worker.transport import BROKER_SCHEME

log = logging.getLogger("patrol.worker")

HAZARD_KINDS = (DetectionKind.roadside_vending, DetectionKind.open_burning)
MAX_REQUEST_BYTES = 8 * 1024 * 1024
MAX_BATCH_BYTES = 1024 * 1024
YIELD_EVERY = 500
CHANGELOG_TOPIC_CONFIG = {
    "segment.bytes": str(1024 * 1024),
    "segment.ms": str(60 * 60 * 1000),
    "min.cleanable.dirty.ratio": "0.3",
}


@dataclass
class _Expiries:
    """Which case keys of one partition need a clock step, bucketed by the second they are due.

    A key may sit in a stale bucket after its state changed; a bucket's keys are re-evaluated
    when it comes due, so a stale entry costs one look and sets keep duplicates out. This keeps
    the index to one set entry per case, not a heap entry plus a dict entry.
    """

    buckets: dict[int, set[bytes]] = field(default_factory=dict)
    seconds: list[int] = field(default_factory=list)
    open_cases: int = 0

    def schedule(self, key: bytes, at: float | None) -> None:
        if at is None:
            return
        second = math.floor(at)
        bucket = self.buckets.get(second)
        if bucket is None:
            bucket = self.buckets[second] = set()
            heapq.heappush(self.seconds, second)
        bucket.add(key)

    def pop_due(self, clock: float) -> set[bytes]:
        """Keys whose bucket lies wholly before `clock` (each key due strictly before it)."""
        keys: set[bytes] = set()
        while self.seconds and self.seconds[0] + 1 <= clock:
            keys |= self.buckets.pop(heapq.heappop(self.seconds))
        return keys


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
        self.grace_policy = grace.GracePolicy.from_settings(settings)
        self.incident_policy = incidents.IncidentPolicy.from_settings(settings)
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
        # Loaded in bulk from its changelog when partitions are assigned (patrol.case_store).
        self.cases = self.app.Table(
            "grace-cases",
            store=STORE_URL,
            partitions=partitions,
            key_type=bytes,
            value_type=bytes,
            # Compaction only cleans closed segments: small ones (1 MiB, Kafka's least) keep
            # the changelog near one record per live case, which a replacement reads back.
            extra_topic_configs=CHANGELOG_TOPIC_CONFIG,
        )
        self._cases_changelog = self.cases.changelog_topic.get_topic_name()
        self._sms_outbox_name = internal.sms_outbox
        # Changelog and outbox records, sent a batch per partition after each stream event.
        self._batches = PartitionBatches(
            cast(transport.Producer, self.app.producer), self._stop_on_lost_records
        )
        # The store's dict itself: `_write_case` writes it, `_load_case` reads it (faust's
        # table lookup adds a few hooks per call that the cases table does not use).
        store = self.cases.data
        assert isinstance(store, BulkLoadedStore)
        self._case_data: MutableMapping[bytes, bytes] = store.data
        self.hazard_states = self.app.Table(
            "hazard-incidents",
            partitions=partitions,
            key_type=bytes,
            value_type=bytes,
        )
        # SMS go out from a child process that works the outbox topic: httpx costs more CPU
        # than the stream itself, and a backlog of warnings waits on the topic, not in memory.
        self.notifier = SmsSenderProcess(settings)
        # The intake validates and re-keys the input in a child process, beside the agents
        # rather than taking turns with them on one core (`patrol.intake_process`).
        self.intake = IntakeProcess(settings)

        self._case_clocks: dict[int, datetime] = {}
        self._hazard_clocks: dict[int, datetime] = {}
        self._expiries: dict[int, _Expiries] = {}
        self._cases_indexed = False
        self._hazard_cache: dict[bytes, incidents.HazardState] = {}
        self._hazards_changed: set[bytes] = set()
        self._crashing: asyncio.Future[None] | None = None

        # concurrency stays 1: with more, faust can commit offsets past events still in flight,
        # and a case's reads must be applied in partition order anyway.
        self.app.agent(self.cases_topic, name="patrol.grace")(self._grace_agent)
        self.app.agent(self.hazards_topic, name="patrol.hazards")(self._hazard_agent)
        self.app.timer(1.0, name="patrol.gauges")(self._refresh_gauges)
        self._add_pages()
        self.app.on_partitions_revoked.connect(self._on_partitions_revoked)  # type: ignore[arg-type]

        self.app.service(_runs_with_app(self.notifier.start, self.notifier.stop))
        self.app.service(_runs_with_app(self.intake.start, self.intake.stop))

    # --- the stateful agents -----------------------------------------------------------------

    async def _apply_batches(
        self,
        stream: faust.StreamT[bytes],
        agent: str,
        apply: Callable[[int, RoutedDetection], Awaitable[None]],
        advance: Callable[[int, datetime], Awaitable[None]],
        after_event: Callable[[], Awaitable[None]],
        on_event: Callable[[], None] | None = None,
        on_sms_outcomes: Callable[[int, bytes], Awaitable[None]] | None = None,
    ) -> None:
        """Apply each batch record's detections in order, each followed by its own event time,
        then the intake's clock. A detection that fails is logged and the rest still apply.
        SMS outcome records (`patrol.sms.outbox`) between the batches go to `on_sms_outcomes`.
        `after_event` runs after every event, before the agent takes the next (and so before
        faust can commit the event's offset)."""
        async for event in stream.events():
            partition = event.message.partition
            if on_event is not None:
                on_event()
            if on_sms_outcomes is not None and outbox.is_outcome(event.message.headers):
                await on_sms_outcomes(partition, event.value)
            else:
                await self._apply_batch(agent, partition, event.value, apply, advance)
            await after_event()

    async def _apply_batch(
        self,
        agent: str,
        partition: int,
        value: bytes,
        apply: Callable[[int, RoutedDetection], Awaitable[None]],
        advance: Callable[[int, datetime], Awaitable[None]],
    ) -> None:
        try:
            batch = envelopes.decode(value)
        except Exception:
            log.exception("%s agent could not decode a batch on partition %d", agent, partition)
            return
        for routed in batch.items:
            try:
                await apply(partition, routed)
                await advance(partition, routed.detection.observed_at)
            except Exception:
                log.exception("%s agent could not apply a detection on %d", agent, partition)
        if batch.clock is not None:
            await advance(partition, batch.clock)

    # --- grace cases ----------------------------------------------------------------------

    async def _grace_agent(self, stream: faust.StreamT[bytes]) -> None:
        await self._apply_batches(
            stream,
            "grace",
            self._apply_plate_read,
            self._advance_case_clock,
            # the event's changelog and outbox records, a batch per partition
            self._batches.submit,
            on_event=self._index_cases,
            on_sms_outcomes=self._apply_sms_outcomes,
        )

    def _load_case(self, key: bytes) -> grace.CaseState | None:
        raw = self._case_data.get(key)
        return None if raw is None else grace.decode_case_state(raw)

    async def _store_case(self, partition: int, key: bytes, state: grace.CaseState | None) -> None:
        if state is None:
            if key in self._case_data:
                await self._write_case(partition, key, None)
        else:
            await self._write_case(partition, key, grace.encode_case_state(state))
        self._expiries_of(partition).schedule(key, self._next_due(state))

    async def _write_case(self, partition: int, key: bytes, encoded: bytes | None) -> None:
        """Set (or, with None, delete) a case in the table and its changelog partition.

        This is what `table[key] = value` does, minus faust's per-write buffering, which cost
        more than the rule itself (a close-out of 100,000 cases took ~14 s through it). The
        record goes out with the stream event's other changelog and outbox records, in one batch
        per partition (`patrol.batches`), before the event's offset can be committed.
        """
        if encoded is None:
            self._case_data.pop(key, None)
        else:
            self._case_data[key] = encoded
        await self._batches.add(self._cases_changelog, partition, key, encoded)

    def _stop_on_lost_records(self, exc: BaseException) -> None:
        """Changelog or outbox records the producer or broker refused: stop the worker rather
        than carry on with a table the changelog no longer matches, or a warning never sent
        (a restart replays from the last commit)."""
        if self._crashing is None:
            log.error("could not write the case changelog or outbox (%r); stopping the worker", exc)
            self._crashing = asyncio.ensure_future(self.app.crash(exc))

    def _next_due(self, state: grace.CaseState | None) -> float | None:
        """Event time (epoch s) after which the key needs a clock step."""
        due = grace.next_due(state, self.grace_policy)
        return None if due is None else due.timestamp()

    def _expiries_of(self, partition: int) -> _Expiries:
        expiries = self._expiries.get(partition)
        if expiries is None:  # not setdefault: that built a throwaway _Expiries on every call
            expiries = self._expiries[partition] = _Expiries()
        return expiries

    def _index_cases(self) -> None:
        """After an assignment, learn when each recovered case key next needs the clock."""
        if self._cases_indexed:
            return
        self._cases_indexed = True
        partitions = self.settings.partitions
        for key, raw in list(self._case_data.items()):
            state = grace.decode_case_state(raw)
            expiries = self._expiries_of(partition_of(key, partitions))
            expiries.schedule(key, self._next_due(state))
            if state.open_case is not None:
                expiries.open_cases += 1
        self._publish_open_cases()

    def _publish_open_cases(self) -> None:
        metrics.grace_cases_open.set(sum(e.open_cases for e in self._expiries.values()))

    async def _apply_plate_read(self, partition: int, routed: RoutedDetection) -> None:
        detection = routed.detection
        key = grace.case_key(detection.plate or "", routed.zone_id).encode()
        source_type, kind = detection.source.type.value, detection.kind.value
        clock = self._case_clocks.get(partition)
        if grace.beyond_retention(detection.observed_at, clock, self.grace_policy):
            metrics.detections(source_type, kind, "late").inc()
            return
        zone = self.zones.get(routed.zone_id)
        route = self.routing.route(TaskType.illegal_parking, zone.scene)
        state, decision = grace.apply_read(
            self._load_case(key),
            grace.PlateRead.of(detection),
            zone,
            route,
            self.grace_policy,
        )
        metrics.detections(source_type, kind, decision.outcome or "accepted").inc()
        if decision.opened or decision.closed or decision.task:
            await self._store_case(partition, key, state)
        self._count_case_changes(partition, decision)
        if decision.sms is not None:
            # into the outbox with the case's changelog write, before the same offset commit
            await self._batches.add(
                self._sms_outbox_name, partition, key, outbox.request_record(decision.sms)
            )
        if decision.task is not None:
            await self._emit_task(decision.task, routed.ingested_ms)

    def _count_case_changes(self, partition: int, decision: grace.GraceDecision) -> None:
        expiries = self._expiries_of(partition)
        for closed in decision.closed:
            metrics.grace_cases_closed(closed.result).inc()
            expiries.open_cases -= 1
        if decision.late_confirmation:
            # already counted as self-corrected when the clock closed it; now also a violation
            metrics.grace_cases_closed("violation").inc()
        if decision.opened:
            expiries.open_cases += 1
        if decision.opened or decision.closed:
            self._publish_open_cases()

    async def _advance_case_clock(self, partition: int, clock: datetime) -> None:
        current = self._case_clocks.get(partition)
        if current is not None and clock <= current:
            return
        self._case_clocks[partition] = clock
        expiries = self._expiries_of(partition)
        for done, key in enumerate(expiries.pop_due(clock.timestamp()), start=1):
            before = self._load_case(key)
            state, decision = grace.advance_clock(before, clock, self.grace_policy)
            if state is before:  # a stale index entry: nothing was due yet
                expiries.schedule(key, self._next_due(state))
                continue
            await self._store_case(partition, key, state)
            self._count_case_changes(partition, decision)
            if done % YIELD_EVERY == 0:
                # a large close-out lets the producer ship tasks already emitted meanwhile
                await asyncio.sleep(0)

    async def _apply_sms_outcomes(self, partition: int, value: bytes) -> None:
        """The sender's final word on warnings: remember each in its case, so its task says."""
        try:
            outcomes = outbox.outcomes_from_record(value)
        except (ValueError, KeyError, TypeError) as exc:
            log.error("an SMS outcome record on partition %d is unreadable (%s)", partition, exc)
            return
        for outcome in outcomes:
            key = outcome.case_key
            state = self._load_case(key)
            updated = grace.record_sms_outcome(state, outcome.message_id, outcome.status)
            if updated is not state and updated is not None:
                await self._write_case(partition, key, grace.encode_case_state(updated))

    # --- hazards -------------------------------------------------------------------------

    async def _hazard_agent(self, stream: faust.StreamT[bytes]) -> None:
        await self._apply_batches(
            stream,
            "hazard",
            self._apply_hazard,
            self._advance_hazard_clock,
            self._write_hazards,
        )

    def _load_hazards(self, key: bytes) -> incidents.HazardState | None:
        """The decoded state of one hazard kind; decoded once, then kept beside the table."""
        state = self._hazard_cache.get(key)
        if state is None:
            raw = self.hazard_states.get(key)
            if raw is not None:
                state = self._hazard_cache[key] = incidents.decode_hazard_state(raw)
        return state

    def _store_hazards(self, key: bytes, state: incidents.HazardState | None) -> None:
        """Keep the new state; it reaches the table (and its changelog) once per batch record,
        in `_write_hazards`: a kind's state holds all its open incidents, tens of KB encoded."""
        metrics.incidents_open.labels(key.decode()).set(incidents.open_incident_count(state))
        if state is None:
            self._hazard_cache.pop(key, None)
            self._hazards_changed.discard(key)
            if key in self.hazard_states:
                del self.hazard_states[key]
        else:
            self._hazard_cache[key] = state
            self._hazards_changed.add(key)

    async def _write_hazards(self) -> None:
        for key in self._hazards_changed:
            self.hazard_states[key] = incidents.encode_hazard_state(self._hazard_cache[key])
        self._hazards_changed.clear()

    async def _apply_hazard(self, partition: int, routed: RoutedDetection) -> None:
        detection = routed.detection
        key = detection.kind.value.encode()
        state = self._load_hazards(key)
        zone = self.zones.get(routed.zone_id)
        task_type = TaskType(detection.kind.value)
        route = self.routing.route(task_type, zone.scene)
        new_state, decision = incidents.apply_hazard(
            state, detection, zone, route, self.incident_policy
        )
        source_type, kind = detection.source.type.value, detection.kind.value
        metrics.detections(source_type, kind, decision.outcome).inc()
        if decision.outcome != "accepted":
            return
        self._store_hazards(key, new_state)
        if decision.merged:
            metrics.incident_detections_merged(kind).inc()
        if decision.task is not None:
            await self._emit_task(decision.task, routed.ingested_ms)

    async def _advance_hazard_clock(self, partition: int, clock: datetime) -> None:
        current = self._hazard_clocks.get(partition)
        if current is not None and clock <= current:
            return
        self._hazard_clocks[partition] = clock
        partitions = self.settings.partitions
        for kind in HAZARD_KINDS:
            key = kind.value.encode()
            if partition_of(key, partitions) != partition:
                continue
            state = self._load_hazards(key)
            if state is None:
                continue
            new_state, _closed = incidents.advance_clock(state, clock, self.incident_policy)
            if new_state is not state:
                self._store_hazards(key, new_state)

    # --- output --------------------------------------------------------------------------

    async def _send(
        self, topic: faust.TopicT, key: bytes | None, value: bytes, partition: int | None = None
    ) -> None:
        """Hand a record to the producer without faust's per-message channel machinery.

        The consumer flushes the producer before it commits offsets, so this keeps
        at-least-once delivery; the await only waits when the producer's buffer is full.
        """
        pending = await self.app.producer.send(
            topic.get_topic_name(), key, value, partition, None, None
        )
        cast("asyncio.Future[Any]", pending).add_done_callback(self._log_send_failure)

    @staticmethod
    def _log_send_failure(sent: asyncio.Future[Any]) -> None:
        if not sent.cancelled() and sent.exception() is not None:
            log.error("could not produce a record: %r", sent.exception())

    async def _emit_task(self, task: EnforcementTask, ingested_ms: int) -> None:
        await self._send(self.dispatch, task.task_id.encode(), task.model_dump_json().encode())
        metrics.tasks(task.task_type.value, task.department, task.priority.value).inc()
        metrics.dispatch_latency_seconds.observe(max(0.0, time.time() - ingested_ms / 1000))
        log.info(
            "task %s %s to %s (%s) in %s",
            task.task_id,
            task.task_type.value,
            task.department,
            task.priority.value,
            task.zone_id,
        )

    # --- health, readiness, gauges ---------------------------------------------------------

    def is_ready(self) -> bool:
        app = self.app
        if not self.intake.started.is_set():
            return False
        if app.rebalancing or not app.consumer.assignment():
            return False
        tables: Any = app.tables
        return bool(tables.recovery.completed.is_set())

    async def _refresh_gauges(self) -> None:
        metrics.worker_ready.set(1 if self.is_ready() else 0)
        intake = self.intake
        if intake.clock is not None:
            metrics.event_time_lag_seconds.set(time.time() - intake.clock)
        for source_type, count in intake.sources.items():
            metrics.sources_active.labels(source_type).set(count)
        for topic, lag in intake.lags.items():
            metrics.consumer_lag_messages.labels(topic).set(lag)

    async def _on_partitions_revoked(self, sender: Any, *args: Any, **kwargs: Any) -> None:
        # Indexes are rebuilt from the table on the next message after the new assignment.
        self._expiries.clear()
        self._cases_indexed = False
        self._case_clocks.clear()
        self._hazard_clocks.clear()
        self._hazard_cache.clear()
        self._hazards_changed.clear()
        self._publish_open_cases()

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
