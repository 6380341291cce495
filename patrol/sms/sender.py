"""SMS sending in a child process that works the outbox topic (`patrol.sms.outbox`).

An httpx request costs the client several times what the stub gateway spends answering it
(`bench/README.md` has the figures), and the worker sends one SMS per opened case. So the worker
runs `python -m patrol.sms.sender` beside it. The sender consumes the outbox in the consumer
group `<PATROL_APP_ID>-sms`, holds at most a small window of warnings, sends them through the
notifier (`SmsNotifier`: concurrency, retries, `Idempotency-Key`), produces the audit and outcome
records of each and commits the outbox offsets behind them. The backlog stays on the topic.

It reports to the worker on its stdout (`patrol.worker.children.Report`), for the worker's
`patrol_sms_*` metrics: each HTTP attempt, each SMS's final status with the seconds since its
warning was put in the outbox, and each second the warnings waiting or in flight. It stops
when its stdin closes (the worker stopped, or was killed) or on SIGTERM: it gives what it holds
`--drain-seconds`, commits what is done and leaves the rest to the next sender. If it dies, the
worker starts another.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections import deque
from dataclasses import dataclass
from typing import IO, Any, Literal, Protocol, TypeAlias

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from patrol import metrics
from patrol.domain.models import SmsRecord, SmsStatus
from patrol.kafka.consumer import group_consumer
from patrol.kafka.offsets import OffsetTracker
from patrol.kafka.security import client_options
from patrol.kafka.topics import InternalTopics
from patrol.settings import Settings
from patrol.sms import outbox
from patrol.sms.notifier import SmsNotifier, SmsObserver
from patrol.worker.children import (
    ChildProcess,
    MetricChange,
    Report,
    ReportWriter,
    child_main,
    metric_name,
    stop_event,
)

log = logging.getLogger(__name__)

# Once the worker is gone the sender finishes what it holds within this long; the rest is sent
# again by the next sender (the gateway deduplicates).
SENDER_DRAIN_SECONDS = 1.0
STOP_GRACE_SECONDS = SENDER_DRAIN_SECONDS + 10.0
WINDOW_MIN = 64
COMMIT_INTERVAL_SECONDS = 1.0
FETCH_TIMEOUT_MS = 500
# Outbox records are small; this bounds what the consumer fetches ahead of the window.
FETCH_MAX_BYTES = 1024 * 1024
PARTITION_FETCH_MAX_BYTES = 256 * 1024
FETCH_MIN_BYTES = 64 * 1024
FETCH_WAIT_MS = 50
REVOKE_WAIT_SECONDS = 5.0
# Outcomes finished close together travel in one record per partition: the grace agent pays
# faust's per-event cost once per record.
OUTCOME_LINGER_SECONDS = 0.02
OUTCOME_BATCH_MAX = 500
REPORT_LINGER_SECONDS = 0.05


def sender_group(app_id: str) -> str:
    return f"{app_id}-sms"


def window_of(settings: Settings) -> int:
    """How many warnings the sender holds at once: enough to keep its senders busy."""
    return min(settings.sms_queue_size, max(WINDOW_MIN, 4 * settings.sms_concurrency))


class SmsObserverWithDepth(SmsObserver, Protocol):
    """What a watcher of the sender's reports hears: attempts, outcomes, the outbox backlog."""

    def queue_depth(self, depth: int) -> None:
        """Warnings in the outbox not yet finished."""


class SmsSenderProcess(ChildProcess):
    """The worker's side: starts the sender, keeps it running; its reports move the worker's
    `patrol_sms_*` metrics (`ChildProcess.apply`)."""

    name = "sms sender"
    module = "patrol.sms.sender"

    def __init__(self, settings: Settings, *, observer: SmsObserverWithDepth | None = None) -> None:
        """`observer` is also told, in SMS terms, what the reports say (tests watch it)."""
        super().__init__(settings, stop_grace_seconds=STOP_GRACE_SECONDS)
        self._observer = observer

    def args(self) -> list[str]:
        return ["--drain-seconds", str(SENDER_DRAIN_SECONDS)]

    async def start(self) -> None:
        await super().start()
        self.apply(_NO_BACKLOG)

    async def stop(self) -> None:
        await super().stop()
        self.apply(_NO_BACKLOG)

    def take_report(self, report: Report) -> None:
        if self._observer is not None:
            _tell(self._observer, report.changes)


