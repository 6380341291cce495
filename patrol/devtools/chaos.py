"""The chaos campaign: two workers of one app id under SIGKILLs, a broker restart and a failing
SMS gateway, with a generated workload and the simulated dispatch system closing the loop; then
it checks and prints its invariants.

The workload is scripted so its outcome is known: parking cases that stay past their grace (one
ticket each) and cases that leave (self-corrected), hazard incidents at places far apart (one
task each), and heartbeats from every camera. It runs on event time `--time-scale` times faster
than the wall clock, ending in the past, so nothing is ahead of the wall clock. `patrol simulate
feedback` answers the tasks on the same clock. Run it with `scripts/chaos` (a fresh broker), or
`python -m patrol.devtools.chaos --help`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import click
import httpx
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from patrol.audit.compare import comparable
from patrol.audit.replay import read_tasks
from patrol.devtools.broker import LocalBroker
from patrol.devtools.processes import (
    Gateway,
    PatrolProcess,
    app_consumer_groups,
    gateway_process,
    patrol_env,
    wait_committed,
)
from patrol.devtools.simulate.events import CHINA_STANDARD_TIME
from patrol.domain.zones import load_zones
from patrol.settings import Settings, topic_env, topic_names
from patrol.waits import free_port, wait_http

STREETS = ("anwen-wenxi-rd", "anwen-hailuo-st", "anwen-xincheng-rd", "xinwo-xinwo-st")
CAMERAS = tuple(f"cam-{n:04d}" for n in range(201, 209))
# Hazard places far apart (more than the incident radius): each incident is one task.
HAZARD_ZONES = (
    ("anwen-market", "roadside_vending"),
    ("jianshan-guantou-farmland", "open_burning"),
    ("fangqian-market", "roadside_vending"),
    ("jianshan-liuan-reservoir", "open_burning"),
    ("yushan-tea-farmland", "open_burning"),
    ("fangqian-qiuli-reservoir", "open_burning"),
)
GRACE_MINUTES = 10  # the streets' grace; R is 5
CASE_SPAN_MINUTES = 16  # from a case's first read until the clock has closed it either way
HEARTBEAT_SECONDS = 30


@dataclass(frozen=True, slots=True)
class Plan:
    duration: float = 120.0
    kills: int = 6
    broker_restarts: int = 1
    gateway_fail_rate: float = 0.3
    gateway_fault_seconds: float = 20.0
    cases_per_minute: float = 60.0
    time_scale: float = 60.0
    seed: int = 1
    partitions: int = 3


@dataclass(frozen=True, slots=True)
class Workload:
    start: datetime
    records: list[tuple[datetime, str, dict[str, Any]]]
    """(event time, source id, Detection) in event-time order."""
    overstaying: frozenset[str]
    leaving: frozenset[str]
    incidents: int

    @property
    def cases(self) -> int:
        return len(self.overstaying) + len(self.leaving)


def _detection(
    event_id: str, at: datetime, source: str, kind: str, where: tuple[float, float], **extra: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "schema_version": 1,
        "event_id": event_id,
        "kind": kind,
        "source": {"type": "camera", "id": source, "route_id": None},
        "observed_at": at.isoformat(),
        "location": {"lat": where[0], "lon": where[1]},
        **extra,
    }
    return body


def build_workload(plan: Plan, now: datetime) -> Workload:
    """Cases and incidents over `plan.duration` wall seconds of event time, ending in the past."""
    rng = random.Random(plan.seed)
    zones = load_zones()

    def inside(zone_id: str) -> tuple[float, float]:
        point = zones.polygon(zone_id).representative_point()
        return round(point.y, 6), round(point.x, 6)

    span = timedelta(seconds=plan.duration * plan.time_scale)
    start = (now - span - timedelta(hours=1)).astimezone(CHINA_STANDARD_TIME)
    open_until = max(span - timedelta(minutes=CASE_SPAN_MINUTES), timedelta(minutes=1))
    records: list[tuple[datetime, str, dict[str, Any]]] = []
    overstaying: set[str] = set()
    leaving: set[str] = set()
    run = uuid.uuid4().hex[:6]
    cases = max(2, round(plan.cases_per_minute * plan.duration / 60))
    for n in range(cases):
        plate = f"浙G{rng.randrange(100000):05d}"
        while plate in overstaying or plate in leaving:
            plate = f"浙G{rng.randrange(100000):05d}"
        street, camera = STREETS[n % len(STREETS)], CAMERAS[n % len(CAMERAS)]
        opened = start + open_until * rng.random()
        stays = n % 2 == 0
        (overstaying if stays else leaving).add(plate)
        later = rng.uniform(10.5, 14.5) if stays else rng.uniform(1, 8)
        for i, minute in enumerate((0.0, later)):
            at = opened + timedelta(minutes=minute)
            read = _detection(
                f"chaos-{run}-{plate[-5:]}-{i}",
                at,
                camera,
                "plate_read",
                inside(street),
                confidence=0.95,
                plate=plate,
                plate_color="blue",
            )
            records.append((at, camera, read))
    incidents = min(len(HAZARD_ZONES), max(1, round(plan.duration / 60)))
    for n, (zone_id, kind) in enumerate(HAZARD_ZONES[:incidents]):
        seen = start + open_until * rng.random()
        camera = CAMERAS[(n + 3) % len(CAMERAS)]
        for frame in range(3):
            at = seen + timedelta(minutes=frame)
            event_id = f"chaos-{run}-h{n}-{frame}"
            records.append((at, camera, _detection(event_id, at, camera, kind, inside(zone_id))))
            records[-1][2]["confidence"] = 0.9
    beat = start
    while beat <= start + span:
        for camera in CAMERAS:
            event_id = f"chaos-{run}-hb-{camera}-{beat:%H%M%S}"
            where = inside(STREETS[0])
            records.append((beat, camera, _detection(event_id, beat, camera, "heartbeat", where)))
        beat += timedelta(seconds=HEARTBEAT_SECONDS)
    records.sort(key=lambda r: r[0])
    return Workload(start, records, frozenset(overstaying), frozenset(leaving), incidents)


@dataclass
class Fleet:
    """The campaign's processes: the gateway, two workers of one app id, the feedback simulator."""

    bootstrap: str
    base: Path
    app_id: str
    plan: Plan
    gateway: Gateway
    workers: dict[str, PatrolProcess] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    kills: int = 0
    unplanned_exits: list[str] = field(default_factory=list)
    log: Callable[[str], None] = print

    def worker_env(self, name: str) -> dict[str, str]:
        return patrol_env(
            {
                **topic_env(self.app_id),
                "PATROL_APP_ID": self.app_id,
                "PATROL_KAFKA_BOOTSTRAP": self.bootstrap,
                "PATROL_SMS_URL": self.gateway.url,
                "PATROL_WEB_PORT": str(self.ports[name]),
                "PATROL_DATA_DIR": str(self.base / f"{name}-data"),
                "PATROL_PARTITIONS": str(self.plan.partitions),
                "PATROL_INSTANCE_ID": name,
            }
        )

    def start_worker(self, name: str) -> None:
        self.ports.setdefault(name, free_port())
        log = self.base / f"{name}.log"
        self.workers[name] = PatrolProcess(name, ["worker"], self.worker_env(name), log).start()

    def kill_and_restart(self, name: str, pause: float) -> None:
        self.log(f"chaos: SIGKILL {name}, restarting it in {pause:.1f} s")
        self.workers[name].kill()
        self.kills += 1
        time.sleep(pause)
        self.start_worker(name)

    def supervise(self) -> None:
        """Restart a worker that exited by itself, as a supervisor would, and note it."""
        for name, process in self.workers.items():
            if not process.alive():
                self.unplanned_exits.append(f"{name} exited with {process.exit_code}")
                self.log(f"chaos: {name} exited by itself ({process.exit_code}); restarting it")
                self.start_worker(name)

    def healthy(self) -> dict[str, str]:
        result = {}
        for name, port in self.ports.items():
            answers = []
            for page in ("healthz", "readyz"):
                try:
                    code = str(httpx.get(f"http://127.0.0.1:{port}/{page}", timeout=3).status_code)
                except httpx.HTTPError as exc:
                    code = type(exc).__name__
                answers.append(f"/{page} {code}")
            result[name] = ", ".join(answers)
        return result

    def stop(self) -> None:
        for process in self.workers.values():
            process.stop()


