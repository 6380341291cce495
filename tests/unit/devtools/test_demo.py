"""The demo's pure parts: reading a scrape, tallying tasks, the live view, the final report."""

from __future__ import annotations

import io
import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from rich.cells import cell_len
from rich.console import Console, RenderableType

from patrol.devtools.demo import demo_command
from patrol.devtools.demo.dispatch import DispatchFollower
from patrol.devtools.demo.display import LiveDisplay, summary_table
from patrol.devtools.demo.lamps import LampBoard
from patrol.devtools.demo.report import (
    DemoSnapshot,
    DemoTopics,
    RunInfo,
    TaskTally,
    WorkerCounts,
    build_report,
    parse_worker_metrics,
    report_text,
    simulated_time,
    summary_line,
    task_line,
)
from patrol.devtools.demo.run import BrokerPlan, max_future_minutes, plan_broker
from patrol.devtools.processes import patrol_env

CST = timezone(timedelta(hours=8))
T0 = datetime(2026, 11, 27, 10, 0, tzinfo=CST)


def worker_scrape() -> str:
    """A scrape shaped like the worker's, built with the same metric names and labels."""
    registry = CollectorRegistry()
    detections = Counter(
        "patrol_detections_total", "", ["source_type", "kind", "outcome"], registry=registry
    )
    detections.labels("camera", "plate_read", "accepted").inc(40)
    detections.labels("camera", "plate_read", "low_confidence").inc(2)
    detections.labels("camera", "plate_read", "already_ticketed").inc(4)
    detections.labels("drone", "plate_read", "already_ticketed").inc(1)
    detections.labels("camera", "plate_read", "outside_hours").inc(6)
    detections.labels("drone", "plate_read", "accepted").inc(3)
    detections.labels("camera", "heartbeat", "accepted").inc(100)
    detections.labels("drone", "open_burning", "accepted").inc(5)
    detections.labels("camera", "roadside_vending", "accepted").inc(0)
    detections.labels("camera", "unknown", "invalid").inc(1)
    Gauge("patrol_grace_cases_open", "", registry=registry).set(7)
    closed = Counter("patrol_grace_cases_closed_total", "", ["result"], registry=registry)
    closed.labels("violation").inc(2)
    closed.labels("self_corrected").inc(3)
    sms = Counter("patrol_sms_total", "", ["status"], registry=registry)
    sms.labels("sent").inc(11)
    sms.labels("failed").inc(1)
    dead = Counter("patrol_deadletters_total", "", ["reason"], registry=registry)
    dead.labels("schema").inc(1)
    dead.labels("invalid_json").inc(2)
    Counter("patrol_sms_attempts_total", "", ["result"], registry=registry).labels("error").inc(9)
    return generate_latest(registry).decode()


def test_a_scrape_gives_detections_by_kind_sms_cases_and_dead_letters() -> None:
    counts = parse_worker_metrics(worker_scrape())
    assert counts.detections_by_kind == {
        "heartbeat": 100,
        "open_burning": 5,
        "plate_read": 56,
        "unknown": 1,
    }
    assert counts.detections == 162
    assert (counts.reads_already_ticketed, counts.reads_outside_hours) == (5, 6)
    assert (counts.sms_sent, counts.sms_failed) == (11, 1)
    assert (counts.cases_open, counts.cases_violation, counts.cases_self_corrected) == (7, 2, 3)
    assert counts.dead_letters == 3


def test_an_empty_scrape_counts_nothing() -> None:
    assert parse_worker_metrics("") == WorkerCounts()


def task(task_id: str, task_type: str, department: str, **extra: Any) -> dict[str, Any]:
    return {
        "task_id": task_id,
        "task_type": task_type,
        "department": department,
        "priority": "normal",
        "created_at": "2026-11-27T10:11:20+08:00",
        "summary": f"summary of {task_id}",
        **extra,
    }


