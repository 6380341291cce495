"""The intake child's reports and how the worker shows them, without processes or a broker."""

from __future__ import annotations

import io
import logging

import pytest
from prometheus_client import REGISTRY

from patrol import metrics
from patrol.intake.process import IntakeProcess, _CountDeltas
from patrol.settings import Settings
from patrol.worker.children import MetricChange, Report, ReportWriter


def _sample(name: str, **labels: str) -> float:
    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


def _taken(deltas: _CountDeltas) -> list[MetricChange]:
    out = io.BytesIO()
    writer = ReportWriter(out)
    deltas.take(writer)
    writer.write()
    return Report.model_validate_json(out.getvalue()).changes


def _line(*changes: MetricChange, event_time: float | None = None) -> bytes:
    return Report(changes=list(changes), event_time=event_time).model_dump_json().encode() + b"\n"


def _inc(name: str, value: float, **labels: str) -> MetricChange:
    return MetricChange(kind="inc", name=name, labels=labels, value=value)


def test_count_deltas_report_what_each_counter_gained_since_the_last_report() -> None:
    deltas = _CountDeltas()
    _taken(deltas)  # whatever earlier tests counted
    metrics.detections_total.labels("camera", "heartbeat", "accepted").inc(3)
    metrics.deadletters_total.labels("schema").inc()

    first = _taken(deltas)
    metrics.detections_total.labels("camera", "heartbeat", "accepted").inc(2)
    second = _taken(deltas)

    heartbeats = {"source_type": "camera", "kind": "heartbeat", "outcome": "accepted"}
    assert sorted(first, key=repr) == sorted(
        [
            _inc("patrol_detections_total", 3.0, **heartbeats),
            _inc("patrol_deadletters_total", 1.0, reason="schema"),
        ],
        key=repr,
    )
    assert second == [_inc("patrol_detections_total", 2.0, **heartbeats)]
    assert _taken(deltas) == []


def test_the_worker_adds_reported_counts_to_its_own_metrics() -> None:
    intake = IntakeProcess(Settings())
    labels = {"source_type": "drone", "kind": "unknown", "outcome": "invalid"}
    before = _sample("patrol_detections_total", **labels)
    dead_before = _sample("patrol_deadletters_total", reason="invalid_json")

    intake._take_line(_line(_inc("patrol_detections_total", 2, **labels)))
    intake._take_line(
        _line(
            _inc("patrol_detections_total", 1, **labels),
            _inc("patrol_deadletters_total", 3, reason="invalid_json"),
        )
    )

    assert _sample("patrol_detections_total", **labels) == before + 3
    assert _sample("patrol_deadletters_total", reason="invalid_json") == dead_before + 3


def test_clock_skew_counts_reach_the_worker_by_source_type() -> None:
    deltas = _CountDeltas()
    _taken(deltas)  # whatever earlier tests counted
    metrics.clock_skew_detections_total.labels("drone").inc(2)
    changes = _taken(deltas)
    intake = IntakeProcess(Settings())
    before = _sample("patrol_clock_skew_detections_total", source_type="drone")

    intake._take_line(_line(*changes))

    assert changes == [_inc("patrol_clock_skew_detections_total", 2.0, source_type="drone")]
    assert _sample("patrol_clock_skew_detections_total", source_type="drone") == before + 2


def test_gauges_make_the_intake_started_and_its_clock_never_goes_back() -> None:
    intake = IntakeProcess(Settings())
    assert not intake.started.is_set()
    gauges = [
        MetricChange(kind="set", name="patrol_sources_active", labels={"source_type": t}, value=n)
        for t, n in (("camera", 4), ("drone", 1))
    ] + [
        MetricChange(
            kind="set",
            name="patrol_consumer_lag_messages",
            labels={"topic": "patrol.detections.camera"},
            value=7,
        )
    ]

    intake._take_line(_line(event_time=1_800_000_000.5))  # counts only: not a sign of life yet
    assert not intake.started.is_set()
    intake._take_line(_line(*gauges, event_time=1_800_000_000.5))
    intake._take_line(_line(*gauges, event_time=1_700_000_000.0))

    assert intake.started.is_set()
    assert intake.clock == 1_800_000_000.5
    # the worker's gauges show them as they arrive, with nothing else to copy them
    assert _sample("patrol_sources_active", source_type="camera") == 4
    assert _sample("patrol_sources_active", source_type="drone") == 1
    assert _sample("patrol_consumer_lag_messages", topic="patrol.detections.camera") == 7
    intake.on_spawn()  # a new child: not started until it reports
    assert not intake.started.is_set()
    assert intake.clock == 1_800_000_000.5


def test_a_line_that_is_not_a_report_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    intake = IntakeProcess(Settings())
    with caplog.at_level(logging.ERROR, logger="patrol.worker.children"):
        intake._take_line(b"not json\n")
        intake._take_line(b'{"c": [["d", [], 1]]}\n')
        intake._take_line(b"[1, 2]\n")
    assert [r.getMessage() for r in caplog.records] == [
        f"intake wrote a line that is not a report ({n} bytes)" for n in (9, 22, 7)
    ]


def test_a_change_to_a_metric_the_worker_does_not_know_is_logged_and_the_rest_applied(
    caplog: pytest.LogCaptureFixture,
) -> None:
    intake = IntakeProcess(Settings())
    before = _sample("patrol_deadletters_total", reason="too_large")
    with caplog.at_level(logging.ERROR, logger="patrol.worker.children"):
        intake._take_line(
            _line(
                _inc("patrol_detections_seen_total", 1),
                MetricChange(kind="set", name="patrol_deadletters_total", value=5),
                _inc("patrol_deadletters_total", 1, plate="浙G12345"),
                _inc("patrol_deadletters_total", 1, reason="too_large"),
            )
        )
    assert _sample("patrol_deadletters_total", reason="too_large") == before + 1
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3
    assert "no child metric 'patrol_detections_seen_total' to inc" in messages[0]
    assert "no child metric 'patrol_deadletters_total' to set" in messages[1]
    assert messages[2].startswith("intake reported a change the worker cannot apply")
    assert all("; skipped" in m for m in messages)
