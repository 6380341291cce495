"""`patrol demo`: the whole loop, live, for an audience.

One command starts a local broker (unless one answers already), the stub SMS gateway, a worker,
Prometheus (when installed) and both simulators, then shows what happens: detections coming in,
SMS warnings, parking grace cases closing as violations or self-corrected, and each enforcement
task as it reaches the dispatch topic, with its Chinese summary.

Every run is isolated: its own app id (`patrol-demo-<time>-<hex>`), its own topics (the contract
topic names prefixed with the app id) and its own run directory holding the worker's state and
every log. So a demo never reads an older demo's records, and what it counts is this run alone.

The first half of this module is pure (reading a scrape, tallying tasks, formatting the summary
and the report) and unit-tested without processes; the second half runs the processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

import click

from patrol import metrics
from patrol.domain.models import TaskType
from patrol.domain.texts import CHINA_STANDARD_TIME, TASK_TYPE_NAMES, department_name
from patrol.settings import topic_env, topic_names

DEFAULT_DURATION_SECONDS = 120.0
DEFAULT_TIME_SCALE = 15.0
DEFAULT_BROKER_PORT = 9092
WORKER_READY_TIMEOUT_SECONDS = 120.0
WORKER_STOP_TIMEOUT_SECONDS = 20.0
CHILD_STOP_TIMEOUT_SECONDS = 10.0
# After the simulators stop, tasks already decided still travel to the dispatch topic.
SETTLE_SECONDS = 3.0
PROMETHEUS_SCRAPE_INTERVAL = "2s"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})

# --- what the audience sees (pure) ---------------------------------------------------------


def _family(metric: Any) -> str:
    """The family name prometheus_client gives a metric (counters without `_total`)."""
    name: str = metric.describe()[0].name
    return name


@dataclass(frozen=True, slots=True)
class WorkerCounts:
    """The worker's counters that tell the story, read from one /metrics scrape."""

    detections_by_kind: Mapping[str, int] = field(default_factory=dict)
    dead_letters: int = 0
    sms_sent: int = 0
    sms_failed: int = 0
    cases_open: int = 0
    cases_violation: int = 0
    cases_self_corrected: int = 0
    reads_already_ticketed: int = 0
    """Plate reads the one-ticket-a-day rule suppressed (CONTRACT §5 rule 7)."""
    reads_outside_hours: int = 0
    """Plate reads in restricted zones outside their no-parking hours (rule 6)."""

    @property
    def detections(self) -> int:
        return sum(self.detections_by_kind.values())


def parse_worker_metrics(text: str) -> WorkerCounts:
    """WorkerCounts from a Prometheus text exposition of the worker's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    by_kind: Counter[str] = Counter()
    values: defaultdict[str, float] = defaultdict(float)
    wanted = {
        _family(metrics.detections_total): "detections",
        _family(metrics.deadletters_total): "dead_letters",
        _family(metrics.sms_total): "sms",
        _family(metrics.grace_cases_open): "cases_open",
        _family(metrics.grace_cases_closed_total): "cases_closed",
    }
    for family in text_string_to_metric_families(text):
        what = wanted.get(family.name)
        if what is None:
            continue
        sample_name = family.name + ("_total" if family.type == "counter" else "")
        for sample in family.samples:
            if sample.name != sample_name:
                continue
            if what == "detections":
                by_kind[sample.labels.get("kind", "unknown")] += int(sample.value)
                values[f"reads_{sample.labels.get('outcome', '')}"] += sample.value
            elif what == "sms":
                values[f"sms_{sample.labels.get('status', '')}"] += sample.value
            elif what == "cases_closed":
                values[f"cases_{sample.labels.get('result', '')}"] += sample.value
            else:
                values[what] += sample.value
    return WorkerCounts(
        detections_by_kind={kind: count for kind, count in sorted(by_kind.items()) if count},
        dead_letters=int(values["dead_letters"]),
        sms_sent=int(values["sms_sent"]),
        sms_failed=int(values["sms_failed"]),
        cases_open=int(values["cases_open"]),
        cases_violation=int(values["cases_violation"]),
        cases_self_corrected=int(values["cases_self_corrected"]),
        reads_already_ticketed=int(values["reads_already_ticketed"]),
        reads_outside_hours=int(values["reads_outside_hours"]),
    )


@dataclass(slots=True)
class TaskTally:
    """Enforcement tasks read from the dispatch topic, counted once per task id."""

    by_type: Counter[str] = field(default_factory=Counter)
    by_department: Counter[str] = field(default_factory=Counter)
    by_type_and_department: Counter[tuple[str, str]] = field(default_factory=Counter)
    task_ids: set[str] = field(default_factory=set)

    @property
    def total(self) -> int:
        return len(self.task_ids)

    def add(self, task: Mapping[str, Any]) -> bool:
        """Count a task; False when its id was counted already (the contract allows redelivery)."""
        task_id = str(task.get("task_id", ""))
        if task_id in self.task_ids:
            return False
        self.task_ids.add(task_id)
        task_type = str(task.get("task_type", "unknown"))
        department = str(task.get("department", "unknown"))
        self.by_type[task_type] += 1
        self.by_department[department] += 1
        self.by_type_and_department[(task_type, department)] += 1
        return True


@dataclass(frozen=True, slots=True)
class DemoSnapshot:
    """Everything the live summary shows at one moment."""

    elapsed_seconds: float
    event_time: datetime | None
    time_scale: float
    worker: WorkerCounts | None  # None while the worker's /metrics does not answer
    gateway_accepted: int | None  # None while the gateway does not answer
    tasks: TaskTally


def simulated_time(start: datetime, elapsed_seconds: float, time_scale: float) -> datetime:
    """The simulators' event time after `elapsed_seconds` of wall time."""
    return start + timedelta(seconds=elapsed_seconds * time_scale)


