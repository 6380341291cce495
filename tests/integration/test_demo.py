"""`patrol demo` end to end on the test broker: the scripted scene plays, the report and the
dispatch and status topics agree (the lamps the demo shows are the worker's), and nothing the
demo started is left running."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.processes import clean_env
from patrol.devtools.demo.lamps import LampBoard, mask_plate

from .helpers import REPO, read_json

# At ×60 the scripted car is ticketed ~11 s in and the car that left closes as self-corrected
# ~16 s in (event minutes 11 and 15.7); 60 s are an hour of event time, long enough for the
# simulated teams to answer tasks and the lamps to change.
TIME_SCALE = "60"
DURATION = "60"
HAZARDS = {"roadside_vending", "open_burning"}


def processes_mentioning(*needles: str) -> list[str]:
    """Processes whose command line or environment holds any of `needles` (this one excluded)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue  # exited meanwhile, or not ours to read
        if any(needle.encode() in cmdline + environ for needle in needles):
            command = cmdline.replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{entry.name}: {command}")
    return found


@pytest.fixture(scope="module")
def demo_run(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("demo")
    report_path = base / "report.json"
    run_dir = base / "run"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "patrol.cli",
            "demo",
            "--duration",
            DURATION,
            "--time-scale",
            TIME_SCALE,
            "--seed",
            "7",
            "--run-dir",
            str(run_dir),
            "--report",
            str(report_path),
        ],
        env=clean_env({"PATROL_KAFKA_BOOTSTRAP": bootstrap}),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=float(DURATION) + 240,
        check=False,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    report: dict[str, Any] = json.loads(report_path.read_text(encoding="utf-8"))
    return {"report": report, "output": output, "run_dir": run_dir}


def test_the_demo_uses_the_running_broker_and_stops_by_duration(
    demo_run: dict[str, Any], bootstrap: str
) -> None:
    report = demo_run["report"]
    assert report["bootstrap"] == bootstrap
    assert report["broker_started"] is False
    assert report["stopped_by"] == "duration" and report["error"] is None
    assert report["worker_answered"]
    assert report["run_dir"] == str(demo_run["run_dir"])
    assert Path(report["logs"]["worker"]).is_file()


def test_the_scene_plays_a_ticket_a_self_corrected_car_and_a_hazard(
    demo_run: dict[str, Any],
) -> None:
    report = demo_run["report"]
    assert report["tasks"]["by_type"].get("illegal_parking", 0) >= 1
    assert sum(report["tasks"]["by_type"].get(kind, 0) for kind in HAZARDS) >= 1
    assert report["grace_cases"]["closed_violation"] >= 1
    assert report["grace_cases"]["closed_self_corrected"] >= 1
    # the scripted car stays on after its ticket: its later reads are suppressed, not ticketed
    assert report["grace_cases"]["reads_already_ticketed"] >= 1
    assert report["sms"]["sent"] >= 2
    assert report["sms"]["gateway_accepted"] >= report["sms"]["sent"]
    assert report["detections_by_kind"]["plate_read"] > 0
    assert report["dead_letters"] == 0


async def test_the_dispatch_topic_holds_the_tasks_the_demo_showed(
    demo_run: dict[str, Any], bootstrap: str
) -> None:
    report = demo_run["report"]
    tasks = await read_json(bootstrap, report["topics"]["dispatch"], min_count=1, timeout=30)
    types = {task["task_type"] for task in tasks}
    assert "illegal_parking" in types
    assert types & HAZARDS
    assert len({task["task_id"] for task in tasks}) == report["tasks"]["total"]
    output = demo_run["output"]
    parking = next(task for task in tasks if task["task_type"] == "illegal_parking")
    # each task was announced with its Chinese summary, the plate masked on the shared screen
    masked = parking["summary"].replace(parking["plate"], mask_plate(parking["plate"]))
    assert masked in output
    assert parking["plate"] not in output
    assert "【违停】" in output
    # one ticket a day: no vehicle is ticketed twice in one zone on one local day
    ticketed = [
        (t["plate"], t["zone_id"], t["created_at"][:10])  # created_at is in +08:00
        for t in tasks
        if t["task_type"] == "illegal_parking"
    ]
    assert len(ticketed) == len(set(ticketed))


