"""The soak run: one worker under the simulators at several times the county's rate for a long
wall time and days of event time; it samples the worker's memory and open state as it goes,
then reads the app's changelogs back and judges whether anything grows without bound.

The simulators (`patrol simulate cameras`, `drones`, `feedback`, one seed) run on event time
`--time-scale` = event span / wall duration times faster than the wall clock, starting one event
span before now, so event time ends at about the wall clock and nothing is ahead of it. Their
defaults are the county's rate; `--load` multiplies the plate-read rates, the hazard rates and
the drones' sorties. Every `--sample-seconds` it prints one line: the RSS of the worker's three
processes (faust app, intake child, SMS sender child), its open cases, incidents and tasks
(scraped from /metrics), detections, consumer lag and dead letters. At the end it stops the
simulators, lets the worker commit what it took in, reads every changelog topic from the start
(total records, distinct keys, live keys) and says PASS or FAIL for each of its checks
(`judge`); the samples and the verdict go to `bench/results/soak-<UTC stamp>.json`. Run it with
`scripts/soak` (a fresh broker) or `python -m patrol.devtools.soak --help`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import click
import httpx
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client.parser import text_string_to_metric_families

from patrol import metrics
from patrol.devtools.broker import LocalBroker
from patrol.devtools.chaos import Check
from patrol.devtools.processes import (
    Gateway,
    PatrolProcess,
    app_consumer_groups,
    gateway_process,
    patrol_env,
    wait_committed,
)
from patrol.domain import grace, tasks
from patrol.domain.texts import CHINA_STANDARD_TIME
from patrol.domain.zones import load_zones
from patrol.kafka.reading import read_to_end
from patrol.settings import Settings, topic_env, topic_names
from patrol.waits import free_port, wait_http

MIB = 1024 * 1024
RESULTS_DIR = Path(__file__).resolve().parents[2] / "bench" / "results"
# The simulators' defaults: the county's rate, which --load multiplies.
CAMERA_READS_PER_SECOND = 0.2
DRONE_READS_PER_SECOND = 0.03
VENDING_PER_HOUR = 2.0
BURNING_PER_HOUR = 1.0
ROUTE_HAZARDS_PER_HOUR = 0.9
MISSION_INTERVAL_MINUTES = 30.0
# Thresholds of the verdict (documented in bench/README.md, "Soak").
RSS_MAX_GROWTH = 0.10
"""Over the judged window, the fitted line of the RSS sum may rise by at most this share."""
RSS_MAX_SLOPE_MIB_PER_HOUR = 20.0
"""…and its slope stay under this. A leak of 1 KiB per plate read at the default soak (about
0.8 reads a second of event time, 48× faster: some 140,000 reads a wall hour) would be 135 MiB
an hour; a flat worker's noise (allocator, batches in flight) stays well under 20."""
OPEN_MAX_RATIO = 1.25
"""The last half's largest open cases + incidents at most this times the first half's…"""
OPEN_SLACK = 5
"""…plus this many (small counts jitter by a few)."""
WARMUP_SHARE = 0.1
"""The first tenth of the run fills the worker up from nothing and is not judged."""
CHANGELOG_MARGIN_SHARE = 0.02
CHANGELOG_MARGIN_MIN = 5
"""Live changelog keys may exceed what the worker must hold by max(5, 2 %): the records of the
last stream events and the clock's last steps."""
FORGET_SLACK = timedelta(minutes=10)
"""A live key whose rules let it go this long (event time) before the end is stale."""
MIN_JUDGED_SAMPLES = 4


@dataclass(frozen=True, slots=True)
class Plan:
    duration: float = 3600.0
    """Wall seconds of simulated traffic."""
    event_hours: float = 48.0
    """Event time those seconds cover."""
    load: float = 4.0
    sample_seconds: float = 30.0
    seed: int = 1
    partitions: int = 3

    @property
    def time_scale(self) -> float:
        return self.event_hours * 3600 / self.duration


