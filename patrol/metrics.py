"""Every Prometheus metric patrol exposes, defined once.

Labels are bounded enums only: never a plate, an event id or a phone number.
The alert rules (patrol/data/prometheus/alerts.yml) and the Grafana dashboard
(patrol/data/grafana/patrol.json) are checked against the names defined here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Generic, TypeVar

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, Info

from patrol import __version__
from patrol.domain.models import DeadLetterReason, DetectionKind, SmsStatus, SourceType, TaskType

if TYPE_CHECKING:
    from patrol.domain.routing import Route

DETECTION_OUTCOMES = (
    "accepted",
    "invalid",
    "low_confidence",
    "exempt",
    "duplicate",
    "outside_zone",
    "outside_hours",
    "late",
    "already_ticketed",
)
# The kind of a message that could not be decoded; it counts as outcome "invalid", so
# patrol_detections_total counts every message read from the input topics exactly once.
UNKNOWN_KIND = "unknown"
CASE_RESULTS = ("violation", "self_corrected")
SMS_ATTEMPT_RESULTS = ("accepted", "rejected", "error")

detections_total = Counter(
    "patrol_detections_total",
    "Detections taken in, by source type, kind and what became of them.",
    ["source_type", "kind", "outcome"],
)
grace_cases_open = Gauge(
    "patrol_grace_cases_open", "Parking grace cases currently open on this worker."
)
grace_cases_closed_total = Counter(
    "patrol_grace_cases_closed_total", "Parking grace cases closed, by result.", ["result"]
)
incidents_open = Gauge(
    "patrol_incidents_open", "Hazard incidents currently open on this worker.", ["kind"]
)
incident_detections_merged_total = Counter(
    "patrol_incident_detections_merged_total",
    "Hazard detections merged into an already open incident.",
    ["kind"],
)
sms_total = Counter("patrol_sms_total", "SMS warnings by final status.", ["status"])
sms_attempts_total = Counter(
    "patrol_sms_attempts_total", "HTTP attempts made to the SMS gateway, by result.", ["result"]
)
sms_send_seconds = Histogram(
    "patrol_sms_send_seconds",
    "Time from putting an SMS warning in the outbox to its final outcome.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
sms_queue_depth = Gauge(
    "patrol_sms_queue_depth", "SMS warnings in the outbox not yet finished (waiting or being sent)."
)
tasks_total = Counter(
    "patrol_tasks_total",
    "Enforcement tasks emitted to the dispatch topic.",
    ["task_type", "department", "priority"],
)
DISPATCH_SLO_SECONDS = 1.0
dispatch_latency_seconds = Histogram(
    "patrol_dispatch_latency_seconds",
    "From the triggering detection entering Kafka to its task being sent to dispatch.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, DISPATCH_SLO_SECONDS, 2.5, 5, 10, 30),
)
deadletters_total = Counter(
    "patrol_deadletters_total", "Messages sent to the dead-letter topic, by reason.", ["reason"]
)
clock_skew_detections_total = Counter(
    "patrol_clock_skew_detections_total",
    "Detections dead-lettered as clock_skew: timed more than PATROL_MAX_FUTURE_MINUTES ahead of "
    "the worker's wall clock, by the source type whose clock is wrong.",
    ["source_type"],
)
intake_merge_holds_total = Counter(
    "patrol_intake_merge_holds_total",
    "Intake rounds in which the event-time merger held fetched detections back, waiting for an "
    "input partition with records on the broker not yet fetched (a catch-up or a replay; live, "
    "with no lag, it stays flat).",
)
event_time_lag_seconds = Gauge(
    "patrol_event_time_lag_seconds",
    "Wall clock minus the latest event time this worker has seen.",
)
consumer_lag_messages = Gauge(
    "patrol_consumer_lag_messages",
    "Messages behind the end of each input topic, summed over assigned partitions.",
    ["topic"],
)
sources_active = Gauge(
    "patrol_sources_active",
    "Distinct cameras or drones heard from in the last 5 minutes of wall time.",
    ["source_type"],
)
fetching_partitions = Gauge(
    "patrol_worker_fetching_partitions",
    "Partitions the worker's Kafka client fetches, by kind: stream (its input topics) or "
    "changelog (its tables' changelogs, read only while recovering them).",
    ["kind"],
)
worker_ready = Gauge(
    "patrol_worker_ready", "1 when partitions are assigned and table state is recovered."
)
# --- the closed loop (CONTRACT §10): evaluation (综合评价) by department -----------------------
FEEDBACK_OUTCOMES = ("applied", "duplicate", "rejected")
CLOSE_TIMELINESS = ("on_time", "late")
task_status_records_total = Counter(
    "patrol_task_status_records_total",
    "TaskStatus records written to the status topic, by status and cause.",
    ["status", "cause"],
)
task_feedback_total = Counter(
    "patrol_task_feedback_total",
    "Feedback records taken from the feedback topic, by what became of them (rejected ones "
    "are dead-lettered).",
    ["outcome"],
)
tasks_closed_total = Counter(
    "patrol_tasks_closed_total",
    "Tasks closed, by department and whether the field work ended by the due time.",
    ["department", "timeliness"],
)
tasks_reopened_total = Counter(
    "patrol_tasks_reopened_total",
    "Resolved hazard tasks reopened because the hazard was seen again (rework).",
    ["department"],
)
tasks_extended_total = Counter(
    "patrol_tasks_extended_total", "Extensions (延期) granted, by department.", ["department"]
)
tasks_returned_total = Counter(
    "patrol_tasks_returned_total",
    "Tasks returned (回退) to the command center, by department.",
    ["department"],
)
tasks_open = Gauge(
    "patrol_tasks_open",
    "Tasks not yet closed, by department and lamp, over the task partitions this worker owns.",
    ["department", "lamp"],
)
_LOOP_BUCKETS = (60, 300, 600, 1800, 3600, 2 * 3600, 4 * 3600, 8 * 3600, 24 * 3600, 72 * 3600)
task_time_to_accepted_seconds = Histogram(
    "patrol_task_time_to_accepted_seconds",
    "Event time from a task's dispatch (or its reopening) to its acceptance, by department.",
    ["department"],
    buckets=_LOOP_BUCKETS,
)
task_time_to_resolved_seconds = Histogram(
    "patrol_task_time_to_resolved_seconds",
    "Event time from a task's dispatch (or its reopening) to its resolution, by department.",
    ["department"],
    buckets=_LOOP_BUCKETS,
)
status_latency_seconds = Histogram(
    "patrol_status_latency_seconds",
    "From a feedback record entering Kafka to its status record being sent.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

build_info = Info("patrol_build", "Version of the running patrol.")
build_info.info({"version": __version__})


def precreate_children() -> None:
    """Create every labelled child at 0 so rates and absent() behave from the first scrape."""
    for source_type in SourceType:
        sources_active.labels(source_type.value)
        clock_skew_detections_total.labels(source_type.value)
        for kind in DetectionKind:
            for outcome in DETECTION_OUTCOMES:
                detections_total.labels(source_type.value, kind.value, outcome)
        detections_total.labels(source_type.value, UNKNOWN_KIND, "invalid")
    for result in CASE_RESULTS:
        grace_cases_closed_total.labels(result)
    for hazard in (TaskType.roadside_vending, TaskType.open_burning):
        incidents_open.labels(hazard.value)
        incident_detections_merged_total.labels(hazard.value)
    for status in SmsStatus:
        sms_total.labels(status.value)
    for result in SMS_ATTEMPT_RESULTS:
        sms_attempts_total.labels(result)
    for reason in DeadLetterReason:
        deadletters_total.labels(reason.value)
    for outcome in FEEDBACK_OUTCOMES:
        task_feedback_total.labels(outcome)
    # patrol_tasks_total children depend on the routing table: see precreate_task_series.


def precreate_task_series(routes: Iterable[tuple[TaskType, Route]]) -> None:
    """Zero series for every route, so rate() and increase() count a route's first task."""
    for task_type, route in routes:
        tasks_total.labels(task_type.value, route.department, route.priority.value)
        department = route.department
        for timeliness in CLOSE_TIMELINESS:
            tasks_closed_total.labels(department, timeliness)
        for counter in (tasks_reopened_total, tasks_extended_total, tasks_returned_total):
            counter.labels(department)
        for lamp in ("green", "yellow", "red"):
            tasks_open.labels(department, lamp)


_SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
}


def exposed_series_names(registry: CollectorRegistry = REGISTRY) -> frozenset[str]:
    """Names of every patrol_* series a scrape can return, labelled children or not."""
    names: set[str] = set()
    for family in registry.collect():
        if family.name.startswith("patrol_"):
            names.update(family.name + suffix for suffix in _SAMPLE_SUFFIXES[family.type])
    return frozenset(names)


_Metric = TypeVar("_Metric", Counter, Gauge, Histogram)


class Children(Generic[_Metric]):
    """The labelled children of one metric, each looked up once: `labels()` checks and locks on
    every call, which the stateful path paid several times per detection. Children are never
    removed in patrol (they are pre-created at 0), so a child once found stays the one scraped.
    """

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: _Metric) -> None:
        self._metric: _Metric = metric
        self._children: dict[tuple[str, ...], _Metric] = {}

    def __call__(self, *values: str) -> _Metric:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


detections = Children(detections_total)
grace_cases_closed = Children(grace_cases_closed_total)
incident_detections_merged = Children(incident_detections_merged_total)
tasks = Children(tasks_total)
status_records = Children(task_status_records_total)
task_feedback = Children(task_feedback_total)
tasks_open_by_lamp = Children(tasks_open)
tasks_closed = Children(tasks_closed_total)
tasks_reopened = Children(tasks_reopened_total)
tasks_extended = Children(tasks_extended_total)
tasks_returned = Children(tasks_returned_total)
task_time_to_accepted = Children(task_time_to_accepted_seconds)
task_time_to_resolved = Children(task_time_to_resolved_seconds)

precreate_children()
