"""The report channel from the worker's children to its metrics: the schema both write."""

from __future__ import annotations

import io

from hypothesis import given
from hypothesis import strategies as st

from patrol import metrics
from patrol.worker.children import (
    CHILD_METRICS,
    MetricChange,
    Report,
    ReportWriter,
    metric_name,
)

labels = st.dictionaries(st.sampled_from(["topic", "reason", "status"]), st.text(max_size=12))
changes = st.builds(
    MetricChange,
    kind=st.sampled_from(["inc", "set", "observe"]),
    name=st.sampled_from(sorted(CHILD_METRICS)),
    labels=labels,
    value=st.floats(allow_nan=False, allow_infinity=False),
)


@given(st.lists(changes, max_size=20), st.none() | st.floats(min_value=0, max_value=4e9))
def test_a_report_reads_back_as_it_was_written(
    written: list[MetricChange], event_time: float | None
) -> None:
    report = Report(changes=written, event_time=event_time)
    line = report.model_dump_json().encode()
    assert b"\n" not in line  # one report, one line
    assert Report.model_validate_json(line) == report


def test_a_writer_names_each_metric_as_the_worker_exposes_it() -> None:
    out = io.BytesIO()
    writer = ReportWriter(out)
    assert not writer
    writer.inc(metrics.sms_attempts_total, 1, {"result": "accepted"})
    writer.observe(metrics.sms_send_seconds, 0.25)
    writer.set(metrics.consumer_lag_messages, 7, {"topic": "patrol.detections.camera"})
    assert writer
    assert writer.write(event_time=1_800_000_000.0)
    assert not writer

    (line,) = out.getvalue().splitlines()
    assert Report.model_validate_json(line) == Report(
        changes=[
            MetricChange(
                kind="inc",
                name="patrol_sms_attempts_total",
                labels={"result": "accepted"},
                value=1,
            ),
            MetricChange(kind="observe", name="patrol_sms_send_seconds", value=0.25),
            MetricChange(
                kind="set",
                name="patrol_consumer_lag_messages",
                labels={"topic": "patrol.detections.camera"},
                value=7,
            ),
        ],
        event_time=1_800_000_000.0,
    )


def test_the_metrics_children_move_are_the_workers_by_their_exposed_names() -> None:
    exposed = metrics.exposed_series_names()
    assert all(name in exposed or f"{name}_count" in exposed for name in CHILD_METRICS)
    assert metric_name(metrics.sms_total) == "patrol_sms_total"
    assert metric_name(metrics.sms_queue_depth) == "patrol_sms_queue_depth"


class Broken(io.BytesIO):
    def write(self, data: object) -> int:
        raise BrokenPipeError


def test_a_writer_whose_worker_is_gone_says_so_and_stops_writing() -> None:
    writer = ReportWriter(Broken())
    writer.set(metrics.sms_queue_depth, 3)
    assert not writer.write()
    assert writer.closed
    assert not writer.write()