async def produce_paced(
    bootstrap: str, topic: str, workload: Workload, scale: float, log: Callable[[str], None]
) -> int:
    """Produce each record when the campaign's event-time clock reaches it; a batch the broker
    refused (it is restarting) is sent again, as a device would."""
    began = time.monotonic()
    sent = 0
    producer: AIOKafkaProducer | None = None
    records = workload.records
    while sent < len(records):
        clock = workload.start + timedelta(seconds=(time.monotonic() - began) * scale)
        due = [r for r in records[sent : sent + 500] if r[0] <= clock]
        if not due:
            await asyncio.sleep(0.2)
            continue
        try:
            if producer is None:
                producer = AIOKafkaProducer(
                    bootstrap_servers=bootstrap, acks="all", request_timeout_ms=10_000
                )
                await producer.start()
            futures = [
                await producer.send(
                    topic, json.dumps(d, ensure_ascii=False).encode(), key=key.encode()
                )
                for _, key, d in due
            ]
            await asyncio.gather(*futures)
            sent += len(due)
        except KafkaError as exc:
            log(f"chaos: the producer's batch failed ({type(exc).__name__}); sending it again")
            if producer is not None:
                await producer.stop()
            producer = None
            await asyncio.sleep(1)
    if producer is not None:
        await producer.stop()
    return sent