@dataclass(frozen=True, slots=True)
class Sample:
    wall: float
    """Seconds since the simulators started."""
    event_time: str
    rss_mib: dict[str, float]
    """RSS of each of the worker's processes (faust app, intake, sms sender)."""
    cases_open: float
    incidents_open: float
    tasks_open: float
    detections: float
    consumer_lag: float
    dead_letters: float

    @property
    def rss_total(self) -> float:
        return sum(self.rss_mib.values())

    @property
    def open_cases(self) -> float:
        """What the grace and hazard rules hold open: parking cases and hazard incidents."""
        return self.cases_open + self.incidents_open

    def line(self) -> str:
        rss = " ".join(f"{k} {v:.0f}" for k, v in self.rss_mib.items())
        return (
            f"soak: {self.wall:6.0f} s  event {self.event_time[:16]}  RSS MiB {rss} = "
            f"{self.rss_total:.0f}  open cases {self.cases_open:.0f} incidents "
            f"{self.incidents_open:.0f} tasks {self.tasks_open:.0f}  detections "
            f"{self.detections:.0f}  lag {self.consumer_lag:.0f}  dead letters "
            f"{self.dead_letters:.0f}"
        )


@dataclass
class Changelog:
    """One changelog topic read from the start: what is in it, and what its live keys are."""

    topic: str
    records: int = 0
    distinct_keys: int = 0
    live_keys: int = 0
    live_open: int = 0
    """Live keys holding something open (a case, a task not closed)."""
    live_stale: int = 0
    """Live keys the rules would have let go (a closed task, a case key past its retention)."""
    undecodable: int = 0

    @property
    def live_held(self) -> int:
        return self.live_keys - self.live_open - self.live_stale


# --- the pure analysis: samples in, verdicts out ------------------------------------------


def horizon(settings: Settings, max_grace: timedelta) -> timedelta:
    """The longest event time the worker keeps state of a finished thing: a case key is
    remembered `retention` after its last decision (to the end of a ticket's local day, rule 7:
    up to a day), an incident's seen ids twice the incident window, a resolved task's watch the
    verify window. After it, a steady load must give steady memory."""
    case_key = max(settings.retention, timedelta(days=1)) + max_grace + settings.recheck
    return max(case_key, 2 * settings.incident_window, settings.verify_window)


def fitted_line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least squares: (slope, intercept)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return 0.0, my
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return slope, my - slope * mx


def judged_window(samples: Sequence[Sample], horizon_wall: float) -> tuple[list[Sample], str]:
    """The samples RSS is judged on: those after the horizon (and at least the last half)."""
    if not samples:
        return [], "no samples"
    end = samples[-1].wall
    since = max(horizon_wall, end / 2) if horizon_wall <= end else end / 2
    window = [s for s in samples if s.wall >= since]
    if horizon_wall > end:
        note = (
            f"the horizon ({horizon_wall:.0f} s wall) is past the run's end: judged over the "
            "last half, where state may still be filling (not a soak verdict)"
        )
    else:
        note = f"judged from {since:.0f} s (horizon {horizon_wall:.0f} s wall)"
    return window, note


def rss_check(
    samples: Sequence[Sample],
    horizon_wall: float,
    max_growth: float = RSS_MAX_GROWTH,
    max_slope: float = RSS_MAX_SLOPE_MIB_PER_HOUR,
) -> Check:
    name = "RSS flat after the retention horizon"
    window, note = judged_window(samples, horizon_wall)
    if len(window) < MIN_JUDGED_SAMPLES:
        return Check(name, False, f"{len(window)} samples to judge, {MIN_JUDGED_SAMPLES} needed")
    xs = [s.wall for s in window]
    ys = [s.rss_total for s in window]
    slope, intercept = fitted_line(xs, ys)
    first, last = intercept + slope * xs[0], intercept + slope * xs[-1]
    growth = (last - first) / first if first > 0 else math.inf
    per_hour = slope * 3600
    ok = growth <= max_growth and per_hour <= max_slope
    return Check(
        name,
        ok,
        f"sum {min(ys):.0f}–{max(ys):.0f} MiB over {len(window)} samples, fitted "
        f"{first:.0f} → {last:.0f} MiB ({growth:+.1%}, limit {max_growth:+.0%}), slope "
        f"{per_hour:+.1f} MiB/h (limit {max_slope:g}); {note}",
    )


