"""The four measurements: throughput (raw vs patrol), dispatch latency, recovery, memory.

Each scenario uses fresh topics and its own app id, and returns a plain dict for the JSON
report. Worker processes are always stopped by the scenario that started them.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import signal
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench import cpu
from bench.kafka import (
    BROKER_TIMED,
    FeedbackResponder,
    OffsetWatcher,
    StatusWatcher,
    TaskWatcher,
    create_topics,
    produce_records,
)
from bench.processes import REPO, BenchError, BenchTopics, Gateway, Worker
from bench.profile import summarise
from bench.raw import run_raw_pipeline
from bench.report import percentile
from bench.stages import hop_figures, hop_latencies, read_hop_times
from bench.workload import (
    BenchFeedback,
    BenchRecord,
    ExpectedTask,
    FeedbackSchedule,
    confirming_read,
    feedback_for,
    latency_stream,
    open_case_spots,
    opening_reads,
    throughput_mix,
)
from patrol.domain import grace
from patrol.domain.models import Detection, TaskType
from patrol.domain.routing import load_routing
from patrol.domain.zones import ZoneMap
from patrol.kafka.topics import InternalTopics
from patrol.metrics import FEEDBACK_OUTCOMES
from patrol.settings import Settings
from patrol.sms.sender import sender_group
from patrol.worker.agent import Expiries

log = logging.getLogger("bench")

POLL_SECONDS = 0.1
# What each pipeline's CPU per event counts (`bench.cpu.per_event`): the raw loop is the bench
# process itself; patrol's is the worker and its intake, the broker and the gateway. Shown apart:
# the bench's responder (its counterpart, the raw loop's feedback, was produced before the
# timing) and the SMS sender, which runs at idle priority on time no other process wanted.
RAW_CPU_TOTAL = frozenset({"bench", "broker"})
PATROL_CPU_TOTAL = frozenset({"worker", "patrol.intake.process", "sms gateway", "broker"})
# Every opened case puts one SMS in the outbox topic, where a backlog waits at no cost to the
# worker's memory; the workers run with the project's defaults, but one: the workload's event
# time starts at a fixed day (bench.workload.T0) and spans n / 10 s, days for a large --n, so
# it is not tied to the wall clock and must not be dead-lettered as clock_skew.
WORKER_ENV: dict[str, str] = {"PATROL_MAX_FUTURE_MINUTES": "inf"}


@dataclass(frozen=True)
class BenchConfig:
    bootstrap: str
    n: int
    partitions: int
    latency_rate: int
    latency_seconds: int
    latency_primed: int
    state_cases: int
    feedback: bool
    profile: bool
    patrol_budget_seconds: float
    worker_env: dict[str, str]
    results_dir: Path
    stamp: str
    work_dir: Path


async def _poll_until(
    probe: Callable[[], float], done: Callable[[float], bool], timeout: float, what: str
) -> tuple[float, float]:
    """Poll `probe` (in a thread) until `done(value)`; (monotonic time, value) at that point."""
    deadline = time.monotonic() + timeout
    next_report = time.monotonic() + 10
    value = 0.0
    while time.monotonic() < deadline:
        value = await asyncio.to_thread(probe)
        if done(value):
            return time.monotonic(), value
        if time.monotonic() >= next_report:
            log.info("waiting for %s: at %d", what, value)
            next_report += 10
        await asyncio.sleep(POLL_SECONDS)
    raise BenchError(f"timed out after {timeout:.0f} s waiting for {what} (last value {value})")


async def _settled(cfg: BenchConfig, topics: BenchTopics, timeout: float = 120) -> None:
    """Until the agents' and the sender's groups have committed everything written so far to
    the internal topics."""
    internal = InternalTopics.of(topics.app_id)
    groups = {  # the sender first: what it finishes lands on the agents' topic
        sender_group(topics.app_id): (internal.sms_outbox,),
        f"{topics.app_id}-state": (internal.cases, internal.hazards),
    }
    began = time.monotonic()
    deadline = began + timeout
    probe = AIOKafkaConsumer(bootstrap_servers=cfg.bootstrap, enable_auto_commit=False)
    await probe.start()
    try:
        for group, names in groups.items():
            parts = [TopicPartition(t, p) for t in names for p in range(cfg.partitions)]
            async with OffsetWatcher(cfg.bootstrap, group) as offsets:
                while not await offsets.caught_up(await probe.end_offsets(parts)):
                    if time.monotonic() >= deadline:
                        raise BenchError(f"{group} did not take in what priming produced")
                    await asyncio.sleep(POLL_SECONDS)
    finally:
        await probe.stop()
    log.info("latency: priming settled %.1f s after its SMS were sent", time.monotonic() - began)


def _worker(
    cfg: BenchConfig, topics: BenchTopics, gateway: Gateway, name: str, **env: str
) -> Worker:
    return Worker.start(
        topics,
        sms_url=gateway.url,
        base=cfg.work_dir,
        name=name,
        PATROL_PARTITIONS=str(cfg.partitions),
        **WORKER_ENV,
        **cfg.worker_env,
        **env,
    )


# --- 1. throughput ------------------------------------------------------------------------


async def throughput(cfg: BenchConfig, zones: ZoneMap, gateway: Gateway) -> dict[str, Any]:
    generated = time.perf_counter()
    records = throughput_mix(zones, cfg.n)
    # One feedback record per task per step (accepted, arrived, resolved) for every task the
    # mix yields. The raw loop reads them pre-produced beside the detections; the worker gets
    # the same records from the bench's responder as each task comes out (`FeedbackResponder`).
    answers = feedback_for(records) if cfg.feedback else {}
    feedback = [step.record() for steps in answers.values() for step in steps]
    generate_s = time.perf_counter() - generated
    topics = BenchTopics("tput")
    await create_topics(
        cfg.bootstrap, [*topics.all_inputs.values(), topics.dispatch], cfg.partitions
    )
    produce_s = await produce_records(cfg.bootstrap, records, topics.inputs)
    log.info(
        "throughput: %d detections and %d feedback records generated in %.1f s, detections "
        "produced in %.1f s",
        cfg.n,
        len(feedback),
        generate_s,
        produce_s,
    )
    kinds: dict[str, int] = {}
    for record in [*records, *feedback]:
        kinds[record.kind] = kinds.get(record.kind, 0) + 1
    confirming = sum(r.confirms for r in records)
    expected_parking_tasks = sum(
        r.confirms and r.topic_kind == "camera" and _in_no_parking(zones, r.value) for r in records
    )
    del records

    raw_out, raw_feedback = topics.name("raw-out"), topics.name("raw-feedback")
    await create_topics(cfg.bootstrap, [raw_out, raw_feedback], cfg.partitions)
    await produce_records(cfg.bootstrap, feedback, {"feedback": raw_feedback})
    del feedback
    # The CPU each event cost (`bench.cpu`): the raw loop runs in this process.
    raw_processes = cpu.watched_bench(cfg.bootstrap)
    raw_cpu_before = cpu.sample(raw_processes)
    raw = await run_raw_pipeline(
        cfg.bootstrap,
        [*topics.inputs.values(), raw_feedback],
        raw_out,
        f"{topics.app_id}-raw",
        cfg.n + 3 * len(answers),
        timeout=600,
        feedback_topics=frozenset({raw_feedback}),
    )
    raw_cpu = cpu.per_event(raw_cpu_before, cpu.sample(raw_processes), raw.processed, RAW_CPU_TOTAL)
    log.info("throughput: raw aiokafka %.0f events/s", raw.events_per_second)

    patrol = await _patrol_throughput(cfg, topics, gateway, answers)
    ratio = patrol["events_per_second"] / raw.events_per_second if raw.seconds else None
    return {
        "n": cfg.n,
        "feedback_records": 3 * len(answers),
        "expected_tasks_answered": len(answers),
        "mix": kinds,
        "confirming_reads": confirming,
        # Each confirming read in a no-parking zone should yield one task, processed in any order.
        "expected_parking_tasks": expected_parking_tasks,
        "generate_seconds": round(generate_s, 2),
        "produce_seconds": round(produce_s, 2),
        "raw": {
            "processed": raw.processed,
            "invalid": raw.invalid,
            "seconds": round(raw.seconds, 3),
            "events_per_second": round(raw.events_per_second, 1),
            "cpu_us_per_event": raw_cpu,
        },
        "patrol": patrol,
        "ratio": None if ratio is None else round(ratio, 3),
    }


async def _patrol_throughput(
    cfg: BenchConfig,
    topics: BenchTopics,
    gateway: Gateway,
    answers: dict[str, list[BenchFeedback]],
) -> dict[str, Any]:
    """The worker's rate on detections and feedback together: from its first detection decided
    until it has decided every detection and taken every feedback record
    (`patrol_task_feedback_total`, whatever became of each)."""
    expected_feedback = sum(len(steps) for steps in answers.values())
    responder = FeedbackResponder(cfg.bootstrap, topics.dispatch, topics.feedback, dict(answers))
    if answers:
        await responder.start(cfg.partitions)
    worker = _worker(cfg, topics, gateway, "tput")
    profiler: subprocess.Popen[bytes] | None = None
    profile_path = cfg.results_dir / f"{cfg.stamp}-worker-profile.txt"
    try:
        decided, taken = "patrol_detections_total", "patrol_task_feedback_total"
        first_at, _ = await _poll_until(
            lambda: _metric_or_zero(worker, decided), lambda v: v > 0, 180, "the first detection"
        )
        if cfg.profile:
            profiler = _start_profiler(worker.process.pid, profile_path)
        processes = cpu.watched(worker.process.pid, gateway.process.pid, cfg.bootstrap)
        cpu_before = cpu.sample(processes)
        committed_at: float | None = None
        done_at: float | None = None
        detections_at: float | None = None
        count = fed = 0.0
        budget_end = first_at + cfg.patrol_budget_seconds
        async with OffsetWatcher(cfg.bootstrap, topics.app_id) as offsets:
            next_report = time.monotonic() + 5
            while time.monotonic() < budget_end:
                sums = await asyncio.to_thread(worker.metrics, decided, taken)
                count, fed = sums.get(decided, 0.0), sums.get(taken, 0.0)
                if detections_at is None and count >= cfg.n:
                    detections_at = time.monotonic()
                if count >= cfg.n and fed >= expected_feedback:
                    done_at = time.monotonic()
                    break
                inputs = topics.inputs.values()
                if committed_at is None and await offsets.committed_on(inputs) >= cfg.n:
                    committed_at = time.monotonic()
                if time.monotonic() >= next_report:
                    log.info(
                        "throughput: patrol decided %d of %d, took %d of %d feedback records",
                        count,
                        cfg.n,
                        fed,
                        expected_feedback,
                    )
                    next_report += 5
                if not worker.process.alive():
                    raise BenchError(f"the worker exited:\n{worker.process.log_tail()}")
                await asyncio.sleep(POLL_SECONDS)
            ended = time.monotonic() if done_at is None else done_at
            cpu_after = cpu.sample(processes)
            if profiler is not None:
                _stop_profiler(profiler)
            # The worker commits input offsets each second; wait a little for the last commit.
            while committed_at is None and time.monotonic() < ended + 15:
                if await offsets.committed_on(topics.inputs.values()) >= cfg.n:
                    committed_at = time.monotonic()
                await asyncio.sleep(POLL_SECONDS)
        seconds = ended - first_at
        if done_at is None:
            log.warning(
                "throughput: patrol decided %d of %d and took %d of %d feedback records within "
                "the %.0f s budget; its rate is measured on those",
                count,
                cfg.n,
                fed,
                expected_feedback,
                cfg.patrol_budget_seconds,
            )
        summary = await asyncio.to_thread(worker.metrics)
        parking = await asyncio.to_thread(worker.metrics, task_type="illegal_parking")
        detection_s = (detections_at or ended) - first_at
        result: dict[str, Any] = {
            "complete": done_at is not None,
            "decided": int(count),
            "feedback_taken": int(fed),
            "seconds": round(seconds, 3),
            "events_per_second": round((count + fed) / seconds, 1),
            # Detections alone, from the first decided to the last (feedback flowing meanwhile).
            "detection_seconds": round(detection_s, 3),
            "detections_per_second": round(count / detection_s, 1),
            "startup_seconds": round(first_at - worker.process.started_at, 2),
            "input_committed_seconds": (
                None if committed_at is None else round(committed_at - first_at, 3)
            ),
            "tasks": summary.get("patrol_tasks_total", 0.0),
            "parking_tasks": parking.get("patrol_tasks_total", 0.0),
            "cases_closed": summary.get("patrol_grace_cases_closed_total", 0.0),
            "sms_outcomes": summary.get("patrol_sms_total", 0.0),
            "deadletters": summary.get("patrol_deadletters_total", 0.0),
            **await asyncio.to_thread(_loop_figures, worker),
            "responder": {
                "tasks_answered": responder.answered,
                "feedback_produced": responder.produced,
                "tasks_not_foreseen": responder.unexpected,
            },
            "rss_bytes": worker.process.rss_bytes(),
            "profiled": cfg.profile,
            # Over the timed run; the responder's and the SMS sender's are shown, not in the total.
            "cpu_us_per_event": (
                cpu.per_event(cpu_before, cpu_after, count + fed, PATROL_CPU_TOTAL)
                if count + fed
                else {}
            ),
            "cpu_cores": cpu.cores_used(cpu_before, cpu_after, psutil.cpu_count() or 1),
        }
        if profiler is not None:
            result["profile"] = _profile_summary(profiler, profile_path)
        return result
    finally:
        if profiler is not None and profiler.poll() is None:
            _stop_profiler(profiler)
        worker.process.stop()
        if answers:
            await responder.stop()


def _loop_figures(worker: Worker) -> dict[str, Any]:
    """What the worker's loop did with the feedback, from its metrics."""
    feedback = "patrol_task_feedback_total"
    outcomes = {
        o: worker.metrics(feedback, outcome=o).get(feedback, 0.0) for o in FEEDBACK_OUTCOMES
    }
    letters = "patrol_deadletters_total"
    reasons = {
        r: worker.metrics(letters, reason=r).get(letters, 0.0)
        for r in ("unknown_task", "invalid_transition", "clock_skew", "schema", "invalid_json")
    }
    status = "patrol_task_status_records_total"
    return {
        "feedback_outcomes": outcomes,
        "deadletters_by_reason": reasons,
        "status_records": worker.metric(status),
    }