@dataclass(frozen=True, slots=True)
class Fault:
    at: float
    """Seconds after the workload began."""
    what: str
    worker: str = ""
    pause: float = 0.0


def schedule(plan: Plan) -> list[Fault]:
    rng = random.Random(plan.seed + 1)
    faults = [
        Fault(
            rng.uniform(0.1, 0.85) * plan.duration,
            "kill",
            rng.choice(("worker-a", "worker-b")),
            rng.uniform(1, 4),
        )
        for _ in range(plan.kills)
    ]
    faults += [
        Fault(plan.duration * (i + 1) / (plan.broker_restarts + 1), "broker")
        for i in range(plan.broker_restarts)
    ]
    if plan.gateway_fault_seconds > 0 and plan.gateway_fail_rate > 0:
        begin = plan.duration * 0.25
        faults += [
            Fault(begin, "gateway-on"),
            Fault(begin + plan.gateway_fault_seconds, "gateway-off"),
        ]
    return sorted(faults, key=lambda f: f.at)


async def inject(
    fleet: Fleet, broker: LocalBroker | None, faults: list[Fault], began: float
) -> None:
    for fault in faults:
        while time.monotonic() - began < fault.at:
            await asyncio.to_thread(fleet.supervise)
            await asyncio.sleep(0.5)
        if fault.what == "kill":
            await asyncio.to_thread(fleet.kill_and_restart, fault.worker, fault.pause)
        elif fault.what == "broker" and broker is not None:
            fleet.log("chaos: restarting the broker")
            await asyncio.to_thread(broker.stop)
            await asyncio.to_thread(broker.start)
            fleet.log("chaos: the broker is back")
        elif fault.what == "gateway-on":
            fleet.log(f"chaos: the gateway fails {fleet.plan.gateway_fail_rate:.0%} of requests")
            fleet.gateway.set_faults(fail_rate=fleet.plan.gateway_fail_rate)
        elif fault.what == "gateway-off":
            fleet.log("chaos: the gateway is well again")
            fleet.gateway.set_faults(fail_rate=0.0)


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Report:
    checks: list[Check]
    counts: dict[str, int]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def text(self) -> str:
        lines = ["chaos: " + ", ".join(f"{k} {v}" for k, v in self.counts.items())]
        lines += [f"{'PASS' if c.ok else 'FAIL'}  {c.name}: {c.detail}" for c in self.checks]
        return "\n".join(lines)