def test_tasks_are_counted_once_per_id_by_type_and_department() -> None:
    tally = TaskTally()
    assert tally.add(task("a", "illegal_parking", "comprehensive_enforcement"))
    assert tally.add(task("b", "open_burning", "ecology_environment"))
    assert tally.add(task("c", "roadside_vending", "comprehensive_enforcement"))
    assert not tally.add(task("a", "illegal_parking", "comprehensive_enforcement"))
    assert tally.total == 3
    assert tally.by_type == {"illegal_parking": 1, "open_burning": 1, "roadside_vending": 1}
    assert tally.by_department == {"comprehensive_enforcement": 2, "ecology_environment": 1}
    assert tally.by_type_and_department[("open_burning", "ecology_environment")] == 1


def test_a_task_line_shows_event_time_in_china_priority_and_the_chinese_summary() -> None:
    line = task_line(
        task(
            "a",
            "open_burning",
            "ecology_environment",
            priority="urgent",
            created_at="2026-11-27T02:11:20Z",
            summary="【露天焚烧】尖山镇流岸水库发现露天焚烧,请市生态环境局磐安分局于11月27日10:41前处置并反馈。",
        )
    )
    assert line.startswith("▶ 10:11:20 派单 [urgent] 【露天焚烧】尖山镇流岸水库")


def test_a_parking_task_line_masks_the_plate_its_summary_names() -> None:
    line = task_line(
        {
            "task_type": "illegal_parking",
            "plate": "浙G12345",
            "summary": "【违停】安文街道文溪路车辆浙G12345违停超时未驶离。",
        }
    )
    assert "浙G12345" not in line and "浙G***45" in line


def test_a_task_line_without_summary_or_time_still_names_type_and_department() -> None:
    line = task_line({"task_type": "open_burning", "department": "ecology_environment"})
    assert "--:--:--" in line
    assert "open_burning" in line and "市生态环境局磐安分局" in line


def test_each_dispatched_task_is_announced_once_even_when_redelivered() -> None:
    said: list[str] = []
    tally = TaskTally()
    follower = DispatchFollower("127.0.0.1:9", "t", client_id="c", tasks=tally, say=said.append)
    parking = json.dumps(task("a", "illegal_parking", "comprehensive_enforcement")).encode()
    for value in (parking, b"not json", None, parking):
        follower.show(value)
    assert said == [
        "▶ 10:11:20 派单 [normal] summary of a",
        "▶ (a dispatch record that is not JSON)",
    ]
    assert tally.total == 1


def snapshot(worker: WorkerCounts | None = None, accepted: int | None = 11) -> DemoSnapshot:
    tally = TaskTally()
    tally.add(task("a", "illegal_parking", "comprehensive_enforcement"))
    tally.add(task("b", "open_burning", "ecology_environment"))
    return DemoSnapshot(
        elapsed_seconds=42.4,
        event_time=simulated_time(T0, 42.4, 15),
        time_scale=15,
        worker=worker,
        gateway_accepted=accepted,
        tasks=tally,
    )


COUNTS = WorkerCounts(
    detections_by_kind={"plate_read": 45, "heartbeat": 100},
    dead_letters=3,
    sms_sent=11,
    sms_failed=1,
    cases_open=7,
    cases_violation=2,
    cases_self_corrected=3,
    reads_already_ticketed=5,
    reads_outside_hours=6,
)


def test_simulated_time_runs_time_scale_times_faster() -> None:
    assert simulated_time(T0, 40, 15) == T0 + timedelta(minutes=10)


def test_the_worker_accepts_how_far_the_simulators_run_ahead_of_the_wall_clock() -> None:
    # 45 s at ×30: event time ends 45 × 29 s = 21.75 min ahead; the default 10 min on top.
    assert max_future_minutes(30, 45) == "32"
    assert max_future_minutes(1, 600) == "10"
    ahead = simulated_time(T0, 120, 15) - (T0 + timedelta(seconds=120))
    assert ahead <= timedelta(minutes=float(max_future_minutes(15, 120)) - 10)
    assert max_future_minutes(15, 0) == "inf"  # until Ctrl-C
    assert max_future_minutes(float("inf"), 60) == "inf"


