"""A real Prometheus scrapes a real worker fed a known patrol day.

The day runs twice, three hours apart (a morning and an afternoon round), so every task route
exists before it grows and each dashboard rate moves. Each round has a ticketed vehicle, one
that drives off in time, an exempt police car, low-confidence and outside-zone reads, a vending
stall, a fire in the water-source zone seen in several drone frames, a field fire, drone
heartbeats, a few malformed messages and a heartbeat from a camera whose clock runs a day ahead.
The gateway answers 503 to the first POST of every message; at the end it refuses one vehicle's
warning until the worker gives up on it. After each round the field answers its four tasks
(parking accepted and resolved, the stall resolved and then back, the reservoir fire accepted and
extended, the field fire returned), so the closed loop's records and metrics move too.

Then Prometheus must hold exactly what the topics and the gateway show, every dashboard query
must have data, and the worker's live /metrics must carry no plate, event id or phone number.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from patrol.devtools.prometheus import (
    PanelQuery,
    PrometheusServer,
    dashboard_queries,
    prometheus_available,
)
from tests.unit.test_metrics import personal_data_in

from .helpers import Topics, produce_values, read_json
from .stack import (
    PARKING_ALLOWED,
    T0,
    WATER_SOURCE,
    Gateway,
    Stack,
    detection,
    gateway_process,
    heartbeat,
    minutes,
    point_in,
    report,
)

pytestmark = pytest.mark.integration

ALERTS = 9
MARKET = "anwen-market"
FARMLAND = "jianshan-guantou-farmland"
NOWHERE = {"lat": 29.0, "lon": 120.3}  # inside the county's bounds, in no zone
EXEMPT_PLATE = "浙G1234警"
UNLUCKY_PLATE = "浙G99999"  # warned while the gateway refuses every attempt
ROUNDS = (
    ("am", T0, ("浙G12345", "浙GD54321")),
    ("pm", T0 + timedelta(hours=3), ("浙G23456", "浙GD65432")),
)
SMS_GIVE_UP_SECONDS = 3  # short, so the refused warning fails within the test


@dataclass(frozen=True, slots=True)
class Fed:
    """One message put on an input topic, and what the worker must count it as."""

    drone: bool
    key: bytes
    value: bytes
    source_type: str
    kind: str
    outcome: str
    dead_letter: str | None = None


def fed(value: dict[str, Any], outcome: str = "accepted") -> Fed:
    source = value["source"]
    return Fed(
        drone=source["type"] == "drone",
        key=source["id"].encode(),
        value=json.dumps(value, ensure_ascii=False).encode(),
        source_type=source["type"],
        kind=value["kind"],
        outcome=outcome,
    )


def malformed(key: str, value: bytes, reason: str) -> Fed:
    return Fed(False, key.encode(), value, "camera", "unknown", "invalid", reason)


def near(zone: str, step: int) -> dict[str, float]:
    """A few metres from the zone's representative point: frames of one fire jitter."""
    point = point_in(zone)
    return {"lat": round(point["lat"] + step * 0.00003, 6), "lon": point["lon"]}