def check(
    workload: Workload,
    tasks: list[dict[str, Any]],
    sms_records: list[dict[str, Any]],
    accepted: list[dict[str, Any]],
    dead_letters: list[dict[str, Any]],
    statuses: list[dict[str, Any]],
    feedback: list[dict[str, Any]],
    health: dict[str, str],
    fleet: Fleet,
) -> Report:
    checks = []
    ids_by_case: dict[str, set[str]] = {}
    copies: dict[str, set[str]] = {}
    for task in tasks:
        case = task["plate"] or task["evidence"][0]["event_id"].rsplit("-", 1)[0]
        ids_by_case.setdefault(case, set()).add(task["task_id"])
        copies.setdefault(task["task_id"], set()).add(json.dumps(comparable(task), sort_keys=True))
    tickets = {p for p in workload.overstaying if p in ids_by_case}
    hazard_cases = {c for c in ids_by_case if c.startswith("chaos-")}
    lost = sorted(workload.overstaying - tickets)
    wrong = sorted(p for p in workload.leaving if p in ids_by_case)
    checks.append(
        Check(
            "no violation lost",
            not lost and not wrong and len(hazard_cases) == workload.incidents,
            f"{len(tickets)} of {len(workload.overstaying)} overstaying vehicles ticketed, "
            f"{len(wrong)} of {len(workload.leaving)} that left ticketed, "
            f"{len(hazard_cases)} of {workload.incidents} hazard incidents tasked"
            + (f"; missing {lost[:5]}" if lost else ""),
        )
    )
    second = {c: ids for c, ids in ids_by_case.items() if len(ids) > 1}
    repeated = len(tasks) - len(copies)
    differing = [i for i, v in copies.items() if len(v) > 1]
    checks.append(
        Check(
            "no second task id on dispatch",
            not second and not differing,
            f"{len(copies)} task ids for {len(ids_by_case)} cases and incidents; "
            f"{repeated} records repeated with the same task id, {len(differing)} of them "
            "different" + (f"; cases with two ids: {sorted(second)[:5]}" if second else ""),
        )
    )
    per_plate = Counter(m["plate"] for m in accepted)
    cases = workload.overstaying | workload.leaving
    bad_sms = {p: per_plate[p] for p in cases if per_plate[p] != 1}
    message_ids = Counter(m["message_id"] for m in accepted)
    failed = [r for r in sms_records if r["status"] != "sent"]
    audit_repeats = len(sms_records) - len({r["message_id"] for r in sms_records})
    checks.append(
        Check(
            "exactly one accepted SMS per case at the gateway",
            not bad_sms and len(accepted) == len(cases) and max(message_ids.values()) == 1,
            f"{len(accepted)} accepted for {len(cases)} cases; {len(sms_records)} audit records "
            f"({audit_repeats} repeated with the same message_id, {len(failed)} not sent)"
            + (f"; plates off: {len(bad_sms)}" if bad_sms else ""),
        )
    )
    reasons = Counter(d["reason"] for d in dead_letters)
    checks.append(Check("no dead letters", not dead_letters, f"{dict(reasons) or 0}"))

    by_task: dict[str, list[dict[str, Any]]] = {}
    for record in statuses:
        by_task.setdefault(record["task_id"], []).append(record)
    first_wrong = [
        i for i in copies if not by_task.get(i) or by_task[i][0]["status"] != "dispatched"
    ]
    # One feedback gives one record with its feedback_id (a closing that follows at once has
    # none); a second, different record of the same status is the defect.
    by_feedback: dict[tuple[str, str], set[str]] = {}
    for record in statuses:
        if record["feedback_id"]:
            by_feedback.setdefault((record["feedback_id"], record["status"]), set()).add(
                json.dumps(record, sort_keys=True, ensure_ascii=False)
            )
    two_records = [f for f, v in by_feedback.items() if len(v) > 1]
    sent_ids = {f["feedback_id"] for f in feedback}
    unapplied = sorted(sent_ids - {f for f, _ in by_feedback})
    distinct = len({json.dumps(r, sort_keys=True) for r in statuses})
    checks.append(
        Check(
            "status records consistent",
            not first_wrong and not two_records and not unapplied,
            f"{len(statuses)} records ({len(statuses) - distinct} repeated identically) for "
            f"{len(by_task)} tasks; {len(first_wrong)} tasks whose first record is not "
            f"dispatched; {len(sent_ids)} feedback ids sent, {len(unapplied)} not applied, "
            f"{len(two_records)} with two different records of one status"
            + (f"; {two_records[0]}: {sorted(by_feedback[two_records[0]])}" if two_records else "")
            + (f"; not applied: {unapplied[:3]}" if unapplied else ""),
        )
    )
    sick = {n: h for n, h in health.items() if h != "/healthz 200, /readyz 200"}
    checks.append(
        Check(
            "both workers healthy",
            not sick and len(health) == 2,
            "; ".join(f"{n}: {h}" for n, h in health.items())
            + (f"; exited by themselves: {fleet.unplanned_exits}" if fleet.unplanned_exits else ""),
        )
    )
    counts = {
        "cases": workload.cases,
        "incidents": workload.incidents,
        "tasks": len(copies),
        "dispatch records": len(tasks),
        "SMS accepted": len(accepted),
        "SMS audit records": len(sms_records),
        "dead letters": len(dead_letters),
        "feedback": len(feedback),
        "status records": len(statuses),
        "kills": fleet.kills,
    }
    return Report(checks, counts)


