"""The deploy checks' tools (installed by `make deploy-tools`), images (`make deploy-images`),
and the containers they start: each labelled with the test run, always removed."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from patrol.domain.zones import load_zones
from patrol.waits import ExitedWaiting, wait_http

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(
    os.environ.get("PATROL_DEPLOY_CACHE")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "patrol" / "deploy"
)
TOOLS_BIN = CACHE / "tools" / "bin"
CONTAINERS_CONF = REPO / "deploy/container/containers.conf"
PATROL_IMAGE = "localhost/patrol:test"
KAFKA_IMAGE = "localhost/patrol-kafka:test"
SERVICES_IMAGE = "localhost/patrol-test-services:bookworm"
LABEL = "patrol.test-run"
# This suite's own ports, apart from the other tests' (brokers 19092…, web pages ephemeral).
BROKER_PORTS = range(19400, 19500)
WEB_PORTS = range(16400, 16500)


class CheckFailed(AssertionError):
    """A deploy check found the thing it checks broken; the message says what and where."""


def run_id() -> str:
    return os.environ.get("PATROL_TEST_RUN", "deploy-tests")


def tool_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PATROL_")}
    env["PATROL_TEST_RUN"] = run_id()  # leftovers are still found by with-test-services
    env["CONTAINERS_CONF"] = str(CONTAINERS_CONF)
    env["PATH"] = f"{TOOLS_BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def run(
    cmd: Sequence[str | Path],
    *,
    env: dict[str, str] | None = None,
    timeout: float = 120.0,
    check: bool = True,
    cwd: Path = REPO,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(part) for part in cmd],
        env=env or tool_env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        input=stdin,
    )
    if check and done.returncode != 0:
        raise CheckFailed(
            f"{' '.join(map(str, cmd))} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        )
    return done


def podman(*args: str, timeout: float = 120.0, check: bool = True) -> str:
    return run(["podman", *args], timeout=timeout, check=check).stdout


def require_image(image: str) -> None:
    if run(["podman", "image", "exists", image], check=False).returncode != 0:
        raise CheckFailed(f"image {image} is missing: run `make deploy-images` first")


def free_port(ports: range, taken: Sequence[int] = ()) -> int:
    """A port of `ports` nobody listens on and not in `taken`, chosen at random so parallel runs
    rarely meet."""
    candidates = [port for port in ports if port not in taken]
    start = uuid.uuid4().int % len(candidates)
    for port in candidates[start:] + candidates[:start]:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {ports.start}-{ports.stop - 1}")


def remove_labelled_containers() -> None:
    """Every container this test run started and did not remove yet."""
    ids = podman("ps", "-aq", "--filter", f"label={LABEL}={run_id()}", check=False).split()
    if ids:
        podman("rm", "-f", "-t", "5", *ids, check=False)


def wait_ready(url: str, timeout: float, alive: Any = None) -> None:
    """200 from `url` within `timeout`, or CheckFailed with the last answer; `alive()` false
    (the container exited) ends the wait at once."""
    try:
        wait_http(url, timeout, alive=alive, interval=0.5)
    except ExitedWaiting as exc:
        raise CheckFailed(f"the container {exc}") from None
    except TimeoutError as exc:
        raise CheckFailed(str(exc)) from None


def vending_detection(event_id: str) -> dict[str, Any]:
    """A roadside vendor seen by a camera in the Anwen market zone just now: the worker opens an
    incident and sends a task for it at once."""
    point = load_zones().polygon("anwen-market").representative_point()
    return {
        "schema_version": 1,
        "event_id": event_id,
        "kind": "roadside_vending",
        "source": {"type": "camera", "id": "cam-0104", "route_id": None},
        "observed_at": datetime.now(UTC).isoformat(),
        "location": {"lat": round(point.y, 6), "lon": round(point.x, 6)},
        "media": [f"https://evidence.example/cam-0104/{event_id}.jpg"],
        "confidence": 0.9,
    }


def task_for(bootstrap: str, topic: str, event_id: str, timeout: float) -> dict[str, Any]:
    """The task on `topic` whose evidence is `event_id`, read as a dispatch system would."""

    async def read() -> dict[str, Any] | None:
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=None,
        )
        await consumer.start()
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    for record in records:
                        task = json.loads(record.value)
                        if any(e.get("event_id") == event_id for e in task.get("evidence", [])):
                            return dict(task)
        finally:
            await consumer.stop()
        return None

    task = asyncio.run(read())
    if task is None:
        raise CheckFailed(f"no task with evidence {event_id} on {topic} within {timeout:.0f} s")
    return task


def send(bootstrap: str, topic: str, key: str, value: dict[str, Any]) -> None:

    async def produce() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(topic, json.dumps(value).encode(), key=key.encode())
        finally:
            await producer.stop()

    asyncio.run(produce())
