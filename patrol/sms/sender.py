"""SMS sending in a child process, so HTTP does not compete with the stream for one core.

An httpx request costs the client several times what the stub gateway spends answering it
(`bench/README.md` has the figures), and the worker sends one SMS per opened case. The worker
therefore runs the notifier (`SmsNotifier`: queue, retries, `Idempotency-Key`) in a child
process, `python -m patrol.sms.sender`, and talks to it over its stdin and stdout, one JSON
object per line:

* worker → sender: an SMS request (`message_id`, `case_id`, `plate`, `zone_id`, `text`,
  `deadline`);
* sender → worker: `{"a": result}` after each HTTP attempt, and `{"f": status, "r": SmsRecord}`
  once an SMS reached its final status.

The worker keeps the metrics (the sender reports every attempt and outcome), writes the audit
record and updates the case, exactly as with an in-process notifier. The backlog waits in the
worker, and the sender holds a few requests per sender task. If the sender dies, the SMS it held
are recorded as failed and a new one takes the backlog. When its stdin closes (the worker
stops, or was killed) the sender finishes what it holds within `--drain-seconds`, reports, and
exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from patrol.models import SmsRecord, SmsStatus
from patrol.rules.grace import SmsRequest
from patrol.settings import Settings, load_settings
from patrol.sms.notifier import (
    NOTIFIER_STOPPED,
    QUEUE_FULL,
    OutcomeHandler,
    PrometheusSmsObserver,
    SmsNotifier,
    SmsObserver,
    SmsRequestLike,
)

log = logging.getLogger(__name__)

SENDER_EXITED = "sender_exited"
RESTART_DELAY_SECONDS = 1.0
# What the sender holds is little (`window`), so once the worker's drain time is over the
# sender gets this long to finish it before it reports the rest as failed.
SENDER_DRAIN_SECONDS = 1.0
STOP_GRACE_SECONDS = SENDER_DRAIN_SECONDS + 5.0
WINDOW_MIN = 64
SENDER_NICENESS = 5
LINE_LIMIT = 1024 * 1024


def request_line(request: SmsRequestLike) -> bytes:
    """An SMS request as one line on the sender's stdin."""
    fields = {
        "message_id": request.message_id,
        "case_id": request.case_id,
        "plate": request.plate,
        "zone_id": request.zone_id,
        "text": request.text,
        "deadline": request.deadline.isoformat(),
    }
    return json.dumps(fields, ensure_ascii=False).encode() + b"\n"


def request_from_line(line: bytes) -> SmsRequest:
    fields = json.loads(line)
    fields["deadline"] = datetime.fromisoformat(fields["deadline"])
    return SmsRequest(**fields)


def _sender_env(settings: Settings) -> dict[str, str]:
    """The worker's environment, with its SMS settings as the sender must use them."""
    return {
        **os.environ,
        "PATROL_SMS_URL": settings.sms_url,
        "PATROL_SMS_TIMEOUT_SECONDS": str(settings.sms_timeout_seconds),
        "PATROL_SMS_RETRY_SECONDS": str(settings.sms_retry_seconds),
        "PATROL_SMS_QUEUE_SIZE": str(settings.sms_queue_size),
        "PATROL_SMS_CONCURRENCY": str(settings.sms_concurrency),
        "PATROL_LOG_LEVEL": settings.log_level,
    }