def round_reads(name: str, start: datetime, ticketed: str, leaves: str) -> list[Fed]:
    """Everything a round sees up to the ticketed vehicle's confirming read (start + 10:30)."""

    def at(m: float) -> datetime:
        return start + minutes(m)

    fire = "drone-jianshan-01"
    tomorrow = datetime.now().astimezone() + timedelta(days=1)  # the wall clock's tomorrow
    reads = [
        fed(detection(f"{name}-ticket-0", at(0), plate=ticketed)),
        fed(detection(f"{name}-ticket-4", at(4), plate=ticketed)),
        fed(detection(f"{name}-leaves-0", at(0), plate=leaves, source="cam-0020")),
        fed(detection(f"{name}-leaves-5", at(5), plate=leaves, source="cam-0020")),
        fed(detection(f"{name}-police", at(1), plate=EXEMPT_PLATE), "exempt"),
        fed(
            detection(f"{name}-blurred", at(2), plate="浙G55555", confidence=0.5), "low_confidence"
        ),
        fed(
            detection(
                f"{name}-yard", at(2), plate="浙G66666", zone=PARKING_ALLOWED, source="cam-0031"
            ),
            "outside_zone",
        ),
        fed(
            detection(
                f"{name}-field-rd", at(3), plate="浙G77777", location=NOWHERE, source="cam-0090"
            ),
            "outside_zone",
        ),
        *(
            fed(
                detection(
                    f"{name}-stall-{m}",
                    at(m),
                    kind="roadside_vending",
                    location=near(MARKET, i),
                    confidence=0.8,
                    source="cam-0040",
                )
            )
            for i, m in enumerate((3, 6))
        ),
        fed(
            detection(
                f"{name}-stall-shadow",
                at(7),
                kind="roadside_vending",
                zone=MARKET,
                confidence=0.4,
                source="cam-0040",
            ),
            "low_confidence",
        ),
        *(
            fed(
                detection(
                    f"{name}-reservoir-fire-{m}",
                    at(m),
                    kind="open_burning",
                    location=near(WATER_SOURCE, i),
                    confidence=0.9,
                    source=fire,
                    source_type="drone",
                )
            )
            for i, m in enumerate((2, 4, 6, 8))
        ),
        fed(
            detection(
                f"{name}-field-fire",
                at(7),
                kind="open_burning",
                zone=FARMLAND,
                confidence=0.7,
                source=fire,
                source_type="drone",
            )
        ),
        fed(
            detection(
                f"{name}-drone-hb",
                at(9),
                kind="heartbeat",
                confidence=None,
                source=fire,
                source_type="drone",
            )
        ),
        malformed(f"{name}-bad-json", b"{not json", "invalid_json"),
        malformed(
            "cam-0066",
            json.dumps(heartbeat(f"{name}-hb-tomorrow", tomorrow, "cam-0066")).encode(),
            "clock_skew",
        ),
        malformed(f"{name}-bad-utf8", b'{"event_id": "\xff"}', "invalid_json"),
        malformed(
            f"{name}-bad-plate",
            json.dumps(detection(f"{name}-bad-plate", at(1), plate="ABC123")).encode(),
            "schema",
        ),
        fed(detection(f"{name}-ticket-10.5", at(10.5), plate=ticketed)),
    ]
    return reads


def round_heartbeats(name: str, start: datetime) -> list[Fed]:
    """Camera heartbeats past the driven-off vehicle's deadline + recheck (start + 15)."""
    return [fed(heartbeat(f"{name}-hb-{m}", start + minutes(m), "cam-0020")) for m in (12, 16)]


def round_feedback(name: str, start: datetime, tasks: list[dict[str, Any]]) -> list[dict]:
    """The field's answers to the round's four tasks."""

    def task(event_id: str) -> dict[str, Any]:
        return next(t for t in tasks if t["evidence"][0]["event_id"] == f"{name}-{event_id}")

    def at(m: float) -> datetime:
        return start + minutes(m)

    parking, stall = task("ticket-0"), task("stall-3")
    water, field_fire = task("reservoir-fire-2"), task("field-fire")
    extend_until = datetime.fromisoformat(water["due_by"]) + minutes(60)
    return [
        report(parking["task_id"], "accepted", at(11), f"{name}-fb-1"),
        report(parking["task_id"], "resolved", at(14), f"{name}-fb-2"),
        report(stall["task_id"], "accepted", at(8), f"{name}-fb-3"),
        report(stall["task_id"], "resolved", at(12), f"{name}-fb-4"),
        report(water["task_id"], "accepted", at(9), f"{name}-fb-5"),
        report(
            water["task_id"],
            "extended",
            at(13),
            f"{name}-fb-6",
            extend_until=extend_until.isoformat(),
        ),
        report(field_fire["task_id"], "returned", at(10), f"{name}-fb-7"),
    ]