def max_future_minutes(time_scale: float, duration: float) -> str:
    """PATROL_MAX_FUTURE_MINUTES for the demo's worker: the simulators' event time runs up to
    duration × (time_scale − 1) ahead of the wall clock, which must not read as clock_skew;
    the default 10 minutes stay on top, and a run until Ctrl-C has no limit."""
    if duration <= 0 or math.isinf(time_scale):
        return "inf"
    return str(10 + math.ceil(duration * max(0.0, time_scale - 1) / 60))


def _type_name(task_type: str) -> str:
    try:
        return TASK_TYPE_NAMES[TaskType(task_type)]
    except ValueError:
        return task_type


def _join(parts: Iterable[str], empty: str = "none yet") -> str:
    text = " · ".join(parts)
    return text or empty


def _unknown(value: int | None) -> str:
    return "?" if value is None else str(value)


def _clock(snapshot: DemoSnapshot) -> str:
    if snapshot.event_time is None:
        return "event time --:--:--"
    local = snapshot.event_time.astimezone(CHINA_STANDARD_TIME)
    return f"event time {local:%H:%M:%S} (×{snapshot.time_scale:g})"


def summary_table(snapshot: DemoSnapshot) -> list[str]:
    """The compact table redrawn on a terminal, one string per line."""
    worker = snapshot.worker
    tasks = snapshot.tasks
    if worker is None:
        detections = "waiting for the worker's /metrics"
        sms = f"gateway accepted {_unknown(snapshot.gateway_accepted)}"
        cases = "?"
    else:
        detections = (
            _join(f"{kind} {count}" for kind, count in worker.detections_by_kind.items())
            + f"   dead letters {worker.dead_letters}"
        )
        sms = (
            f"sent {worker.sms_sent} · failed {worker.sms_failed} · "
            f"gateway accepted {_unknown(snapshot.gateway_accepted)}"
        )
        cases = (
            f"open {worker.cases_open} · closed violation {worker.cases_violation} · "
            f"closed self-corrected {worker.cases_self_corrected} · "
            f"reads after the day's ticket {worker.reads_already_ticketed} · "
            f"outside no-parking hours {worker.reads_outside_hours}"
        )
    by_type = _join(
        f"{_type_name(task_type)} {count}" for task_type, count in sorted(tasks.by_type.items())
    )
    by_department = _join(
        f"{department_name(department)} {count}"
        for department, count in sorted(tasks.by_department.items())
    )
    return [
        f"── patrol demo  {snapshot.elapsed_seconds:5.0f} s  {_clock(snapshot)} ──",
        f"detections   {detections}",
        f"SMS          {sms}",
        f"grace cases  {cases}",
        f"tasks        {tasks.total}: {by_type}",
        f"             {by_department}",
    ]


def display_width(text: str) -> int:
    """Terminal columns `text` takes: Chinese (wide) characters take two."""
    return sum(2 if unicodedata.east_asian_width(char) in "WF" else 1 for char in text)


def fit_width(line: str, columns: int) -> str:
    """`line` cut to `columns` terminal columns (ending in …), so a redrawn table never wraps."""
    if display_width(line) <= columns:
        return line
    kept, used = [], 0
    for char in line:
        width = display_width(char)
        if used + width > columns - 1:
            break
        kept.append(char)
        used += width
    return "".join(kept) + "…"


def summary_line(snapshot: DemoSnapshot) -> str:
    """The same numbers on one line, for logs and pipes."""
    worker = snapshot.worker
    head = f"[{snapshot.elapsed_seconds:5.0f} s, {_clock(snapshot)}]"
    tasks = (
        f"tasks {snapshot.tasks.total} ("
        + _join(
            (f"{t} {n}" for t, n in sorted(snapshot.tasks.by_type.items())),
            empty="none",
        )
        + ")"
    )
    if worker is None:
        return f"{head} worker not answering yet; {tasks}"
    return (
        f"{head} detections {worker.detections}, dead letters {worker.dead_letters}; "
        f"SMS sent {worker.sms_sent} failed {worker.sms_failed} "
        f"(gateway {_unknown(snapshot.gateway_accepted)}); "
        f"cases open {worker.cases_open} violation {worker.cases_violation} "
        f"self-corrected {worker.cases_self_corrected}, reads after the day's ticket "
        f"{worker.reads_already_ticketed}; {tasks}"
    )