def open_cases_check(
    samples: Sequence[Sample],
    warmup: float,
    max_ratio: float = OPEN_MAX_RATIO,
    slack: float = OPEN_SLACK,
) -> Check:
    name = "open cases bounded"
    judged = [s for s in samples if s.wall >= warmup]
    if len(judged) < MIN_JUDGED_SAMPLES:
        return Check(
            name, False, f"{len(judged)} samples after warm-up, {MIN_JUDGED_SAMPLES} needed"
        )
    middle = (judged[0].wall + judged[-1].wall) / 2
    first = max(s.open_cases for s in judged if s.wall < middle)
    last = max(s.open_cases for s in judged if s.wall >= middle)
    limit = max_ratio * first + slack
    return Check(
        name,
        last <= limit,
        f"cases + incidents open: first half's max {first:.0f}, last half's {last:.0f} "
        f"(limit {max_ratio:g} × {first:.0f} + {slack:g} = {limit:.0f}); open tasks "
        f"{judged[0].tasks_open:.0f} → {judged[-1].tasks_open:.0f} (not judged: the "
        "simulated dispatch system never answers a share of tasks, which stay open)",
    )


def changelog_check(
    changelogs: Sequence[Changelog],
    open_state: dict[str, float],
    share: float = CHANGELOG_MARGIN_SHARE,
    least: int = CHANGELOG_MARGIN_MIN,
) -> Check:
    """Live keys beyond what the worker must hold: stale keys (finished, never tombstoned) and
    more open keys than the worker reports open. `open_state` maps a changelog's topic to the
    open count the worker reports for it (tables without one are not compared)."""
    problems = []
    parts = []
    for log in changelogs:
        margin = max(least, math.ceil(share * log.live_keys))
        parts.append(
            f"{log.topic.rsplit('-state-', 1)[-1]}: {log.records} records, "
            f"{log.distinct_keys} keys, {log.live_keys} live ({log.live_open} open, "
            f"{log.live_held} held, {log.live_stale} stale)"
        )
        if log.live_stale > margin:
            problems.append(f"{log.live_stale} stale live keys in {log.topic} (margin {margin})")
        if log.undecodable:
            problems.append(f"{log.undecodable} undecodable values in {log.topic}")
        reported = open_state.get(log.topic)
        if reported is not None and abs(log.live_open - reported) > margin:
            # more: finished work left open; fewer: the changelog lacks what the worker holds
            problems.append(
                f"{log.live_open} open keys in {log.topic}, the worker reports {reported:.0f}"
            )
    if not changelogs:
        problems.append("no changelog topic found")
    return Check(
        "no growth in the changelog beyond live keys",
        not problems,
        "; ".join(parts) + ("; " + "; ".join(problems) if problems else ""),
    )


def judge(
    samples: Sequence[Sample],
    changelogs: Sequence[Changelog],
    open_state: dict[str, float],
    horizon_wall: float,
    duration: float,
) -> list[Check]:
    return [
        rss_check(samples, horizon_wall),
        open_cases_check(samples, WARMUP_SHARE * duration),
        changelog_check(changelogs, open_state),
    ]


def metric_sums(text: str) -> dict[str, float]:
    """Each patrol family of a /metrics page summed over its labels (counters by their
    `_total` sample, gauges by their value)."""
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        wanted = family.name + ("_total" if family.type == "counter" else "")
        sums[family.name] = sum(s.value for s in family.samples if s.name == wanted)
    return sums


def classify_case(raw: bytes, clock: datetime, policy: grace.GracePolicy) -> str:
    """open, held (the rules still need the key at `clock`) or stale."""
    state = grace.decode_case_state(raw)
    if state.open_case is not None:
        return "open"
    due = grace.next_due(state, policy)
    return "held" if due is not None and due >= clock - FORGET_SLACK else "stale"


def classify_task(raw: bytes, clock: datetime, policy: tasks.LoopPolicy) -> str:
    """open, held (closed, but within the retention the loop keeps it for) or stale (the loop
    should have forgotten it: a key kept for ever grows without bound)."""
    task = tasks.decode_task(raw)
    if task.is_open:
        return "open"
    forget = tasks.forget_at(task, policy)
    return "held" if forget is not None and forget >= clock - FORGET_SLACK else "stale"


