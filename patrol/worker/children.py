"""Child processes the worker runs beside it: the intake and the SMS sender.

Each is `python -m <module>` with the worker's settings in its environment. It reports to the
worker on its stdout and stops when its stdin closes: when the worker stops it, and when the
worker dies, so a killed worker leaves no child behind for long. The worker starts a new child
if one exits on its own.

A report is one `Report` as a JSON line: the changes to the worker's metrics, by metric name
and labels, in the order they happened (counter increments, gauge values, histogram
observations), and the intake's event-time clock. `ChildProcess` applies them to the worker's
Prometheus metrics in `apply_change`, so the worker's /metrics shows what its children did; a
change to a metric no child may move is logged and skipped. (prometheus_client's multiprocess
mode would instead share memory-mapped files between the processes: a directory to set before
any import and to clear at start, a file per process and metric type, and the gauges of a dead
or restarted child to mark and collect; the worker's registry would no longer be its own.)

The worker's side is `ChildProcess`; the child's side uses `ReportWriter`, `child_main` and
`stop_event`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import IO, Any, Literal, TypeAlias

from prometheus_client import Counter, Gauge, Histogram
from pydantic import BaseModel, ConfigDict, ValidationError

from patrol import metrics
from patrol.settings import Settings, load_settings

log = logging.getLogger(__name__)

RESTART_DELAY_SECONDS = 1.0
LINE_LIMIT = 1024 * 1024

ChildMetric: TypeAlias = Counter | Gauge | Histogram


def metric_name(metric: ChildMetric) -> str:
    """The name a metric is exposed (and reported) by: `patrol_sms_total`, not `patrol_sms`."""
    family = next(iter(metric.describe()))
    return f"{family.name}_total" if family.type == "counter" else family.name


# The worker's metrics its children move, by name: the intake's counts and gauges, the sender's.
CHILD_METRICS: dict[str, ChildMetric] = {
    metric_name(metric): metric
    for metric in (
        metrics.detections_total,
        metrics.deadletters_total,
        metrics.clock_skew_detections_total,
        metrics.intake_merge_holds_total,
        metrics.sources_active,
        metrics.consumer_lag_messages,
        metrics.sms_total,
        metrics.sms_attempts_total,
        metrics.sms_send_seconds,
        metrics.sms_queue_depth,
    )
}
_NAMES = {id(metric): name for name, metric in CHILD_METRICS.items()}
_KINDS: dict[type, Literal["inc", "set", "observe"]] = {
    Counter: "inc",
    Gauge: "set",
    Histogram: "observe",
}


class MetricChange(BaseModel):
    """One change to a worker metric: add `value` to a counter, set a gauge to it, or observe
    it in a histogram."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["inc", "set", "observe"]
    name: str
    labels: dict[str, str] = {}
    value: float


class Report(BaseModel):
    """One line a child writes to the worker."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    changes: list[MetricChange] = []
    event_time: float | None = None
    """The intake's event-time clock (seconds since the epoch), when it reports it."""


class UnknownMetric(ValueError):
    """A report names a metric no child may move (or moves it the wrong way)."""


def apply_change(change: MetricChange) -> None:
    """Apply one reported change to the worker's metric of that name: the one place a child's
    report reaches /metrics. ValueError if no child may move it that way, or labels are wrong."""
    metric = CHILD_METRICS.get(change.name)
    if metric is None or _KINDS[type(metric)] != change.kind:
        raise UnknownMetric(f"no child metric {change.name!r} to {change.kind}")
    target: Any = metric.labels(**change.labels) if change.labels else metric
    if change.kind == "inc":
        target.inc(change.value)
    elif change.kind == "set":
        target.set(change.value)
    else:
        target.observe(change.value)


def resolved_env(settings: Settings) -> dict[str, str]:
    """The worker's environment, with every setting as the worker resolved it."""
    env = dict(os.environ)
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if value is not None:
            env[f"PATROL_{name.upper()}"] = str(value)
    return env


