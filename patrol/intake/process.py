"""The intake in a child process of the worker (`python -m patrol.intake.process`).

The intake (`patrol.intake.consumer`) is stateless: it validates, screens, locates and re-keys
every input record, about a fifth of the CPU a detection costs. In its own process it runs
beside the stateful agents instead of taking turns with them on one core.

It reports to the worker on its stdout (`patrol.worker.children.Report`): every REPORT_SECONDS
what patrol_detections_total, patrol_deadletters_total, patrol_clock_skew_detections_total and
patrol_task_feedback_total gained in this process since its last report, and each second its
event-time clock and, as the worker's gauges, the sources it heard from and its consumer lag.
So /metrics reads as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys

from prometheus_client import Counter

from patrol import metrics
from patrol.domain import incidents
from patrol.domain.zones import load_zones
from patrol.intake.consumer import IntakeConsumer
from patrol.settings import Settings
from patrol.worker.children import (
    ChildProcess,
    Report,
    ReportWriter,
    child_main,
    stop_event,
    tune_gc,
)

log = logging.getLogger(__name__)

REPORT_SECONDS = 0.1
GAUGES_EVERY = 10
SOURCE_ACTIVE_SECONDS = 300.0
# The counters the intake adds to in its own process, reported as increments.
COUNTERS: tuple[Counter, ...] = (
    metrics.detections_total,
    metrics.deadletters_total,
    metrics.clock_skew_detections_total,
    metrics.intake_merge_holds_total,
    metrics.task_feedback_total,  # the feedback it dead-letters ("rejected")
)


class IntakeProcess(ChildProcess):
    """The worker's side: keeps the intake running and shows what it reports."""

    name = "intake"
    module = "patrol.intake.process"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.started = asyncio.Event()
        self.clock: float | None = None
        """The latest event time the intake has read (seconds since the epoch)."""

    def on_spawn(self) -> None:
        self.started.clear()

    def take_report(self, report: Report) -> None:
        clock = report.event_time
        if clock is not None and (self.clock is None or clock > self.clock):
            self.clock = clock
        # The report's gauges are already on the worker's metrics (`ChildProcess.apply`).
        if any(change.kind == "set" for change in report.changes):
            self.started.set()  # gauges come from a running consumer


# --- the child process --------------------------------------------------------------------------


class _CountDeltas:
    """What this process's counters gained since the last call, added to a report."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    def take(self, report: ReportWriter) -> None:
        for counter in COUNTERS:
            for family in counter.collect():
                for sample in family.samples:
                    if not sample.name.endswith("_total"):
                        continue
                    key = (sample.name, tuple(sample.labels.items()))
                    delta = sample.value - self._last.get(key, 0.0)
                    if delta:
                        self._last[key] = sample.value
                        report.inc(counter, delta, sample.labels)


async def _gauges(intake: IntakeConsumer, report: ReportWriter) -> float | None:
    """The gauges into `report`; the event-time clock returned."""
    for source_type, count in intake.active_sources(SOURCE_ACTIVE_SECONDS).items():
        report.set(metrics.sources_active, count, {"source_type": source_type})
    for topic, lag in (await intake.input_lags()).items():
        report.set(metrics.consumer_lag_messages, lag, {"topic": topic})
    return None if intake.clock is None else intake.clock.timestamp()


async def _serve(settings: Settings) -> int:
    intake = IntakeConsumer(
        settings, load_zones(settings.zones), incidents.IncidentPolicy.from_settings(settings)
    )
    stop = await stop_event()
    report = ReportWriter(sys.stdout.buffer)
    counts = _CountDeltas()
    tune_gc()
    await intake.start()
    try:
        tick = 0
        while not stop.is_set():
            counts.take(report)
            clock = await _gauges(intake, report) if tick % GAUGES_EVERY == 0 else None
            tick += 1
            if (report or clock is not None) and not report.write(event_time=clock):
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), REPORT_SECONDS)
    finally:
        await intake.stop()
        counts.take(report)
        report.write()
    return 0


def main() -> None:
    child_main(_serve)


if __name__ == "__main__":
    main()