def tally(
    topic: str,
    records: Iterable[tuple[bytes | None, bytes | None]],
    classify: Callable[[bytes], str] | None,
) -> Changelog:
    latest: dict[bytes | None, bytes | None] = {}
    count = 0
    for key, value in records:
        latest[key] = value
        count += 1
    log = Changelog(topic, records=count, distinct_keys=len(latest))
    for value in latest.values():
        if value is None:
            continue
        log.live_keys += 1
        if classify is None:
            continue
        try:
            kind = classify(value)
        except ValueError:
            log.undecodable += 1
            continue
        if kind == "open":
            log.live_open += 1
        elif kind == "stale":
            log.live_stale += 1
    return log


# --- the run ------------------------------------------------------------------------------


def proc_rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / MIB
    except OSError:
        pass
    return 0.0


def _ppid(stat: Path) -> int:
    try:
        # "pid (comm) state ppid …"; comm may hold spaces and parentheses
        return int(stat.read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def worker_processes(pid: int) -> dict[str, int]:
    """The worker's processes by role: the faust app and its intake and SMS sender children."""
    found = {"app": pid}
    # By the parent pid of each process: /proc/<pid>/task/<pid>/children lists only the children
    # of the main thread (a process forked by another thread is missing), and some kernels lack it.
    children = [p.parent.name for p in Path("/proc").glob("[0-9]*/stat") if _ppid(p) == pid]
    for child in children:
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if b"patrol.intake" in cmdline:
            found["intake"] = int(child)
        elif b"patrol.sms" in cmdline:
            found["sms"] = int(child)
    return found


@dataclass
class Soak:
    plan: Plan
    bootstrap: str
    base: Path
    log: Callable[[str], None]
    app_id: str = field(default_factory=lambda: f"soak-{uuid.uuid4().hex[:6]}")
    processes: list[PatrolProcess] = field(default_factory=list)
    simulators: list[PatrolProcess] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    worker: PatrolProcess | None = None
    web_port: int = 0
    start: datetime = field(default_factory=lambda: datetime.now(CHINA_STANDARD_TIME))
    began: float = 0.0
    stopped: float | None = None
    """Wall seconds at which the simulators were stopped: event time ends there."""

    @property
    def topics(self) -> dict[str, str]:
        return topic_names(self.app_id)

    def env(self, **extra: str) -> dict[str, str]:
        return patrol_env(
            {**topic_env(self.app_id), "PATROL_KAFKA_BOOTSTRAP": self.bootstrap, **extra}
        )

    def start_worker(self, gateway: Gateway) -> None:
        self.web_port = free_port()
        env = self.env(
            PATROL_APP_ID=self.app_id,
            PATROL_SMS_URL=gateway.url,
            PATROL_WEB_PORT=str(self.web_port),
            PATROL_DATA_DIR=str(self.base / "worker-data"),
            PATROL_PARTITIONS=str(self.plan.partitions),
        )
        self.worker = PatrolProcess("worker", ["worker"], env, self.base / "worker.log").start()
        self.processes.append(self.worker)
        wait_http(f"http://127.0.0.1:{self.web_port}/readyz", 180, self.worker.proc)

    def simulator_args(self) -> dict[str, list[str]]:
        plan, load = self.plan, self.plan.load
        common = [
            "--seed",
            str(plan.seed),
            "--time-scale",
            f"{plan.time_scale:g}",
            "--start",
            self.start.isoformat(),
            "--quiet",
        ]
        world = [
            "--vending-per-hour",
            f"{VENDING_PER_HOUR * load:g}",
            "--burning-per-hour",
            f"{BURNING_PER_HOUR * load:g}",
            "--route-hazards-per-hour",
            f"{ROUTE_HAZARDS_PER_HOUR * load:g}",
            "--no-demo-script",
        ]
        return {
            "cameras": ["--rate", f"{CAMERA_READS_PER_SECOND * load:g}", *world, *common],
            "drones": [
                "--rate",
                f"{DRONE_READS_PER_SECOND * load:g}",
                "--mission-interval",
                f"{max(1.0, MISSION_INTERVAL_MINUTES / load):g}",
                *world,
                *common,
            ],
            "feedback": common,
        }

    def start_simulators(self) -> None:
        span = timedelta(hours=self.plan.event_hours)
        # a minute's margin: the simulators start a moment after this, their clocks behind it
        self.start = (datetime.now(UTC) - span - timedelta(minutes=1)).astimezone(
            CHINA_STANDARD_TIME
        )
        for kind, args in self.simulator_args().items():
            process = PatrolProcess(
                f"simulate-{kind}", ["simulate", kind, *args], self.env(), self.base / f"{kind}.log"
            ).start()
            self.processes.append(process)
            self.simulators.append(process)
        self.began = time.monotonic()

    def event_time(self, wall: float) -> datetime:
        if self.stopped is not None:
            wall = min(wall, self.stopped)
        return self.start + timedelta(seconds=wall * self.plan.time_scale)

    def scrape(self) -> dict[str, float]:
        try:
            response = httpx.get(f"http://127.0.0.1:{self.web_port}/metrics", timeout=10)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            self.log(f"soak: /metrics did not answer ({type(exc).__name__})")
            return {}
        return metric_sums(response.text)

    def sample(self) -> Sample:
        assert self.worker is not None
        wall = time.monotonic() - self.began
        rss = {k: proc_rss_mib(p) for k, p in worker_processes(self.worker.pid).items()}
        sums = self.scrape()

        def value(metric: Any) -> float:
            # the family name prometheus_client gives it (counters without `_total`)
            return sums.get(metric.describe()[0].name, math.nan)

        sample = Sample(
            wall=round(wall, 1),
            event_time=self.event_time(wall).isoformat(timespec="seconds"),
            rss_mib={k: round(v, 1) for k, v in rss.items()},
            cases_open=value(metrics.grace_cases_open),
            incidents_open=value(metrics.incidents_open),
            tasks_open=value(metrics.tasks_open),
            detections=value(metrics.detections_total),
            consumer_lag=value(metrics.consumer_lag_messages),
            dead_letters=value(metrics.deadletters_total),
        )
        self.samples.append(sample)
        self.log(sample.line())
        return sample

    def check_alive(self) -> None:
        for process in self.processes:
            if not process.alive():
                raise click.ClickException(
                    f"{process.name} exited with {process.exit_code}; its log "
                    f"({process.log_path}) ends with:\n{process.log_tail(15)}"
                )

    async def run(self) -> None:
        next_at = 0.0
        while (elapsed := time.monotonic() - self.began) < self.plan.duration:
            self.check_alive()
            if elapsed >= next_at:
                await asyncio.to_thread(self.sample)
                next_at += self.plan.sample_seconds
            await asyncio.sleep(min(1.0, max(0.0, self.plan.duration - elapsed)))

    def stop_simulators(self) -> None:
        self.stopped = time.monotonic() - self.began
        for process in self.simulators:
            process.stop()

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()


async def read_changelogs(
    bootstrap: str, app_id: str, clock: datetime, settings: Settings
) -> list[Changelog]:
    """Every changelog topic of the app's faust side, read from the start to its end now."""
    policy = grace.GracePolicy.from_settings(settings)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = sorted(
            t
            for t in await admin.list_topics()
            if t.startswith(f"{app_id}-state-") and t.endswith("-changelog")
        )
    finally:
        await admin.close()
    result = []
    for topic in names:
        classify: Callable[[bytes], str] | None = None
        if "grace-cases" in topic:
            classify = partial(classify_case, clock=clock, policy=policy)
        elif "task-loop" in topic:
            classify = partial(
                classify_task, clock=clock, policy=tasks.LoopPolicy.from_settings(settings)
            )
        records = [(r.key, r.value) for r in await read_to_end(bootstrap, topic)]
        result.append(tally(topic, records, classify))
    return result


def open_by_changelog(changelogs: Sequence[Changelog], last: Sample) -> dict[str, float]:
    """The worker's reported open count for each changelog it has one for."""
    result = {}
    for log in changelogs:
        if "grace-cases" in log.topic:
            result[log.topic] = last.cases_open
        elif "task-loop" in log.topic:
            result[log.topic] = last.tasks_open
    return result


async def soak(
    plan: Plan, bootstrap: str, base: Path, log: Callable[[str], None]
) -> dict[str, Any]:
    run = Soak(plan, bootstrap, base, log)
    settings = Settings(kafka_bootstrap=bootstrap)
    max_grace = timedelta(minutes=max(z.grace_minutes for z in load_zones().zones))
    keep = horizon(settings, max_grace)
    horizon_wall = keep.total_seconds() / plan.time_scale
    gateway = await asyncio.to_thread(gateway_process, base, "--seed", str(plan.seed))
    run.processes.append(gateway.process)
    try:
        await asyncio.to_thread(run.start_worker, gateway)
        run.start_simulators()
        log(
            f"soak: {run.app_id}, {plan.duration:.0f} s wall = {plan.event_hours:g} h event "
            f"time (×{plan.time_scale:g}) from {run.start:%Y-%m-%d %H:%M}, load ×{plan.load:g}, "
            f"horizon {keep} event time = {horizon_wall:.0f} s wall; logs in {base}"
        )
        log(
            "soak: simulators " + " | ".join(" ".join(a[:8]) for a in run.simulator_args().values())
        )
        await run.run()
        end_clock = run.event_time(time.monotonic() - run.began)
        log("soak: stopping the simulators; the worker drains")
        await asyncio.to_thread(run.stop_simulators)
        topics = run.topics
        groups = app_consumer_groups(
            run.app_id, topics["camera"], topics["drone"], topics["feedback"]
        )
        drained, drain_began = True, time.monotonic()
        try:
            await wait_committed(bootstrap, groups, plan.partitions, timeout=300)
        except AssertionError as exc:
            drained = False
            log(f"soak: the worker did not drain: {exc}")
        drain_seconds = time.monotonic() - drain_began
        await asyncio.sleep(3)  # the last events' changelog records
        last = await asyncio.to_thread(run.sample)
        changelogs = await read_changelogs(bootstrap, run.app_id, end_clock, settings)
    finally:
        await asyncio.to_thread(run.stop)
    checks = judge(
        run.samples, changelogs, open_by_changelog(changelogs, last), horizon_wall, plan.duration
    )
    checks.append(
        Check(
            "worker drained",
            drained,
            f"every consumer group committed its input {drain_seconds:.0f} s after the simulators "
            "stopped"
            if drained
            else "not within 300 s, see above",
        )
    )
    return {
        "plan": {**asdict(plan), "time_scale": plan.time_scale},
        "app_id": run.app_id,
        "event_start": run.start.isoformat(),
        "event_end": end_clock.isoformat(),
        "horizon_event_seconds": keep.total_seconds(),
        "horizon_wall_seconds": horizon_wall,
        "simulators": run.simulator_args(),
        "samples": [{**asdict(s), "rss_total": s.rss_total} for s in run.samples],
        "changelogs": [{**asdict(c), "live_held": c.live_held} for c in changelogs],
        "checks": [asdict(c) for c in checks],
        "ok": all(c.ok for c in checks),
        "logs": str(base),
    }


def summary(result: dict[str, Any]) -> str:
    samples = result["samples"]
    lines = ["soak: summary"]
    if samples:
        first, last = samples[0], samples[-1]
        peak = max(samples, key=lambda s: s["rss_total"])
        lines.append(f"  {'':24}{'first':>10}{'peak RSS':>10}{'last':>10}")
        rows = [
            ("wall s", "wall"),
            ("RSS sum MiB", "rss_total"),
            ("cases open", "cases_open"),
            ("incidents open", "incidents_open"),
            ("tasks open", "tasks_open"),
            ("detections", "detections"),
            ("consumer lag", "consumer_lag"),
            ("dead letters", "dead_letters"),
        ]
        for label, key in rows:
            lines.append(f"  {label:24}{first[key]:>10.0f}{peak[key]:>10.0f}{last[key]:>10.0f}")
        for role in last["rss_mib"]:
            lines.append(
                f"  {'RSS ' + role + ' MiB':24}{first['rss_mib'].get(role, 0):>10.0f}"
                f"{peak['rss_mib'].get(role, 0):>10.0f}{last['rss_mib'][role]:>10.0f}"
            )
    for log in result["changelogs"]:
        lines.append(
            f"  changelog {log['topic']}: {log['records']} records, {log['distinct_keys']} keys, "
            f"{log['live_keys']} live ({log['live_open']} open, {log['live_held']} held, "
            f"{log['live_stale']} stale)"
        )
    lines.append(
        "  (the broker compacts only closed segments: the total records shrink only where a "
        "segment rolled and the cleaner ran; live keys are what a replacement would load)"
    )
    lines += [
        f"{'PASS' if c['ok'] else 'FAIL'}  {c['name']}: {c['detail']}" for c in result["checks"]
    ]
    return "\n".join(lines)


@click.command()
@click.option(
    "--duration",
    type=click.FloatRange(min=60),
    default=3600.0,
    show_default=True,
    help="Wall-clock seconds of simulated traffic (then the worker drains and the changelogs "
    "are read: a few minutes more).",
)
@click.option(
    "--event-hours",
    type=click.FloatRange(min=0.1),
    default=48.0,
    show_default=True,
    help="Hours of event time the run covers; --time-scale is this over --duration, and event "
    "time starts this long before now so it ends at about the wall clock.",
)
@click.option(
    "--load",
    type=click.FloatRange(min=0.1),
    default=4.0,
    show_default=True,
    help="Multiplier of the county's rate (the simulators' defaults): camera and drone plate "
    "reads, new vendors and fires, and the drones' sorties (mission interval divided by it).",
)
@click.option(
    "--sample-seconds",
    type=click.FloatRange(min=1),
    default=30.0,
    show_default=True,
    help="Wall seconds between samples (RSS of the worker's processes, its /metrics).",
)
@click.option("--seed", type=int, default=1, show_default=True, help="Seed of every simulator.")
@click.option(
    "--partitions",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="PATROL_PARTITIONS of the worker's topics.",
)
@click.option(
    "--bootstrap",
    default=None,
    help="Kafka bootstrap servers to use (scripts/soak gives a fresh broker's); without it the "
    "soak starts its own local broker.",
)
@click.option(
    "--work-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Where logs and the worker's data dir go (default: a temporary directory, kept).",
)
@click.option(
    "--results",
    type=click.Path(path_type=Path),
    default=None,
    help="The JSON of samples and verdict (default: bench/results/soak-<UTC stamp>.json).",
)
def soak_command(
    duration: float,
    event_hours: float,
    load: float,
    sample_seconds: float,
    seed: int,
    partitions: int,
    bootstrap: str | None,
    work_dir: Path | None,
    results: Path | None,
) -> None:
    """Soak one worker under the simulators at --load times the county's rate; exit 1 on FAIL.

    Checks (thresholds in bench/README.md, "Soak"): the RSS sum of the worker's three processes
    is flat after the retention horizon (fitted growth ≤ 10 %, slope ≤ 20 MiB/h), open cases and
    incidents stay bounded (the last half's max ≤ 1.25 × the first half's + 5, after a tenth of
    warm-up), and the changelogs hold no live key beyond what the worker must hold (no stale
    keys, no more open keys than it reports, within max(5, 2 %)); and the worker drained."""
    plan = Plan(duration, event_hours, load, sample_seconds, seed, partitions)
    base = work_dir or Path(tempfile.mkdtemp(prefix="patrol-soak-"))
    base.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = results or RESULTS_DIR / f"soak-{stamp}.json"
    started = time.monotonic()
    logging.getLogger("aiokafka").setLevel(logging.ERROR)

    def log(line: str) -> None:
        click.echo(f"[{time.monotonic() - started:6.0f} s] {line}", err=True)

    # Ctrl-C, or a SIGTERM, cancels the run, whose cleanup stops every process it started (the
    # handler is set even where a shell started the soak with SIGINT ignored, in the background).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
    broker = None if bootstrap else LocalBroker(base / "broker", port=free_port())
    try:
        if broker is not None:
            broker.start()
        result = asyncio.run(soak(plan, bootstrap or broker.bootstrap, base, log))  # type: ignore[union-attr]
    except KeyboardInterrupt:
        log("soak: interrupted; every process it started is stopped")
        sys.exit(130)
    finally:
        if broker is not None:
            with contextlib.suppress(Exception):
                broker.stop()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, ensure_ascii=False))
    click.echo(summary(result))
    click.echo(f"soak: {time.monotonic() - started:.0f} s in all; results in {out}; logs in {base}")
    if not result["ok"]:
        sys.exit(1)


if __name__ == "__main__":
    soak_command()
