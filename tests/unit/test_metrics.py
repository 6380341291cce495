"""What a scrape of patrol shows: bounded labels only, never a plate, event id or phone number."""

from __future__ import annotations

import asyncio
import re
from datetime import datetime, timedelta, timezone

import httpx
from prometheus_client import REGISTRY, CollectorRegistry, Counter, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from patrol import metrics
from patrol.domain.grace import SmsRequest
from patrol.domain.models import (
    PLATE_PATTERN,
    DeadLetterReason,
    DetectionKind,
    Priority,
    SmsRecord,
    SourceType,
    TaskType,
)
from patrol.settings import Settings
from patrol.sms.notifier import SmsNotifier

CST = timezone(timedelta(hours=8))
PLATE = "浙G12345"
NEW_ENERGY_PLATE = "浙GD12345"
EVENT_ID = "cam-0017-20261127T100000-0001"
PHONE = "13812345678"
FORBIDDEN_LABEL_NAMES = frozenset({"plate", "event_id", "phone", "message_id"})
PHONE_NUMBER = re.compile(r"(?<!\d)1\d{10}(?!\d)")
# Event ids carry a compact timestamp (cam-0017-20261127T100000-0001); labels never should.
EVENT_ID_LIKE = re.compile(r"\d{8}T\d{6}")


def personal_data_in(exposition: bytes) -> list[str]:
    """Every label in a scrape that names or carries a plate, an event id or a phone number."""
    findings = []
    for family in text_string_to_metric_families(exposition.decode("utf-8")):
        for sample in family.samples:
            for name, value in sample.labels.items():
                where = f"{sample.name}{{{name}={value!r}}}"
                if name in FORBIDDEN_LABEL_NAMES:
                    findings.append(f"label name {name!r} in {where}")
                if PLATE_PATTERN.search(value) or any(p in value for p in (PLATE, "浙G")):
                    findings.append(f"plate-like value in {where}")
                if PHONE_NUMBER.search(value):
                    findings.append(f"phone-like value in {where}")
                if EVENT_ID_LIKE.search(value) or value == EVENT_ID:
                    findings.append(f"event-id-like value in {where}")
    return findings


async def send_warnings_through_the_notifier() -> list[SmsRecord]:
    """One warning the gateway accepts and one it rejects, both naming a plate and a phone."""

    async def gateway(request: httpx.Request) -> httpx.Response:
        if request.headers["Idempotency-Key"].endswith("rejected"):
            return httpx.Response(422, json={"error": f"no owner phone for {NEW_ENERGY_PLATE}"})
        return httpx.Response(201, json={"phone": PHONE})

    outcomes: list[SmsRecord] = []
    both_recorded = asyncio.Event()
    settings = Settings(sms_url="http://gateway.test", sms_concurrency=1)  # type: ignore[call-arg]

    async def record(outcome: SmsRecord) -> None:
        outcomes.append(outcome)
        if len(outcomes) == 2:
            both_recorded.set()

    notifier = SmsNotifier(settings, record, transport=httpx.MockTransport(gateway))
    await notifier.start()
    for message_id, plate in (("sms-accepted", PLATE), ("sms-rejected", NEW_ENERGY_PLATE)):
        warning = SmsRequest(
            message_id=message_id,
            case_id=f"case-{EVENT_ID}",
            plate=plate,
            zone_id="panan-anwen-old-street",
            text=f"【磐安综合执法】您的车辆{plate}在安文老街违停,请于10:10前驶离。",
            deadline=datetime(2026, 11, 27, 10, 10, tzinfo=CST),
        )
        assert notifier.submit(warning)
    async with asyncio.timeout(5):
        await both_recorded.wait()
    await notifier.stop()
    return outcomes


