"""`patrol` subcommands run as child processes by the demo, the bench, the chaos campaign and the
integration tests: this interpreter, output in a log file, SIGTERM then SIGKILL to stop; the stub
gateway as such a child, and the waits on them (an HTTP page, a consumer group's commits). (The
worker's own children, the intake and the SMS sender, are production and live in
`patrol.worker.children`.)"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from patrol.kafka.topics import InternalTopics
from patrol.sms.sender import sender_group
from patrol.waits import free_port, wait_http

STOP_TIMEOUT_SECONDS = 20.0
# What a child of a test or bench run keeps of the caller's PATROL_* settings: the cluster, and
# the marker by which `scripts/with-test-services` finds what a run left behind.
KEPT_SETTINGS = ("PATROL_KAFKA_BOOTSTRAP", "PATROL_TEST_RUN")


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    # Linux: the child gets SIGTERM if its parent is killed (even with SIGKILL).
    with contextlib.suppress(Exception):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def patrol_env(
    overrides: Mapping[str, str],
    *,
    drop: str = "PATROL_",
    keep: Iterable[str] = KEPT_SETTINGS,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The caller's environment without the variables starting with `drop` (but `keep`), plus
    `overrides`: a child decides its settings from what it is given, not from leftovers."""
    kept = set(keep)
    source = os.environ if base is None else base
    env = {k: v for k, v in source.items() if not k.startswith(drop) or k in kept}
    env.update(overrides)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class PatrolProcess:
    """A `patrol` subcommand run with this interpreter, its output in a log file.

    `own_group` puts it in a process group of its own (a terminal's Ctrl-C then reaches only the
    parent, which stops its children in order); `die_with_parent` has Linux send it SIGTERM
    when the parent dies."""

    name: str
    args: list[str]
    env: dict[str, str]
    log_path: Path
    cwd: Path | None = None
    own_group: bool = False
    die_with_parent: bool = False
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    """time.monotonic() just before the process was spawned."""
    started_wall: float = 0.0
    """time.time() at the same moment, to compare with wall-clock receive times."""

    def start(self) -> PatrolProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.started_at = time.monotonic()
            self.started_wall = time.time()
            # From the caller's thread: a parent-death signal follows the thread that forked.
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "patrol.cli", *self.args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.cwd,
                process_group=0 if self.own_group else None,
                preexec_fn=_die_with_parent
                if self.die_with_parent and sys.platform == "linux"
                else None,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no flush, no commit, no goodbye to the group."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait(timeout=30)

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """SIGTERM, then SIGKILL once `timeout` has passed; returns when the process is gone."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(the log is empty)"


@dataclass
class Gateway:
    """A running `patrol sms-gateway`: what it accepted, and its faults changed at runtime."""

    process: PatrolProcess
    url: str

    def messages(self) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/messages", timeout=5)
        response.raise_for_status()
        result: list[dict[str, Any]] = response.json()
        return result

    def set_faults(self, **faults: Any) -> None:
        httpx.put(f"{self.url}/faults", json=faults, timeout=5).raise_for_status()

    def wait_for(self, count: int, timeout: float = 60.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.messages()
            if len(got) >= count:
                return got
            time.sleep(0.3)
        raise AssertionError(f"gateway has {len(self.messages())} messages, expected {count}")


def gateway_process(base: Path, *args: str, cwd: Path | None = None) -> Gateway:
    """Start the stub gateway on a free port (its log in `base`) and wait for its /healthz."""
    port = free_port()
    process = PatrolProcess(
        "gateway",
        ["sms-gateway", "--port", str(port), *args],
        patrol_env({}),
        base / "gateway.log",
        cwd=cwd,
    ).start()
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/healthz", timeout=30, proc=process.proc)
    return Gateway(process, url)


async def uncommitted(
    bootstrap: str, group: str, topics: Iterable[str], partitions: int
) -> dict[TopicPartition, int]:
    """What `group` has not committed yet: records between its committed offset and the end,
    for each partition of `topics` that has any."""
    tps = [TopicPartition(topic, p) for topic in topics for p in range(partitions)]
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await admin.start()
    try:
        await consumer.start()
        try:
            committed = await admin.list_consumer_group_offsets(group, partitions=tps)
            ends = await consumer.end_offsets(tps)
        finally:
            await consumer.stop()
    finally:
        await admin.close()
    behind = {}
    for tp in tps:
        done = committed[tp].offset if tp in committed else -1
        if ends[tp] > max(done, 0):
            behind[tp] = ends[tp] - max(done, 0)
    return behind


def app_consumer_groups(
    app_id: str, camera: str, drone: str, feedback: str
) -> dict[str, tuple[str, ...]]:
    """Each consumer group of a worker app (intake, faust app, SMS sender) and what it reads."""
    internal = InternalTopics.of(app_id)
    return {
        app_id: (camera, drone, feedback),
        f"{app_id}-state": (internal.cases, internal.hazards, internal.task_loop),
        sender_group(app_id): (internal.sms_outbox,),
    }


async def wait_committed(
    bootstrap: str, groups: Mapping[str, Iterable[str]], partitions: int, timeout: float = 90.0
) -> None:
    """Until each consumer group has committed all of the topics it reads (`groups`: group →
    topics): what it took in is decided and recorded, and a member that took its partitions
    over would not redo it."""
    deadline = time.monotonic() + timeout
    while True:
        behind = {
            group: left
            for group, topics in groups.items()
            if (left := await uncommitted(bootstrap, group, topics, partitions))
        }
        if not behind:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not committed after {timeout} s: {behind}")
        await asyncio.sleep(0.5)
