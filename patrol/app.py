"""The faust wiring: decode → call a rule → emit what it returned.

Three agents:

* intake (camera + drone topics, keyed by source id): validates, dead-letters what it cannot
  use, locates the detection in its zone, screens it, and re-keys accepted plate reads by case
  (zone, plate) and hazards by kind onto internal topics. It also broadcasts its event-time
  clock to every partition of those topics.
* grace (internal cases topic): owns the parking grace cases in a changelogged table.
* hazards (internal hazards topic): owns the hazard incidents, one table key per kind — hazard
  detections are few, and one key per kind makes grouping exact across any partition boundary.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import faust
from aiokafka.partitioner import murmur2
from aiokafka.structs import TopicPartition as TP
from faust.web import Request, Response, View
from mode import Service
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from patrol import envelopes, metrics
from patrol.envelopes import ClockTick, RoutedDetection
from patrol.intake import Rejection, dead_letter, decode_detection
from patrol.models import (
    DeadLetterReason,
    DetectionKind,
    EnforcementTask,
    SmsRecord,
    SourceType,
    TaskType,
)
from patrol.rules import grace, incidents
from patrol.rules.routing import RoutingTable, load_routing
from patrol.settings import Settings
from patrol.sms import SmsNotifier
from patrol.zones import ZoneMap, load_zones

log = logging.getLogger("patrol.worker")

HAZARD_KINDS = (DetectionKind.roadside_vending, DetectionKind.open_burning)
SOURCE_ACTIVE_SECONDS = 300.0
MAX_REQUEST_BYTES = 8 * 1024 * 1024


def partition_of(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives `key` (as the producer does)."""
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