def _in_no_parking(zones: ZoneMap, value: bytes) -> bool:
    location = json.loads(value).get("location") or {}
    return bool(zones.locate(location["lat"], location["lon"]).no_parking) if location else False


def _metric_or_zero(worker: Worker, name: str) -> float:
    try:
        return worker.metric(name)
    except Exception:  # not serving yet
        if not worker.process.alive():
            raise BenchError(f"the worker exited:\n{worker.process.log_tail()}") from None
        return 0.0


def _start_profiler(pid: int, path: Path) -> subprocess.Popen[bytes]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [
            str(REPO / ".venv" / "bin" / "py-spy"),
            "record",
            "--pid",
            str(pid),
            "--format",
            "raw",
            "--rate",
            "100",
            "--output",
            str(path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _stop_profiler(profiler: subprocess.Popen[bytes]) -> None:
    """py-spy writes its output when interrupted."""
    if profiler.poll() is None:
        profiler.send_signal(signal.SIGINT)
        try:
            profiler.wait(timeout=60)
        except subprocess.TimeoutExpired:
            profiler.kill()


def _profile_summary(profiler: subprocess.Popen[bytes], path: Path) -> dict[str, Any]:
    if not path.exists():
        errors = profiler.stderr.read().decode(errors="replace") if profiler.stderr else ""
        return {"error": f"py-spy wrote no profile: {errors[-500:]}"}
    with path.open(encoding="utf-8", errors="replace") as lines:
        summary = summarise(lines)
    return {"file": str(path), **summary.as_dict()}


# --- 2. latency ---------------------------------------------------------------------------

# Offered before the measured seconds, at the same rate; its tasks count only apart.
LATENCY_WARMUP_SECONDS = 3
# The latency load is handed to the producer in steps this long (`_offer`).
OFFER_TICK_SECONDS = 0.005


async def latency(cfg: BenchConfig, zones: ZoneMap, gateway: Gateway) -> dict[str, Any]:
    topics = BenchTopics("latency")
    await create_topics(cfg.bootstrap, topics.all_inputs.values(), cfg.partitions)
    # Timed where a reader can first see each task and status record (`bench.kafka`).
    await create_topics(
        cfg.bootstrap, [topics.dispatch, topics.status], cfg.partitions, BROKER_TIMED
    )
    spots = open_case_spots(zones)
    primed = cfg.latency_primed
    openers = opening_reads(spots, primed, prefix="lat")
    stream = latency_stream(
        zones,
        spots,
        primed=primed,
        rate=cfg.latency_rate,
        seconds=LATENCY_WARMUP_SECONDS + cfg.latency_seconds,
        prefix="lat",
    )
    confirmers = [r.event_id for r in stream if r.confirms]
    raw = await _raw_hop_latency(cfg, stream, confirmers)
    worker = _worker(cfg, topics, gateway, "latency")
    # The dispatch system: each task the watcher sees is answered in three steps, handed to
    # the producer by `_offer` with the load (`FEEDBACK_WALL_DELAYS` after it was seen).
    schedule = FeedbackSchedule() if cfg.feedback else None
    loop = asyncio.get_running_loop()

    def answer(task: dict[str, Any]) -> None:
        if schedule is not None:
            created = datetime.fromisoformat(task["created_at"])
            schedule.add(ExpectedTask(task["task_id"], created), loop.time())

    watcher = TaskWatcher(cfg.bootstrap, topics.dispatch, on_task=answer, broker_timed=True)
    statuses = StatusWatcher(cfg.bootstrap, topics.status, broker_timed=True)
    try:
        await asyncio.to_thread(worker.wait_ready)
        await watcher.start(cfg.partitions)
        await statuses.start(cfg.partitions)
        await produce_records(cfg.bootstrap, openers, topics.inputs)
        await _poll_until(
            lambda: worker.metric("patrol_sms_total"),
            lambda v: v >= primed,
            180,
            f"{primed} primed cases and their SMS",
        )
        # The offered load starts from a worker at rest: the agents have taken in every
        # warning's outcome and the sender has finished the outbox. Without this the first
        # seconds measured the tail of priming (tasks 100-450 ms late), not the steady load.
        await _settled(cfg, topics)
        # The event-time merger must hold nothing back live (no input partition lags): its
        # held rounds are counted over the offered load.
        holds_before = worker.metric("patrol_intake_merge_holds_total")
        # Who used the cores while the load was offered (`bench.cpu`): a machine short of CPU
        # slows every hop, whatever patrol does.
        processes = cpu.watched(worker.process.pid, gateway.process.pid, cfg.bootstrap)
        cpu_before = cpu.sample(processes)
        with _collector_paused():
            offer = await _offer(
                cfg.bootstrap,
                stream,
                topics.all_inputs,
                cfg.latency_rate,
                schedule=schedule,
                tasks_expected=len(confirmers),
            )
            sent, offered_s = offer.sent, offer.seconds
            cores = cpu.cores_used(cpu_before, cpu.sample(processes), psutil.cpu_count() or 1)
            complete = await watcher.wait_for(confirmers, timeout=120)
            statuses_complete = await statuses.wait_for(offer.feedback_sent, timeout=60)
        # The worker's own view (Kafka timestamp of the read → task handed to the producer):
        # what share of tasks it emitted within 50 and 100 ms, from its histogram buckets.
        emitted = worker.metric("patrol_dispatch_latency_seconds_count")
        merge_holds = worker.metric("patrol_intake_merge_holds_total") - holds_before
        inside = {
            le: worker.metrics(le=le).get("patrol_dispatch_latency_seconds_bucket", 0.0)
            for le in ("0.05", "0.1")
        }
        # The percentiles are those of the steady load: the first seconds after rest also pay
        # for what a worker, its broker and the sender do once (first tasks, first warnings of
        # the load), and are reported apart. The first tasks meet an idle worker.
        latencies_ms = _latencies(sent, watcher.received, LATENCY_WARMUP_SECONDS)
        everything = _latencies(sent, watcher.received, 0.0)
        first_second = _latencies(sent, watcher.received, 0.0, 1.0)
        p99 = percentile(latencies_ms, 99)
        # On the event loop, not in a thread: the watchers' dicts are still being written.
        status = _status_figures(worker, offer, statuses, raw["p99_ms"], schedule is not None)
        hops = await read_hop_times(cfg.bootstrap, InternalTopics.of(topics.app_id), confirmers)
        steady = _window(sent, LATENCY_WARMUP_SECONDS)
        first = _window(sent, 0.0, 1.0)
        return {
            "raw_hop": raw,
            "p99_ratio_to_raw": round(p99 / raw["p99_ms"], 2) if raw["p99_ms"] > 0 else None,
            "offered": len(stream),
            "offered_seconds": round(offered_s, 2),
            "offered_rate": round(len(stream) / offered_s, 1),
            "primed_cases": primed,
            "tasks_expected": len(confirmers),
            "tasks_received": len(everything),
            "complete": complete,
            "warmup_seconds": LATENCY_WARMUP_SECONDS,
            "steady_tasks": len(latencies_ms),
            "p50_ms": round(percentile(latencies_ms, 50), 2),
            "p95_ms": round(percentile(latencies_ms, 95), 2),
            "p99_ms": round(percentile(latencies_ms, 99), 2),
            "max_ms": round(max(latencies_ms, default=float("nan")), 2),
            "p99_with_warmup_ms": round(percentile(everything, 99), 2),
            "first_second_p50_ms": round(percentile(first_second, 50), 2),
            "intake_merge_holds": int(merge_holds),
            "worker_emitted_within_50ms": round(inside["0.05"] / emitted, 4) if emitted else None,
            "worker_emitted_within_100ms": round(inside["0.1"] / emitted, 4) if emitted else None,
            "first_second_tasks": len(first_second),
            # Where the time went, hop by hop (`bench.stages`): over the steady load, and over
            # the first second, whose p50 is the idle worker's.
            "hops": hop_figures(hop_latencies(sent, hops, watcher.received, steady)),
            "hops_first_second": hop_figures(hop_latencies(sent, hops, watcher.received, first)),
            "status": {**status, "complete": statuses_complete},
            "rss_bytes": worker.process.rss_bytes(),
            "cpu_cores": cores,
        }
    finally:
        await watcher.stop()
        await statuses.stop()
        worker.process.stop()


def _status_figures(
    worker: Worker, offer: Offered, statuses: StatusWatcher, raw_p99: float, answered: bool
) -> dict[str, Any]:
    """Feedback handed to the producer → its status record on the status topic (matched by
    feedback id). The percentiles are those of the feedback handed over during the steady
    detection load (after the warm-up, before the last detection): both loads at once."""
    if not answered:
        return {"feedback_offered": 0}
    began = min(offer.sent.values(), default=0.0)
    load_s = max(offer.sent.values(), default=0.0) - began
    steady = _latencies(
        offer.feedback_sent, statuses.received, LATENCY_WARMUP_SECONDS, load_s, began=began
    )
    everything = _latencies(offer.feedback_sent, statuses.received, 0.0, began=began)
    p99 = percentile(steady, 99)
    histogram = "patrol_status_latency_seconds"
    sent_by_worker = worker.metric(f"{histogram}_count")
    within = worker.metrics(f"{histogram}_bucket", le="0.1").get(f"{histogram}_bucket", 0.0)
    return {
        "feedback_offered": len(offer.feedback_sent),
        "feedback_answered": len(everything),
        "missing": sorted(set(offer.feedback_sent) - statuses.received.keys())[:20],
        "steady_feedback": len(steady),
        "p50_ms": round(percentile(steady, 50), 2),
        "p95_ms": round(percentile(steady, 95), 2),
        "p99_ms": round(p99, 2),
        "max_ms": round(max(steady, default=float("nan")), 2),
        "p99_with_tail_ms": round(percentile(everything, 99), 2),
        "p99_ratio_to_raw": round(p99 / raw_p99, 2) if raw_p99 > 0 else None,
        "worker_sent_within_100ms": round(within / sent_by_worker, 4) if sent_by_worker else None,
        "records_by_cause": statuses.by_cause(),
        "records_repeated": statuses.repeated(),
        "records_keyed_wrong": statuses.wrong_keys,
        **_loop_figures(worker),
    }


def _window(
    sent: dict[str, float],
    first: float,
    last: float = float("inf"),
    *,
    began: float | None = None,
) -> list[str]:
    """What was sent `first` to `last` s into the load (from `began`, by default the first
    thing sent)."""
    if began is None:
        began = min(sent.values(), default=0.0)
    return [key for key, at in sent.items() if first <= at - began < last]


def _latencies(
    sent: dict[str, float],
    received: dict[str, float],
    first: float,
    last: float = float("inf"),
    *,
    began: float | None = None,
) -> list[float]:
    """In ms, of what was sent `first` to `last` s into the load (`_window`) and received."""
    return [
        1000 * (received[key] - sent[key])
        for key in _window(sent, first, last, began=began)
        if key in received
    ]


async def _raw_hop_latency(
    cfg: BenchConfig, stream: list[BenchRecord], confirmers: list[str]
) -> dict[str, Any]:
    """The same load through a raw aiokafka consume → validate → produce hop (`bench.raw`),
    timed the same way: the worker's p99 is read against it, so a slow day on this machine is
    told apart from a regression."""
    topics = BenchTopics("latency-raw")
    await create_topics(cfg.bootstrap, topics.inputs.values(), cfg.partitions)
    await create_topics(cfg.bootstrap, [topics.dispatch], cfg.partitions, BROKER_TIMED)
    hop = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.raw",
        cfg.bootstrap,
        topics.app_id,
        topics.dispatch,
        *topics.inputs.values(),
        cwd=REPO,
    )
    watcher = TaskWatcher(cfg.bootstrap, topics.dispatch, broker_timed=True)
    try:
        await watcher.start(cfg.partitions)
        # One record through first: the hop has joined its group and the topics are warm.
        probe = next(r for r in stream if r.confirms)
        await produce_records(cfg.bootstrap, [probe], topics.inputs)
        if not await watcher.wait_for([probe.event_id], timeout=60):
            raise BenchError("the raw hop did not pass a record through within 60 s")
        watcher.received.pop(probe.event_id)
        with _collector_paused():
            sent = (await _offer(cfg.bootstrap, stream, topics.inputs, cfg.latency_rate)).sent
            await watcher.wait_for(confirmers, timeout=60)
        steady = _latencies(sent, watcher.received, LATENCY_WARMUP_SECONDS)
        return {
            "tasks_received": len(_latencies(sent, watcher.received, 0.0)),
            "p50_ms": round(percentile(steady, 50), 2),
            "p99_ms": round(percentile(steady, 99), 2),
        }
    finally:
        await watcher.stop()
        hop.terminate()
        try:
            await asyncio.wait_for(hop.wait(), timeout=10)
        except TimeoutError:
            hop.kill()
            await hop.wait()


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """No garbage collection in this process while it offers load and times tasks.

    The bench holds every record it offers and every task it receives, and a full collection
    of all that stalled its producer and its watcher for 110-190 ms at a time: records sent
    just before one reached the broker late, and tasks that came during one were timed late.
    The worker's latency is what is measured, not the load generator's collector.
    """
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()


@dataclass(frozen=True)
class Offered:
    sent: dict[str, float]
    """Wall time each confirming read was handed to the producer, by event id."""
    seconds: float
    """From the first detection handed over until the last was acknowledged."""
    feedback_sent: dict[str, float]
    """Wall time each feedback record was handed to the producer, by feedback id."""


# After the last detection, how long the offer waits for the tasks it still has to answer.
FEEDBACK_TAIL_TIMEOUT_SECONDS = 60.0


async def _offer(
    bootstrap: str,
    stream: list[BenchRecord],
    topics: dict[str, str],
    rate: int,
    *,
    schedule: FeedbackSchedule | None = None,
    tasks_expected: int = 0,
) -> Offered:
    """Produce `stream` at `rate`/s, like devices would, and the feedback `schedule` holds as
    it falls due; the wall time each record was sent. With a schedule, the offer goes on after
    the last detection until `tasks_expected` tasks were answered in all their steps.

    Every `OFFER_TICK_SECONDS` the records due by then are handed to the producer together, so
    they travel in one produce request. Sent one by one, a record a millisecond, the bench made
    a produce request and an event-loop wake-up per record: a quarter of a core in this process
    and as many requests for the broker, on the two cores the worker is timed on.
    """
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    await producer.start()
    sent: dict[str, float] = {}
    feedback_sent: dict[str, float] = {}
    loop = asyncio.get_running_loop()
    began = loop.time()
    seconds = 0.0

    def answering() -> bool:
        return schedule is not None and (len(schedule) > 0 or schedule.tasks < tasks_expected)

    try:
        deliveries = []
        due = 0
        while due < len(stream) or answering():
            tick = loop.time()
            if due >= len(stream) and tick > began + seconds + FEEDBACK_TAIL_TIMEOUT_SECONDS:
                log.warning(
                    "latency: %d of %d tasks answered; the rest never came",
                    0 if schedule is None else schedule.tasks,
                    tasks_expected,
                )
                break
            until = min(len(stream), int((tick - began) * rate) + 1)
            now = time.time()
            for record in stream[due:until]:
                if record.confirms:
                    sent[record.event_id] = now
                deliveries.append(
                    await producer.send(topics[record.topic_kind], record.value, key=record.key)
                )
            if schedule is not None:
                for step in schedule.due(tick):
                    feedback_sent[step.feedback_id] = now
                    deliveries.append(
                        await producer.send(
                            topics["feedback"], step.value, key=step.task_id.encode()
                        )
                    )
            if due < len(stream) and until == len(stream):
                await asyncio.gather(*deliveries)
                seconds = loop.time() - began
            due = until
            await asyncio.sleep(OFFER_TICK_SECONDS)
        await asyncio.gather(*deliveries)
    finally:
        await producer.stop()
    return Offered(sent, seconds or loop.time() - began, feedback_sent)


# --- 3 and 4. memory per open case, recovery after SIGKILL --------------------------------


def case_state_bytes(zones: ZoneMap, reads: list[BenchRecord]) -> float:
    """Bytes per open case of the state itself — table entry plus expiry index — as the worker
    builds it, measured with tracemalloc in this process. RSS adds to this whatever the worker's
    allocator kept from its peak (batches in flight, the SMS backlog while opening fast)."""
    policy = grace.GracePolicy.from_settings(Settings())
    routing = load_routing(None)
    detections = [Detection.model_validate_json(r.value) for r in reads]
    table: dict[bytes, bytes] = {}
    expiries = Expiries()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for detection in detections:
            assert detection.location is not None and detection.plate is not None
            zone = zones.locate(detection.location.lat, detection.location.lon)
            route = routing.route(TaskType.illegal_parking, zone.scene)
            state, _ = grace.apply_read(None, grace.PlateRead.of(detection), zone, route, policy)
            assert state is not None and state.open_case is not None
            key = grace.case_key(detection.plate, zone.zone_id).encode()
            table[key] = grace.encode_case_state(state)
            expiries.schedule(key, grace.next_due(state, policy))
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    return used / max(1, len(table))


async def state(cfg: BenchConfig, zones: ZoneMap, gateway: Gateway) -> dict[str, Any]:
    topics = BenchTopics("state")
    await create_topics(cfg.bootstrap, topics.inputs.values(), cfg.partitions)
    spots = open_case_spots(zones)
    cases = cfg.state_cases
    openers = opening_reads(spots, cases, prefix="state")
    target = cases // 2
    confirm = confirming_read(spots, target, prefix="state")
    # The first two are one worker restarted under its name, as an orchestrator restarts a pod;
    # the third replaces the second under another name, so it waits out the session timeout.
    static = {"PATROL_INSTANCE_ID": "state-worker"}
    first = _worker(cfg, topics, gateway, "state-first", **static)
    second: Worker | None = None
    third: Worker | None = None
    watcher = TaskWatcher(cfg.bootstrap, topics.dispatch)
    try:
        await asyncio.to_thread(first.wait_ready)
        await asyncio.sleep(3)  # let start-up allocations settle before the baseline
        rss_before = first.process.rss_bytes()
        rss_before_split = first.process.rss_by_process()
        filled = time.monotonic()
        await produce_records(cfg.bootstrap, openers, topics.inputs)
        await _poll_until(
            lambda: first.metric("patrol_grace_cases_open"),
            lambda v: v >= cases,
            600,
            f"{cases} open cases",
        )
        opened_s = time.monotonic() - filled
        rss_open = first.process.rss_bytes()
        await _poll_until(
            lambda: first.metric("patrol_sms_total"), lambda v: v >= cases, 600, "every SMS"
        )
        await asyncio.sleep(3)  # past the commit interval: offsets and changelog are written
        rss_after = first.process.rss_bytes()
        rss_after_split = first.process.rss_by_process()
        first.process.kill()

        await watcher.start(cfg.partitions)
        second = _worker(cfg, topics, gateway, "state-second", **static)
        ready_s, task_s, evidence = await _recover(cfg, topics, watcher, second, confirm)
        recovered_rss = second.process.rss_bytes()

        await asyncio.sleep(3)  # past the commit interval
        second.process.kill()
        third = _worker(cfg, topics, gateway, "state-third")
        other = confirming_read(spots, target + 1, prefix="state")
        unnamed_ready_s, unnamed_task_s, _ = await _recover(cfg, topics, watcher, third, other)
        return {
            "cases": cases,
            "fill_seconds": round(opened_s, 2),
            "rss_before_bytes": rss_before,
            "rss_open_bytes": rss_open,
            "rss_after_sms_bytes": rss_after,
            "rss_by_process_before": rss_before_split,
            "rss_by_process_after": rss_after_split,
            "bytes_per_case": round((rss_after - rss_before) / cases, 1),
            "state_bytes_per_case": round(case_state_bytes(zones, openers[:20_000]), 1),
            "bytes_per_case_at_open": round((rss_open - rss_before) / cases, 1),
            "recovery_ready_seconds": ready_s,
            "recovery_task_seconds": task_s,
            "recovery_unnamed_ready_seconds": unnamed_ready_s,
            "recovery_unnamed_task_seconds": unnamed_task_s,
            "task_evidence": evidence,
            "recovered_rss_bytes": recovered_rss,
        }
    finally:
        await watcher.stop()
        for worker in (first, second, third):
            if worker is not None:
                worker.process.stop()


async def _recover(
    cfg: BenchConfig,
    topics: BenchTopics,
    watcher: TaskWatcher,
    worker: Worker,
    confirm: BenchRecord,
) -> tuple[float, float | None, list[str]]:
    """Seconds from the worker's start until it is ready and until the confirming read's task
    arrived; the task's evidence."""
    started = worker.process.started_at
    await produce_records(cfg.bootstrap, [confirm], topics.inputs)
    ready_at = await asyncio.to_thread(worker.wait_ready, 300.0, 0.05)
    await watcher.wait_for([confirm.event_id], timeout=300)
    received = watcher.received.get(confirm.event_id)
    task = watcher.tasks.get(confirm.event_id, {})
    evidence = [e["event_id"] for e in task.get("evidence", [])]
    task_s = None if received is None else round(received - worker.process.started_wall, 2)
    return round(ready_at - started, 2), task_s, evidence