class SmsSenderProcess:
    """The worker's side: the notifier's interface (`submit`, `start`, `stop`, `pending`).

    Requests wait here, in order, and at most `window` of them are with the sender at a time:
    enough to keep its `PATROL_SMS_CONCURRENCY` senders busy, and a backlog stays one copy in
    this process rather than a pipe buffer plus the sender's queue. What waits here also
    survives a sender that dies.
    """

    def __init__(
        self,
        settings: Settings,
        on_outcome: OutcomeHandler,
        *,
        observer: SmsObserver | None = None,
        drain_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._on_outcome = on_outcome
        self._observe: SmsObserver = observer or PrometheusSmsObserver()
        self._drain_seconds = drain_seconds
        self._clock = clock
        self._window = max(WINDOW_MIN, 4 * settings.sms_concurrency)
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        # (message id, request line, when queued): 2/3 the memory of the request object
        self._waiting: deque[tuple[str, bytes, float]] = deque()
        self._held: dict[str, list[tuple[bytes, float]]] = {}
        self._held_count = 0
        self._outcome_tasks: set[asyncio.Task[None]] = set()
        self._accepting = False
        self._drained = asyncio.Event()

    @property
    def pending(self) -> int:
        """SMS submitted and not yet finished (waiting here or with the sender)."""
        return len(self._waiting) + self._held_count

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    async def start(self) -> None:
        if self._reader is not None:
            return
        await self._spawn()
        self._accepting = True
        self._drained.set()
        self._reader = asyncio.create_task(self._read_forever(), name="sms-sender-reader")
        self._observe.queue_depth(0)

    async def _spawn(self) -> None:
        self._process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "patrol.sms.sender",
            "--drain-seconds",
            str(SENDER_DRAIN_SECONDS),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=_sender_env(self._settings),
            limit=LINE_LIMIT,
        )
        log.info("sms sender started (pid %d)", self._process.pid)

    def submit(self, request: SmsRequestLike) -> bool:
        """Queue one SMS without waiting; False (and a failed outcome) if it cannot be queued."""
        if not self._accepting:
            self._reject(request, NOTIFIER_STOPPED)
            return False
        if self.pending >= self._settings.sms_queue_size:
            self._reject(request, QUEUE_FULL)
            return False
        line = request_line(request)
        self._waiting.append((request.message_id, line, self._clock()))
        self._pump()
        return True

    def _pump(self) -> None:
        """Hand waiting requests to the sender while it holds fewer than `window`."""
        process = self._process
        if process is not None and process.returncode is None and process.stdin is not None:
            stdin = process.stdin
            while self._waiting and self._held_count < self._window:
                message_id, line, queued_at = self._waiting.popleft()
                try:
                    stdin.write(line)
                except (ConnectionError, RuntimeError):
                    self._waiting.appendleft((message_id, line, queued_at))
                    break
                self._held.setdefault(message_id, []).append((line, queued_at))
                self._held_count += 1
        self._observe.queue_depth(self.pending)
        if not self.pending:
            self._drained.set()
        else:
            self._drained.clear()

    async def stop(self) -> None:
        """Stop taking work, give the backlog `drain_seconds`, then record what is left."""
        self._accepting = False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drained.wait(), self._drain_seconds)
        if self.pending:
            log.warning(
                "sms sender stopping with %d SMS unsent after %.1fs",
                self.pending,
                self._drain_seconds,
            )
        unsent = [line for _, line, _ in self._waiting]
        self._waiting.clear()
        process, reader = self._process, self._reader
        if process is not None and process.stdin is not None:
            with contextlib.suppress(ConnectionError):
                process.stdin.close()
        if reader is not None:
            try:
                # the sender reports what it still holds (as sent, or failed when stopped)
                await asyncio.wait_for(asyncio.shield(reader), STOP_GRACE_SECONDS)
            except TimeoutError:
                log.warning("sms sender did not finish in time; stopping it")
                if process is not None and process.returncode is None:
                    process.kill()
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
        if process is not None and process.returncode is None:
            await process.wait()
        await self._fail(unsent + self._take_held(), NOTIFIER_STOPPED)
        if self._outcome_tasks:
            await asyncio.wait(self._outcome_tasks, timeout=self._drain_seconds)
        self._reader = None
        self._observe.queue_depth(0)

    def _reject(self, request: SmsRequestLike, reason: str) -> None:
        log.warning("sms %s not queued: %s", request.message_id, reason)
        self._observe.finished(SmsStatus.failed, None)
        record = _failed_record(request, reason)
        task = asyncio.get_running_loop().create_task(self._hand_over(record))
        self._outcome_tasks.add(task)
        task.add_done_callback(self._outcome_tasks.discard)

    async def _read_forever(self) -> None:
        while True:
            process = self._process
            assert process is not None and process.stdout is not None
            async for line in process.stdout:
                await self._take_line(line)
            code = await process.wait()
            if not self._accepting:
                return
            held = self._take_held()
            log.error(
                "sms sender exited with code %s; the %d SMS it held are recorded as failed, "
                "starting a new one",
                code,
                len(held),
            )
            await self._fail(held, SENDER_EXITED)
            while True:
                await asyncio.sleep(RESTART_DELAY_SECONDS)
                if not self._accepting:
                    return
                try:
                    await self._spawn()
                    break
                except OSError as exc:
                    log.error("could not start the sms sender (%s); trying again", exc)
            self._pump()

    async def _take_line(self, line: bytes) -> None:
        try:
            message: dict[str, Any] = json.loads(line)
            if "a" in message:
                self._observe.attempt(str(message["a"]))
                return
            record = SmsRecord.model_validate(message["r"])
        except (ValueError, KeyError, TypeError):
            # the line may hold a plate: its length says enough
            log.error("sms sender wrote a line that is not a report (%d bytes)", len(line))
            return
        queued_at = self._release(record.message_id)
        self._observe.finished(
            record.status, None if queued_at is None else self._clock() - queued_at
        )
        self._pump()
        await self._hand_over(record)

    def _release(self, message_id: str) -> float | None:
        """Forget one held copy of `message_id`; when it was queued."""
        copies = self._held.get(message_id)
        if not copies:
            return None
        _, queued_at = copies.pop(0)
        if not copies:
            del self._held[message_id]
        self._held_count -= 1
        return queued_at

    def _take_held(self) -> list[bytes]:
        held = [line for copies in self._held.values() for line, _ in copies]
        self._held.clear()
        self._held_count = 0
        return held

    async def _fail(self, lines: list[bytes], reason: str) -> None:
        for line in lines:
            self._observe.finished(SmsStatus.failed, None)
            await self._hand_over(_failed_record(request_from_line(line), reason))
        self._observe.queue_depth(self.pending)

    async def _hand_over(self, record: SmsRecord) -> None:
        try:
            await self._on_outcome(record)
        except Exception:
            log.exception("sms %s: recording the outcome failed", record.message_id)


