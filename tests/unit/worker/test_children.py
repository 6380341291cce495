"""The report channel from the worker's children to its metrics: the schema both write; and
the allocator tuning every patrol process starts with."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from patrol import metrics
from patrol.worker.children import (
    CHILD_METRICS,
    MetricChange,
    Report,
    ReportWriter,
    metric_name,
    tune_allocator,
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


_BURST = """
import os, sys
from patrol.worker.children import tune_allocator

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

if sys.argv[1] == "tuned":
    assert tune_allocator()
# one large buffer freed (as a first fetch response is), then a burst of 1 MiB buffers, each
# with a small allocation after it that stays (as the rest of a process's life does)
first = bytearray(8 << 20)
del first
before = rss()
burst, kept = [], []
for _ in range(64):
    burst.append(bytearray(1 << 20))
    kept.append(bytearray(2000))
peak = rss()
del burst
print((rss() - before) / (peak - before))
"""


def _kept_after_burst(mode: str) -> float:
    """The share of a 64 MiB burst a fresh process still holds once the burst is freed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    done = subprocess.run(
        [sys.executable, "-c", _BURST, mode], env=env, capture_output=True, text=True, check=True
    )
    return float(done.stdout)


@pytest.mark.skipif(
    not hasattr(os, "confstr") or "glibc" not in (os.confstr("CS_GNU_LIBC_VERSION") or ""),
    reason="glibc's allocator",
)
def test_a_tuned_process_gives_a_freed_burst_of_large_buffers_back() -> None:
    # untuned, glibc's raised threshold keeps the whole burst in the heap
    assert _kept_after_burst("plain") > 0.5
    assert _kept_after_burst("tuned") < 0.1


def test_the_allocator_is_left_to_an_environment_that_sets_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert tune_allocator() is False