def exercise_every_metric() -> None:
    """Touch every metric with every bounded label value the pipeline uses."""
    for source_type in SourceType:
        metrics.sources_active.labels(source_type.value).set(3)
        metrics.clock_skew_detections_total.labels(source_type.value).inc()
        for kind in DetectionKind:
            for outcome in metrics.DETECTION_OUTCOMES:
                metrics.detections_total.labels(source_type.value, kind.value, outcome).inc()
    for result in metrics.CASE_RESULTS:
        metrics.grace_cases_closed_total.labels(result).inc()
    metrics.grace_cases_open.set(2)
    for hazard in (TaskType.roadside_vending, TaskType.open_burning):
        metrics.incidents_open.labels(hazard.value).set(1)
        metrics.incident_detections_merged_total.labels(hazard.value).inc()
    for task_type in TaskType:
        for priority in Priority:
            metrics.tasks_total.labels(
                task_type.value, "comprehensive_enforcement", priority.value
            ).inc()
    metrics.dispatch_latency_seconds.observe(0.2)
    for reason in DeadLetterReason:
        metrics.deadletters_total.labels(reason.value).inc()
    metrics.event_time_lag_seconds.set(1.5)
    metrics.consumer_lag_messages.labels("patrol.detections.camera").set(12)
    metrics.consumer_lag_messages.labels("patrol.detections.drone").set(0)
    metrics.worker_ready.set(1)
    metrics.fetching_partitions.labels("stream").set(10)
    metrics.fetching_partitions.labels("changelog").set(0)
    department = "comprehensive_enforcement"
    metrics.task_status_records_total.labels("accepted", "feedback").inc()
    metrics.task_feedback_total.labels("applied").inc()
    metrics.tasks_closed_total.labels(department, "on_time").inc()
    metrics.tasks_reopened_total.labels(department).inc()
    metrics.tasks_extended_total.labels(department).inc()
    metrics.tasks_returned_total.labels(department).inc()
    metrics.tasks_open.labels(department, "red").set(1)
    metrics.task_time_to_accepted_seconds.labels(department).observe(300)
    metrics.task_time_to_resolved_seconds.labels(department).observe(3000)
    metrics.status_latency_seconds.observe(0.05)


async def test_a_scrape_after_real_traffic_carries_no_personal_data() -> None:
    outcomes = await send_warnings_through_the_notifier()
    exercise_every_metric()

    exposition = generate_latest(REGISTRY)

    assert sorted(o.status.value for o in outcomes) == ["failed", "sent"]
    assert personal_data_in(exposition) == []
    assert PLATE.encode() not in exposition
    assert NEW_ENERGY_PLATE.encode() not in exposition
    assert PHONE.encode() not in exposition
    assert EVENT_ID.encode() not in exposition


def test_the_personal_data_check_catches_a_plate_an_event_id_and_a_phone() -> None:
    registry = CollectorRegistry()
    leaky = Counter(
        "patrol_leaky_total",
        "a metric labelled the wrong way",
        ["plate", "source"],
        registry=registry,
    )
    leaky.labels(PLATE, EVENT_ID).inc()
    leaky.labels("ok", f"owner {PHONE}").inc()

    findings = personal_data_in(generate_latest(registry))

    assert any("label name 'plate'" in f for f in findings)
    assert any("plate-like value" in f for f in findings)
    assert any("event-id-like value" in f for f in findings)
    assert any("phone-like value" in f for f in findings)


def test_every_patrol_metric_shows_up_once_exercised_with_bounded_labels() -> None:
    exercise_every_metric()

    families = {
        f.name: f for f in text_string_to_metric_families(generate_latest(REGISTRY).decode())
    }
    patrol_families = {name: f for name, f in families.items() if name.startswith("patrol_")}
    label_values: dict[str, set[str]] = {}
    for family in patrol_families.values():
        assert family.samples, f"{family.name} has no samples after exercising every metric"
        for sample in family.samples:
            for name, value in sample.labels.items():
                label_values.setdefault(name, set()).add(value)

    # Every name the dashboard and alerts are checked against is really exposed.
    exposed = {s.name for f in patrol_families.values() for s in f.samples}
    assert metrics.exposed_series_names() == exposed
    # Enum labels stay small: no per-vehicle or per-event values. Topics and departments
    # come from configuration, and other tests in the same process may add their own.
    for name, values in label_values.items():
        if name not in ("le", "topic", "department"):
            assert len(values) <= 16, f"label {name!r} has {len(values)} values: {sorted(values)}"


def test_counters_follow_prometheus_naming() -> None:
    for family in REGISTRY.collect():
        if not family.name.startswith("patrol_"):
            continue
        if family.type == "counter":
            assert not family.name.endswith("_total"), "the client adds _total itself"
        if family.type == "histogram":
            assert family.name.endswith("_seconds"), f"{family.name}: histograms are in seconds"
        assert family.documentation, f"{family.name} needs a help text"


def test_the_dispatch_slo_is_a_bucket_boundary() -> None:
    metrics.dispatch_latency_seconds.observe(0.3)

    bounds = {
        float(sample.labels["le"])
        for family in REGISTRY.collect()
        if family.name == "patrol_dispatch_latency_seconds"
        for sample in family.samples
        if sample.name.endswith("_bucket")
    }

    assert metrics.DISPATCH_SLO_SECONDS in bounds