def task_line(task: Mapping[str, Any]) -> str:
    """One line announcing a new enforcement task: event time, priority, Chinese summary."""
    created = str(task.get("created_at", ""))
    try:
        when = f"{datetime.fromisoformat(created).astimezone(CHINA_STANDARD_TIME):%H:%M:%S}"
    except ValueError:
        when = "--:--:--"
    priority = str(task.get("priority", "?"))
    summary = task.get("summary") or (
        f"{task.get('task_type', '?')} → {department_name(str(task.get('department', '?')))}"
    )
    return f"▶ {when} 派单 [{priority}] {summary}"


@dataclass(frozen=True, slots=True)
class DemoTopics:
    """This run's topics: the contract's names under the run's own prefix."""

    prefix: str

    @property
    def names(self) -> dict[str, str]:
        return topic_names(self.prefix)

    def env(self) -> dict[str, str]:
        return topic_env(self.prefix)


@dataclass(slots=True)
class RunInfo:
    """Where this run lives and how it was started; the fixed part of the report."""

    run_id: str
    run_dir: Path
    bootstrap: str
    broker_started: bool
    topics: DemoTopics
    seed: int
    time_scale: float
    event_time_start: datetime
    logs: dict[str, Path] = field(default_factory=dict)
    worker_metrics_url: str | None = None
    gateway_url: str | None = None
    prometheus_url: str | None = None


def build_report(
    snapshot: DemoSnapshot, run: RunInfo, *, stopped_by: str, error: str | None = None
) -> dict[str, Any]:
    """The final report as JSON-ready data: the live numbers plus where everything is."""
    worker = snapshot.worker or WorkerCounts()
    tasks = snapshot.tasks
    return {
        "run_id": run.run_id,
        "app_id": run.run_id,
        "run_dir": str(run.run_dir),
        "bootstrap": run.bootstrap,
        "broker_started": run.broker_started,
        "topics": run.topics.names,
        "logs": {name: str(path) for name, path in run.logs.items()},
        "worker_metrics_url": run.worker_metrics_url,
        "gateway_url": run.gateway_url,
        "prometheus_url": run.prometheus_url,
        "seed": run.seed,
        "time_scale": run.time_scale,
        "event_time_start": run.event_time_start.isoformat(),
        "event_time_end": snapshot.event_time.isoformat() if snapshot.event_time else None,
        "wall_seconds": round(snapshot.elapsed_seconds, 1),
        "stopped_by": stopped_by,
        "error": error,
        "worker_answered": snapshot.worker is not None,
        "detections_by_kind": dict(worker.detections_by_kind),
        "dead_letters": worker.dead_letters,
        "sms": {
            "sent": worker.sms_sent,
            "failed": worker.sms_failed,
            "gateway_accepted": snapshot.gateway_accepted,
        },
        "grace_cases": {
            "open": worker.cases_open,
            "closed_violation": worker.cases_violation,
            "closed_self_corrected": worker.cases_self_corrected,
            "reads_already_ticketed": worker.reads_already_ticketed,
            "reads_outside_hours": worker.reads_outside_hours,
        },
        "tasks": {
            "total": tasks.total,
            "by_type": dict(sorted(tasks.by_type.items())),
            "by_department": dict(sorted(tasks.by_department.items())),
            "by_type_and_department": [
                {"task_type": task_type, "department": department, "count": count}
                for (task_type, department), count in sorted(tasks.by_type_and_department.items())
            ],
        },
    }


def report_text(report: Mapping[str, Any]) -> str:
    """The final report as a person reads it at the end of the demo."""
    sms = report["sms"]
    cases = report["grace_cases"]
    tasks = report["tasks"]
    kinds = _join(
        (f"{kind} {count}" for kind, count in report["detections_by_kind"].items()), empty="none"
    )
    lines = [
        f"patrol demo {report['run_id']}: {report['wall_seconds']:g} s since the simulators "
        f"started, at ×{report['time_scale']:g}; stopped by {report['stopped_by']}",
        f"  detections:   {kinds}; dead letters {report['dead_letters']}",
        f"  SMS warnings: sent {sms['sent']}, failed {sms['failed']}, "
        f"gateway accepted {_unknown(sms['gateway_accepted'])}",
        f"  grace cases:  open {cases['open']}, closed violation {cases['closed_violation']}, "
        f"closed self-corrected {cases['closed_self_corrected']}",
        "                reads of vehicles already ticketed that day "
        f"{cases['reads_already_ticketed']} (one ticket a day), "
        f"outside no-parking hours {cases['reads_outside_hours']}",
        f"  tasks:        {tasks['total']}",
    ]
    for row in tasks["by_type_and_department"]:
        lines.append(
            f"    {_type_name(row['task_type'])} ({row['task_type']}) → "
            f"{department_name(row['department'])}: {row['count']}"
        )
    if not report["worker_answered"]:
        lines.append(
            "  the worker's /metrics did not answer at the end: its numbers above are zeros"
        )
    lines.append(f"  topics: {report['topics']['dispatch']} (dispatch) and the others with prefix")
    lines.append(f"          {report['app_id']} on {report['bootstrap']}")
    lines.append(f"  logs:   {report['run_dir']}")
    for name, path in report["logs"].items():
        lines.append(f"    {name + ':':<18}{path}")
    lines.append(f"  repeat with --seed {report['seed']}")
    if report["error"]:
        lines.append(f"  ERROR: {report['error']}")
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class BrokerPlan:
    """Which cluster to try, and where to start a local broker if it does not answer."""

    bootstrap: str
    local_port: int | None  # None: the cluster is not ours to start (not on this machine)


