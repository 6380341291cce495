"""Figures, the goals they are held against, and the table `python -m bench` prints. Pure."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Direction = Literal["at_least", "at_most"]


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0–100) by linear interpolation between closest ranks."""
    if not values:
        return math.nan
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be between 0 and 100, got {q}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True, slots=True)
class Goal:
    """A target a figure is held against, e.g. p99 ≤ 100 ms."""

    limit: float
    direction: Direction
    text: str

    def met(self, value: float | None) -> bool | None:
        if value is None or math.isnan(value):
            return None
        return value >= self.limit if self.direction == "at_least" else value <= self.limit


GOALS = {
    "throughput_ratio": Goal(0.5, "at_least", "≥ 0.5 × raw"),
    "latency_p99_ms": Goal(100.0, "at_most", "p99 ≤ 100 ms at 1,000/s"),
    "latency_p99_ratio": Goal(2.0, "at_most", "≤ 2 × the raw hop's p99"),
    "merge_holds_live": Goal(0.0, "at_most", "none live (no lag)"),
    "recovery_ready_s": Goal(20.0, "at_most", "≤ 20 s"),
    "recovery_task_s": Goal(20.0, "at_most", "≤ 20 s"),
    "bytes_per_case": Goal(1024.0, "at_most", "≤ 1 KiB/case"),
}


@dataclass(frozen=True, slots=True)
class Row:
    section: str
    figure: str
    value: float | None
    unit: str
    goal: str | None = None

    def verdict(self) -> str:
        if self.goal is None:
            return ""
        met = GOALS[self.goal].met(self.value)
        return "n/a" if met is None else ("met" if met else "MISSED")


def format_value(value: float | None, unit: str) -> str:
    if value is None or math.isnan(value):
        return "—"
    if unit in ("events/s", "B", "B/case", "records"):
        return f"{value:,.0f} {unit}"
    if unit == "×":
        return f"{value:.2f} ×"
    return f"{value:,.1f} {unit}" if abs(value) >= 10 else f"{value:,.2f} {unit}"


def table(rows: Sequence[Row]) -> str:
    """A fixed-width table: section, figure, value, goal, verdict."""
    cells = [
        (
            r.section,
            r.figure,
            format_value(r.value, r.unit),
            GOALS[r.goal].text if r.goal else "",
            r.verdict(),
        )
        for r in rows
    ]
    header = ("scenario", "figure", "value", "goal", "")
    widths = [max(len(c[i]) for c in [header, *cells]) for i in range(len(header))]

    def line(cols: Sequence[str]) -> str:
        return "  ".join(
            col.rjust(width) if i == 2 else col.ljust(width)
            for i, (col, width) in enumerate(zip(cols, widths, strict=True))
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(c) for c in cells)])
