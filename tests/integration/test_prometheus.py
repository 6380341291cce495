"""A real Prometheus scrapes patrol: counters arrive exactly, every dashboard query has data,
the alert rules load and evaluate.

The scrape target comes from the `scrape_target` fixture. Here it is a small exporter of
patrol's own registry driven with known increments; to check a real worker instead, override
the fixture with its /metrics address, a `drive` that feeds it a scenario, and the counters
that scenario must move.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import pytest
from prometheus_client import start_http_server

from patrol import metrics
from patrol.promrunner import (
    PanelQuery,
    PrometheusServer,
    dashboard_queries,
    free_port,
    prometheus_available,
)

pytestmark = pytest.mark.integration

ALERTS = 7


@dataclass(frozen=True, slots=True)
class ScrapeTarget:
    address: str  # host:port serving /metrics
    drive: Callable[[], None]  # makes the traffic the expected increases count
    expected_increase: Mapping[str, float]  # PromQL giving one number -> how much drive adds


def drive_known_traffic() -> None:
    """A small patrol day: plate reads, a hazard, warnings, tasks and a few bad messages."""
    detections = metrics.detections_total
    detections.labels("camera", "plate_read", "accepted").inc(40)
    detections.labels("camera", "plate_read", "low_confidence").inc(3)
    detections.labels("camera", "heartbeat", "accepted").inc(12)
    detections.labels("drone", "open_burning", "accepted").inc(5)
    detections.labels("drone", "heartbeat", "accepted").inc(6)
    metrics.deadletters_total.labels("schema").inc(2)
    metrics.deadletters_total.labels("invalid_json").inc(1)
    metrics.sources_active.labels("camera").set(12)
    metrics.sources_active.labels("drone").set(2)

    metrics.grace_cases_open.set(4)
    metrics.grace_cases_closed_total.labels("violation").inc(2)
    metrics.grace_cases_closed_total.labels("self_corrected").inc(3)

    metrics.sms_total.labels("sent").inc(8)
    metrics.sms_total.labels("failed").inc(1)
    metrics.sms_attempts_total.labels("accepted").inc(8)
    metrics.sms_attempts_total.labels("error").inc(3)
    metrics.sms_attempts_total.labels("rejected").inc(1)
    for seconds in (0.04, 0.06, 0.08, 0.1, 0.2, 0.3, 1.5, 4.0, 45.0):
        metrics.sms_send_seconds.observe(seconds)
    metrics.sms_queue_depth.set(0)

    metrics.tasks_total.labels("illegal_parking", "comprehensive_enforcement", "normal").inc(2)
    metrics.tasks_total.labels("open_burning", "ecology_environment", "urgent").inc(1)
    for seconds in (0.03, 0.12, 1.8):
        metrics.dispatch_latency_seconds.observe(seconds)
    metrics.incidents_open.labels("open_burning").set(1)
    metrics.incident_detections_merged_total.labels("open_burning").inc(4)

    metrics.consumer_lag_messages.labels("patrol.detections.camera").set(7)
    metrics.consumer_lag_messages.labels("patrol.detections.drone").set(0)
    metrics.event_time_lag_seconds.set(1.5)
    metrics.worker_ready.set(1)


KNOWN_TRAFFIC = {
    'sum(patrol_detections_total{source_type="camera"})': 55,
    'sum(patrol_detections_total{source_type="drone"})': 11,
    'sum(patrol_detections_total{outcome="low_confidence"})': 3,
    "sum(patrol_deadletters_total)": 3,
    'sum(patrol_grace_cases_closed_total{result="self_corrected"})': 3,
    'sum(patrol_grace_cases_closed_total{result="violation"})': 2,
    'sum(patrol_sms_total{status="sent"})': 8,
    'sum(patrol_sms_total{status="failed"})': 1,
    "sum(patrol_sms_send_seconds_count)": 9,
    "sum(patrol_tasks_total)": 3,
    'sum(patrol_tasks_total{priority="urgent"})': 1,
    "sum(patrol_dispatch_latency_seconds_count)": 3,
    'sum(patrol_dispatch_latency_seconds_bucket{le="1.0"})': 2,
    "sum(patrol_incident_detections_merged_total)": 4,
}


@pytest.fixture(scope="module")
def scrape_target() -> Iterator[ScrapeTarget]:
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1")
    yield ScrapeTarget(f"127.0.0.1:{port}", drive_known_traffic, KNOWN_TRAFFIC)
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture(scope="module")
def prometheus(scrape_target: ScrapeTarget) -> Iterator[PrometheusServer]:
    if not prometheus_available():
        message = "prometheus is not installed: `apt-get install prometheus` (see the Makefile)"
        if os.environ.get("PATROL_TEST_RUN"):
            pytest.fail(message)  # inside `make test` a missing Prometheus is a failure
        pytest.skip(message)
    with PrometheusServer([scrape_target.address], scrape_interval="1s") as server:
        server.wait_for_scrapes(2)
        yield server


def scalar(prometheus: PrometheusServer, expr: str) -> float:
    """The single value of `expr` now; an empty result (no series yet) counts as 0."""
    result = prometheus.query(expr)
    assert len(result) <= 1, f"{expr} should give one number, got {result}"
    return float(result[0]["value"][1]) if result else 0.0


@pytest.fixture(scope="module")
def increases(prometheus: PrometheusServer, scrape_target: ScrapeTarget) -> dict[str, float]:
    """Drive the target once; return how much each expected expression grew in Prometheus."""
    expected = scrape_target.expected_increase
    before = {expr: scalar(prometheus, expr) for expr in expected}
    scrape_target.drive()
    grown: dict[str, float] = {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        grown = {expr: scalar(prometheus, expr) - before[expr] for expr in expected}
        if grown == dict(expected):
            break
        time.sleep(0.5)
    # One more scrape after the traffic, so rates over the last minute have two points.
    scrapes = scalar(prometheus, 'count_over_time(up{job="patrol"}[1h])')
    while scalar(prometheus, 'count_over_time(up{job="patrol"}[1h])') < scrapes + 2:
        assert time.monotonic() < deadline + 10, "Prometheus stopped scraping"
        time.sleep(0.2)
    return grown


def test_target_is_up(prometheus: PrometheusServer, scrape_target: ScrapeTarget) -> None:
    [up] = prometheus.query('up{job="patrol"}')

    assert up["metric"]["instance"] == scrape_target.address
    assert up["value"][1] == "1"


def test_scraped_counters_grow_by_exactly_what_was_counted(
    increases: dict[str, float], scrape_target: ScrapeTarget
) -> None:
    assert increases == dict(scrape_target.expected_increase)


@pytest.mark.parametrize("query", dashboard_queries(), ids=lambda q: f"{q.panel}/{q.ref_id}")
def test_dashboard_query_returns_data(
    query: PanelQuery, prometheus: PrometheusServer, increases: dict[str, float]
) -> None:
    result = prometheus.query(query.expr)

    assert result, f"panel {query.panel!r} would be empty: {query.expr}"
    values = [float(series["value"][1]) for series in result]
    assert any(math.isfinite(v) for v in values), f"{query.panel!r} shows only NaN: {query.expr}"


def test_alert_rules_load_and_evaluate_cleanly(prometheus: PrometheusServer) -> None:
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