async def campaign(
    plan: Plan, bootstrap: str, broker: LocalBroker | None, base: Path, log: Callable[[str], None]
) -> Report:
    app_id = f"chaos-{uuid.uuid4().hex[:6]}"
    topics = topic_names(app_id)
    gateway = await asyncio.to_thread(gateway_process, base, "--seed", str(plan.seed))
    fleet = Fleet(bootstrap, base, app_id, plan, gateway, log=log)
    workload = build_workload(plan, datetime.now(CHINA_STANDARD_TIME))
    feedback_env = patrol_env({**topic_env(app_id), "PATROL_KAFKA_BOOTSTRAP": bootstrap})
    feedback_args = [
        "simulate",
        "feedback",
        "--seed",
        str(plan.seed),
        "--time-scale",
        str(plan.time_scale),
        "--start",
        workload.start.isoformat(),
        "--quiet",
    ]
    simulator: PatrolProcess | None = None
    try:
        for name in ("worker-a", "worker-b"):
            fleet.start_worker(name)
        for name in ("worker-a", "worker-b"):
            await asyncio.to_thread(
                wait_http, f"http://127.0.0.1:{fleet.ports[name]}/readyz", 120, None
            )
        log(
            f"chaos: {workload.cases} parking cases, {workload.incidents} hazard incidents, "
            f"{len(workload.records)} detections over {plan.duration:.0f} s ({app_id})"
        )
        simulator = PatrolProcess(
            "feedback", feedback_args, feedback_env, base / "feedback.log"
        ).start()
        began = time.monotonic()
        sent, _ = await asyncio.gather(
            produce_paced(bootstrap, topics["camera"], workload, plan.time_scale, log),
            inject(fleet, broker, schedule(plan), began),
        )
        log(f"chaos: {sent} detections sent in {time.monotonic() - began:.0f} s; settling")
        gateway.set_faults(fail_rate=0.0)
        await asyncio.to_thread(fleet.supervise)
        await asyncio.sleep(5)  # the last tasks' first answers
        simulator.stop()
        for name in fleet.ports:
            await asyncio.to_thread(
                wait_http, f"http://127.0.0.1:{fleet.ports[name]}/readyz", 120, None
            )
        groups = app_consumer_groups(app_id, topics["camera"], topics["drone"], topics["feedback"])
        await wait_committed(bootstrap, groups, plan.partitions, timeout=180)
        accepted = await asyncio.to_thread(_wait_messages, gateway, workload.cases, 60)
        health = await asyncio.to_thread(fleet.healthy)
        kafka = Settings(kafka_bootstrap=bootstrap)
        return check(
            workload,
            await read_tasks(kafka, topics["dispatch"]),
            await read_tasks(kafka, topics["sms"]),
            accepted,
            await read_tasks(kafka, topics["deadletter"]),
            await read_tasks(kafka, topics["status"]),
            await read_tasks(kafka, topics["feedback"]),
            health,
            fleet,
        )
    finally:
        if simulator is not None:
            simulator.stop()
        fleet.stop()
        gateway.process.stop()