def rendered(renderable: RenderableType, width: int = 200) -> str:
    """What a terminal `width` columns wide shows of `renderable`."""
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def test_the_table_shows_every_number_of_the_show() -> None:
    table = rendered(summary_table(snapshot(COUNTS)))
    assert "42 s" in table and "event time 10:10:36 (×15)" in table
    assert "plate_read 45" in table and "heartbeat 100" in table and "dead letters 3" in table
    assert "sent 11 · failed 1 · gateway accepted 11" in table
    assert "open 7 · closed violation 2 · closed self-corrected 3" in table
    assert "reads after the day's ticket 5 · outside no-parking hours 6" in table
    assert "tasks        2: 违停 1 · 露天焚烧 1" in table
    assert "县综合行政执法局 1 · 市生态环境局磐安分局 1" in table


def test_the_table_says_when_the_worker_or_gateway_does_not_answer() -> None:
    table = rendered(summary_table(snapshot(None, accepted=None)))
    assert "waiting for the worker's /metrics" in table
    assert "gateway accepted ?" in table


def test_the_plain_line_carries_the_same_numbers() -> None:
    line = summary_line(snapshot(COUNTS))
    assert "\n" not in line
    for part in (
        "detections 145",
        "dead letters 3",
        "SMS sent 11 failed 1 (gateway 11)",
        "cases open 7 violation 2 self-corrected 3, reads after the day's ticket 5",
        "tasks 2 (illegal_parking 1 · open_burning 1)",
    ):
        assert part in line
    assert "worker not answering yet" in summary_line(snapshot(None))


def test_on_a_narrow_terminal_chinese_rows_are_cut_to_the_width_not_wrapped() -> None:
    wide = rendered(summary_table(snapshot(COUNTS))).splitlines()
    narrow = rendered(summary_table(snapshot(COUNTS)), width=32).splitlines()
    assert len(narrow) == len(wide)  # one line per row: the table keeps its height
    assert all(cell_len(line) <= 32 for line in narrow)
    tasks = next(line for line in narrow if "tasks" in line)
    assert "2: 违停 1" in tasks and tasks.rstrip(" │").endswith("…")
    departments = next(line for line in narrow if "县综合行政执法" in line)
    assert departments.rstrip(" │").endswith("…")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def screen(output: str) -> list[str]:
    """The lines a terminal shows after `output`: text, newlines, carriage returns, and the
    cursor-up and erase-line sequences rich redraws with; other escapes (cursor, colour) skipped."""
    lines, row, column = [""], 0, 0
    for token in re.findall(r"\x1b\[[0-9;?]*[A-Za-z]|\r|\n|[^\x1b\r\n]+", output):
        if token == "\n":
            row, column = row + 1, 0
            lines.extend([""] * (row + 1 - len(lines)))
        elif token == "\r":
            column = 0
        elif token.endswith("A") and token.startswith("\x1b["):
            row = max(0, row - int(token[2:-1] or 1))
        elif token == "\x1b[2K":
            lines[row] = ""
        elif not token.startswith("\x1b"):
            lines[row] = lines[row][:column] + token
            column += len(token)
    return [line.rstrip() for line in lines if line.strip()]


def test_on_a_terminal_the_table_is_redrawn_in_place_and_tasks_print_above_it() -> None:
    terminal = Terminal()
    display = LiveDisplay(terminal, is_tty=True, width=200)
    display.say("patrol demo patrol-demo-x")
    display.refresh(snapshot(COUNTS), now=0.0)
    display.say("▶ 10:11:20 派单 [normal] 【违停】…")
    display.refresh(snapshot(COUNTS), now=1.0)
    display.close()
    shown = screen(terminal.getvalue())
    table = rendered(summary_table(snapshot(COUNTS))).rstrip().splitlines()
    assert shown == ["patrol demo patrol-demo-x", "▶ 10:11:20 派单 [normal] 【违停】…", *table]


