"""The producing edge without a broker: unreachable cluster, summaries, progress display."""

from __future__ import annotations

import io
import socket
from datetime import datetime, timedelta, timezone

import pytest
from click.testing import CliRunner

from patrol.devtools.simulate import (
    BrokerUnreachable,
    SimEvent,
    SimSummary,
    StderrProgress,
    produce,
)
from patrol.devtools.simulate.cli import simulate_group
from patrol.settings import load_settings

AT = datetime(2026, 11, 27, 10, 0, tzinfo=timezone(timedelta(hours=8)))


def closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def event(kind: str, plate: str | None = None, seconds: int = 0) -> SimEvent:
    return SimEvent(AT + timedelta(seconds=seconds), "camera", b"cam-0001", b"{}" * 10, kind, plate)


async def test_unreachable_broker_names_the_bootstrap_and_what_to_do() -> None:
    bootstrap = closed_port()
    with pytest.raises(BrokerUnreachable) as raised:
        await produce([event("heartbeat")], load_settings(kafka_bootstrap=bootstrap), duration=1)
    message = str(raised.value)
    assert bootstrap in message
    assert "patrol broker start" in message and "PATROL_KAFKA_BOOTSTRAP" in message


def test_cli_reports_an_unreachable_broker_as_an_error() -> None:
    bootstrap = closed_port()
    result = CliRunner().invoke(
        simulate_group, ["drones", "--bootstrap", bootstrap, "--duration", "1", "--seed", "1"]
    )
    assert result.exit_code == 1
    assert f"cannot reach Kafka at {bootstrap}" in result.output
    assert "Traceback" not in result.output


def test_cli_rejects_a_start_without_offset() -> None:
    result = CliRunner().invoke(simulate_group, ["cameras", "--start", "2026-11-27T10:00:00"])
    assert result.exit_code == 2
    assert "RFC 3339" in result.output


def test_summary_counts_kinds_vehicles_and_bytes() -> None:
    summary = SimSummary(time_scale=20)
    for i, e in enumerate(
        [
            event("plate_read", "浙G12345", 0),
            event("plate_read", "浙G12345", 90),
            event("plate_read", "浙GD12345", 120),
            event("heartbeat", None, 150),
            event("malformed:naive_time", None, 600),
        ]
    ):
        summary.record(e, "patrol.detections.camera")
        summary.elapsed_seconds = i + 1.0
    assert summary.sent == 5
    assert summary.plate_reads == 3 and summary.distinct_vehicles == 2
    assert summary.bytes_sent == 5 * (8 + 20)
    report = summary.report()
    assert "sent 5 detections" in report and "patrol.detections.camera" in report
    assert "heartbeat 1, malformed 1, plate_read 3" in report
    assert "3 of 2 distinct vehicles" in report
    assert "(10.0 min at ×20)" in report


class FakeTerminal(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_progress_redraws_one_line_on_a_terminal() -> None:
    terminal = FakeTerminal(tty=True)
    show = StderrProgress(terminal, width=120)
    summary = SimSummary()
    show(summary)
    summary.record(event("heartbeat"), "t")
    show(summary)
    summary.finished = True
    show(summary)
    text = terminal.getvalue()
    assert text.count("\n") == 1  # each update went back to the start of the same line
    last_drawn = text.rsplit("\r", 1)[-1]
    assert "sent 1 (heartbeat 1)" in last_drawn and "\n" in last_drawn


def test_on_a_narrow_terminal_the_progress_line_is_cut_not_wrapped() -> None:
    terminal = FakeTerminal(tty=True)
    show = StderrProgress(terminal, width=30, duration=60)
    summary = SimSummary(elapsed_seconds=30.0, finished=True)
    summary.record(event("plate_read", "浙G12345"), "t")
    show(summary)
    assert terminal.getvalue().count("\n") == 1
    assert "…" in terminal.getvalue()


def test_progress_writes_a_line_every_few_seconds_to_a_log() -> None:
    log = FakeTerminal(tty=False)
    show = StderrProgress(log, plain_every_seconds=3600)
    summary = SimSummary()
    for _ in range(5):
        show(summary)
    summary.finished = True
    show(summary)
    assert log.getvalue().count("\n") == 2
    assert "\r" not in log.getvalue()