class ChildProcess:
    """The worker's side of one child: starts it, restarts it, reads its reports, stops it."""

    name = "child"
    module = ""

    def __init__(self, settings: Settings, *, stop_grace_seconds: float = 10.0) -> None:
        self._settings = settings
        self._stop_grace = stop_grace_seconds
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._running = False

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def args(self) -> Sequence[str]:
        """Arguments after `python -m <module>`."""
        return ()

    def take_report(self, report: Report) -> None:
        """One report from the child, after its changes were applied to the worker's metrics."""

    def on_spawn(self) -> None:
        """A new child started (its reports start from nothing)."""

    async def start(self) -> None:
        if self._reader is not None:
            return
        await self._spawn()
        self._running = True
        self._reader = asyncio.create_task(self._read_forever(), name=f"{self.name}-reader")

    async def _spawn(self) -> None:
        self.on_spawn()
        self._process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            self.module,
            *self.args(),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=resolved_env(self._settings),
            limit=LINE_LIMIT,
        )
        log.info("%s started (pid %d)", self.name, self._process.pid)

    async def stop(self) -> None:
        """Close the child's stdin: it finishes, commits and exits; killed if it takes too long."""
        self._running = False
        process, reader = self._process, self._reader
        if process is not None and process.stdin is not None:
            with contextlib.suppress(ConnectionError):
                process.stdin.close()
        if reader is not None:
            try:
                await asyncio.wait_for(asyncio.shield(reader), self._stop_grace)
            except TimeoutError:
                log.warning("%s did not finish in time; stopping it", self.name)
                if process is not None and process.returncode is None:
                    process.kill()
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
        if process is not None and process.returncode is None:
            await process.wait()
        self._reader = None

    async def _read_forever(self) -> None:
        while True:
            process = self._process
            assert process is not None and process.stdout is not None
            async for line in process.stdout:
                self._take_line(line)
            code = await process.wait()
            if not self._running:
                return
            log.error("%s exited with code %s; starting a new one", self.name, code)
            while True:
                await asyncio.sleep(RESTART_DELAY_SECONDS)
                if not self._running:
                    return
                try:
                    await self._spawn()
                    break
                except OSError as exc:
                    log.error("could not start the %s (%s); trying again", self.name, exc)

    def _take_line(self, line: bytes) -> None:
        try:
            report = Report.model_validate_json(line)
        except ValidationError:
            log.error("%s wrote a line that is not a report (%d bytes)", self.name, len(line))
            return
        self.apply(report)

    def apply(self, report: Report) -> None:
        """Apply a report's changes to the worker's metrics, then hand it to `take_report`."""
        for change in report.changes:
            try:
                apply_change(change)
            except ValueError as exc:  # a child of another version, or a bug: say which
                log.error(
                    "%s reported a change the worker cannot apply (%s): %s; skipped",
                    self.name,
                    exc,
                    change.model_dump_json(),
                )
        self.take_report(report)


def tune_gc() -> None:
    """Fewer, cheaper garbage collections for a long-running worker or child.

    Every detection allocates a few dozen short-lived objects, so at CPython's default gen-0
    threshold (700) the collector ran thousands of times a second, and its older generations
    walked everything start-up built (faust, aiokafka, pydantic schemas). What start-up built is
    frozen out of collection; young objects are collected every 20,000 allocations instead.
    Nearly all garbage is freed by reference counting anyway; only cycles wait for a pass.
    """
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


# glibc's mallopt(3) parameter, and the threshold it is fixed at: glibc's own starting value.
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 128 * 1024