def test_off_a_terminal_a_summary_line_is_printed_every_few_seconds() -> None:
    log = io.StringIO()
    display = LiveDisplay(log, is_tty=False, plain_every_seconds=5.0)
    for second in range(11):
        display.refresh(snapshot(COUNTS), now=float(second))
    display.say("▶ a task")
    lines = log.getvalue().splitlines()
    assert len([line for line in lines if line.startswith("[")]) == 3  # at 0, 5 and 10 s
    assert lines[-1] == "▶ a task"
    assert "\x1b" not in log.getvalue()


def run_info(tmp_path: Path) -> RunInfo:
    return RunInfo(
        run_id="patrol-demo-20261127-100000-abcd",
        run_dir=tmp_path,
        bootstrap="127.0.0.1:9092",
        broker_started=True,
        topics=DemoTopics("patrol-demo-20261127-100000-abcd"),
        seed=42,
        time_scale=15,
        event_time_start=T0,
        logs={"worker": tmp_path / "worker.log"},
        worker_metrics_url="http://127.0.0.1:6066/metrics",
        gateway_url="http://127.0.0.1:8025",
        prometheus_url=None,
    )


def test_the_report_holds_the_numbers_topics_and_logs_as_json(tmp_path: Path) -> None:
    report = build_report(snapshot(COUNTS), run_info(tmp_path), stopped_by="duration")
    assert json.loads(json.dumps(report, ensure_ascii=False)) == report
    assert report["topics"]["dispatch"] == "patrol-demo-20261127-100000-abcd.dispatch.tasks"
    assert report["app_id"] == report["run_id"]
    assert report["grace_cases"] == {
        "open": 7,
        "closed_violation": 2,
        "closed_self_corrected": 3,
        "reads_already_ticketed": 5,
        "reads_outside_hours": 6,
    }
    assert report["sms"] == {"sent": 11, "failed": 1, "gateway_accepted": 11}
    assert report["tasks"]["total"] == 2
    assert report["tasks"]["by_type"] == {"illegal_parking": 1, "open_burning": 1}
    assert {"task_type": "open_burning", "department": "ecology_environment", "count": 1} in (
        report["tasks"]["by_type_and_department"]
    )
    assert report["logs"] == {"worker": str(tmp_path / "worker.log")}
    assert report["event_time_end"] == "2026-11-27T10:10:36+08:00"
    assert report["error"] is None and report["worker_answered"]


def test_the_report_text_names_the_numbers_where_the_logs_are_and_the_seed(
    tmp_path: Path,
) -> None:
    text = report_text(build_report(snapshot(COUNTS), run_info(tmp_path), stopped_by="SIGINT"))
    assert "stopped by SIGINT" in text
    assert "closed violation 2, closed self-corrected 3" in text
    assert "reads of vehicles already ticketed that day 5 (one ticket a day)" in text
    assert "露天焚烧 (open_burning) → 市生态环境局磐安分局: 1" in text
    assert f"logs:   {tmp_path}" in text and str(tmp_path / "worker.log") in text
    assert "--seed 42" in text


def test_the_report_says_when_the_worker_never_answered_and_what_failed(tmp_path: Path) -> None:
    report = build_report(
        snapshot(None), run_info(tmp_path), stopped_by="error", error="the worker exited"
    )
    text = report_text(report)
    assert "did not answer at the end" in text
    assert "ERROR: the worker exited" in text


