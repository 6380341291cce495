"""The SMS notifier: delivers parking warnings to the SMS gateway without ever blocking the stream.

The worker calls `SmsNotifier.submit` (not async) from its agents; sender tasks take requests from a
bounded queue, POST them to the gateway with the message id as `Idempotency-Key`, retry transient
failures with backoff for a bounded time, and hand each final outcome to `on_outcome` as an
`SmsRecord` (CONTRACT §7).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Protocol

import httpx

from patrol import metrics
from patrol.domain.models import SmsRecord, SmsStatus
from patrol.settings import Settings

log = logging.getLogger(__name__)

BACKOFF_FIRST_SECONDS = 0.2
BACKOFF_MAX_SECONDS = 10.0
ERROR_DETAIL_CHARS = 200

QUEUE_FULL = "queue_full"
NOTIFIER_STOPPED = "notifier_stopped"


class SmsRequestLike(Protocol):
    """What the notifier needs of an SMS request (`patrol.domain.grace.SmsRequest` has it)."""

    @property
    def message_id(self) -> str: ...
    @property
    def case_id(self) -> str: ...
    @property
    def plate(self) -> str: ...
    @property
    def zone_id(self) -> str: ...
    @property
    def text(self) -> str: ...
    @property
    def deadline(self) -> datetime: ...


OutcomeHandler = Callable[[SmsRecord], Awaitable[None]]


class SmsObserver(Protocol):
    """Where the notifier reports what it did (this process's Prometheus metrics, by default;
    the sender child's reports to the worker, `patrol.sms.sender`)."""

    def attempt(self, result: str) -> None:
        """One HTTP attempt ended: "accepted", "rejected" or "error"."""

    def finished(self, status: SmsStatus, seconds: float | None) -> None:
        """One SMS reached its final status, `seconds` after it began to wait (None: it was
        never queued)."""


class PrometheusSmsObserver:
    """Reports to the `patrol_sms_*` metrics of this process. (`patrol_sms_queue_depth` counts
    the outbox, which the sender knows and the notifier does not.)"""

    def attempt(self, result: str) -> None:
        metrics.sms_attempts_total.labels(result).inc()

    def finished(self, status: SmsStatus, seconds: float | None) -> None:
        metrics.sms_total.labels(status.value).inc()
        if seconds is not None:
            metrics.sms_send_seconds.observe(max(0.0, seconds))


def request_body(request: SmsRequestLike) -> dict[str, str]:
    """The JSON body of `POST /messages` (CONTRACT §7); the deadline as RFC 3339."""
    if request.deadline.tzinfo is None:
        raise ValueError(f"SMS {request.message_id}: deadline must carry a UTC offset")
    return {
        "message_id": request.message_id,
        "plate": request.plate,
        "zone_id": request.zone_id,
        "text": request.text,
        "deadline": request.deadline.isoformat(),
    }


def backoff_seconds(
    rng: random.Random,
    failures: int,
    first: float = BACKOFF_FIRST_SECONDS,
    cap: float = BACKOFF_MAX_SECONDS,
) -> float:
    """Exponential backoff with jitter: half to all of min(cap, first * 2^(failures-1))."""
    ceiling = min(cap, first * 2 ** (failures - 1))
    return rng.uniform(ceiling / 2, ceiling)


def retry_after_seconds(value: str | None, now: datetime) -> float | None:
    """Seconds a 429 asks us to wait: `Retry-After` as delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


@dataclass(eq=False, slots=True)
class _Delivery:
    """One request on its way: from the queue, through its attempts, to the final outcome."""

    request: SmsRequestLike
    queued_at: float
    attempts: int = 0
    last_error: str | None = None
    finished: bool = False


@dataclass(frozen=True, slots=True)
class _Attempt:
    """What one HTTP attempt came to."""

    sent: bool
    retry: bool
    error: str | None = None
    wait_at_least: float = 0.0


class SmsNotifier:
    """Sends SMS warnings in the background with bounded queueing, concurrency and retry time."""

    def __init__(
        self,
        settings: Settings,
        on_outcome: OutcomeHandler,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        backoff_first_seconds: float = BACKOFF_FIRST_SECONDS,
        backoff_max_seconds: float = BACKOFF_MAX_SECONDS,
        observer: SmsObserver | None = None,
    ) -> None:
        self._settings = settings
        self._observe: SmsObserver = observer or PrometheusSmsObserver()
        self._on_outcome = on_outcome
        self._transport = transport
        self._clock = clock
        self._sleep = sleep
        self._wall_clock = wall_clock
        self._backoff = (backoff_first_seconds, backoff_max_seconds)
        self._queue: asyncio.Queue[_Delivery] = asyncio.Queue(settings.sms_queue_size)
        self._client: httpx.AsyncClient | None = None
        self._senders: list[asyncio.Task[None]] = []
        self._in_flight: set[_Delivery] = set()
        self._outcome_tasks: set[asyncio.Task[None]] = set()
        self._accepting = False

    @property
    def pending(self) -> int:
        """SMS queued or being sent right now."""
        return self._queue.qsize() + len(self._in_flight)

    async def start(self) -> None:
        """Open the HTTP client and start `sms_concurrency` sender tasks."""
        if self._client is not None:
            return
        self._client = httpx.AsyncClient(
            base_url=self._settings.sms_url,
            timeout=self._settings.sms_timeout_seconds,
            transport=self._transport,
        )
        self._senders = [
            asyncio.create_task(self._send_forever(), name=f"sms-sender-{n}")
            for n in range(self._settings.sms_concurrency)
        ]
        self._accepting = True

    def submit(self, request: SmsRequestLike, *, waited_seconds: float = 0.0) -> bool:
        """Queue one SMS without waiting; False (and a failed outcome) if it cannot be queued.
        `waited_seconds`: how long it already waited elsewhere (the sender: in the outbox),
        counted in the seconds its outcome is observed with."""
        if not self._accepting:
            self._reject(request, NOTIFIER_STOPPED)
            return False
        try:
            queued_at = self._clock() - max(0.0, waited_seconds)
            self._queue.put_nowait(_Delivery(request, queued_at=queued_at))
        except asyncio.QueueFull:
            self._reject(request, QUEUE_FULL)
            return False
        return True

    async def stop(self, drain_seconds: float = 5.0, *, give_up_unsent: bool = True) -> None:
        """Stop taking work, give queued and in-flight SMS `drain_seconds`, then close the client.

        SMS still unsent when the time is up are recorded as failed (`notifier_stopped`), or,
        without `give_up_unsent`, dropped without an outcome: the caller sends them again (the
        sender leaves them in the outbox for the next sender).
        """
        self._accepting = False
        try:
            await asyncio.wait_for(self._queue.join(), timeout=drain_seconds)
        except TimeoutError:
            log.warning(
                "sms notifier stopping with %d SMS unsent after %.1fs", self.pending, drain_seconds
            )
        for sender in self._senders:
            sender.cancel()
        await asyncio.gather(*self._senders, return_exceptions=True)
        self._senders = []
        unsent = list(self._in_flight)
        while not self._queue.empty():
            unsent.append(self._queue.get_nowait())
            self._queue.task_done()
        for delivery in unsent:
            if give_up_unsent:
                await self._finish(delivery, SmsStatus.failed, NOTIFIER_STOPPED)
            else:
                delivery.finished = True
                self._in_flight.discard(delivery)
        if self._outcome_tasks:
            await asyncio.wait(self._outcome_tasks, timeout=drain_seconds)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _reject(self, request: SmsRequestLike, reason: str) -> None:
        log.warning("sms %s not queued: %s", request.message_id, reason)
        self._observe.finished(SmsStatus.failed, None)
        record = self._record(request, SmsStatus.failed, attempts=0, error=reason)
        task = asyncio.get_running_loop().create_task(self._hand_over(record))
        self._outcome_tasks.add(task)
        task.add_done_callback(self._outcome_tasks.discard)

    async def _send_forever(self) -> None:
        while True:
            delivery = await self._queue.get()
            self._in_flight.add(delivery)
            try:
                status = await self._deliver(delivery)
                await self._finish(delivery, status, delivery.last_error)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception(
                    "sms %s: unexpected failure while sending", delivery.request.message_id
                )
                await self._finish(delivery, SmsStatus.failed, "internal_error")
            finally:
                self._queue.task_done()

    async def _deliver(self, delivery: _Delivery) -> SmsStatus:
        """Attempt until sent, rejected for good, or out of retry time."""
        request = delivery.request
        rng = random.Random(request.message_id)
        try:
            body = request_body(request)
        except ValueError as exc:
            delivery.last_error = f"invalid request: {exc}"
            return SmsStatus.failed
        give_up_at = self._clock() + self._settings.sms_retry_seconds
        while True:
            delivery.attempts += 1
            outcome = await self._attempt(request.message_id, body)
            delivery.last_error = outcome.error
            if outcome.sent:
                return SmsStatus.sent
            if not outcome.retry:
                return SmsStatus.failed
            remaining = give_up_at - self._clock()
            if remaining <= 0 or outcome.wait_at_least > remaining:
                return SmsStatus.failed
            delay = max(
                outcome.wait_at_least, backoff_seconds(rng, delivery.attempts, *self._backoff)
            )
            log.info(
                "sms %s attempt %d failed (%s), retrying in %.2fs",
                request.message_id,
                delivery.attempts,
                outcome.error,
                min(delay, remaining),
            )
            # The last attempt lands at the end of the retry window rather than before it.
            await self._sleep(min(delay, remaining))

    async def _attempt(self, message_id: str, body: dict[str, str]) -> _Attempt:
        assert self._client is not None, "SmsNotifier.start() was not awaited"
        try:
            response = await self._client.post(
                "/messages", json=body, headers={"Idempotency-Key": message_id}
            )
        except httpx.TimeoutException as exc:
            self._observe.attempt("error")
            return _Attempt(sent=False, retry=True, error=f"timeout ({type(exc).__name__})")
        except httpx.TransportError as exc:
            self._observe.attempt("error")
            return _Attempt(sent=False, retry=True, error=f"connection ({type(exc).__name__})")
        code = response.status_code
        if response.is_success:
            self._observe.attempt("accepted")
            return _Attempt(sent=True, retry=False)
        if code >= 500:
            self._observe.attempt("error")
            return _Attempt(sent=False, retry=True, error=f"http {code}")
        self._observe.attempt("rejected")
        if code == 429:
            wait = retry_after_seconds(response.headers.get("Retry-After"), self._wall_clock())
            return _Attempt(sent=False, retry=True, error="http 429", wait_at_least=wait or 0.0)
        if code == 408:
            return _Attempt(sent=False, retry=True, error="http 408")
        detail = response.text[:ERROR_DETAIL_CHARS].strip()
        return _Attempt(
            sent=False, retry=False, error=f"http {code}: {detail}" if detail else f"http {code}"
        )

    async def _finish(self, delivery: _Delivery, status: SmsStatus, error: str | None) -> None:
        if delivery.finished:
            return
        delivery.finished = True
        self._in_flight.discard(delivery)
        self._observe.finished(status, self._clock() - delivery.queued_at)
        if status is SmsStatus.sent:
            error = None
            log.debug(
                "sms %s sent after %d attempt(s)", delivery.request.message_id, delivery.attempts
            )
        else:
            log.warning(
                "sms %s failed after %d attempt(s): %s",
                delivery.request.message_id,
                delivery.attempts,
                error,
            )
        record = self._record(delivery.request, status, attempts=delivery.attempts, error=error)
        await self._hand_over(record)

    def _record(
        self, request: SmsRequestLike, status: SmsStatus, *, attempts: int, error: str | None
    ) -> SmsRecord:
        return SmsRecord(
            message_id=request.message_id,
            case_id=request.case_id,
            plate=request.plate,
            zone_id=request.zone_id,
            status=status,
            attempts=attempts,
            at=self._wall_clock(),
            error=error,
        )

    async def _hand_over(self, record: SmsRecord) -> None:
        try:
            await self._on_outcome(record)
        except Exception:
            log.exception("sms %s: recording the outcome failed", record.message_id)