def _wait_messages(gateway: Gateway, count: int, timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while len(gateway.messages()) < count and time.monotonic() < deadline:
        time.sleep(0.5)
    return gateway.messages()


@click.command()
@click.option(
    "--duration",
    type=click.FloatRange(min=20),
    default=120.0,
    show_default=True,
    help="Wall-clock seconds of workload and faults.",
)
@click.option(
    "--kills",
    type=click.IntRange(min=0),
    default=6,
    show_default=True,
    help="SIGKILLs of a worker (each restarted 1–4 s later).",
)
@click.option(
    "--broker-restarts",
    type=click.IntRange(min=0),
    default=1,
    show_default=True,
    help="Broker restarts (needs a broker the campaign may restart).",
)
@click.option(
    "--gateway-fail-rate",
    type=click.FloatRange(0, 1),
    default=0.3,
    show_default=True,
    help="Share of SMS requests the gateway answers 503 during its fault window.",
)
@click.option(
    "--gateway-fault-seconds",
    type=click.FloatRange(min=0),
    default=20.0,
    show_default=True,
    help="Length of the gateway's fault window.",
)
@click.option(
    "--cases-per-minute",
    type=click.FloatRange(min=1),
    default=60.0,
    show_default=True,
    help="Parking cases per wall minute (half stay, half leave).",
)
@click.option(
    "--time-scale",
    type=click.FloatRange(min=1),
    default=60.0,
    show_default=True,
    help="Event time runs this many times faster than the wall clock.",
)
@click.option(
    "--seed",
    type=int,
    default=1,
    show_default=True,
    help="Seed of the workload, the fault schedule and the feedback.",
)
@click.option(
    "--broker-state-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="State dir of the local broker at --broker-port to restart (scripts/chaos "
    "gives the one it started); without it the campaign starts its own broker.",
)
@click.option("--broker-port", type=int, default=None, help="Port of that broker.")
@click.option(
    "--work-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Where logs and data dirs go (default: a temporary directory, kept).",
)
def chaos_command(
    duration: float,
    kills: int,
    broker_restarts: int,
    gateway_fail_rate: float,
    gateway_fault_seconds: float,
    cases_per_minute: float,
    time_scale: float,
    seed: int,
    broker_state_dir: Path | None,
    broker_port: int | None,
    work_dir: Path | None,
) -> None:
    """Run the chaos campaign and print its invariants; exit 1 when one fails.

    Two workers of one app id (own data dirs and ports), the stub gateway, a scripted workload
    of parking cases and hazards, and `patrol simulate feedback` answering the tasks; meanwhile
    SIGKILLs of a worker, broker restarts and a window of gateway failures. Then: no violation
    lost, no second task id, one accepted SMS per case, no dead letters, status records
    consistent, both workers healthy."""
    plan = Plan(
        duration=duration,
        kills=kills,
        broker_restarts=broker_restarts,
        gateway_fail_rate=gateway_fail_rate,
        gateway_fault_seconds=gateway_fault_seconds,
        cases_per_minute=cases_per_minute,
        time_scale=time_scale,
        seed=seed,
    )
    base = work_dir or Path(tempfile.mkdtemp(prefix="patrol-chaos-"))
    base.mkdir(parents=True, exist_ok=True)
    own = broker_state_dir is None
    if broker_state_dir is None:
        broker = LocalBroker(base / "broker", port=free_port())
    elif broker_port is None:
        raise click.UsageError("--broker-state-dir needs --broker-port")
    else:
        broker = LocalBroker(broker_state_dir, port=broker_port)
    started = time.monotonic()
    # the producer's reconnection noise during a broker restart; the campaign says it in one line
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)

    def log(line: str) -> None:
        click.echo(f"[{time.monotonic() - started:6.1f} s] {line}", err=True)

    try:
        if own:
            broker.start()
        log(f"chaos: broker {broker.bootstrap}, logs in {base}")
        report = asyncio.run(campaign(plan, broker.bootstrap, broker, base, log))
    finally:
        if own:
            broker.stop()
    click.echo(report.text())
    click.echo(f"chaos: {time.monotonic() - started:.0f} s in all; logs in {base}")
    if not report.ok:
        sys.exit(1)


if __name__ == "__main__":
    chaos_command()