@pytest.mark.parametrize(
    ("option", "environment", "port", "expected"),
    [
        (None, None, None, BrokerPlan("127.0.0.1:9092", 9092)),
        (None, None, 19500, BrokerPlan("127.0.0.1:19500", 19500)),
        (None, "127.0.0.1:19092", None, BrokerPlan("127.0.0.1:19092", 19092)),
        ("localhost:9300", "127.0.0.1:19092", None, BrokerPlan("localhost:9300", 9300)),
        (None, "kafka-1.county.local:9092", None, BrokerPlan("kafka-1.county.local:9092", None)),
        (
            None,
            "127.0.0.1:9092,127.0.0.1:9093",
            None,
            BrokerPlan("127.0.0.1:9092,127.0.0.1:9093", None),
        ),
    ],
)
def test_the_broker_plan_starts_a_local_broker_only_on_this_machine(
    option: str | None, environment: str | None, port: int | None, expected: BrokerPlan
) -> None:
    assert plan_broker(option, environment, port) == expected


def test_children_get_this_runs_topics_not_the_users() -> None:
    topics = DemoTopics("patrol-demo-x")
    env = patrol_env(
        {**topics.env(), "PATROL_APP_ID": "patrol-demo-x"},
        drop="PATROL_TOPIC_",
        keep=(),
        base={"PATH": "/usr/bin", "PATROL_TOPIC_DISPATCH": "theirs", "PATROL_LOG_LEVEL": "debug"},
    )
    assert env["PATROL_TOPIC_DISPATCH"] == "patrol-demo-x.dispatch.tasks"
    assert env["PATROL_TOPIC_CAMERA"] == "patrol-demo-x.detections.camera"
    assert env["PATROL_LOG_LEVEL"] == "debug" and env["PATH"] == "/usr/bin"
    assert env["PYTHONUNBUFFERED"] == "1"


def test_help_explains_every_option_and_what_the_audience_sees() -> None:
    result = CliRunner().invoke(demo_command, ["--help"])
    assert result.exit_code == 0
    for option in (
        "--duration",
        "--time-scale",
        "--seed",
        "--bootstrap",
        "--broker-port",
        "--keep-broker",
        "--prometheus",
        "--run-dir",
        "--report",
        "--refresh",
    ):
        assert option in result.output
    assert "What the audience sees" in result.output
    assert "PATROL_DEMO_DURATION" in result.output


def test_a_remote_cluster_that_does_not_answer_is_a_clear_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        demo_command,
        ["--bootstrap", "kafka.invalid:9092", "--run-dir", str(tmp_path), "--duration", "1"],
    )
    assert result.exit_code == 1
    assert "no Kafka broker answers at kafka.invalid:9092" in result.output
    assert "Traceback" not in result.output


def status(task_id: str, state: str, lamp: str, at: str, **extra: Any) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "task_id": task_id,
        "task_type": extra.pop("task_type", "roadside_vending"),
        "department": "comprehensive_enforcement",
        "township": "安文街道",
        "status": state,
        "at": f"2026-11-27T{at}:00+08:00",
        "due_by": extra.pop("due_by", "2026-11-27T12:00:00+08:00"),
        "lamp": lamp,
        "cause": extra.pop("cause", "feedback"),
        "feedback_id": None,
        "event_id": None,
        "summary": "…",
        **extra,
    }


def loop_records() -> list[dict[str, Any]]:
    """Five tasks: one closed in time, one closed after going red, one reopened and closed, one
    overdue and open, one reopened and still open (yellow), and one only just dispatched."""
    return [
        status("on-time", "dispatched", "green", "10:00", cause="dispatched"),
        status("on-time", "resolved", "green", "10:30"),
        status("on-time", "closed", "green", "11:30", cause="verified"),
        status("late", "dispatched", "green", "10:00", cause="dispatched"),
        status("late", "accepted", "green", "10:05"),
        status("late", "accepted", "yellow", "11:36", cause="clock"),
        status("late", "accepted", "red", "12:00", cause="clock"),
        status("late", "resolved", "red", "12:10"),
        status("late", "closed", "red", "13:10", cause="verified"),
        status("rework", "resolved", "green", "10:40"),
        status("rework", "reopened", "green", "11:00", cause="redetected"),
        status("rework", "resolved", "green", "11:20"),
        status("rework", "closed", "green", "12:20", cause="verified"),
        status(
            "overdue-car",
            "accepted",
            "red",
            "12:00",
            task_type="illegal_parking",
            cause="clock",
        ),
        status("back-again", "resolved", "green", "10:50"),
        status("back-again", "reopened", "green", "11:10", due_by="2026-11-27T13:10:00+08:00"),
        status(
            "back-again",
            "reopened",
            "yellow",
            "12:46",
            cause="clock",
            due_by="2026-11-27T13:10:00+08:00",
        ),
        status("fresh", "dispatched", "green", "12:50", cause="dispatched"),
    ]