def stall_back(name: str, start: datetime) -> Fed:
    """The vendor is back at the market eight minutes after the stall was cleared."""
    return fed(
        detection(
            f"{name}-stall-back",
            start + minutes(20),
            kind="roadside_vending",
            location=near(MARKET, 1),
            confidence=0.8,
            source="cam-0040",
        )
    )


def unlucky_read() -> Fed:
    start = ROUNDS[-1][1]
    return fed(detection("pm-unlucky-0", start + minutes(20), plate=UNLUCKY_PLATE))


@dataclass
class PatrolDay:
    """What the day fed in, and what came out on the topics and the gateway."""

    fed: list[Fed]
    started: float  # wall clock when the first round was sent
    messages: list[dict[str, Any]] = field(default_factory=list)
    tasks: list[dict[str, Any]] = field(default_factory=list)
    sms_records: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    statuses: list[dict[str, Any]] = field(default_factory=list)


def wait_until(check: Callable[[], bool], what: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.3)


WorkerCount = tuple[str, dict[str, str], float]  # sample name, labels, the sum it must reach


def live_sum(stack: Stack, name: str, labels: dict[str, str]) -> float:
    """The sum of the worker's current `name` samples that carry these labels."""
    text = httpx.get(stack.metrics_url, timeout=5).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def wait_for_worker(stack: Stack, *counts: WorkerCount) -> None:
    """Wait until the worker's own /metrics show each count."""

    def caught_up() -> bool:
        return all(live_sum(stack, name, labels) == want for name, labels, want in counts)

    def shown() -> str:
        return ", ".join(
            f"{name}{labels}={live_sum(stack, name, labels)} (want {want})"
            for name, labels, want in counts
        )

    try:
        wait_until(caught_up, "the worker to process the step")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {shown()}\n{stack.workers[-1].log_tail()}") from exc


def prometheus_shows(prometheus: PrometheusServer, expr: str, want: float) -> Callable[[], bool]:
    return lambda: scalar(prometheus, expr) == want


def feed(stack: Stack, messages: list[Fed]) -> None:
    for drone in (False, True):
        items: list[tuple[bytes | None, bytes]] = [
            (m.key, m.value) for m in messages if m.drone is drone
        ]
        topic = stack.topics.drone if drone else stack.topics.camera
        if items:
            asyncio.run(produce_values(stack.bootstrap, topic, items))


def scalar(prometheus: PrometheusServer, expr: str) -> float:
    """The single value of `expr` now; an empty result (no series yet) counts as 0."""
    result = prometheus.query(expr)
    assert len(result) <= 1, f"{expr} should give one number, got {result}"
    return float(result[0]["value"][1]) if result else 0.0


def by_labels(
    prometheus: PrometheusServer, expr: str, *labels: str
) -> dict[tuple[str, ...], float]:
    """The non-zero series of `expr`, keyed by the values of `labels`."""
    values = {}
    for series in prometheus.query(expr):
        value = float(series["value"][1])
        if value:
            values[tuple(series["metric"].get(label, "") for label in labels)] = value
    return values


