"""`patrol replay`: reprocess a time range of the input topics under a separate app id, into its
own output topics, and compare the tasks with what was dispatched.

The replay is a worker of its own (`PATROL_APP_ID` = `--app-id`) reading the production input
topics from the first record of `--from` (by Kafka timestamp), writing its tasks, SMS audit and
dead letters to `<app id>.dispatch.tasks` and the like, and sending no SMS
(`PATROL_SMS_ENABLED=false`). Once it has taken in every input record up to `--to` and its
agents have caught up, it stops, and the tasks whose every detection lies in [--from, --to) are
compared by task id: identical (but for the SMS status snapshot), or the first that differs.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import click
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from patrol.audit.compare import Comparison, compare
from patrol.kafka.reading import read_to_end
from patrol.kafka.security import client_options
from patrol.kafka.topics import InternalTopics
from patrol.settings import Settings, topic_env, topic_names
from patrol.waits import ExitedWaiting, free_port, wait_http

POLL_SECONDS = 0.5
SETTLED_POLLS = 4


class ReplayError(RuntimeError):
    """A replay that cannot run or finish; the message says what to do."""


@dataclass(frozen=True, slots=True)
class ReplayPlan:
    app_id: str
    start: datetime
    end: datetime
    inputs: tuple[str, ...]
    dispatched_topic: str

    @property
    def replayed_topic(self) -> str:
        return topic_names(self.app_id)["dispatch"]

    def worker_env(self, settings: Settings, data_dir: Path, port: int) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PATROL_")}
        env.update(topic_env(self.app_id))
        env.update(
            {
                "PATROL_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
                "PATROL_TOPIC_CAMERA": settings.topic_camera,
                "PATROL_TOPIC_DRONE": settings.topic_drone,
                "PATROL_APP_ID": self.app_id,
                "PATROL_PARTITIONS": str(settings.partitions),
                "PATROL_SMS_ENABLED": "false",
                "PATROL_DATA_DIR": str(data_dir),
                "PATROL_WEB_PORT": str(port),
                "PATROL_TIMEZONE": settings.timezone,
                "PATROL_MAX_FUTURE_MINUTES": str(settings.max_future_minutes),
            }
        )
        for name in ("zones", "routing"):
            value = getattr(settings, name)
            if value is not None:
                env[f"PATROL_{name.upper()}"] = str(value)
        return env


async def _input_partitions(
    consumer: AIOKafkaConsumer, topics: Iterable[str]
) -> list[TopicPartition]:
    await consumer._client.force_metadata_update()
    tps = []
    for topic in topics:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise ReplayError(f"topic {topic} does not exist on the cluster: nothing to replay")
        tps += [TopicPartition(topic, p) for p in sorted(partitions)]
    return tps


async def _offsets_at(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition], moment: datetime
) -> dict[TopicPartition, int]:
    """Per partition, the first offset at or after `moment` (the end if there is none)."""
    found = await consumer.offsets_for_times({tp: int(moment.timestamp() * 1000) for tp in tps})
    ends = await consumer.end_offsets(tps)
    return {tp: ends[tp] if found[tp] is None else found[tp].offset for tp in tps}


async def prepare(settings: Settings, plan: ReplayPlan) -> dict[TopicPartition, int]:
    """Point the replay's intake group at `--from`; return the offsets that end the range."""
    security = client_options(settings)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, **security)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=plan.app_id,
        enable_auto_commit=False,
        **security,
    )
    await admin.start()
    try:
        groups = {g[0] for g in await admin.list_consumer_groups()}
        used = {plan.app_id, f"{plan.app_id}-state", f"{plan.app_id}-sms"} & groups
        if used:
            raise ReplayError(
                f"app id {plan.app_id} was used before (consumer groups {', '.join(sorted(used))}"
                "): give the replay a new --app-id"
            )
        await consumer.start()
        try:
            tps = await _input_partitions(consumer, plan.inputs)
            starts = await _offsets_at(consumer, tps, plan.start)
            ends = await _offsets_at(consumer, tps, plan.end)
            consumer.assign(tps)
            await consumer.commit({tp: OffsetAndMetadata(starts[tp], "") for tp in tps})
        finally:
            await consumer.stop()
    finally:
        await admin.close()
    return ends


async def _committed(
    settings: Settings, group: str, tps: list[TopicPartition]
) -> dict[TopicPartition, int]:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap, **client_options(settings)
    )
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group, partitions=tps)
    finally:
        await admin.close()
    return {tp: offsets[tp].offset if tp in offsets else -1 for tp in tps}


async def _internal_lag(settings: Settings, plan: ReplayPlan) -> int:
    """Records on the replay's internal topics its agents have not committed yet."""
    internal = InternalTopics.of(plan.app_id)
    tps = [
        TopicPartition(topic, p)
        for topic in (internal.cases, internal.hazards)
        for p in range(settings.partitions)
    ]
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, **client_options(settings)
    )
    await consumer.start()
    try:
        ends = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    done = await _committed(settings, f"{plan.app_id}-state", tps)
    return sum(max(0, ends[tp] - max(done[tp], 0)) for tp in tps)