def board() -> tuple[LampBoard, list[str]]:
    lamps = LampBoard()
    lamps.add_task({"task_id": "overdue-car", "plate": "浙G12345"})
    said = [line for r in loop_records() if (line := lamps.add(r)) is not None]
    return lamps, said


def test_the_lamps_count_open_tasks_by_their_latest_record() -> None:
    lamps, _ = board()
    assert lamps.open_by_lamp() == {"green": 1, "yellow": 1, "red": 1}
    assert lamps.closed == ["late", "on-time", "rework"]
    assert lamps.open == 3


def test_on_time_is_closed_never_red_and_rework_is_closed_reopened() -> None:
    lamps, _ = board()
    assert (lamps.closed_on_time, lamps.closed_reopened) == (2, 1)
    assert lamps.shares() == (2 / 3, 1 / 3)
    assert LampBoard().shares() == (None, None)


def test_each_overdue_or_reopened_open_task_is_a_line_with_the_plate_masked() -> None:
    lamps, said = board()
    attention = lamps.attention()
    assert len(attention) == 2
    car = next(line for line in attention if "违停" in line)
    assert "浙G***45" in car and "浙G12345" not in car
    assert car.startswith("● 超期 12:00 【违停】安文街道") and "红灯" in car
    back = next(line for line in attention if "back-again" in line)
    assert back.startswith("⟲ 复现") and "黄灯" in back and "due 13:10" in back
    # announced as they happen: each red once, each reopening
    assert sum("late" in line for line in said) == 1
    assert sum("rework" in line for line in said) == 1
    assert sum("overdue-car" in line for line in said) == 1


def test_a_redelivered_status_record_changes_nothing() -> None:
    lamps, _ = board()
    before = (lamps.records, lamps.open_by_lamp(), lamps.shares())
    # an old record of a closed task read again must not reopen it on the board
    assert lamps.add(loop_records()[1]) is None
    assert lamps.add_value(b"not json") is None
    assert (lamps.records, lamps.open_by_lamp(), lamps.shares()) == before


def test_the_table_and_report_show_the_lamps_and_the_shares() -> None:
    lamps, _ = board()
    tally = TaskTally()
    shot = DemoSnapshot(42.4, simulated_time(T0, 42.4, 40), 40, COUNTS, 11, tally, lamps)
    table = rendered(summary_table(shot))
    assert "open 3: green 1 · yellow 1 · red 1   closed 3 (on time 67%, reopened 33%)" in table
    assert "浙G***45" in table and "浙G12345" not in table
    assert "lamps open 3" in summary_line(shot)
    run = RunInfo("r", Path("/tmp/r"), "b", False, DemoTopics("r"), 7, 40, T0)
    report = build_report(shot, run, stopped_by="duration")
    assert report["loop"]["open_by_lamp"] == {"green": 1, "yellow": 1, "red": 1}
    assert (report["loop"]["on_time_share"], report["loop"]["rework_share"]) == (0.667, 0.333)
    text = report_text(report)
    assert "lamps:        open green 1, yellow 1, red 1" in text
    assert "on time (never red) 2 = 67%, reopened at least once (rework) 1 = 33%" in text


def test_no_status_record_yet_is_said_so() -> None:
    shot = DemoSnapshot(1, None, 40, COUNTS, 0, TaskTally(), LampBoard())
    assert "no status record yet" in rendered(summary_table(shot))