@pytest.fixture(scope="module")
def patrol_stack(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("prometheus-stack")
    gateway: Gateway = gateway_process(base, "--fail-first", "1")
    running = Stack(bootstrap, Topics(), gateway, base)
    try:
        running.start_worker(PATROL_SMS_RETRY_SECONDS=str(SMS_GIVE_UP_SECONDS))
        yield running
    finally:
        running.stop()
        gateway.process.stop()


@pytest.fixture(scope="module")
def prometheus(patrol_stack: Stack) -> Iterator[PrometheusServer]:
    if not prometheus_available():
        message = "prometheus is not installed: `apt-get install prometheus` (see the Makefile)"
        if os.environ.get("PATROL_TEST_RUN"):
            pytest.fail(message)  # inside `make test` a missing Prometheus is a failure
        pytest.skip(message)
    target = f"127.0.0.1:{patrol_stack.web_ports[-1]}"
    with PrometheusServer([target], scrape_interval="1s") as server:
        server.wait_for_scrapes(2)
        yield server


@pytest.fixture(scope="module")
def day(patrol_stack: Stack, prometheus: PrometheusServer) -> PatrolDay:
    """Feed the day step by step, each once the worker has finished the one before."""
    stack = patrol_stack
    day = PatrolDay(fed=[], started=time.time())
    for number, (name, start, (ticketed, leaves)) in enumerate(ROUNDS, start=1):
        for step in (round_reads(name, start, ticketed, leaves), round_heartbeats(name, start)):
            feed(stack, step)
            day.fed.extend(step)
            wait_for_worker(
                stack,
                ("patrol_detections_total", {}, len(day.fed)),
                ("patrol_tasks_total", {}, 4 * number),
                ("patrol_sms_total", {"status": "sent"}, 2 * number),
                ("patrol_grace_cases_closed_total", {"result": "violation"}, number),
            )
        wait_for_worker(
            stack, ("patrol_grace_cases_closed_total", {"result": "self_corrected"}, number)
        )
        # The field answers; then the vendor comes back within the verify window.
        tasks = asyncio.run(stack.tasks(min_count=4 * number, timeout=60))
        answers = round_feedback(name, start, tasks)
        asyncio.run(stack.send_feedback(*answers))
        wait_for_worker(stack, ("patrol_task_feedback_total", {"outcome": "applied"}, 7 * number))
        back = stall_back(name, start)
        feed(stack, [back])
        day.fed.append(back)
        wait_for_worker(
            stack,
            ("patrol_detections_total", {}, len(day.fed)),
            ("patrol_tasks_reopened_total", {}, number),
        )
        # Let Prometheus see this round's tasks before the next round adds to them.
        wait_until(
            prometheus_shows(prometheus, "sum(patrol_tasks_total)", 4 * number),
            "Prometheus to scrape the round's tasks",
            timeout=30,
        )

    stack.gateway.set_faults(fail_first=1_000_000)
    try:
        feed(stack, [unlucky_read()])
        day.fed.append(unlucky_read())
        wait_for_worker(
            stack,
            ("patrol_detections_total", {}, len(day.fed)),
            ("patrol_sms_total", {"status": "failed"}, 1),
        )
    finally:
        stack.gateway.set_faults(fail_first=1)

    day.messages = stack.gateway.messages()
    day.tasks = asyncio.run(stack.tasks(min_count=8, timeout=60))
    day.sms_records = asyncio.run(read_json(stack.bootstrap, stack.topics.sms, min_count=5))
    malformed_count = sum(1 for m in day.fed if m.dead_letter)
    day.dead_letters = asyncio.run(
        read_json(stack.bootstrap, stack.topics.deadletter, min_count=malformed_count)
    )
    # Every status record the worker counted is on the topic (lamp changes come with the clock).
    wait_until(
        lambda: (
            live_sum(stack, "patrol_task_status_records_total", {})
            == len(asyncio.run(stack.statuses(timeout=5)))
        ),
        "the status topic to hold every status record counted",
    )
    day.statuses = asyncio.run(stack.statuses(timeout=10))
    # Prometheus must hold the worker's final numbers, and have scraped them twice.
    live = live_sum(stack, "patrol_detections_total", {})
    wait_until(
        lambda: (
            scalar(prometheus, "sum(patrol_detections_total)") == live
            and scalar(prometheus, 'sum(patrol_sms_total{status="failed"})') == 1
            and scalar(prometheus, "sum(patrol_task_status_records_total)") == len(day.statuses)
        ),
        "Prometheus to scrape the day's final counts",
        timeout=30,
    )
    scrapes = scalar(prometheus, 'count_over_time(up{job="patrol"}[1h])')
    wait_until(
        lambda: scalar(prometheus, 'count_over_time(up{job="patrol"}[1h])') >= scrapes + 2,
        "two more scrapes",
        timeout=30,
    )
    return day


def test_the_worker_is_scraped_and_ready(prometheus: PrometheusServer, patrol_stack: Stack) -> None:
    [up] = prometheus.query('up{job="patrol"}')

    assert up["metric"]["instance"] == f"127.0.0.1:{patrol_stack.web_ports[-1]}"
    assert up["value"][1] == "1"
    assert scalar(prometheus, "sum(patrol_worker_ready)") == 1


def test_sms_sent_equals_what_the_gateway_accepted(
    prometheus: PrometheusServer, day: PatrolDay
) -> None:
    sent = scalar(prometheus, 'sum(patrol_sms_total{status="sent"})')

    assert sent == len(day.messages) == 4
    assert {m["plate"] for m in day.messages} == {p for _, _, plates in ROUNDS for p in plates}
    assert UNLUCKY_PLATE not in {m["plate"] for m in day.messages}


def test_sms_outcomes_equal_the_audit_topic(prometheus: PrometheusServer, day: PatrolDay) -> None:
    audited = Counter(record["status"] for record in day.sms_records)

    assert by_labels(prometheus, "sum by (status) (patrol_sms_total)", "status") == {
        (status,): count for status, count in audited.items()
    }
    [failed] = [r for r in day.sms_records if r["status"] == "failed"]
    assert failed["plate"] == UNLUCKY_PLATE
    assert scalar(prometheus, "sum(patrol_sms_send_seconds_count)") == len(day.sms_records)


def test_gateway_attempts_equal_the_attempts_audited(
    prometheus: PrometheusServer, day: PatrolDay
) -> None:
    sent = [r for r in day.sms_records if r["status"] == "sent"]
    refused = sum(r["attempts"] for r in day.sms_records) - len(sent)

    assert scalar(prometheus, 'sum(patrol_sms_attempts_total{result="accepted"})') == len(sent)
    assert scalar(prometheus, 'sum(patrol_sms_attempts_total{result="error"})') == refused
    # Every warning met one injected 503 first; the refused one met nothing else.
    assert all(r["attempts"] == 2 for r in sent)
    assert [m["attempt_count"] for m in day.messages] == [2] * len(day.messages)
    assert scalar(prometheus, 'sum(patrol_sms_attempts_total{result="rejected"})') == 0


def test_tasks_equal_the_dispatch_topic_by_type_department_and_priority(
    prometheus: PrometheusServer, day: PatrolDay
) -> None:
    dispatched = Counter((t["task_type"], t["department"], t["priority"]) for t in day.tasks)

    assert scalar(prometheus, "sum(patrol_tasks_total)") == len(day.tasks) == 8
    assert by_labels(
        prometheus,
        "sum by (task_type, department, priority) (patrol_tasks_total)",
        "task_type",
        "department",
        "priority",
    ) == dict(dispatched)
    assert dispatched == {
        ("illegal_parking", "comprehensive_enforcement", "normal"): 2,
        ("roadside_vending", "comprehensive_enforcement", "normal"): 2,
        ("open_burning", "ecology_environment", "urgent"): 2,
        ("open_burning", "agriculture_rural", "high"): 2,
    }
    assert scalar(prometheus, "sum(patrol_dispatch_latency_seconds_count)") == len(day.tasks)


def test_dead_letters_equal_the_dead_letter_topic(
    prometheus: PrometheusServer, day: PatrolDay
) -> None:
    on_topic = Counter(letter["reason"] for letter in day.dead_letters)

    assert by_labels(prometheus, "sum by (reason) (patrol_deadletters_total)", "reason") == {
        (reason,): count for reason, count in on_topic.items()
    }
    assert on_topic == Counter(m.dead_letter for m in day.fed if m.dead_letter)


def test_detections_by_outcome_equal_what_was_sent(
    prometheus: PrometheusServer, day: PatrolDay
) -> None:
    sent = Counter((m.source_type, m.kind, m.outcome) for m in day.fed)

    scraped = by_labels(
        prometheus,
        "sum by (source_type, kind, outcome) (patrol_detections_total)",
        "source_type",
        "kind",
        "outcome",
    )

    assert scraped == dict(sent)
    assert {outcome for _, _, outcome in sent} == {
        "accepted",
        "exempt",
        "low_confidence",
        "outside_zone",
        "invalid",
    }


def test_grace_cases_closed_by_result_match_the_day(
    prometheus: PrometheusServer, day: PatrolDay
) -> None:
    closed = by_labels(prometheus, "sum by (result) (patrol_grace_cases_closed_total)", "result")

    assert closed == {("violation",): len(ROUNDS), ("self_corrected",): len(ROUNDS)}
    assert closed[("violation",)] == sum(t["task_type"] == "illegal_parking" for t in day.tasks)
    assert scalar(prometheus, "sum(patrol_grace_cases_open)") == 1  # the unlucky vehicle's


def test_hazard_frames_merge_into_one_task_per_incident(
    prometheus: PrometheusServer, day: PatrolDay
) -> None:
    merged = by_labels(
        prometheus, "sum by (kind) (patrol_incident_detections_merged_total)", "kind"
    )
    # A vendor back within the verify window reopens the task: it joins no incident as a merge.
    accepted = Counter(
        m.kind for m in day.fed if m.outcome == "accepted" and b"stall-back" not in m.value
    )
    tasks = Counter(t["task_type"] for t in day.tasks)

    assert merged == {
        ("open_burning",): accepted["open_burning"] - tasks["open_burning"],
        ("roadside_vending",): accepted["roadside_vending"] - tasks["roadside_vending"],
    }
    assert merged == {("open_burning",): 6, ("roadside_vending",): 2}


def test_the_loops_metrics_equal_the_status_topic(
    prometheus: PrometheusServer, day: PatrolDay
) -> None:
    records = day.statuses
    by_status_cause = Counter((r["status"], r["cause"]) for r in records)
    latest: dict[str, dict[str, Any]] = {}
    for record in records:
        latest[record["task_id"]] = record
    open_by_lamp = Counter(
        (r["department"], r["lamp"]) for r in latest.values() if r["status"] != "closed"
    )

    assert by_labels(
        prometheus,
        "sum by (status, cause) (patrol_task_status_records_total)",
        "status",
        "cause",
    ) == dict(by_status_cause)
    assert by_labels(
        prometheus, "sum by (department, lamp) (patrol_tasks_open)", "department", "lamp"
    ) == dict(open_by_lamp)
    closed = Counter(r["department"] for r in records if r["status"] == "closed")
    assert by_status_cause[("reopened", "clock")] > 0  # the am stall's lamps ran on after it
    assert by_labels(
        prometheus, "sum by (department) (patrol_tasks_closed_total)", "department"
    ) == {(d,): n for d, n in closed.items()}
    # A lamp change carries the task's status too: only the record that made the change counts.
    for metric, status, cause in (
        ("patrol_tasks_reopened_total", "reopened", "redetected"),
        ("patrol_tasks_extended_total", "extended", "feedback"),
        ("patrol_tasks_returned_total", "returned", "feedback"),
        ("patrol_task_time_to_accepted_seconds_count", "accepted", "feedback"),
        ("patrol_task_time_to_resolved_seconds_count", "resolved", "feedback"),
    ):
        want = Counter(
            r["department"] for r in records if (r["status"], r["cause"]) == (status, cause)
        )
        assert by_labels(prometheus, f"sum by (department) ({metric})", "department") == {
            (d,): n for d, n in want.items()
        }, metric
    # the day as the field answered it: each task dispatched once, two rounds of answers
    assert by_status_cause[("dispatched", "dispatched")] == len(day.tasks)
    assert by_status_cause[("reopened", "redetected")] == len(ROUNDS)
    assert by_status_cause[("closed", "verified")] == len(ROUNDS)  # the parking tasks
    assert scalar(prometheus, "sum(patrol_status_latency_seconds_count)") == 7 * len(ROUNDS)


QUIET_WHEN_LIVE = frozenset({"Intake rounds held for event-time order"})
"""Panels whose counters a live day need not move: they count what a catch-up does."""


@pytest.mark.parametrize(
    "query",
    dashboard_queries(rate_interval="$__rate_interval"),
    ids=lambda q: f"{q.panel}/{q.ref_id}",
)
def test_dashboard_query_returns_data(
    query: PanelQuery, prometheus: PrometheusServer, day: PatrolDay
) -> None:
    # A Grafana time range that covers the whole day, as an operator looking at it would pick.
    window = f"{math.ceil(time.time() - day.started) + 5}s"
    expr = query.expr.replace("$__rate_interval", window)

    result = prometheus.query(expr)

    assert result, f"panel {query.panel!r} would be empty: {expr}"
    values = [float(series["value"][1]) for series in result]
    assert all(math.isfinite(v) for v in values), f"{query.panel!r} shows NaN: {expr} -> {values}"
    # A finite ratio already proves its denominator moved; 0 within the SLO is a real answer.
    # A panel of what a live day does not do (the merger's holds wait for a catch-up) shows 0.
    if (
        ("rate(" in expr or "increase(" in expr)
        and " / " not in expr
        and query.panel not in QUIET_WHEN_LIVE
    ):
        assert any(v > 0 for v in values), f"the day did not move {query.panel!r}: {expr}"


def test_alert_rules_load_and_evaluate_cleanly(
    prometheus: PrometheusServer, day: PatrolDay
) -> None:
    deadline = time.monotonic() + 15
    while True:
        [group] = prometheus.rule_groups()
        rules = group["rules"]
        if all(rule["health"] != "unknown" for rule in rules) or time.monotonic() > deadline:
            break
        time.sleep(0.2)

    assert group["name"] == "patrol"
    assert len(rules) == ALERTS
    for rule in rules:
        assert rule["health"] == "ok", f"{rule['name']}: {rule.get('lastError')}"
        assert rule["labels"]["severity"] in ("critical", "warning")
        assert rule["annotations"]["summary"]
        assert rule["annotations"]["description"]


def test_live_metrics_carry_no_plate_event_id_or_phone(patrol_stack: Stack, day: PatrolDay) -> None:
    exposition = httpx.get(patrol_stack.metrics_url, timeout=5).content
    text = exposition.decode("utf-8")
    identifiers = {
        *(json.loads(m.value)["event_id"] for m in day.fed if not m.dead_letter),
        *(json.loads(m.value).get("plate") or "" for m in day.fed if not m.dead_letter),
        *(m.key.decode() for m in day.fed),
        *(t["task_id"] for t in day.tasks),
        *(r["message_id"] for r in day.sms_records),
        *(r["case_id"] for r in day.sms_records),
    } - {""}

    assert personal_data_in(exposition) == []
    assert sorted(i for i in identifiers if i in text) == []
    assert "patrol_detections_total" in text  # the page is the real exposition


def test_metrics_page_renders_only_the_names_asked_for(patrol_stack: Stack, day: PatrolDay) -> None:
    url = patrol_stack.metrics_url
    everything = httpx.get(url, timeout=5).text
    asked = httpx.get(
        url,
        params={"name[]": ["patrol_detections_total", "patrol_grace_cases_open"]},
        timeout=5,
    ).text

    def families(text: str) -> set[str]:
        return {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}

    assert families(asked) == {"patrol_detections_total", "patrol_grace_cases_open"}
    assert len(families(everything)) > 10
    # the samples asked for are the same as in the full page
    detections = [
        line for line in everything.splitlines() if line.startswith("patrol_detections_total{")
    ]
    assert detections and all(line in asked for line in detections)