_ATTEMPTS = metric_name(metrics.sms_attempts_total)
_OUTCOMES = metric_name(metrics.sms_total)
_SECONDS = metric_name(metrics.sms_send_seconds)
_BACKLOG = metric_name(metrics.sms_queue_depth)
_NO_BACKLOG = Report(changes=[MetricChange(kind="set", name=_BACKLOG, value=0)])


def _tell(observer: SmsObserverWithDepth, changes: list[MetricChange]) -> None:
    """The changes in SMS terms. A final status follows the observation of its seconds (`_Reports`
    writes them so); one without is an SMS that never waited."""
    seconds: float | None = None
    for change in changes:
        if change.name == _ATTEMPTS:
            for _ in range(int(change.value)):
                observer.attempt(change.labels["result"])
        elif change.name == _SECONDS:
            seconds = change.value
        elif change.name == _OUTCOMES:
            for _ in range(int(change.value)):
                observer.finished(SmsStatus(change.labels["status"]), seconds)
            seconds = None
        elif change.name == _BACKLOG:
            observer.queue_depth(int(change.value))


# --- the child process ------------------------------------------------------------------------


class _Reports:
    """The sender's reports to the worker, written together every few milliseconds: what the
    notifier did (`SmsObserver`), and the outbox backlog."""

    def __init__(self, out: IO[bytes]) -> None:
        self._writer = ReportWriter(out)
        self._timer: asyncio.TimerHandle | None = None

    def _changed(self) -> None:
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(REPORT_LINGER_SECONDS, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._writer:
            self._writer.write()

    def attempt(self, result: str) -> None:
        self._writer.inc(metrics.sms_attempts_total, 1, {"result": result})
        self._changed()

    def finished(self, status: SmsStatus, seconds: float | None) -> None:
        if seconds is not None:
            self._writer.observe(metrics.sms_send_seconds, max(0.0, seconds))
        self._writer.inc(metrics.sms_total, 1, {"status": status.value})
        self._changed()

    def backlog(self, depth: int) -> None:
        self._writer.set(metrics.sms_queue_depth, depth)
        self._changed()


@dataclass(frozen=True, slots=True)
class _Held:
    """An outbox record whose warning is with the notifier."""

    tp: TopicPartition
    offset: int
    key: bytes | None


_Finished: TypeAlias = "tuple[_Held, outbox.SmsOutcome, asyncio.Future[Any]]"


class OutboxSender(ConsumerRebalanceListener):  # type: ignore[misc]
    """Consumes the outbox, sends each warning, records its outcome, commits behind it."""

    def __init__(
        self,
        settings: Settings,
        reporter: _Reports,
        *,
        consumer: AIOKafkaConsumer | None = None,
        producer: AIOKafkaProducer | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """`consumer`, `producer` and the gateway's `transport` are built from the settings
        unless given (tests give fakes)."""
        self._settings = settings
        self._topics = InternalTopics.of(settings.app_id)
        self._report = reporter
        self.window = window_of(settings)
        self._notifier = SmsNotifier(
            settings.model_copy(update={"sms_queue_size": self.window}),
            self._on_outcome,
            observer=reporter,
            transport=transport,
        )
        self._consumer = consumer or group_consumer(
            settings,
            sender_group(settings.app_id),
            fetch_max_bytes=FETCH_MAX_BYTES,
            max_partition_fetch_bytes=PARTITION_FETCH_MAX_BYTES,
            # Warnings trickle into the outbox one by one; a fetch answered at once brought one
            # or two, and the broker spent its CPU answering hundreds a second. A warning may
            # wait this long at the broker: nothing next to its driver's grace minutes.
            fetch_min_bytes=FETCH_MIN_BYTES,
            fetch_max_wait_ms=FETCH_WAIT_MS,
        )
        self._producer = producer or AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap,
            acks="all",
            linger_ms=5,
            **client_options(settings),
        )
        # message id -> the outbox records carrying it, oldest first (a replayed case may have
        # put one warning in the outbox twice)
        self._held: dict[str, deque[_Held]] = {}
        # Each outbox record is done once its outcome and audit records are acknowledged (or
        # at once, if it is not an SMS request); commits go up to the oldest one not done.
        self._offsets: OffsetTracker[TopicPartition] = OffsetTracker()
        self._confirming: set[asyncio.Task[None]] = set()
        self._finished: dict[int, list[_Finished]] = {}
        self._finished_count = 0
        self._flush_timer: asyncio.TimerHandle | None = None
        self._room = asyncio.Event()
        self._confirmed = asyncio.Event()
        self.failed: BaseException | None = None

    async def start(self) -> None:
        await self._producer.start()
        await self._consumer.start()
        self._consumer.subscribe([self._topics.sms_outbox], listener=self)
        await self._notifier.start()

    async def run(self, stop: asyncio.Event) -> None:
        """Fetch and send until `stop` is set (or a record could not be produced)."""
        next_commit = time.monotonic() + COMMIT_INTERVAL_SECONDS
        while not stop.is_set() and self.failed is None:
            room = self.window - self._holding()
            if room <= 0:
                self._room.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._room.wait(), FETCH_TIMEOUT_MS / 1000)
            else:
                fetched = await self._consumer.getmany(
                    timeout_ms=FETCH_TIMEOUT_MS, max_records=room
                )
                for tp, records in fetched.items():
                    for record in records:
                        self._take(tp, record)
            if time.monotonic() >= next_commit:
                next_commit = time.monotonic() + COMMIT_INTERVAL_SECONDS
                await self._commit()
                self._report.backlog(self._depth())

    async def stop(self, drain_seconds: float) -> None:
        """Give what is held `drain_seconds`, commit what is done, leave the group."""
        # What is unsent then stays in the outbox, uncommitted, for the next sender.
        await self._notifier.stop(drain_seconds, give_up_unsent=False)
        self._flush()
        if self._confirming:
            await asyncio.wait(self._confirming, timeout=drain_seconds + 5)
        with contextlib.suppress(KafkaError):
            await self._commit()
        left = self._offsets.pending()
        if left:
            log.info("sms sender stopping; %d SMS are left to the next sender", left)
        await self._consumer.stop()
        await self._producer.stop()

    def _holding(self) -> int:
        return sum(len(copies) for copies in self._held.values())

    def _depth(self) -> int:
        """Warnings in the outbox not yet finished: waiting on the topic, or held here."""
        depth = 0
        for tp in self._consumer.assignment():
            highwater = self._consumer.highwater(tp)
            taken = self._offsets.taken_up_to(tp)
            if highwater is not None and taken is not None:
                depth += max(0, highwater - taken)
            depth += self._offsets.pending(tp)
        return depth

    def _take(self, tp: TopicPartition, record: ConsumerRecord[bytes, bytes]) -> None:
        self._offsets.track(tp, record.offset)
        try:
            assert record.value is not None
            request = outbox.request_from_record(record.value)
        except (AssertionError, ValueError, KeyError, TypeError) as exc:
            log.error(
                "outbox record %s[%d]@%d is not an SMS request (%s); skipped",
                tp.topic,
                tp.partition,
                record.offset,
                type(exc).__name__,
            )
            self._offsets.done(tp, record.offset)
            return
        self._held.setdefault(request.message_id, deque()).append(
            _Held(tp, record.offset, record.key)
        )
        waited = max(0.0, time.time() - record.timestamp / 1000) if record.timestamp > 0 else 0.0
        self._notifier.submit(request, waited_seconds=waited)

    async def _on_outcome(self, record: SmsRecord) -> None:
        """A final outcome: audit it, and queue it for its case's partition (`_flush`)."""
        copies = self._held.get(record.message_id)
        if not copies:
            log.error("sms %s finished but no outbox record holds it", record.message_id)
            return
        held = copies.popleft()
        if not copies:
            del self._held[record.message_id]
        self._room.set()
        audit = await self._producer.send(
            self._settings.topic_sms,
            record.model_dump_json().encode(),
            key=record.message_id.encode(),
        )
        status: Literal["sent", "failed"] = "sent" if record.status is SmsStatus.sent else "failed"
        outcome = outbox.SmsOutcome(held.key or b"", record.message_id, status)
        self._finished.setdefault(held.tp.partition, []).append((held, outcome, audit))
        self._finished_count += 1
        if self._finished_count >= OUTCOME_BATCH_MAX:
            self._flush()
        elif self._flush_timer is None:
            self._flush_timer = asyncio.get_running_loop().call_later(
                OUTCOME_LINGER_SECONDS, self._flush
            )

    def _flush(self) -> None:
        """Send the outcomes finished since the last flush: one record per case partition."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        finished, self._finished, self._finished_count = self._finished, {}, 0
        for partition, items in finished.items():
            task = asyncio.ensure_future(self._record_outcomes(partition, items))
            self._confirming.add(task)
            task.add_done_callback(self._confirming.discard)

    async def _record_outcomes(self, partition: int, items: list[_Finished]) -> None:
        """Send one partition's outcomes; once they and their audit records are acknowledged,
        their outbox offsets may be committed."""
        try:
            sent = await self._producer.send(
                self._topics.cases,
                outbox.outcome_record(outcome for _, outcome, _ in items),
                partition=partition,
                headers=outbox.OUTCOME_HEADERS,
            )
            await asyncio.gather(sent, *(audit for _, _, audit in items))
        except Exception as exc:  # the broker refused: stop, and let a new sender resend
            log.error("could not record SMS outcomes (%r); the sender stops", exc)
            if self.failed is None:
                self.failed = exc
            return
        for held, _, _ in items:
            self._offsets.done(held.tp, held.offset)
        self._confirmed.set()

    async def _commit(self, only: set[TopicPartition] | None = None) -> None:
        """Commit, per partition, up to the oldest warning not yet finished."""
        offsets = self._offsets.committable(only)
        if not offsets:
            return
        try:
            await self._consumer.commit(
                {tp: OffsetAndMetadata(offset, "") for tp, offset in offsets.items()}
            )
        except CommitFailedError as exc:
            log.warning("could not commit outbox offsets (%s); the next commit will", exc)
            return
        self._offsets.committed(offsets)

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        """Finish what is held of the revoked partitions (briefly), then commit them."""
        self._flush()
        deadline = time.monotonic() + REVOKE_WAIT_SECONDS
        while any(self._offsets.pending(tp) for tp in revoked):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._confirmed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._confirmed.wait(), remaining)
        with contextlib.suppress(KafkaError):
            await self._commit(only=set(revoked))
        self._offsets.forget(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        return None


async def _serve(settings: Settings, drain_seconds: float) -> int:
    reporter = _Reports(sys.stdout.buffer)
    sender = OutboxSender(settings, reporter)
    stop = await stop_event()
    await sender.start()
    try:
        await sender.run(stop)
    finally:
        await sender.stop(drain_seconds)
        reporter.flush()
    return 1 if sender.failed is not None else 0


def main(argv: list[str] | None = None) -> None:
    args = argv if argv is not None else sys.argv[1:]
    drain_seconds = float(args[args.index("--drain-seconds") + 1]) if args else 5.0
    # When the CPU is short, the stream goes first: a warning waits durably in the outbox and
    # its driver has minutes, while a slow stream delays every decision. In the latency bench
    # (1,000 detections/s, 320 SMS/s, `python -m bench --only latency`) p99 was 217-260 ms
    # with the sender at nice 19, 126-171 ms under SCHED_IDLE, and 70 ms with it stopped.
    child_main(lambda settings: _serve(settings, drain_seconds), when_idle=True)


if __name__ == "__main__":
    main()