def _utc_now() -> datetime:
    return datetime.now(UTC)


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
        self.app = faust.App(
            settings.app_id,
            broker=[f"kafka://{host}" for host in settings.kafka_bootstrap.split(",")],
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
            producer_linger_ms=5,
            # Larger fetches and buffers: fewer round trips per event when there is a backlog.
            broker_max_poll_records=2000,
            stream_buffer_maxsize=16384,
            stream_wait_empty=False,
            broker_commit_interval=1.0,
            # A killed worker's partitions move after this long; faust's 60 s default made a
            # replacement wait a minute before it could recover and serve.
            broker_session_timeout=10.0,
            broker_heartbeat_interval=1.0,
            table_standby_replicas=0,
            web_in_thread=False,
            # Tables hold bytes the rules encode themselves (compact, and fast to restore).
            key_serializer="raw",
            value_serializer="raw",
        )
        raw: dict[str, Any] = {"key_serializer": "raw", "value_serializer": "raw"}
        self.inputs = self.app.topic(settings.topic_camera, settings.topic_drone, **raw)
        self.dispatch = self.app.topic(settings.topic_dispatch, partitions=partitions, **raw)
        self.sms_topic = self.app.topic(settings.topic_sms, partitions=partitions, **raw)
        self.deadletters = self.app.topic(settings.topic_deadletter, partitions=partitions, **raw)
        self.cases_topic_name = f"{settings.app_id}-grace-cases"
        self.cases_topic = self.app.topic(
            self.cases_topic_name, partitions=partitions, internal=True, **raw
        )
        self.hazards_topic = self.app.topic(
            f"{settings.app_id}-hazard-detections", partitions=partitions, internal=True, **raw
        )
        self.cases = self.app.Table(
            "grace-cases",
            partitions=partitions,
            key_type=bytes,
            value_type=bytes,
        )
        self.hazard_states = self.app.Table(
            "hazard-incidents",
            partitions=partitions,
            key_type=bytes,
            value_type=bytes,
        )
        self.notifier = SmsNotifier(settings, self._record_sms_outcome)

        self._intake_clock: datetime | None = None
        self._broadcast_clock: datetime | None = None
        self._case_clocks: dict[int, datetime] = {}
        self._hazard_clocks: dict[int, datetime] = {}
        self._expiries: dict[int, _Expiries] = {}
        self._cases_indexed = False
        self._last_offsets: dict[Any, int] = {}
        self._sources_seen: dict[tuple[str, str], float] = {}
        self._hazard_cache: dict[bytes, incidents.HazardState] = {}

        # concurrency stays 1: with more, faust can commit offsets past events still in flight,
        # and a case's reads must be applied in partition order anyway.
        self.app.agent(self.inputs, name="patrol.intake")(self._intake_agent)
        self.app.agent(self.cases_topic, name="patrol.grace")(self._grace_agent)
        self.app.agent(self.hazards_topic, name="patrol.hazards")(self._hazard_agent)
        self.app.timer(1.0, name="patrol.gauges")(self._refresh_gauges)
        self._add_pages()
        self.app.on_partitions_revoked.connect(self._on_partitions_revoked)  # type: ignore[arg-type]

        notifier = self.notifier

        class SmsNotifierService(Service):
            """Starts the SMS notifier with the app and drains it when the app stops."""

            async def on_start(self) -> None:
                await notifier.start()

            async def on_stop(self) -> None:
                await notifier.stop()

        self.app.service(SmsNotifierService)

    # --- intake -------------------------------------------------------------------------

    async def _intake_agent(self, stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            message = event.message
            self._last_offsets[message.tp] = message.offset
            try:
                await self._take(message, event.key, event.value)
            except Exception as exc:
                log.exception(
                    "could not process %s[%d]@%d", message.topic, message.partition, message.offset
                )
                await self._dead_letter(
                    Rejection(DeadLetterReason.processing_error, f"{type(exc).__name__}: {exc}"),
                    message,
                    event.key,
                    event.value,
                )

    async def _take(self, message: Any, key: bytes | None, value: bytes | None) -> None:
        decoded = decode_detection(value, max_bytes=self.settings.max_message_bytes)
        if isinstance(decoded, Rejection):
            await self._dead_letter(decoded, message, key, value)
            return
        detection = decoded
        source_type = detection.source.type.value
        kind = detection.kind
        self._sources_seen[(source_type, detection.source.id)] = time.monotonic()
        await self._advance_intake_clock(detection.observed_at)
        if kind is DetectionKind.heartbeat:
            metrics.detections_total.labels(source_type, kind.value, "accepted").inc()
            return
        assert detection.location is not None  # the model requires it for these kinds
        zone = self.zones.locate(detection.location.lat, detection.location.lon)
        if kind is DetectionKind.plate_read:
            outcome = grace.screen_plate_read(
                detection,
                zone,
                min_confidence=self.settings.plate_min_confidence,
                exempt=self.settings.exempt_plate_set,
            )
            target, routing_key = (
                self.cases_topic,
                grace.case_key(detection.plate or "", zone.zone_id),
            )
        else:
            outcome = incidents.screen_hazard(detection, self.incident_policy)
            target, routing_key = self.hazards_topic, kind.value
        if outcome != "accepted":
            metrics.detections_total.labels(source_type, kind.value, outcome).inc()
            return
        routed = RoutedDetection(
            detection=detection, zone_id=zone.zone_id, ingested_ms=int(message.timestamp * 1000)
        )
        await self._send(target, routing_key.encode(), envelopes.encode(routed))

    async def _advance_intake_clock(self, observed_at: datetime) -> None:
        if self._intake_clock is not None and observed_at <= self._intake_clock:
            return
        self._intake_clock = observed_at
        step = self.settings.clock_tick_seconds
        last = self._broadcast_clock
        if last is not None and (observed_at - last).total_seconds() < step:
            return
        self._broadcast_clock = observed_at
        tick = envelopes.tick(observed_at)
        for partition in range(self.settings.partitions):
            await self._send(self.cases_topic, envelopes.CLOCK_KEY, tick, partition)
            await self._send(self.hazards_topic, envelopes.CLOCK_KEY, tick, partition)

    async def _dead_letter(
        self, rejection: Rejection, message: Any, key: bytes | None, value: bytes | None
    ) -> None:
        record = dead_letter(
            rejection,
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            key=key,
            value=value,
            received_at=_utc_now(),
        )
        source_type = (
            SourceType.drone.value
            if message.topic == self.settings.topic_drone
            else SourceType.camera.value
        )
        metrics.detections_total.labels(source_type, "unknown", "invalid").inc()
        metrics.deadletters_total.labels(rejection.reason.value).inc()
        # The detail can quote a (mis)read plate, so the log names only the fields at fault.
        fields = ",".join(sorted({e["field"] for e in rejection.errors})) or "-"
        log.warning(
            "dead-lettered %s[%d]@%d: %s (fields: %s)",
            message.topic,
            message.partition,
            message.offset,
            rejection.reason.value,
            fields,
        )
        await self._send(self.deadletters, key, record.model_dump_json().encode())

    # --- grace cases ----------------------------------------------------------------------

    async def _grace_agent(self, stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            partition = event.message.partition
            self._index_cases()
            try:
                message = envelopes.decode(event.value)
                if isinstance(message, RoutedDetection):
                    await self._apply_plate_read(partition, event.key, message)
                    await self._advance_case_clock(partition, message.detection.observed_at)
                elif isinstance(message, ClockTick):
                    await self._advance_case_clock(partition, message.clock)
            except Exception:
                log.exception("grace agent could not apply a message on partition %d", partition)

    def _load_case(self, key: bytes) -> grace.CaseState | None:
        raw = self.cases.get(key)
        return None if raw is None else grace.decode_case_state(raw)

    def _store_case(self, partition: int, key: bytes, state: grace.CaseState | None) -> None:
        if state is None:
            if key in self.cases:
                del self.cases[key]
        else:
            self.cases[key] = grace.encode_case_state(state)
        self._expiries_of(partition).schedule(key, self._next_due(state))

    def _next_due(self, state: grace.CaseState | None) -> float | None:
        """Event time (epoch s) after which the key needs a clock step."""
        if state is None:
            return None
        if state.open_case is not None:
            return (state.open_case.deadline + self.grace_policy.recheck).timestamp()
        if state.horizon is not None:
            return (state.horizon + self.grace_policy.retention).timestamp()
        return None

    def _expiries_of(self, partition: int) -> _Expiries:
        return self._expiries.setdefault(partition, _Expiries())

    def _index_cases(self) -> None:
        """After an assignment, learn when each recovered case key next needs the clock."""
        if self._cases_indexed:
            return
        self._cases_indexed = True
        partitions = self.settings.partitions
        for key, raw in list(self.cases.items()):
            state = grace.decode_case_state(raw)
            expiries = self._expiries_of(partition_of(key, partitions))
            expiries.schedule(key, self._next_due(state))
            if state.open_case is not None:
                expiries.open_cases += 1
        self._publish_open_cases()

    def _publish_open_cases(self) -> None:
        metrics.grace_cases_open.set(sum(e.open_cases for e in self._expiries.values()))

    async def _apply_plate_read(self, partition: int, key: bytes, routed: RoutedDetection) -> None:
        detection = routed.detection
        source_type, kind = detection.source.type.value, detection.kind.value
        clock = self._case_clocks.get(partition)
        if grace.beyond_retention(detection.observed_at, clock, self.grace_policy):
            metrics.detections_total.labels(source_type, kind, "late").inc()
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
        metrics.detections_total.labels(source_type, kind, decision.outcome or "accepted").inc()
        if decision.opened or decision.closed or decision.task:
            self._store_case(partition, key, state)
        self._count_case_changes(partition, decision)
        if decision.sms is not None:
            self.notifier.submit(decision.sms)
        if decision.task is not None:
            await self._emit_task(decision.task, routed.ingested_ms)

    def _count_case_changes(self, partition: int, decision: grace.GraceDecision) -> None:
        expiries = self._expiries_of(partition)
        for closed in decision.closed:
            metrics.grace_cases_closed_total.labels(closed.result).inc()
            expiries.open_cases -= 1
        if decision.late_confirmation:
            # already counted as self-corrected when the clock closed it; now also a violation
            metrics.grace_cases_closed_total.labels("violation").inc()
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
        for key in expiries.pop_due(clock.timestamp()):
            before = self._load_case(key)
            state, decision = grace.advance_clock(before, clock, self.grace_policy)
            if state is before:  # a stale index entry: nothing was due yet
                expiries.schedule(key, self._next_due(state))
                continue
            self._store_case(partition, key, state)
            self._count_case_changes(partition, decision)

    async def _record_sms_outcome(self, record: SmsRecord) -> None:
        """The notifier's final word on an SMS: audit it, and tell the case so its task says."""
        await self._send(
            self.sms_topic, record.message_id.encode(), record.model_dump_json().encode()
        )
        key = grace.case_key(record.plate, record.zone_id).encode()
        partition = partition_of(key, self.settings.partitions)
        if TP(self.cases_topic_name, partition) not in self.app.consumer.assignment():
            return  # the case moved to another worker meanwhile; its task will say "pending"
        state = self._load_case(key)
        updated = grace.record_sms_outcome(state, record.message_id, record.status.value)
        if updated is not state and updated is not None:
            # Outside the stream there is no current event to take the partition from, so the
            # write names the case's own changelog partition.
            encoded = grace.encode_case_state(updated)
            self.cases.data[key] = encoded
            self.cases.send_changelog(partition, key, encoded)

    # --- hazards -------------------------------------------------------------------------

    async def _hazard_agent(self, stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            partition = event.message.partition
            try:
                message = envelopes.decode(event.value)
                if isinstance(message, RoutedDetection):
                    await self._apply_hazard(event.key, message)
                    await self._advance_hazard_clock(partition, message.detection.observed_at)
                elif isinstance(message, ClockTick):
                    await self._advance_hazard_clock(partition, message.clock)
            except Exception:
                log.exception("hazard agent could not apply a message on partition %d", partition)

    def _load_hazards(self, key: bytes) -> incidents.HazardState | None:
        """The decoded state of one hazard kind; decoded once, then kept beside the table."""
        state = self._hazard_cache.get(key)
        if state is None:
            raw = self.hazard_states.get(key)
            if raw is not None:
                state = self._hazard_cache[key] = incidents.decode_hazard_state(raw)
        return state

    def _store_hazards(self, key: bytes, state: incidents.HazardState | None) -> None:
        metrics.incidents_open.labels(key.decode()).set(incidents.open_incident_count(state))
        if state is None:
            self._hazard_cache.pop(key, None)
            if key in self.hazard_states:
                del self.hazard_states[key]
        else:
            self._hazard_cache[key] = state
            self.hazard_states[key] = incidents.encode_hazard_state(state)

    async def _apply_hazard(self, key: bytes, routed: RoutedDetection) -> None:
        detection = routed.detection
        state = self._load_hazards(key)
        zone = self.zones.get(routed.zone_id)
        task_type = TaskType(detection.kind.value)
        route = self.routing.route(task_type, zone.scene)
        new_state, decision = incidents.apply_hazard(
            state, detection, zone, route, self.incident_policy
        )
        source_type, kind = detection.source.type.value, detection.kind.value
        metrics.detections_total.labels(source_type, kind, decision.outcome).inc()
        if decision.outcome != "accepted":
            return
        self._store_hazards(key, new_state)
        if decision.merged:
            metrics.incident_detections_merged_total.labels(kind).inc()
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
        metrics.tasks_total.labels(task.task_type.value, task.department, task.priority.value).inc()
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
        if app.rebalancing or not app.consumer.assignment():
            return False
        tables: Any = app.tables
        return bool(tables.recovery.completed.is_set())

    async def _refresh_gauges(self) -> None:
        metrics.worker_ready.set(1 if self.is_ready() else 0)
        if self._intake_clock is not None:
            lag = time.time() - self._intake_clock.timestamp()
            metrics.event_time_lag_seconds.set(lag)
        now = time.monotonic()
        counts = dict.fromkeys((t.value for t in SourceType), 0)
        for (source_type, source_id), seen in list(self._sources_seen.items()):
            if now - seen > SOURCE_ACTIVE_SECONDS:
                del self._sources_seen[(source_type, source_id)]
            else:
                counts[source_type] += 1
        for source_type, count in counts.items():
            metrics.sources_active.labels(source_type).set(count)
        consumer = self.app.consumer
        lags = dict.fromkeys(self.settings.input_topics, 0)
        for tp in consumer.assignment():
            if tp.topic not in lags:
                continue
            highwater = consumer.highwater(tp)
            if highwater is None:
                continue
            last = self._last_offsets.get(tp)
            if last is None:
                position = await consumer.position(tp)
                done = position if position is not None else highwater
            else:
                done = last + 1
            lags[tp.topic] += max(0, highwater - done)
        for topic, lag in lags.items():
            metrics.consumer_lag_messages.labels(topic).set(lag)

    async def _on_partitions_revoked(self, sender: Any, *args: Any, **kwargs: Any) -> None:
        # Indexes are rebuilt from the table on the next message after the new assignment.
        self._expiries.clear()
        self._cases_indexed = False
        self._case_clocks.clear()
        self._hazard_clocks.clear()
        self._hazard_cache.clear()
        self._publish_open_cases()

    def _add_pages(self) -> None:
        @self.app.page("/metrics")
        async def metrics_page(view: View, request: Request) -> Response:
            return view.bytes(generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

        @self.app.page("/healthz")
        async def healthz_page(view: View, request: Request) -> Response:
            # Answering at all proves the event loop runs.
            return view.json({"status": "ok"})

        @self.app.page("/readyz")
        async def readyz_page(view: View, request: Request) -> Response:
            if self.is_ready():
                return view.json({"status": "ready"})
            return view.json({"status": "not ready"}, status=503)
