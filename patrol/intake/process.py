"""The intake in a child process of the worker (`python -m patrol.intake_process`).

The intake (`patrol.intake.consumer`) is stateless: it validates, screens, locates and re-keys
every input record, about a fifth of the CPU a detection costs. In its own process it runs
beside the stateful agents instead of taking turns with them on one core.

It reports to the worker on its stdout, one JSON object per line (`patrol.children`): every
REPORT_SECONDS the counts it added to patrol_detections_total, patrol_deadletters_total and
patrol_clock_skew_detections_total since its last report (`"c"`), and each second its
event-time clock, the sources it heard from and its consumer lag (`"g"`). The worker adds the
counts to its own metrics and shows the rest as its gauges, so /metrics reads as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from typing import IO, Any

from prometheus_client import Counter

from patrol import metrics
from patrol.domain import incidents
from patrol.domain.zones import load_zones
from patrol.intake.consumer import IntakeConsumer
from patrol.settings import Settings
from patrol.worker.children import ChildProcess, child_main, stop_event, tune_gc

log = logging.getLogger(__name__)

REPORT_SECONDS = 0.1
GAUGES_EVERY = 10
SOURCE_ACTIVE_SECONDS = 300.0
# The counters the intake adds to, by the short name its reports use.
COUNTERS: dict[str, Counter] = {
    "d": metrics.detections_total,
    "dl": metrics.deadletters_total,
    "cs": metrics.clock_skew_detections_total,
}


class IntakeProcess(ChildProcess):
    """The worker's side: keeps the intake running and shows what it reports."""

    name = "intake"
    module = "patrol.intake.process"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.started = asyncio.Event()
        self.clock: float | None = None
        """The latest event time the intake has read (seconds since the epoch)."""
        self.sources: dict[str, int] = {}
        self.lags: dict[str, int] = {}

    def on_spawn(self) -> None:
        self.started.clear()

    def take_report(self, report: dict[str, Any]) -> None:
        for name, labels, delta in report.get("c", ()):
            COUNTERS[name].labels(*labels).inc(float(delta))
        gauges = report.get("g")
        if gauges is not None:
            clock = gauges["clock"]
            if clock is not None and (self.clock is None or clock > self.clock):
                self.clock = float(clock)
            self.sources = {str(k): int(v) for k, v in gauges["sources"].items()}
            self.lags = {str(k): int(v) for k, v in gauges["lag"].items()}
            self.started.set()


# --- the child process --------------------------------------------------------------------------


class _CountDeltas:
    """What this process's counters gained since the last call."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, tuple[str, ...]], float] = {}

    def take(self) -> list[list[Any]]:
        changes: list[list[Any]] = []
        for name, counter in COUNTERS.items():
            for family in counter.collect():
                for sample in family.samples:
                    if not sample.name.endswith("_total"):
                        continue
                    labels = tuple(sample.labels.values())  # in the counter's label order
                    key = (name, labels)
                    delta = sample.value - self._last.get(key, 0.0)
                    if delta:
                        self._last[key] = sample.value
                        changes.append([name, list(labels), delta])
        return changes


async def _gauges(intake: IntakeConsumer) -> dict[str, Any]:
    return {
        "clock": None if intake.clock is None else intake.clock.timestamp(),
        "sources": intake.active_sources(SOURCE_ACTIVE_SECONDS),
        "lag": await intake.input_lags(),
    }


def _write(out: IO[bytes], report: dict[str, Any]) -> bool:
    try:
        out.write(json.dumps(report).encode() + b"\n")
        out.flush()
    except OSError:  # the worker is gone: nobody to report to
        return False
    return True


async def _serve(settings: Settings) -> int:
    intake = IntakeConsumer(
        settings, load_zones(settings.zones), incidents.IncidentPolicy.from_settings(settings)
    )
    stop = await stop_event()
    out = sys.stdout.buffer
    counts = _CountDeltas()
    tune_gc()
    await intake.start()
    try:
        tick = 0
        while not stop.is_set():
            report: dict[str, Any] = {"c": counts.take()}
            if tick % GAUGES_EVERY == 0:
                report["g"] = await _gauges(intake)
            tick += 1
            if (report["c"] or "g" in report) and not _write(out, report):
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), REPORT_SECONDS)
    finally:
        await intake.stop()
        _write(out, {"c": counts.take()})
    return 0


def main() -> None:
    child_main(_serve)


if __name__ == "__main__":
    main()