async def test_the_lamps_the_demo_showed_are_what_the_status_topic_holds(
    demo_run: dict[str, Any], bootstrap: str
) -> None:
    report = demo_run["report"]
    loop = report["loop"]
    assert loop is not None and loop["status_records"] > 0
    statuses = await read_json(
        bootstrap, report["topics"]["status"], min_count=loop["status_records"], timeout=30
    )
    tasks = await read_json(bootstrap, report["topics"]["dispatch"], min_count=1, timeout=30)
    # every dispatched task got its first record from the worker's loop: dispatched, green
    first = {s["task_id"] for s in statuses if s["cause"] == "dispatched"}
    assert first == {t["task_id"] for t in tasks}
    assert all(s["lamp"] == "green" for s in statuses if s["cause"] == "dispatched")
    # the simulated teams answered: feedback records the worker accepted
    assert any(s["cause"] == "feedback" for s in statuses)
    board = LampBoard()
    for task in tasks:
        board.add_task(task)
    for status in statuses:
        board.add(status)
    assert board.report() == loop
    output = demo_run["output"]
    assert "lamps open" in output  # the live line, a log's view of the table
    assert f"lamps:        open green {loop['open_by_lamp']['green']}," in output
    assert "closed:       " in output and "reopened at least once (rework)" in output
    for plate in {t["plate"] for t in tasks if t["plate"]}:
        assert not any(plate in line for line in loop["attention"])


def test_the_simulated_dispatch_system_answered(demo_run: dict[str, Any]) -> None:
    log = Path(demo_run["report"]["logs"]["simulate-feedback"]).read_text(encoding="utf-8")
    assert "answered" in log and "feedback records" in log
    assert "repeat with --seed 7" in log


def test_nothing_the_demo_started_is_left_running(demo_run: dict[str, Any]) -> None:
    report = demo_run["report"]
    assert processes_mentioning(report["run_id"], report["run_dir"]) == []


def demo_process(bootstrap: str, run_dir: Path, *args: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "patrol.cli",
            "demo",
            "--run-dir",
            str(run_dir),
            "--seed",
            "3",
            *args,
        ],
        env=clean_env({"PATROL_KAFKA_BOOTSTRAP": bootstrap, **env}),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_sigterm_stops_a_demo_without_end_cleanly(bootstrap: str, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    demo = demo_process(bootstrap, run_dir, "--duration", "0", "--no-prometheus")
    assert demo.stdout is not None
    lines = []
    try:
        for line in demo.stdout:
            lines.append(line)
            if line.startswith("running until Ctrl-C"):
                break
        assert processes_mentioning(str(run_dir)), "the demo's children should be running"
        demo.send_signal(signal.SIGTERM)
        rest, _ = demo.communicate(timeout=90)
    finally:
        if demo.poll() is None:
            demo.kill()
    output = "".join(lines) + rest
    assert demo.returncode == 0, output
    assert "stopped by SIGTERM" in output
    assert processes_mentioning(str(run_dir)) == []


def test_a_worker_that_cannot_start_is_reported_with_its_log(
    bootstrap: str, tmp_path: Path
) -> None:
    zones = tmp_path / "zones.geojson"
    zones.write_text('{"type": "FeatureCollection", "features": [{"type": "Feature"}]}')
    run_dir = tmp_path / "run"
    demo = demo_process(bootstrap, run_dir, "--no-prometheus", PATROL_ZONES=str(zones))
    output, _ = demo.communicate(timeout=120)
    assert demo.returncode == 1, output
    assert "the worker exited with code 1 while starting" in output
    assert "has no properties object" in output  # the tail of the worker's own log
    assert processes_mentioning(str(run_dir)) == []