def _failed_record(request: SmsRequestLike, reason: str) -> SmsRecord:
    return SmsRecord(
        message_id=request.message_id,
        case_id=request.case_id,
        plate=request.plate,
        zone_id=request.zone_id,
        status=SmsStatus.failed,
        attempts=0,
        at=datetime.now(UTC),
        error=reason,
    )


# --- the child process ------------------------------------------------------------------------


class _PipeObserver:
    """Reports attempts to the worker; outcomes travel with their record."""

    def __init__(self, out: Any) -> None:
        self._out = out

    def attempt(self, result: str) -> None:
        self._out.write(b'{"a":"%s"}\n' % result.encode())
        self._out.flush()

    def finished(self, status: SmsStatus, seconds: float | None) -> None:
        return None

    def queue_depth(self, depth: int) -> None:
        return None


async def _serve(settings: Settings, drain_seconds: float) -> None:
    out = sys.stdout.buffer

    async def report(record: SmsRecord) -> None:
        line = {"f": record.status.value, "r": record.model_dump(mode="json")}
        out.write(json.dumps(line, ensure_ascii=False).encode() + b"\n")
        out.flush()

    notifier = SmsNotifier(settings, report, observer=_PipeObserver(out))
    await notifier.start()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=LINE_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    reading = asyncio.create_task(_read_requests(reader, notifier))
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
    reading.cancel()
    stopping.cancel()
    await notifier.stop(drain_seconds)


async def _read_requests(reader: asyncio.StreamReader, notifier: SmsNotifier) -> None:
    async for line in reader:
        try:
            request = request_from_line(line)
        except (ValueError, KeyError, TypeError) as exc:
            log.error("not an SMS request (%s); skipped", type(exc).__name__)
            continue
        notifier.submit(request)


def main(argv: list[str] | None = None) -> None:
    args = argv if argv is not None else sys.argv[1:]
    drain_seconds = float(args[args.index("--drain-seconds") + 1]) if args else 5.0
    settings = load_settings()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # Ctrl-C reaches the whole process group; the worker decides when the sender stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # When the CPU is short, the stream goes first: a warning can wait a little, a task should
    # not wait behind HTTP.
    with contextlib.suppress(OSError):
        os.nice(SENDER_NICENESS)
    asyncio.run(_serve(settings, drain_seconds))


if __name__ == "__main__":
    main()