def plan_broker(option: str | None, environment: str | None, broker_port: int | None) -> BrokerPlan:
    """--bootstrap wins over PATROL_KAFKA_BOOTSTRAP; a local broker is only started on loopback."""
    given = option or environment
    if not given:
        port = broker_port or DEFAULT_BROKER_PORT
        return BrokerPlan(f"127.0.0.1:{port}", port)
    servers = [server.strip() for server in given.split(",") if server.strip()]
    if len(servers) == 1:
        host, _, port_text = servers[0].rpartition(":")
        if host in LOOPBACK_HOSTS and port_text.isdigit():
            return BrokerPlan(given, broker_port or int(port_text))
    return BrokerPlan(given, None)


# --- running the processes -------------------------------------------------------------------


class DemoError(click.ClickException):
    """A failure the person running the demo can act on; the message says what and where."""


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    # Linux: the child gets SIGTERM if the demo itself is killed (even with SIGKILL).
    with contextlib.suppress(Exception):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


@dataclass
class ChildProcess:
    """A `patrol` subcommand run with this interpreter, its output in a log file."""

    name: str
    args: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ChildProcess:
        # Started from the event loop's thread: the parent-death signal follows the thread.
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "patrol.cli", *self.args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # Own process group: Ctrl-C reaches the demo only, which stops children in order.
                process_group=0,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        return self

    @property
    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def stop(self, timeout: float = CHILD_STOP_TIMEOUT_SECONDS) -> None:
        """SIGTERM, then SIGKILL once `timeout` has passed; returns when the process is gone."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait()

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(the log is empty)"


def child_env(base: Mapping[str, str], overrides: Mapping[str, str]) -> dict[str, str]:
    """The environment of every child: the user's, minus what this run decides, plus that."""
    env = {k: v for k, v in base.items() if not k.startswith("PATROL_TOPIC_")}
    env.update(overrides)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class LiveDisplay:
    """The live view: a redrawn table on a terminal, a summary line every few seconds otherwise.
    New tasks are printed as they arrive, above the table."""

    def __init__(
        self,
        stream: TextIO,
        *,
        is_tty: bool,
        plain_every_seconds: float = 5.0,
        columns: Callable[[], int] = lambda: shutil.get_terminal_size().columns,
    ) -> None:
        self.stream = stream
        self.is_tty = is_tty
        self.columns = columns
        self.plain_every_seconds = plain_every_seconds
        self._drawn_lines = 0
        self._table: list[str] = []
        self._last_plain = -math.inf

    def _erase(self) -> None:
        if self._drawn_lines:
            self.stream.write(f"\x1b[{self._drawn_lines}F\x1b[J")
            self._drawn_lines = 0

    def _draw(self) -> None:
        for line in self._table:
            self.stream.write(line + "\n")
        self._drawn_lines = len(self._table)

    def say(self, line: str) -> None:
        """A line that stays: a new task, a note, an URL."""
        if self.is_tty:
            self._erase()
            self.stream.write(line + "\n")
            self._draw()
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def refresh(self, snapshot: DemoSnapshot, now: float) -> None:
        if self.is_tty:
            self._erase()
            width = self.columns()
            self._table = [fit_width(line, width) for line in summary_table(snapshot)]
            self._draw()
        elif now - self._last_plain >= self.plain_every_seconds:
            self._last_plain = now
            self.stream.write(summary_line(snapshot) + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Leave the last table on screen; later output goes below it."""
        self._drawn_lines = 0
        self._table = []


@dataclass
class DemoOptions:
    duration: float
    time_scale: float
    seed: int
    bootstrap: str | None
    broker_port: int | None
    keep_broker: bool
    run_dir: Path | None
    report: Path | None
    prometheus: bool
    refresh: float


class DemoRun:
    """One demo: starts everything, shows it, and stops everything it started, in order."""

    def __init__(self, options: DemoOptions, out: TextIO) -> None:
        self.options = options
        self.out = out
        self.display = LiveDisplay(out, is_tty=out.isatty())
        stamp = datetime.now(CHINA_STANDARD_TIME).strftime("%Y%m%d-%H%M%S")
        self.run_id = f"patrol-demo-{stamp}-{secrets.token_hex(2)}"
        self.run_dir = options.run_dir or Path(tempfile.gettempdir()) / self.run_id
        self.stop_requested = asyncio.Event()
        self.stopped_by = "duration"
        self.children: list[ChildProcess] = []
        self.simulators: list[ChildProcess] = []
        self.tasks = TaskTally()
        self.broker: Any = None  # the LocalBroker this run started, if any
        self.prometheus: Any = None
        self.wall_start: float | None = None
        self.run: RunInfo | None = None
        self.worker: ChildProcess | None = None
        self.gateway_url = ""
        self.metrics_url = ""

    # -- helpers ---------------------------------------------------------------------------

    def say(self, line: str) -> None:
        self.display.say(line)

    def request_stop(self, signum: int) -> None:
        if not self.stop_requested.is_set():
            self.stopped_by = signal.Signals(signum).name
            self.say(f"{self.stopped_by}: stopping everything the demo started…")
        self.stop_requested.set()

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> ChildProcess:
        child = ChildProcess(name, args, env, self.run_dir / f"{name}.log").start()
        self.children.append(child)
        assert self.run is not None
        self.run.logs[name] = child.log_path
        return child

    async def _wait_http(self, url: str, child: ChildProcess, timeout: float, what: str) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        last = "no answer yet"
        async with httpx.AsyncClient(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.stop_requested.is_set():
                    return
                if child.exit_code is not None:
                    raise DemoError(
                        f"the {what} exited with code {child.exit_code} while starting; "
                        f"its log ({child.log_path}) ends with:\n{child.log_tail()}"
                    )
                try:
                    response = await client.get(url)
                    if response.status_code == 200:
                        return
                    last = f"HTTP {response.status_code}"
                except httpx.HTTPError as exc:
                    last = type(exc).__name__
                await asyncio.sleep(0.3)
        raise DemoError(
            f"the {what} did not answer {url} within {timeout:.0f} s (last: {last}); "
            f"its log ({child.log_path}) ends with:\n{child.log_tail()}"
        )

    # -- the phases ------------------------------------------------------------------------

    async def _broker(self) -> tuple[str, bool]:
        from patrol.devtools.broker import BrokerError, LocalBroker, answers_metadata
        from patrol.settings import Settings

        plan = plan_broker(
            self.options.bootstrap,
            os.environ.get("PATROL_KAFKA_BOOTSTRAP"),
            self.options.broker_port,
        )
        if await asyncio.to_thread(answers_metadata, plan.bootstrap):
            self.say(f"Kafka: using the running cluster at {plan.bootstrap}")
            return plan.bootstrap, False
        if plan.local_port is None:
            raise DemoError(
                f"no Kafka broker answers at {plan.bootstrap} and it is not on this machine, so "
                "the demo cannot start one there. Fix PATROL_KAFKA_BOOTSTRAP / --bootstrap, or "
                "unset them to let the demo start a local broker."
            )
        local = LocalBroker(Settings().state_dir, port=plan.local_port)
        self.say(
            f"Kafka: starting a local broker on 127.0.0.1:{plan.local_port} "
            f"(state in {local.state_dir}; the first start fetches its jars with Maven)…"
        )
        try:
            status, started = await asyncio.to_thread(local.start)
        except BrokerError as exc:
            raise DemoError(
                f"the local Kafka broker could not start: {exc} (the demo takes --broker-port N "
                "or --bootstrap HOST:PORT)"
            ) from exc
        if started:
            self.broker = local
        return status.bootstrap, started

    async def _start_prometheus(self, worker_target: str) -> None:
        from patrol.devtools.prometheus import (
            PrometheusError,
            PrometheusServer,
            prometheus_available,
        )

        if not self.options.prometheus:
            return
        if not prometheus_available():
            self.say(
                "Prometheus: not installed, skipped (Debian: apt-get install prometheus); "
                f"the worker's metrics are at {self.metrics_url}"
            )
            return
        server = PrometheusServer(
            [worker_target],
            scrape_interval=PROMETHEUS_SCRAPE_INTERVAL,
            data_dir=self.run_dir / "prometheus",
        )
        try:
            await asyncio.to_thread(server.start)
        except PrometheusError as exc:
            self.say(f"Prometheus: could not start, going on without it ({exc})")
            return
        self.prometheus = server
        assert self.run is not None
        self.run.prometheus_url = server.url
        self.run.logs["prometheus"] = server.log_path
        self.say(
            f"Prometheus: {server.url}/graph?g0.expr=sum%20by(kind)(patrol_detections_total) "
            f"(scrapes the worker every {PROMETHEUS_SCRAPE_INTERVAL})"
        )

    async def _snapshot(self, client: Any) -> DemoSnapshot:
        import httpx

        worker: WorkerCounts | None = None
        accepted: int | None = None
        with contextlib.suppress(httpx.HTTPError, ValueError):
            response = await client.get(self.metrics_url)
            if response.status_code == 200:
                worker = parse_worker_metrics(response.text)
        with contextlib.suppress(httpx.HTTPError, ValueError):
            response = await client.get(f"{self.gateway_url}/messages")
            if response.status_code == 200:
                accepted = len(response.json())
        elapsed = 0.0 if self.wall_start is None else time.monotonic() - self.wall_start
        assert self.run is not None
        return DemoSnapshot(
            elapsed_seconds=elapsed,
            event_time=simulated_time(self.run.event_time_start, elapsed, self.options.time_scale)
            if self.wall_start is not None
            else None,
            time_scale=self.options.time_scale,
            worker=worker,
            gateway_accepted=accepted,
            tasks=self.tasks,
        )

    async def _follow_dispatch(self, bootstrap: str, topic: str) -> None:
        """Print each new task as it reaches the dispatch topic, and count it."""
        from aiokafka import AIOKafkaConsumer, TopicPartition

        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            client_id=f"{self.run_id}-display",
        )
        await consumer.start()
        try:
            partitions: set[int] = set()
            while not partitions:
                partitions = consumer.partitions_for_topic(topic) or set()
                if not partitions:
                    await consumer._client.force_metadata_update()
                    await asyncio.sleep(0.5)
            consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
            while True:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    for record in records:
                        self._show_task(record.value)
        finally:
            await consumer.stop()

    def _follower_done(self, follower: asyncio.Task[None]) -> None:
        if not follower.cancelled() and follower.exception() is not None:
            self.say(
                f"note: stopped reading the dispatch topic ({follower.exception()!r}); "
                "the task counts stop here, the worker goes on"
            )

    def _show_task(self, value: bytes | None) -> None:
        if value is None:
            return
        try:
            task = json.loads(value)
        except ValueError:
            self.say("▶ (a dispatch record that is not JSON)")
            return
        if isinstance(task, dict) and self.tasks.add(task):
            self.say(task_line(task))

    def _check_children(self) -> None:
        for child in self.children:
            code = child.exit_code
            if code is None:
                continue
            if child is self.worker or child.name == "sms-gateway":
                raise DemoError(
                    f"the {child.name} stopped unexpectedly (exit code {code}); its log "
                    f"({child.log_path}) ends with:\n{child.log_tail()}"
                )

    async def _live(self, client: Any) -> None:
        deadline = None if self.options.duration <= 0 else time.monotonic() + self.options.duration
        warned: set[str] = set()
        while not self.stop_requested.is_set():
            self._check_children()
            for sim in self.simulators:
                if sim.exit_code not in (None, 0) and sim.name not in warned:
                    warned.add(sim.name)
                    self.say(
                        f"note: {sim.name} exited with code {sim.exit_code}; "
                        f"its log ends with:\n{sim.log_tail(8)}"
                    )
            self.display.refresh(await self._snapshot(client), time.monotonic())
            if deadline is not None and time.monotonic() >= deadline:
                return
            wait = self.options.refresh
            if deadline is not None:
                wait = max(0.0, min(wait, deadline - time.monotonic()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop_requested.wait(), wait)

    async def _start_everything(self) -> tuple[str, str]:
        from patrol.devtools.prometheus import free_port

        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.say(f"patrol demo {self.run_id}")
        self.say(f"run directory (logs, worker state): {self.run_dir}")
        bootstrap, started = await self._broker()
        start = datetime.now(CHINA_STANDARD_TIME).replace(microsecond=0)
        topics = DemoTopics(self.run_id)
        self.run = RunInfo(
            run_id=self.run_id,
            run_dir=self.run_dir,
            bootstrap=bootstrap,
            broker_started=started,
            topics=topics,
            seed=self.options.seed,
            time_scale=self.options.time_scale,
            event_time_start=start,
        )
        if self.broker is not None:
            self.run.logs["broker"] = self.broker.log_file
        if self.stop_requested.is_set():
            return bootstrap, topics.names["dispatch"]

        web_port, sms_port = free_port(), free_port()
        while sms_port == web_port:
            sms_port = free_port()
        self.gateway_url = f"http://127.0.0.1:{sms_port}"
        self.metrics_url = f"http://127.0.0.1:{web_port}/metrics"
        self.run.gateway_url = self.gateway_url
        self.run.worker_metrics_url = self.metrics_url
        env = child_env(
            os.environ,
            {
                **topics.env(),
                "PATROL_KAFKA_BOOTSTRAP": bootstrap,
                "PATROL_APP_ID": self.run_id,
                "PATROL_DATA_DIR": str(self.run_dir / "worker-data"),
                "PATROL_WEB_PORT": str(web_port),
                "PATROL_SMS_PORT": str(sms_port),
                "PATROL_SMS_URL": self.gateway_url,
                "PATROL_PARTITIONS": os.environ.get("PATROL_PARTITIONS", "3"),
                "PATROL_MAX_FUTURE_MINUTES": max_future_minutes(
                    self.options.time_scale, self.options.duration
                ),
                "PATROL_DEMO_RUN": self.run_id,
            },
        )
        gateway = self._spawn("sms-gateway", ["sms-gateway", "--port", str(sms_port)], env)
        await self._wait_http(f"{self.gateway_url}/healthz", gateway, 30.0, "SMS gateway")
        self.say(f"SMS gateway: {self.gateway_url}/messages")
        self.worker = self._spawn("worker", ["worker"], env)
        self.say(f"worker: starting (app id {self.run_id}), waiting until it is ready…")
        await self._wait_http(
            f"http://127.0.0.1:{web_port}/readyz",
            self.worker,
            WORKER_READY_TIMEOUT_SECONDS,
            "worker",
        )
        if self.stop_requested.is_set():
            return bootstrap, topics.names["dispatch"]
        self.say(f"worker: ready, metrics at {self.metrics_url}")
        await self._start_prometheus(f"127.0.0.1:{web_port}")
        if self.stop_requested.is_set():
            return bootstrap, topics.names["dispatch"]
        common = [
            "--seed",
            str(self.options.seed),
            "--time-scale",
            f"{self.options.time_scale:g}",
            "--start",
            start.isoformat(),
            "--quiet",
        ]
        for kind in ("cameras", "drones"):
            self.simulators.append(
                self._spawn(f"simulate-{kind}", ["simulate", kind, *common], env)
            )
        self.wall_start = time.monotonic()
        minutes = 10 / self.options.time_scale * 60
        self.say(
            f"simulators: cameras and drones from {start:%H:%M:%S} event time, "
            f"×{self.options.time_scale:g} (a 10-minute grace period takes {minutes:.0f} s), "
            f"seed {self.options.seed}"
        )
        how_long = (
            "until Ctrl-C"
            if self.options.duration <= 0
            else f"for {self.options.duration:g} s (Ctrl-C stops earlier)"
        )
        self.say(f"running {how_long}; each new enforcement task appears below as it is dispatched")
        return bootstrap, topics.names["dispatch"]

    async def _stop_everything(self) -> None:
        """Stop in the order data flows: simulators, worker, gateway, Prometheus, broker."""
        for sim in self.simulators:
            await asyncio.to_thread(sim.stop)
        for child in reversed(self.children):
            timeout = (
                WORKER_STOP_TIMEOUT_SECONDS if child is self.worker else CHILD_STOP_TIMEOUT_SECONDS
            )
            await asyncio.to_thread(child.stop, timeout)
        if self.prometheus is not None:
            await asyncio.to_thread(self.prometheus.stop)
            self.prometheus = None
        if self.broker is not None and not self.options.keep_broker:
            await asyncio.to_thread(self.broker.stop)
            self.say(f"Kafka: stopped the local broker on {self.broker.bootstrap}")
        elif self.broker is not None:
            self.say(
                f"Kafka: the local broker keeps running on {self.broker.bootstrap} "
                f"(stop it with `patrol broker stop --port {self.broker.port}`)"
            )

    async def main(self) -> dict[str, Any]:
        import httpx

        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self.request_stop, signum)
        follower: asyncio.Task[None] | None = None
        error: str | None = None
        failure: DemoError | None = None
        snapshot: DemoSnapshot | None = None
        try:
            async with httpx.AsyncClient(timeout=2.0) as client:
                try:
                    bootstrap, dispatch_topic = await self._start_everything()
                    if not self.stop_requested.is_set():
                        follower = asyncio.create_task(
                            self._follow_dispatch(bootstrap, dispatch_topic)
                        )
                        follower.add_done_callback(self._follower_done)
                        await self._live(client)
                        for sim in self.simulators:
                            await asyncio.to_thread(sim.stop)
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self.stop_requested.wait(), SETTLE_SECONDS)
                        self._check_children()
                except DemoError as exc:
                    failure = exc
                    error = exc.message.splitlines()[0]
                    self.stopped_by = "error"
                if self.run is not None and self.wall_start is not None:
                    snapshot = await self._snapshot(client)
        finally:
            if follower is not None:
                follower.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await follower
            self.display.close()
            await self._stop_everything()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
        if failure is not None and snapshot is None:
            raise failure  # nothing ran yet: the error is the whole story
        assert self.run is not None
        snapshot = snapshot or DemoSnapshot(
            0.0, None, self.options.time_scale, None, None, self.tasks
        )
        report = build_report(snapshot, self.run, stopped_by=self.stopped_by, error=error)
        if self.options.report is not None:
            self.options.report.parent.mkdir(parents=True, exist_ok=True)
            self.options.report.write_text(
                json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
            )
        self.out.write("\n" + report_text(report) + "\n")
        if self.options.report is not None:
            self.out.write(f"  report: {self.options.report}\n")
        self.out.flush()
        if failure is not None:
            raise failure
        return report


def run_demo(options: DemoOptions, out: TextIO | None = None) -> dict[str, Any]:
    """Run one demo to its end; returns the final report. Raises DemoError on failure."""
    import logging

    # aiokafka logs each refused connection while topics appear; the display says what matters.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    return asyncio.run(DemoRun(options, out or sys.stdout).main())


def _random_seed() -> int:
    return secrets.randbelow(999_999) + 1


@click.command(
    "demo",
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0),
    default=DEFAULT_DURATION_SECONDS,
    show_default=True,
    envvar="PATROL_DEMO_DURATION",
    show_envvar=True,
    help="Wall-clock seconds of simulated traffic, counted once the worker is ready; 0 runs "
    "until Ctrl-C.",
)
@click.option(
    "--time-scale",
    type=click.FloatRange(min=1),
    default=DEFAULT_TIME_SCALE,
    show_default=True,
    envvar="PATROL_DEMO_TIME_SCALE",
    show_envvar=True,
    help="Event time runs N× faster than the wall clock: at 15 a 10-minute grace period passes "
    "in 40 s, the scripted ticket comes ~45 s in and the self-corrected car closes ~65 s in.",
)
@click.option(
    "--seed",
    type=int,
    default=None,
    envvar="PATROL_DEMO_SEED",
    show_envvar=True,
    help="Seed of both simulators; the same seed gives the same traffic (default: a new one, "
    "printed at the end).",
)
@click.option(
    "--bootstrap",
    default=None,
    help="Kafka to use if it answers [default: PATROL_KAFKA_BOOTSTRAP, else 127.0.0.1:9092]. "
    "If nothing answers on this machine, the demo starts a local broker there.",
)
@click.option(
    "--broker-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Port of the local broker the demo starts when no Kafka answers [default: the "
    "bootstrap's port, 9092]. Its state lives in PATROL_STATE_DIR.",
)
@click.option(
    "--keep-broker",
    is_flag=True,
    help="Leave a local broker the demo started running afterwards (one already running is "
    "never stopped).",
)
@click.option(
    "--prometheus/--no-prometheus",
    default=True,
    show_default=True,
    help="Start Prometheus scraping the worker every 2 s, when the `prometheus` binary is "
    "installed, and print its URL.",
)
@click.option(
    "--run-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Where logs and the worker's state go [default: a new patrol-demo-<time> directory "
    "in the system temp dir].",
)
@click.option(
    "--report",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    envvar="PATROL_DEMO_REPORT",
    show_envvar=True,
    help="Also write the final report as JSON to this file.",
)
@click.option(
    "--refresh",
    type=click.FloatRange(min=0.2),
    default=1.0,
    show_default=True,
    help="Seconds between refreshes of the live summary.",
)
def demo_command(
    duration: float,
    time_scale: float,
    seed: int | None,
    bootstrap: str | None,
    broker_port: int | None,
    keep_broker: bool,
    prometheus: bool,
    run_dir: Path | None,
    report: Path | None,
    refresh: float,
) -> None:
    """The whole loop, live: Kafka, the SMS gateway, a worker, Prometheus and both simulators.

    \b
    What the audience sees:
      - where everything runs: the run directory with every log, the SMS gateway, the worker's
        /metrics and the Prometheus URL;
      - a live summary (a table on a terminal, a line every 5 s otherwise): detections in by
        kind, dead letters, SMS warnings sent and failed, parking grace cases open / closed as
        violation / closed as self-corrected, enforcement tasks by type and department;
      - each enforcement task as it reaches the dispatch topic, with its Chinese summary, e.g.
        ▶ 10:11:20 派单 [normal] 【违停】安文街道文溪路车辆浙G12345违停超时未驶离,请县综合…
      - within the first minute or so the scripted scene: a car that overstays and gets a task,
        one that leaves within the grace period (self-corrected), a market vendor (占道经营)
        and a fire at the water-source reservoir (露天焚烧, urgent);
      - at the end, a report with the same numbers and where the logs are.

    \b
    Each run is isolated: its app id patrol-demo-<time>-<hex> is also the prefix of its own
    topics (e.g. patrol-demo-….dispatch.tasks), and the worker keeps its state in the run
    directory, so nothing from an earlier demo is counted. Ctrl-C or SIGTERM stops it cleanly:
    simulators, worker, gateway, Prometheus and a broker the demo started are all stopped.
    """
    options = DemoOptions(
        duration=duration,
        time_scale=time_scale,
        seed=seed if seed is not None else _random_seed(),
        bootstrap=bootstrap,
        broker_port=broker_port,
        keep_broker=keep_broker,
        run_dir=run_dir,
        report=report,
        prometheus=prometheus,
        refresh=refresh,
    )
    run_demo(options)


def main(argv: Sequence[str] | None = None) -> None:  # pragma: no cover - convenience entry
    demo_command.main(args=list(argv) if argv is not None else None, prog_name="patrol demo")


if __name__ == "__main__":  # pragma: no cover
    main()
