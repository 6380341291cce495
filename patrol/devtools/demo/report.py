"""What the demo's audience sees, as data and text: the worker's counters read from a scrape,
the tasks tallied from the dispatch topic, the live summary's rows and line, and the final report.

Pure: no process, no terminal, no clock; unit-tested in tests/unit/devtools/test_demo.py.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from patrol import metrics
from patrol.devtools.demo.lamps import ATTENTION_ROWS, LampBoard, mask_plate
from patrol.domain.models import TaskType
from patrol.domain.texts import CHINA_STANDARD_TIME, TASK_TYPE_NAMES, department_name
from patrol.settings import topic_env, topic_names


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
    lamps: LampBoard | None = None  # None: no status topic followed


def simulated_time(start: datetime, elapsed_seconds: float, time_scale: float) -> datetime:
    """The simulators' event time after `elapsed_seconds` of wall time."""
    return start + timedelta(seconds=elapsed_seconds * time_scale)


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


def summary_title(snapshot: DemoSnapshot) -> str:
    """The live summary's heading: wall seconds since the simulators started, and event time."""
    return f"patrol demo  {snapshot.elapsed_seconds:.0f} s  {_clock(snapshot)}"


def summary_rows(snapshot: DemoSnapshot) -> list[tuple[str, str]]:
    """The live summary as (label, value) rows: the compact table shown on a terminal."""
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
    rows = [
        ("detections", detections),
        ("SMS", sms),
        ("grace cases", cases),
        ("tasks", f"{tasks.total}: {by_type}"),
        ("", by_department),
    ]
    lamps = snapshot.lamps
    if lamps is not None:
        rows.append(("lamps", lamps.lamp_text() if lamps.records else "no status record yet"))
        attention = lamps.attention()
        rows.extend(("", line) for line in attention[:ATTENTION_ROWS])
        if len(attention) > ATTENTION_ROWS:
            rows.append(("", f"… and {len(attention) - ATTENTION_ROWS} more reopened or overdue"))
    return rows


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
    if snapshot.lamps is not None and snapshot.lamps.records:
        tasks += f"; lamps {snapshot.lamps.lamp_text()}"
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
    summary = str(task.get("summary") or "") or (
        f"{task.get('task_type', '?')} → {department_name(str(task.get('department', '?')))}"
    )
    plate = task.get("plate")
    if plate:  # the screen is shared: the summary names the vehicle, the line masks it
        summary = summary.replace(str(plate), mask_plate(str(plate)))
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
        "loop": snapshot.lamps.report() if snapshot.lamps is not None else None,
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
    loop = report.get("loop")
    if loop is not None:
        lamps = loop["open_by_lamp"]
        lines.append(
            f"  lamps:        open green {lamps['green']}, yellow {lamps['yellow']}, "
            f"red {lamps['red']}; {loop['status_records']} status records of {loop['tasks']} tasks"
        )
        on_time, rework = loop["on_time_share"], loop["rework_share"]
        lines.append(
            f"  closed:       {loop['closed']}; on time (never red) "
            + ("-" if on_time is None else f"{loop['closed_on_time']} = {on_time:.0%}")
            + ", reopened at least once (rework) "
            + ("-" if rework is None else f"{loop['closed_reopened']} = {rework:.0%}")
        )
        for line in loop["attention"]:
            lines.append(f"    {line}")
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