async def wait_until_replayed(
    settings: Settings,
    plan: ReplayPlan,
    ends: dict[TopicPartition, int],
    worker: subprocess.Popen[bytes],
    timeout: float,
) -> None:
    """Until the intake has committed the range and the agents every record it produced."""
    tps = list(ends)
    total = sum(ends.values())
    deadline = time.monotonic() + timeout
    settled = 0
    last_report = 0.0
    while settled < SETTLED_POLLS:
        if worker.poll() is not None:
            raise ReplayError(f"the replay's worker exited with {worker.returncode}")
        if time.monotonic() > deadline:
            raise ReplayError(f"the replay did not finish within {timeout:.0f} s")
        done = await _committed(settings, plan.app_id, tps)
        taken = sum(min(max(done[tp], 0), ends[tp]) for tp in tps)
        caught_up = all(done[tp] >= ends[tp] for tp in tps)
        lag = await _internal_lag(settings, plan) if caught_up else -1
        settled = settled + 1 if caught_up and lag == 0 else 0
        if time.monotonic() - last_report >= 2:
            last_report = time.monotonic()
            print(f"replay: input offsets up to {taken:,} of {total:,} taken in", file=sys.stderr)
        await asyncio.sleep(POLL_SECONDS)


async def read_tasks(settings: Settings, topic: str) -> list[dict[str, Any]]:
    """Every task on `topic` up to its current end."""
    records = await read_to_end(settings.kafka_bootstrap, topic, **client_options(settings))
    return [json.loads(r.value) for r in records if r.value]


def _start_worker(env: dict[str, str], log: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "patrol.cli", "worker"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )


def _stop(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


async def run_replay(settings: Settings, plan: ReplayPlan, *, timeout: float) -> Comparison:
    """Replay the range and compare; the worker's log is kept in a temporary directory."""
    ends = await prepare(settings, plan)
    with tempfile.TemporaryDirectory(prefix=f"{plan.app_id}-") as tmp:
        base = Path(tmp)
        port = free_port()
        log = (base / "worker.log").open("wb")
        worker = _start_worker(plan.worker_env(settings, base / "data", port), log)
        try:
            try:
                await asyncio.to_thread(
                    wait_http, f"http://127.0.0.1:{port}/readyz", min(timeout, 120), worker
                )
            except (ExitedWaiting, TimeoutError) as exc:
                raise ReplayError(f"the replay's worker did not become ready: {exc}") from exc
            await wait_until_replayed(settings, plan, ends, worker, timeout)
        except ReplayError as exc:
            log.flush()
            tail = (base / "worker.log").read_text(errors="replace")[-2000:]
            raise ReplayError(f"{exc}\n--- the worker's log ends:\n{tail}") from exc
        finally:
            _stop(worker)
            log.close()
    dispatched = await read_tasks(settings, plan.dispatched_topic)
    replayed = await read_tasks(settings, plan.replayed_topic)
    return compare(dispatched, replayed, plan.start, plan.end)


def _moment(value: str) -> datetime:
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        raise click.BadParameter(f"{value!r} has no UTC offset; write e.g. 2026-11-27T00:00+08:00")
    return moment


@click.command("replay")
@click.option("--from", "start", required=True, help="Start of the range (RFC 3339 with offset).")
@click.option("--to", "end", required=True, help="End of the range, exclusive.")
@click.option(
    "--app-id",
    required=True,
    help="A new app id for the replay: its consumer groups and output topics "
    "(<app id>.dispatch.tasks, …) are its own.",
)
@click.option(
    "--timeout",
    type=float,
    default=3600.0,
    show_default=True,
    help="Seconds the replay may take.",
)
def replay_command(start: str, end: str, app_id: str, timeout: float) -> None:
    """Reprocess the input topics' records of a time range under a new app id, into its own
    output topics and with no SMS, then compare its tasks with those on PATROL_TOPIC_DISPATCH.

    Tasks whose every detection lies in [--from, --to) are compared by task id; the SMS status
    they carry is a snapshot and is left out. Prints "identical" or the first task that differs,
    and exits 1 when any does. A case already open at --from is not reproduced: start the range
    at a quiet hour, or before the period of interest."""
    begin, finish = _moment(start), _moment(end)
    if finish <= begin:
        raise click.BadParameter("--to must be later than --from")
    settings = Settings()
    plan = ReplayPlan(
        app_id=app_id,
        start=begin,
        end=finish,
        inputs=settings.input_topics,
        dispatched_topic=settings.topic_dispatch,
    )
    try:
        comparison = asyncio.run(run_replay(settings, plan, timeout=timeout))
    except ReplayError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(comparison.text())
    click.echo(f"replayed tasks are on {plan.replayed_topic}")
    if not comparison.same:
        sys.exit(1)
