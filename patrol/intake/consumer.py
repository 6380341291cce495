"""The intake: input topics → dead letters, or located detections re-keyed onto internal topics.

It is stateless, so it runs on a plain aiokafka consumer in the app's consumer group
(`PATROL_APP_ID`) and works a fetched batch at a time: decode every record, release them in
event-time order across the input partitions (`patrol.intake.ordering`), screen them, produce
one batch record per internal partition (see `patrol.kafka.envelopes`), wait until the broker
has acknowledged all of them, and only then commit the input offsets. The dispatch system's
feedback comes in the same rounds and under the same offset discipline, and goes to the loop
topic by task id (`patrol.intake.feedback`). A crash in between replays the
batch, which the stateful agents ignore (their state remembers what they decided). Faust's
per-event stream machinery costs far more than this work itself; the stateful hop keeps faust
(agents and changelogged tables) and now sees one event per batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any, TypeAlias

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import TopicPartition

from patrol import metrics
from patrol.domain import grace, incidents
from patrol.domain.decode import (
    Rejection,
    check_clock,
    dead_letter,
    decode_detection,
    future_limit,
    processing_error,
)
from patrol.domain.models import Detection, DetectionKind, SourceType
from patrol.domain.zones import ZoneMap
from patrol.intake.feedback import FeedbackScreen
from patrol.intake.ordering import EventTimeMerger, OrderKey
from patrol.kafka import envelopes, loop_records
from patrol.kafka.consumer import group_consumer
from patrol.kafka.loop_records import LoopRecord
from patrol.kafka.offsets import OffsetTracker
from patrol.kafka.partitioning import partition_of
from patrol.kafka.security import client_options
from patrol.kafka.topics import MAX_REQUEST_BYTES, InternalTopics
from patrol.settings import Settings

log = logging.getLogger("patrol.intake")

FETCH_MAX_RECORDS = 2000
FETCH_MAX_BYTES = 4 * 1024 * 1024
FETCH_TIMEOUT_MS = 200
RETRY_SECONDS = 1.0
STOP_COMMIT_SECONDS = 10.0
COMMIT_INTERVAL_SECONDS = 0.5
ROUND_MIN_BYTES = 128 * 1024
# How long the broker may hold a round at low load. At 1,000 detections/s, 20 ms instead of 10
# halved the batch records the agents take in: the broker, the worker and the intake together
# used a quarter of a core less, and p99 fell (latency bench: 56, 134, 83 ms against 103-144),
# for about 10 ms more at the median. 30 ms saved no more CPU and cost another 12 ms.
ROUND_LINGER_MS = 20
# Larger originals are re-serialised from the model (without unknown fields) before they are
# embedded in a batch record, so a batch stays within the internal topics' message size.
EMBED_RAW_MAX_BYTES = 64 * 1024
# A partition holding this many records the merger has not released yet is paused until it
# drains, so a catch-up holds a bounded number of decoded detections in memory while the
# others' records are fetched (Kafka Streams' buffered.records.per.partition, by default 1000).
MERGE_PARTITION_CAP = 1000


Record: TypeAlias = "ConsumerRecord[bytes, bytes]"
Decoded: TypeAlias = "Detection | Rejection"
# What the merger holds of a record: the record and, if it is unusable, why. A detection the
# merger holds past its round is decoded again when it is released: a decoded one is several
# times the size of its record, and a catch-up holds thousands (in the state bench the intake
# grew by 65 MiB holding them). One released in the round that fetched it (all of them, live)
# keeps the detection its round decoded.
_Taken: TypeAlias = "tuple[TopicPartition, Record, Rejection | None]"
# A record that is no usable detection has no event time: it goes as soon as it is a head.
_NO_EVENT_TIME: OrderKey = (datetime.min.replace(tzinfo=UTC), "", "")


class _Round:
    """What one fetched batch produces, gathered before anything is sent.

    `now` is the wall clock when the round was fetched, read once for all its records: the time
    detections are checked against (clock_skew) and dead letters are stamped with.
    """

    def __init__(self, now: datetime) -> None:
        self.now = now
        self.routed: dict[tuple[str, int], list[bytes]] = defaultdict(list)
        self.decoded: dict[tuple[str, int, int], Detection] = {}
        """The detections this round decoded, by (topic, partition, offset), for the release."""
        self.feedback: dict[int, list[bytes]] = defaultdict(list)
        """Per loop partition, the feedback items (`loop_records.feedback_record`) to send."""
        self.deadletters: list[tuple[bytes | None, bytes]] = []
        self.released_up_to: dict[TopicPartition, int] = {}
        """Per input partition, the last offset this round released (a prefix of what was
        fetched: the merger releases each partition in offset order)."""


class IntakeConsumer:
    """Consumes the input topics in batches and feeds the stateful agents' partitions."""

    def __init__(
        self,
        settings: Settings,
        zones: ZoneMap,
        incident_policy: incidents.IncidentPolicy,
        *,
        consumer: AIOKafkaConsumer | None = None,
        producer: AIOKafkaProducer | None = None,
    ) -> None:
        """`consumer` and `producer` are built from the settings unless given (tests give
        fakes)."""
        self.settings = settings
        self.zones = zones
        self.incident_policy = incident_policy
        self.topics = InternalTopics.of(settings.app_id)
        self.max_future = future_limit(settings.max_future_minutes)
        self.feedback = FeedbackScreen(
            max_message_bytes=settings.max_message_bytes,
            max_ahead=self.max_future,
            partitions=settings.partitions,
        )
        self._feedback_headers = loop_records.headers(LoopRecord.feedback_batch)
        self.clock: datetime | None = None
        self._sent_clock: dict[tuple[str, int], datetime] = {}
        self.sources_seen: dict[tuple[str, str], float] = {}
        self.last_offsets: dict[TopicPartition, int] = {}
        self._lock = asyncio.Lock()
        self._consumer: AIOKafkaConsumer | None = consumer
        self._producer: AIOKafkaProducer | None = producer
        self._runner: asyncio.Task[None] | None = None
        self._committing: asyncio.Task[None] | None = None
        # Each fetched round of a partition is one span, done once the broker acknowledged
        # everything the round produced.
        self._offsets: OffsetTracker[TopicPartition] = OffsetTracker()
        # The fetched spans of each partition (first, last offset) not wholly released yet.
        self._spans: dict[TopicPartition, deque[tuple[int, int]]] = defaultdict(deque)
        self._merger: EventTimeMerger[TopicPartition, _Taken] = EventTimeMerger(
            settings.max_partition_wait_ms / 1000
        )
        self._paused: set[TopicPartition] = set()
        self._committed_at = 0.0
        self.started = asyncio.Event()

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        settings = self.settings
        if self._producer is None:
            self._producer = AIOKafkaProducer(
                bootstrap_servers=settings.kafka_bootstrap,
                acks="all",
                # A round's records are all sent before it waits for them, so lingering only
                # adds latency.
                linger_ms=0,
                max_batch_size=1024 * 1024,
                max_request_size=MAX_REQUEST_BYTES,
                **client_options(settings),
            )
        if self._consumer is None:
            self._consumer = group_consumer(
                settings,
                settings.app_id,
                # Bounds what is fetched ahead (and held) to a few rounds, not a whole backlog.
                fetch_max_bytes=FETCH_MAX_BYTES,
                fetch_min_bytes=ROUND_MIN_BYTES,
                fetch_max_wait_ms=ROUND_LINGER_MS,
            )
        await self._producer.start()
        await self._consumer.start()
        topics = [*settings.input_topics, settings.topic_feedback]
        self._consumer.subscribe(topics, listener=_Revoked(self))
        self._runner = asyncio.create_task(self._run(), name="patrol.intake")
        self.started.set()

    async def stop(self) -> None:
        if self._runner is not None:
            async with self._lock:  # the round in flight finishes and commits first
                self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._runner
            await self._commit_acknowledged()
            await self._settle_commit(STOP_COMMIT_SECONDS)
        if self._consumer is not None:
            await self._consumer.stop()
        if self._producer is not None:
            await self._producer.stop()

    # --- the loop ---------------------------------------------------------------------------

    async def _run(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        while True:
            try:
                fetched = await self._fetch_round(consumer)
            except KafkaError as exc:
                log.warning("intake fetch failed (%s); retrying", exc)
                await asyncio.sleep(RETRY_SECONDS)
                continue
            if not fetched and not self._merger.buffered:
                if self._offsets.committable():
                    async with self._lock:
                        await self._commit_acknowledged()
                continue
            async with self._lock:
                try:
                    await self._work(fetched)
                except Exception:
                    # Whatever broke, nothing of this round was committed: log it, fetch the
                    # round again and retry, rather than let the intake die unnoticed.
                    log.exception("intake round failed; retrying it")
                    self._rewind(fetched)
                    await asyncio.sleep(RETRY_SECONDS)

    async def _fetch_round(self, consumer: AIOKafkaConsumer) -> dict[TopicPartition, list[Record]]:
        """The next round: whatever the last fetch brought.

        The broker holds each fetch until ROUND_MIN_BYTES have arrived or ROUND_LINGER_MS
        passed (the consumer's fetch_min_bytes and fetch_max_wait_ms). At low load a fetch
        answered at once brings a record or two, and rounds of a record or two send more batch
        records than detections; an intake in its own process also re-fetched so fast that the
        broker spent a core answering it. Waiting at the broker keeps rounds large for at most
        that much latency, and costs nothing while it waits.
        """
        fetched: dict[TopicPartition, list[Record]] = await consumer.getmany(
            timeout_ms=FETCH_TIMEOUT_MS, max_records=FETCH_MAX_RECORDS
        )
        return fetched

    async def _work(self, fetched: dict[TopicPartition, list[Record]]) -> None:
        work = _Round(datetime.now(UTC))
        merger = self._merger
        for tp, records in fetched.items():
            first, last = records[0].offset, records[-1].offset
            self._offsets.track(tp, first, last)
            self._spans[tp].append((first, last))
            if tp.topic == self.settings.topic_feedback:
                for record in records:
                    self._take_feedback(work, record)
                work.released_up_to[tp] = last
            else:
                merger.add(tp, (self._classify(tp, record, work) for record in records))
        released = merger.release(time.monotonic(), await self._lagging())
        if merger.buffered:  # something was held back for a lagging partition's fetch
            metrics.intake_merge_holds_total.inc()
        self._limit_buffers()
        if not released and not work.released_up_to:
            return  # held for a lagging partition's records: the next round takes them
        for tp, record, rejection in released:
            self._take(work, record, rejection)
            work.released_up_to[tp] = record.offset
        try:
            await self._send(work)
        except KafkaError as exc:
            # Nothing of this round is committed: fetch it again and send it again (what did
            # reach the broker is then there twice, which the stateful agents ignore).
            log.error("could not produce the intake's records (%s); retrying the batch", exc)
            self._rewind(fetched)
            await asyncio.sleep(RETRY_SECONDS)
            return
        for tp, up_to in work.released_up_to.items():
            spans = self._spans[tp]
            while spans and spans[0][1] <= up_to:
                self._offsets.done(tp, spans.popleft()[0])
        self.last_offsets.update(work.released_up_to)
        if time.monotonic() - self._committed_at >= COMMIT_INTERVAL_SECONDS:
            await self._commit_acknowledged()

    async def _commit_acknowledged(self) -> None:
        """Commit what the broker has acknowledged so far, at most one commit in flight.

        The commit overlaps the next rounds' fetch and work, and offsets only ever move forward
        because each commit waits for the one before. Commits are spaced (a round at low load
        is a few records, and a commit per round cost the broker and the worker more than the
        rounds); a crash replays at most that much input, which the rules ignore.
        """
        if not self._offsets.committable():
            return
        await self._settle_commit()
        offsets = self._offsets.committable()  # less what the commit just settled took
        if not offsets:
            return
        self._committed_at = time.monotonic()
        self._committing = asyncio.create_task(self._commit(offsets))

    def _rewind(self, fetched: dict[TopicPartition, list[Record]]) -> None:
        """Fetch again from the first record not done, in every partition (still ours) that
        has one: what the merger held is fetched again with it."""
        consumer = self._consumer
        assert consumer is not None
        assigned = consumer.assignment()
        for tp in self._offsets.partitions():
            position = self._offsets.rewind(tp)
            self._spans.pop(tp, None)
            if position is not None and tp in assigned:
                consumer.seek(tp, position)
        self._merger.clear(self._offsets.partitions())
        self._limit_buffers()  # nothing is held now: every paused partition resumes

    def _limit_buffers(self) -> None:
        """Pause partitions that hold MERGE_PARTITION_CAP unreleased records; resume them once
        they fall below it (what the others fetch meanwhile is what releases them)."""
        consumer = self._consumer
        assert consumer is not None
        for tp in consumer.assignment():
            full = self._merger.buffered_of(tp) >= MERGE_PARTITION_CAP
            if full and tp not in self._paused:
                consumer.pause(tp)
                self._paused.add(tp)
            elif not full and tp in self._paused:
                consumer.resume(tp)
                self._paused.discard(tp)

    async def _lagging(self) -> Callable[[TopicPartition], bool]:
        """Which owned partitions have records on the broker not yet taken (or cannot tell:
        nothing fetched from them yet). Asked of every one: a partition the merger holds
        records of may run dry while it releases them."""
        consumer = self._consumer
        assert consumer is not None
        behind: set[TopicPartition] = set()
        assignment = self._merged(consumer.assignment())
        self._merger.assign(assignment)  # one not fetched from yet is waited on too
        for tp in assignment:
            highwater = consumer.highwater(tp)
            if highwater is None or highwater > await consumer.position(tp):
                behind.add(tp)
        return behind.__contains__

    async def _settle_commit(self, timeout: float | None = None) -> None:
        if self._committing is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._committing), timeout)
            except TimeoutError:
                log.warning("intake commit still pending after %.0f s; leaving it", timeout)
                self._committing.cancel()
            self._committing = None

    def _classify(
        self, tp: TopicPartition, record: Record, work: _Round
    ) -> tuple[OrderKey, _Taken]:
        """The record's place in event-time order, and why it cannot be used, if it cannot."""
        decoded = self._decode(record, work.now)
        if isinstance(decoded, Rejection):
            return _NO_EVENT_TIME, (tp, record, decoded)
        work.decoded[(record.topic, record.partition, record.offset)] = decoded
        return (decoded.observed_at, decoded.source.id, decoded.event_id), (tp, record, None)

    def _decode(self, record: Record, now: datetime) -> Decoded:
        try:
            decoded = decode_detection(record.value, max_bytes=self.settings.max_message_bytes)
        except Exception as exc:  # a record that breaks the decoder must not stall the intake
            _log_failed(record)
            return processing_error(exc)
        if isinstance(decoded, Rejection):
            return decoded
        skewed = check_clock(decoded, now, self.max_future)
        if skewed is not None:
            # A device with a wrong clock must not move the event-time clock (it would close
            # every open case as self-corrected) nor count as heard from.
            metrics.clock_skew_detections_total.labels(decoded.source.type.value).inc()
            return skewed
        return decoded

    def _merged(self, partitions: Iterable[TopicPartition]) -> set[TopicPartition]:
        """The detection partitions among `partitions`: those the merger orders and waits on."""
        feedback = self.settings.topic_feedback
        return {tp for tp in partitions if tp.topic != feedback}

    def _take_feedback(self, work: _Round, record: Record) -> None:
        taken = self.feedback.take(record, work.now)
        if isinstance(taken, tuple):
            partition, item = taken
            work.feedback[partition].append(item)
        else:
            work.deadletters.append((record.key, taken.model_dump_json().encode()))

    def _take(self, work: _Round, record: Record, rejection: Rejection | None = None) -> None:
        """Route one record released by the merger (`_classify` found `rejection`, if any); a
        usable one fetched in an earlier round is decoded again (the merger holds the record)."""
        try:
            decoded = (
                rejection
                or work.decoded.get((record.topic, record.partition, record.offset))
                or self._decode(record, work.now)
            )
            self._route(work, record, decoded)
        except Exception as exc:
            _log_failed(record)
            self._dead_letter(work, processing_error(exc), record)

    def _route(self, work: _Round, record: Record, decoded: Decoded) -> None:
        if isinstance(decoded, Rejection):
            self._dead_letter(work, decoded, record)
            return
        raw = record.value
        assert raw is not None
        detection = decoded
        source_type = detection.source.type.value
        kind = detection.kind
        self.sources_seen[(source_type, detection.source.id)] = time.monotonic()
        if self.clock is None or detection.observed_at > self.clock:
            self.clock = detection.observed_at
        if kind is DetectionKind.heartbeat:
            metrics.detections(source_type, kind.value, "accepted").inc()
            return
        assert detection.location is not None  # the model requires it for these kinds
        zone = self.zones.locate(detection.location.lat, detection.location.lon)
        if kind is DetectionKind.plate_read:
            outcome = grace.screen_plate_read(
                detection,
                zone,
                min_confidence=self.settings.plate_min_confidence,
                exempt=self.settings.exempt_plate_set,
                tz=self.settings.tz,
            )
            topic, key = self.topics.cases, grace.case_key(detection.plate or "", zone.zone_id)
        else:
            outcome = incidents.screen_hazard(detection, self.incident_policy)
            topic, key = self.topics.hazards, kind.value
        if outcome != "accepted":
            metrics.detections(source_type, kind.value, outcome).inc()
            return
        partition = partition_of(key.encode(), self.settings.partitions)
        work.routed[(topic, partition)].append(
            envelopes.routed_item(_embeddable(raw, detection), zone.zone_id, record.timestamp)
        )

    def _dead_letter(self, work: _Round, rejection: Rejection, record: Record) -> None:
        letter = dead_letter(
            rejection,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key,
            value=record.value,
            received_at=work.now,
        )
        source_type = (
            SourceType.drone.value
            if record.topic == self.settings.topic_drone
            else SourceType.camera.value
        )
        metrics.detections_total.labels(source_type, "unknown", "invalid").inc()
        metrics.deadletters_total.labels(rejection.reason.value).inc()
        # The detail can quote a (mis)read plate, so the log names only the fields at fault.
        fields = ",".join(sorted({e["field"] for e in rejection.errors})) or "-"
        log.warning(
            "dead-lettered %s[%d]@%d: %s (fields: %s)",
            record.topic,
            record.partition,
            record.offset,
            rejection.reason.value,
            fields,
        )
        work.deadletters.append((record.key, letter.model_dump_json().encode()))

    async def _send(self, work: _Round) -> None:
        """Produce the round's records and wait until the broker has them all."""
        producer = self._producer
        assert producer is not None
        pending: list[Awaitable[Any]] = []
        for key, value in work.deadletters:
            pending.append(await producer.send(self.settings.topic_deadletter, value, key=key))
        for (topic, partition), clock in self._clock_due(work):
            for value in envelopes.batch_records(work.routed.get((topic, partition), []), clock):
                pending.append(await producer.send(topic, value, partition=partition))
        loop_topic = self.topics.task_loop
        for partition, items in work.feedback.items():
            for value in loop_records.batch_records(items):
                pending.append(
                    await producer.send(
                        loop_topic, value, partition=partition, headers=self._feedback_headers
                    )
                )
        if pending:
            await asyncio.gather(*pending)

    def _clock_due(self, work: _Round) -> Iterable[tuple[tuple[str, int], datetime | None]]:
        """The internal partitions to send to this round, each with the clock it should carry.

        A partition with detections always gets the clock; one without gets it only after the
        clock moved `PATROL_CLOCK_TICK_SECONDS`, so idle partitions still close their cases.
        """
        clock = self.clock
        step = self.settings.clock_tick_seconds
        for topic in (self.topics.cases, self.topics.hazards):
            for partition in range(self.settings.partitions):
                target = (topic, partition)
                last = self._sent_clock.get(target)
                if target in work.routed:
                    pass
                elif clock is None or (last is not None and (clock - last).total_seconds() < step):
                    continue
                if clock is not None:
                    self._sent_clock[target] = clock
                yield target, clock

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        consumer = self._consumer
        assert consumer is not None
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            # The partitions moved meanwhile; their new owner replays from the last commit, and
            # the stateful agents ignore what they already decided.
            log.warning("could not commit intake offsets (%s); they will be replayed", exc)
            return
        self._offsets.committed(offsets)

    def active_sources(self, within_seconds: float) -> dict[str, int]:
        """How many sources of each type sent anything in the last `within_seconds`; the
        others are forgotten."""
        now = time.monotonic()
        counts = dict.fromkeys((t.value for t in SourceType), 0)
        for (source_type, source_id), seen in list(self.sources_seen.items()):
            if now - seen > within_seconds:
                del self.sources_seen[(source_type, source_id)]
            else:
                counts[source_type] += 1
        return counts

    async def input_lags(self) -> dict[str, int]:
        """Messages not yet taken in, per input topic (the feedback topic too), over the
        partitions assigned here."""
        lags = dict.fromkeys((*self.settings.input_topics, self.settings.topic_feedback), 0)
        consumer = self._consumer
        if consumer is None:
            return lags
        for tp in consumer.assignment():
            if tp.topic not in lags:
                continue
            try:
                highwater = consumer.highwater(tp)
                if highwater is None:
                    continue
                last = self.last_offsets.get(tp)
                if last is None:
                    position = await consumer.position(tp)
                    done = position if position is not None else highwater
                else:
                    done = last + 1
            except (AssertionError, KafkaError):
                continue  # revoked since the snapshot: its new owner reports it
            lags[tp.topic] += max(0, highwater - done)
        return lags

    async def wait_idle(self) -> None:
        """Returns once no round or commit is in flight (before partitions are handed over)."""
        async with self._lock:
            await self._commit_acknowledged()
            await self._settle_commit(STOP_COMMIT_SECONDS)

    def assigned(self, partitions: Iterable[TopicPartition]) -> None:
        """The partitions owned now: the merger waits on each detection partition while it
        has lag."""
        self._merger.assign(self._merged(partitions))

    def forget(self, revoked: Iterable[TopicPartition]) -> None:
        """Revoked partitions: their offsets are their new owner's to commit."""
        revoked = list(revoked)
        self._offsets.forget(revoked)
        self._merger.clear(revoked)
        for tp in revoked:
            self.last_offsets.pop(tp, None)
            self._spans.pop(tp, None)
            self._paused.discard(tp)


class _Revoked(ConsumerRebalanceListener):  # type: ignore[misc]
    """Lets the round in flight finish and commit before partitions are handed over."""

    def __init__(self, intake: IntakeConsumer) -> None:
        self.intake = intake

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self.intake.wait_idle()
        self.intake.forget(revoked)

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self.intake.assigned(assigned)


def _embeddable(raw: bytes, detection: Detection) -> bytes:
    if len(raw) <= EMBED_RAW_MAX_BYTES:
        return raw
    return detection.model_dump_json(by_alias=True).encode()


def _log_failed(record: Record) -> None:
    log.exception("could not process %s[%d]@%d", record.topic, record.partition, record.offset)