def tune_allocator() -> bool:
    """Large buffers mapped on their own, so what a burst allocated goes back to the system.

    glibc starts by mapping each allocation of 128 KiB or more on its own and unmapping it when
    freed, but raises that threshold to the size of every mapped block freed (up to 32 MiB).
    After the first fetch responses and record batches (up to a few MiB each) were freed, the
    later ones came from the heap, and the heap keeps freed pages wherever a small allocation
    still sits above them: a catch-up left the intake about 40 MB larger for good, the worker
    itself about 20 MB, while Python held almost none of it. Setting the threshold turns the
    adjustment off (mallopt(3)). In the state bench memory per open case went from 1,165 to
    771 B (`bench/README.md`, 2026-12-02 morning).

    A `MALLOC_MMAP_THRESHOLD_` in the environment (glibc's own way to set it) is left to rule,
    and where the C library has no `mallopt` nothing changes. Returns whether it was set.
    """
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    import ctypes

    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


# --- the child's side ---------------------------------------------------------------------------


class ReportWriter:
    """A child's reports: metric changes gathered by `inc`, `set` and `observe`, written to the
    worker as one `Report` line by `write`."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self._changes: list[MetricChange] = []
        self.closed = False
        """Set once the worker is gone: nobody to report to."""

    def __bool__(self) -> bool:
        return bool(self._changes)

    def inc(
        self, counter: Counter, value: float = 1.0, labels: Mapping[str, str] | None = None
    ) -> None:
        self._add("inc", counter, value, labels)

    def set(self, gauge: Gauge, value: float, labels: Mapping[str, str] | None = None) -> None:
        self._add("set", gauge, value, labels)

    def observe(
        self, histogram: Histogram, value: float, labels: Mapping[str, str] | None = None
    ) -> None:
        self._add("observe", histogram, value, labels)

    def _add(
        self,
        kind: Literal["inc", "set", "observe"],
        metric: ChildMetric,
        value: float,
        labels: Mapping[str, str] | None,
    ) -> None:
        name = _NAMES.get(id(metric)) or metric_name(metric)
        self._changes.append(
            MetricChange(kind=kind, name=name, labels=dict(labels or {}), value=value)
        )

    def write(self, *, event_time: float | None = None) -> bool:
        """Write what was gathered (and `event_time`) as one line; False once the worker is
        gone."""
        report = Report(changes=self._changes, event_time=event_time)
        self._changes = []
        if self.closed:
            return False
        try:
            self._out.write(report.model_dump_json().encode() + b"\n")
            self._out.flush()
        except OSError:  # the worker is gone: nobody to report to
            self.closed = True
            return False
        return True


_watchers: set[asyncio.Future[None]] = set()


async def stop_event() -> asyncio.Event:
    """Set on SIGTERM or when stdin closes (the worker stopped, or died)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    reader = asyncio.StreamReader(limit=LINE_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def watch() -> None:
        while await reader.read(4096):
            pass
        stop.set()

    _watchers.add(asyncio.ensure_future(watch()))  # referenced, so never collected mid-watch
    return stop


def run_when_idle() -> None:
    """Give this process only the CPU nothing else wants: Linux's SCHED_IDLE, else nice 19.

    Under SCHED_IDLE a waking task of normal priority preempts this one at once, and the
    scheduler counts a core running only this as free when it places one. A nice-19 process
    keeps its slice when preempted (a few ms), so it still delayed the worker whenever the two
    met on a core. Every thread is set: threads started later inherit the policy, and the one
    a numerical library starts at import (shapely's) is already there.
    """
    try:
        for tid in os.listdir("/proc/self/task"):
            os.sched_setscheduler(int(tid), os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux
        with contextlib.suppress(OSError):
            os.nice(19)


def child_main(
    serve: Callable[[Settings], Coroutine[Any, Any, int]], *, when_idle: bool = False
) -> None:
    """Run a child: settings from the environment, logs to stderr, Ctrl-C left to the worker.
    With `when_idle` it runs only on CPU the rest leaves idle (`run_when_idle`)."""
    settings = load_settings()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    tune_allocator()
    # Ctrl-C reaches the whole process group; the worker decides when its children stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if when_idle:
        run_when_idle()
    sys.exit(asyncio.run(serve(settings)))
