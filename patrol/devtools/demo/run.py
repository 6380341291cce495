"""One demo run: start a broker (unless one answers), the stub SMS gateway, a worker, Prometheus,
the simulators and the dispatch system answering tasks; show what happens; stop everything it
started, in the order data flows.

Every run is isolated: its own app id (`patrol-demo-<time>-<hex>`), its own topics (the contract
topic names prefixed with the app id) and its own run directory holding the worker's state and
every log. So a demo never reads an older demo's records, and what it counts is this run alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import secrets
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import click

from patrol.devtools.demo.dispatch import DispatchFollower, StatusFollower
from patrol.devtools.demo.display import LiveDisplay
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
)
from patrol.devtools.processes import PatrolProcess, patrol_env
from patrol.domain.texts import CHINA_STANDARD_TIME
from patrol.kafka.security import client_options
from patrol.settings import Settings
from patrol.waits import ExitedWaiting, wait_http

DEFAULT_BROKER_PORT = 9092
WORKER_READY_TIMEOUT_SECONDS = 120.0
WORKER_STOP_TIMEOUT_SECONDS = 20.0
CHILD_STOP_TIMEOUT_SECONDS = 10.0
# After the simulators stop, tasks already decided still travel to the dispatch topic.
SETTLE_SECONDS = 3.0
# Then the report waits until the dispatch and status topics have been quiet this long (the
# worker has nothing left to decide once its inputs stop), for at most SETTLE_LIMIT_SECONDS.
QUIET_SECONDS = 2.0
SETTLE_LIMIT_SECONDS = 20.0
PROMETHEUS_SCRAPE_INTERVAL = "2s"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


def max_future_minutes(time_scale: float, duration: float) -> str:
    """PATROL_MAX_FUTURE_MINUTES for the demo's worker: the simulators' event time runs up to
    duration × (time_scale − 1) ahead of the wall clock, which must not read as clock_skew;
    the default 10 minutes stay on top, and a run until Ctrl-C has no limit."""
    if duration <= 0 or math.isinf(time_scale):
        return "inf"
    return str(10 + math.ceil(duration * max(0.0, time_scale - 1) / 60))


@dataclass(frozen=True, slots=True)
class BrokerPlan:
    """Which cluster to try, and where to start a local broker if it does not answer."""

    bootstrap: str
    local_port: int | None  # None: the cluster is not ours to start (not on this machine)


def plan_broker(option: str | None, environment: str | None, broker_port: int | None) -> BrokerPlan:
    """--bootstrap wins over PATROL_KAFKA_BOOTSTRAP; a local broker is only started on loopback."""
    given = option or environment
    if not given:
        port = broker_port or DEFAULT_BROKER_PORT
        return BrokerPlan(f"127.0.0.1:{port}", port)
    servers = [server.strip() for server in given.split(",") if server.strip()]
    if len(servers) == 1:
        host, _, port_text = servers[0].rpartition(":")
        if host in LOOPBACK_HOSTS and port_text.isdigit():
            return BrokerPlan(given, broker_port or int(port_text))
    return BrokerPlan(given, None)


class DemoError(click.ClickException):
    """A failure the person running the demo can act on; the message says what and where."""


@dataclass
class DemoOptions:
    duration: float
    time_scale: float
    seed: int
    bootstrap: str | None
    broker_port: int | None
    keep_broker: bool
    run_dir: Path | None
    report: Path | None
    prometheus: bool
    refresh: float


class DemoRun:
    """One demo: starts everything, shows it, and stops everything it started, in order."""

    def __init__(self, options: DemoOptions, out: TextIO) -> None:
        self.options = options
        self.out = out
        self.display = LiveDisplay(out, is_tty=out.isatty())
        stamp = datetime.now(CHINA_STANDARD_TIME).strftime("%Y%m%d-%H%M%S")
        self.run_id = f"patrol-demo-{stamp}-{secrets.token_hex(2)}"
        self.run_dir = options.run_dir or Path(tempfile.gettempdir()) / self.run_id
        self.stop_requested = asyncio.Event()
        self.stopped_by = "duration"
        self.children: list[PatrolProcess] = []
        self.simulators: list[PatrolProcess] = []
        self.tasks = TaskTally()
        self.lamps = LampBoard()
        self.broker: Any = None  # the LocalBroker this run started, if any
        self.prometheus: Any = None
        self.wall_start: float | None = None
        self.run: RunInfo | None = None
        self.worker: PatrolProcess | None = None
        self.gateway_url = ""
        self.metrics_url = ""

    # -- helpers ---------------------------------------------------------------------------

    def say(self, line: str) -> None:
        self.display.say(line)

    def request_stop(self, signum: int) -> None:
        if not self.stop_requested.is_set():
            self.stopped_by = signal.Signals(signum).name
            self.say(f"{self.stopped_by}: stopping everything the demo started…")
        self.stop_requested.set()

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> PatrolProcess:
        log = self.run_dir / f"{name}.log"
        child = PatrolProcess(name, args, env, log, own_group=True, die_with_parent=True).start()
        self.children.append(child)
        assert self.run is not None
        self.run.logs[name] = child.log_path
        return child

    async def _wait_http(self, url: str, child: PatrolProcess, timeout: float, what: str) -> None:
        def alive() -> bool:  # a Ctrl-C ends the wait too
            return child.exit_code is None and not self.stop_requested.is_set()

        try:
            await asyncio.to_thread(wait_http, url, timeout, alive=alive, interval=0.3)
        except ExitedWaiting:
            if self.stop_requested.is_set():
                return
            raise DemoError(
                f"the {what} exited with code {child.exit_code} while starting; "
                f"its log ({child.log_path}) ends with:\n{child.log_tail()}"
            ) from None
        except TimeoutError as exc:
            raise DemoError(
                f"the {what} did not answer in time: {exc}; "
                f"its log ({child.log_path}) ends with:\n{child.log_tail()}"
            ) from None

    # -- the phases ------------------------------------------------------------------------

    async def _broker(self) -> tuple[str, bool]:
        from patrol.devtools.broker import BrokerError, LocalBroker, answers_metadata
        from patrol.settings import Settings

        plan = plan_broker(
            self.options.bootstrap,
            os.environ.get("PATROL_KAFKA_BOOTSTRAP"),
            self.options.broker_port,
        )
        if await asyncio.to_thread(answers_metadata, plan.bootstrap):
            self.say(f"Kafka: using the running cluster at {plan.bootstrap}")
            return plan.bootstrap, False
        if plan.local_port is None:
            raise DemoError(
                f"no Kafka broker answers at {plan.bootstrap} and it is not on this machine, so "
                "the demo cannot start one there. Fix PATROL_KAFKA_BOOTSTRAP / --bootstrap, or "
                "unset them to let the demo start a local broker."
            )
        local = LocalBroker(Settings().state_dir, port=plan.local_port)
        self.say(
            f"Kafka: starting a local broker on 127.0.0.1:{plan.local_port} "
            f"(state in {local.state_dir}; the first start fetches its jars with Maven)…"
        )
        try:
            status, started = await asyncio.to_thread(local.start)
        except BrokerError as exc:
            raise DemoError(
                f"the local Kafka broker could not start: {exc} (the demo takes --broker-port N "
                "or --bootstrap HOST:PORT)"
            ) from exc
        if started:
            self.broker = local
        return status.bootstrap, started

    async def _start_prometheus(self, worker_target: str) -> None:
        from patrol.devtools.prometheus import (
            PrometheusError,
            PrometheusServer,
            prometheus_available,
        )

        if not self.options.prometheus:
            return
        if not prometheus_available():
            self.say(
                "Prometheus: not installed, skipped (Debian: apt-get install prometheus); "
                f"the worker's metrics are at {self.metrics_url}"
            )
            return
        server = PrometheusServer(
            [worker_target],
            scrape_interval=PROMETHEUS_SCRAPE_INTERVAL,
            data_dir=self.run_dir / "prometheus",
        )
        try:
            await asyncio.to_thread(server.start)
        except PrometheusError as exc:
            self.say(f"Prometheus: could not start, going on without it ({exc})")
            return
        self.prometheus = server
        assert self.run is not None
        self.run.prometheus_url = server.url
        self.run.logs["prometheus"] = server.log_path
        self.say(
            f"Prometheus: {server.url}/graph?g0.expr=sum%20by(kind)(patrol_detections_total) "
            f"(scrapes the worker every {PROMETHEUS_SCRAPE_INTERVAL})"
        )

    async def _snapshot(self, client: Any) -> DemoSnapshot:
        import httpx

        worker: WorkerCounts | None = None
        accepted: int | None = None
        with contextlib.suppress(httpx.HTTPError, ValueError):
            response = await client.get(self.metrics_url)
            if response.status_code == 200:
                worker = parse_worker_metrics(response.text)
        with contextlib.suppress(httpx.HTTPError, ValueError):
            response = await client.get(f"{self.gateway_url}/messages")
            if response.status_code == 200:
                accepted = len(response.json())
        elapsed = 0.0 if self.wall_start is None else time.monotonic() - self.wall_start
        assert self.run is not None
        return DemoSnapshot(
            elapsed_seconds=elapsed,
            event_time=simulated_time(self.run.event_time_start, elapsed, self.options.time_scale)
            if self.wall_start is not None
            else None,
            time_scale=self.options.time_scale,
            worker=worker,
            gateway_accepted=accepted,
            tasks=self.tasks,
            lamps=self.lamps,
        )

    def _check_children(self) -> None:
        for child in self.children:
            code = child.exit_code
            if code is None:
                continue
            if child is self.worker or child.name == "sms-gateway":
                raise DemoError(
                    f"the {child.name} stopped unexpectedly (exit code {code}); its log "
                    f"({child.log_path}) ends with:\n{child.log_tail()}"
                )

    async def _live(self, client: Any) -> None:
        deadline = None if self.options.duration <= 0 else time.monotonic() + self.options.duration
        warned: set[str] = set()
        while not self.stop_requested.is_set():
            self._check_children()
            for sim in self.simulators:
                if sim.exit_code not in (None, 0) and sim.name not in warned:
                    warned.add(sim.name)
                    self.say(
                        f"note: {sim.name} exited with code {sim.exit_code}; "
                        f"its log ends with:\n{sim.log_tail(8)}"
                    )
            self.display.refresh(await self._snapshot(client), time.monotonic())
            if deadline is not None and time.monotonic() >= deadline:
                return
            wait = self.options.refresh
            if deadline is not None:
                wait = max(0.0, min(wait, deadline - time.monotonic()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop_requested.wait(), wait)

    async def _until_quiet(self) -> None:
        """Wait until no task and no status record arrived for QUIET_SECONDS: the report then
        holds what the topics hold."""
        deadline = time.monotonic() + SETTLE_LIMIT_SECONDS
        seen = (self.tasks.total, self.lamps.records)
        quiet_since = time.monotonic()
        while not self.stop_requested.is_set() and time.monotonic() < deadline:
            if time.monotonic() - quiet_since >= QUIET_SECONDS:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop_requested.wait(), 0.25)
            now = (self.tasks.total, self.lamps.records)
            if now != seen:
                seen, quiet_since = now, time.monotonic()

    async def _start_everything(self) -> tuple[str, str]:
        from patrol.waits import free_port

        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.say(f"patrol demo {self.run_id}")
        self.say(f"run directory (logs, worker state): {self.run_dir}")
        bootstrap, started = await self._broker()
        start = datetime.now(CHINA_STANDARD_TIME).replace(microsecond=0)
        topics = DemoTopics(self.run_id)
        self.run = RunInfo(
            run_id=self.run_id,
            run_dir=self.run_dir,
            bootstrap=bootstrap,
            broker_started=started,
            topics=topics,
            seed=self.options.seed,
            time_scale=self.options.time_scale,
            event_time_start=start,
        )
        if self.broker is not None:
            self.run.logs["broker"] = self.broker.log_file
        if self.stop_requested.is_set():
            return bootstrap, topics.names["dispatch"]

        web_port, sms_port = free_port(), free_port()
        while sms_port == web_port:
            sms_port = free_port()
        self.gateway_url = f"http://127.0.0.1:{sms_port}"
        self.metrics_url = f"http://127.0.0.1:{web_port}/metrics"
        self.run.gateway_url = self.gateway_url
        self.run.worker_metrics_url = self.metrics_url
        env = patrol_env(
            {
                **topics.env(),
                "PATROL_KAFKA_BOOTSTRAP": bootstrap,
                "PATROL_APP_ID": self.run_id,
                "PATROL_DATA_DIR": str(self.run_dir / "worker-data"),
                "PATROL_WEB_PORT": str(web_port),
                "PATROL_SMS_PORT": str(sms_port),
                "PATROL_SMS_URL": self.gateway_url,
                "PATROL_PARTITIONS": os.environ.get("PATROL_PARTITIONS", "3"),
                "PATROL_MAX_FUTURE_MINUTES": max_future_minutes(
                    self.options.time_scale, self.options.duration
                ),
                "PATROL_DEMO_RUN": self.run_id,
            },
            # the user's own settings carry over; only the topics are this run's
            drop="PATROL_TOPIC_",
            keep=(),
        )
        gateway = self._spawn("sms-gateway", ["sms-gateway", "--port", str(sms_port)], env)
        await self._wait_http(f"{self.gateway_url}/healthz", gateway, 30.0, "SMS gateway")
        self.say(f"SMS gateway: {self.gateway_url}/messages")
        self.worker = self._spawn("worker", ["worker"], env)
        self.say(f"worker: starting (app id {self.run_id}), waiting until it is ready…")
        await self._wait_http(
            f"http://127.0.0.1:{web_port}/readyz",
            self.worker,
            WORKER_READY_TIMEOUT_SECONDS,
            "worker",
        )
        if self.stop_requested.is_set():
            return bootstrap, topics.names["dispatch"]
        self.say(f"worker: ready, metrics at {self.metrics_url}")
        await self._start_prometheus(f"127.0.0.1:{web_port}")
        if self.stop_requested.is_set():
            return bootstrap, topics.names["dispatch"]
        common = [
            "--seed",
            str(self.options.seed),
            "--time-scale",
            f"{self.options.time_scale:g}",
            "--start",
            start.isoformat(),
            "--quiet",
        ]
        for kind in ("cameras", "drones", "feedback"):
            self.simulators.append(
                self._spawn(f"simulate-{kind}", ["simulate", kind, *common], env)
            )
        self.wall_start = time.monotonic()
        minutes = 10 / self.options.time_scale * 60
        self.say(
            f"simulators: cameras, drones and the dispatch system's feedback from "
            f"{start:%H:%M:%S} event time, "
            f"×{self.options.time_scale:g} (a 10-minute grace period takes {minutes:.0f} s), "
            f"seed {self.options.seed}"
        )
        how_long = (
            "until Ctrl-C"
            if self.options.duration <= 0
            else f"for {self.options.duration:g} s (Ctrl-C stops earlier)"
        )
        self.say(
            f"running {how_long}; each new enforcement task appears below as it is dispatched, "
            "each task going red (● 超期) or reopened (⟲ 复现) as it happens"
        )
        return bootstrap, topics.names["dispatch"]

    async def _stop_everything(self) -> None:
        """Stop in the order data flows: simulators, worker, gateway, Prometheus, broker."""
        for sim in self.simulators:
            await asyncio.to_thread(sim.stop)
        for child in reversed(self.children):
            timeout = (
                WORKER_STOP_TIMEOUT_SECONDS if child is self.worker else CHILD_STOP_TIMEOUT_SECONDS
            )
            await asyncio.to_thread(child.stop, timeout)
        if self.prometheus is not None:
            await asyncio.to_thread(self.prometheus.stop)
            self.prometheus = None
        if self.broker is not None and not self.options.keep_broker:
            await asyncio.to_thread(self.broker.stop)
            self.say(f"Kafka: stopped the local broker on {self.broker.bootstrap}")
        elif self.broker is not None:
            self.say(
                f"Kafka: the local broker keeps running on {self.broker.bootstrap} "
                f"(stop it with `patrol broker stop --port {self.broker.port}`)"
            )

    async def main(self) -> dict[str, Any]:
        import httpx

        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self.request_stop, signum)
        follower: asyncio.Task[None] | None = None
        status_follower: asyncio.Task[None] | None = None
        error: str | None = None
        failure: DemoError | None = None
        snapshot: DemoSnapshot | None = None
        try:
            async with httpx.AsyncClient(timeout=2.0) as client:
                try:
                    bootstrap, dispatch_topic = await self._start_everything()
                    if not self.stop_requested.is_set():
                        # the cluster's security settings, as the workers get them (PATROL_*)
                        security = client_options(Settings())
                        dispatch = DispatchFollower(
                            bootstrap,
                            dispatch_topic,
                            client_id=f"{self.run_id}-display",
                            tasks=self.tasks,
                            say=self.say,
                            lamps=self.lamps,
                            security=security,
                        )
                        follower = asyncio.create_task(dispatch.follow())
                        follower.add_done_callback(dispatch.stopped)
                        assert self.run is not None
                        status = StatusFollower(
                            bootstrap,
                            self.run.topics.names["status"],
                            client_id=f"{self.run_id}-lamps",
                            lamps=self.lamps,
                            say=self.say,
                            security=security,
                        )
                        status_follower = asyncio.create_task(status.follow())
                        status_follower.add_done_callback(status.stopped)
                        await self._live(client)
                        for sim in self.simulators:
                            await asyncio.to_thread(sim.stop)
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self.stop_requested.wait(), SETTLE_SECONDS)
                        await self._until_quiet()
                        self._check_children()
                except DemoError as exc:
                    failure = exc
                    error = exc.message.splitlines()[0]
                    self.stopped_by = "error"
                if self.run is not None and self.wall_start is not None:
                    snapshot = await self._snapshot(client)
        finally:
            for reader in (follower, status_follower):
                if reader is not None:
                    reader.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await reader
            self.display.close()
            await self._stop_everything()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
        if failure is not None and snapshot is None:
            raise failure  # nothing ran yet: the error is the whole story
        assert self.run is not None
        snapshot = snapshot or DemoSnapshot(
            0.0, None, self.options.time_scale, None, None, self.tasks, self.lamps
        )
        report = build_report(snapshot, self.run, stopped_by=self.stopped_by, error=error)
        if self.options.report is not None:
            self.options.report.parent.mkdir(parents=True, exist_ok=True)
            self.options.report.write_text(
                json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
            )
        self.out.write("\n" + report_text(report) + "\n")
        if self.options.report is not None:
            self.out.write(f"  report: {self.options.report}\n")
        self.out.flush()
        if failure is not None:
            raise failure
        return report


def run_demo(options: DemoOptions, out: TextIO | None = None) -> dict[str, Any]:
    """Run one demo to its end; returns the final report. Raises DemoError on failure."""
    import logging

    # aiokafka logs each refused connection while topics appear; the display says what matters.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    return asyncio.run(DemoRun(options, out or sys.stdout).main())
