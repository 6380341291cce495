"""The intake child's reports and how the worker shows them, without processes or a broker."""

from __future__ import annotations

import json
import logging

import pytest
from prometheus_client import REGISTRY

from patrol import metrics
from patrol.intake.process import IntakeProcess, _CountDeltas
from patrol.settings import Settings


def _sample(name: str, **labels: str) -> float:
    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_count_deltas_report_what_each_counter_gained_since_the_last_report() -> None:
    deltas = _CountDeltas()
    deltas.take()  # whatever earlier tests counted
    metrics.detections_total.labels("camera", "heartbeat", "accepted").inc(3)
    metrics.deadletters_total.labels("schema").inc()

    first = deltas.take()
    metrics.detections_total.labels("camera", "heartbeat", "accepted").inc(2)
    second = deltas.take()

    assert sorted(map(json.dumps, first)) == sorted(
        map(json.dumps, [["d", ["camera", "heartbeat", "accepted"], 3.0], ["dl", ["schema"], 1.0]])
    )
    assert second == [["d", ["camera", "heartbeat", "accepted"], 2.0]]
    assert deltas.take() == []


def test_the_worker_adds_reported_counts_to_its_own_metrics() -> None:
    intake = IntakeProcess(Settings())
    labels = {"source_type": "drone", "kind": "unknown", "outcome": "invalid"}
    before = _sample("patrol_detections_total", **labels)
    dead_before = _sample("patrol_deadletters_total", reason="invalid_json")

    intake._take_line(b'{"c": [["d", ["drone", "unknown", "invalid"], 2]]}\n')
    intake._take_line(
        b'{"c": [["d", ["drone", "unknown", "invalid"], 1], ["dl", ["invalid_json"], 3]]}\n'
    )

    assert _sample("patrol_detections_total", **labels) == before + 3
    assert _sample("patrol_deadletters_total", reason="invalid_json") == dead_before + 3


def test_clock_skew_counts_reach_the_worker_by_source_type() -> None:
    deltas = _CountDeltas()
    deltas.take()  # whatever earlier tests counted
    metrics.clock_skew_detections_total.labels("drone").inc(2)
    report = json.dumps({"c": deltas.take()}).encode()
    intake = IntakeProcess(Settings())
    before = _sample("patrol_clock_skew_detections_total", source_type="drone")

    intake._take_line(report + b"\n")

    assert json.loads(report) == {"c": [["cs", ["drone"], 2.0]]}
    assert _sample("patrol_clock_skew_detections_total", source_type="drone") == before + 2


def test_gauges_make_the_intake_started_and_its_clock_never_goes_back() -> None:
    intake = IntakeProcess(Settings())
    assert not intake.started.is_set()
    gauges = {"sources": {"camera": 4, "drone": 1}, "lag": {"patrol.detections.camera": 7}}

    intake.take_report({"c": [], "g": {"clock": 1_800_000_000.5, **gauges}})
    intake.take_report({"c": [], "g": {"clock": 1_700_000_000.0, **gauges}})

    assert intake.started.is_set()
    assert intake.clock == 1_800_000_000.5
    assert intake.sources == {"camera": 4, "drone": 1}
    assert intake.lags == {"patrol.detections.camera": 7}
    intake.on_spawn()  # a new child: not started until it reports
    assert not intake.started.is_set()
    assert intake.clock == 1_800_000_000.5


def test_a_line_that_is_not_a_report_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    intake = IntakeProcess(Settings())
    with caplog.at_level(logging.ERROR, logger="patrol.children"):
        intake._take_line(b"not json\n")
        intake._take_line(b'{"c": [["nope", [], 1]]}\n')
        intake._take_line(b"[1, 2]\n")
    assert [r.getMessage() for r in caplog.records] == [
        f"intake wrote a line that is not a report ({n} bytes)" for n in (9, 25, 7)
    ]
