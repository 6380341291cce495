"""A running patrol: the real gateway process and real worker processes on unique topics."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.processes import clean_env, free_port
from patrol.devtools.processes import Gateway, app_consumer_groups, wait_committed
from patrol.devtools.processes import gateway_process as start_gateway
from patrol.domain.zones import load_zones

from .helpers import REPO, ManagedProcess, Topics, read_json, wait_http

PARTITIONS = 3
KINDS = ("stream", "changelog")  # of the partitions a worker's Kafka client fetches
# what the faust app consumes: its agents' three internal topics, and faust's leader topic
STREAM_PARTITIONS = 3 * PARTITIONS + 1
T0 = datetime.fromisoformat("2026-11-27T10:00:00+08:00")


def point_in(zone_id: str) -> dict[str, float]:
    point = load_zones().polygon(zone_id).representative_point()
    return {"lat": round(point.y, 6), "lon": round(point.x, 6)}


NO_PARKING = "anwen-wenxi-rd"
PARKING_ALLOWED = "anwen-yunshan-xiaoqu"
WATER_SOURCE = "jianshan-liuan-reservoir"


def detection(
    event_id: str,
    at: datetime,
    *,
    kind: str = "plate_read",
    plate: str | None = None,
    zone: str = NO_PARKING,
    location: dict[str, float] | None = None,
    confidence: float | None = 0.95,
    source: str = "cam-0017",
    source_type: str = "camera",
) -> dict[str, Any]:
    value: dict[str, Any] = {
        "schema_version": 1,
        "event_id": event_id,
        "kind": kind,
        "source": {
            "type": source_type,
            "id": source,
            "route_id": "route-anwen-01" if source_type == "drone" else None,
        },
        "observed_at": at.isoformat(),
        "location": location or point_in(zone),
        "media": [f"https://evidence.example/{source}/{event_id}.jpg"],
    }
    if confidence is not None:
        value["confidence"] = confidence
    if plate is not None:
        value["plate"] = plate
        value["plate_color"] = "blue"
    return value


def heartbeat(event_id: str, at: datetime, source: str = "cam-0017") -> dict[str, Any]:
    return detection(event_id, at, kind="heartbeat", confidence=None, source=source)


def report(task_id: str, status: str, at: datetime, fid: str, **extra: Any) -> dict[str, Any]:
    """A TaskFeedback as a field team's app sends it (CONTRACT §10)."""
    return {
        "schema_version": 1,
        "feedback_id": fid,
        "task_id": task_id,
        "status": status,
        "at": at.isoformat(),
        "team": "安文街道综合执法队",
        "note": None,
        "extend_until": None,
        "media": [],
        **extra,
    }


def minutes(m: float) -> timedelta:
    return timedelta(minutes=m)


@dataclass
class Stack:
    bootstrap: str
    topics: Topics
    gateway: Gateway
    base: Path
    workers: list[ManagedProcess] = field(default_factory=list)
    web_ports: list[int] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)

    def start_worker(self, name: str = "worker", **env: str) -> ManagedProcess:
        port = free_port()
        worker_env = clean_env(
            {
                **self.topics.env(),
                "PATROL_KAFKA_BOOTSTRAP": self.bootstrap,
                "PATROL_SMS_URL": self.gateway.url,
                "PATROL_WEB_PORT": str(port),
                "PATROL_DATA_DIR": str(self.base / f"{name}-data"),
                "PATROL_PARTITIONS": str(PARTITIONS),
                "PATROL_SMS_RETRY_SECONDS": "30",
                **self.extra_env,
                **env,
            }
        )
        process = ManagedProcess(name, ["worker"], worker_env, self.base / f"{name}.log").start()
        self.workers.append(process)
        self.web_ports.append(port)
        try:
            wait_http(f"http://127.0.0.1:{port}/readyz", timeout=90, proc=process.proc)
        except Exception as exc:
            raise AssertionError(f"worker not ready: {exc}\n{process.log_tail()}") from exc
        return process

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.web_ports[-1]}/metrics"

    def metric(self, name: str, *, port: int | None = None, **labels: str) -> float:
        """Sum of the samples of `name` with these labels on a worker (default: the newest)."""
        url = self.metrics_url if port is None else f"http://127.0.0.1:{port}/metrics"
        text = httpx.get(url, timeout=5).text
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            head, value = line.rsplit(" ", 1)
            if all(f'{k}="{v}"' in head for k, v in labels.items()):
                total += float(value)
        return total

    async def fetching(self, *, port: int | None = None) -> dict[str, float]:
        """How many partitions of each kind (stream, changelog) a ready worker's Kafka client
        fetches: `patrol_worker_fetching_partitions`, once the worker has counted them."""
        name = "patrol_worker_fetching_partitions"
        for _ in range(100):
            counts = {kind: self.metric(name, port=port, kind=kind) for kind in KINDS}
            if counts["stream"]:
                return counts
            await asyncio.sleep(0.2)
        raise AssertionError(f"{name} never counted a stream partition: {counts}")

    async def send(self, topic: str, *detections: dict[str, Any]) -> None:
        from .helpers import produce_values

        items = [
            (d["source"]["id"].encode(), json.dumps(d, ensure_ascii=False).encode())
            for d in detections
        ]
        await produce_values(self.bootstrap, topic, items)

    async def send_feedback(self, *reports: dict[str, Any] | bytes) -> None:
        """Feedback records keyed by task id (raw bytes go as they are, keyed `garbage`)."""
        from .helpers import produce_values

        items = []
        for item in reports:
            if isinstance(item, bytes):
                items.append((b"garbage", item))
            else:
                value = json.dumps(item, ensure_ascii=False).encode()
                items.append((item["task_id"].encode(), value))
        await produce_values(self.bootstrap, self.topics.feedback, items)

    async def statuses(self, min_count: int = 0, timeout: float = 30.0) -> list[dict[str, Any]]:
        return await read_json(
            self.bootstrap, self.topics.status, min_count=min_count, timeout=timeout
        )

    async def tasks(self, min_count: int = 0, timeout: float = 30.0) -> list[dict[str, Any]]:
        return await read_json(
            self.bootstrap, self.topics.dispatch, min_count=min_count, timeout=timeout
        )

    def consumer_groups(self) -> dict[str, tuple[str, ...]]:
        """Each consumer group of the app (intake, faust app, SMS sender) and what it reads."""
        topics = self.topics
        return app_consumer_groups(topics.app_id, topics.camera, topics.drone, topics.feedback)

    async def wait_committed(self, timeout: float = 90.0) -> None:
        """Until every group of the app has committed all it was given: what it took in is
        decided and recorded, and a worker that took its partitions over would not redo it."""
        await wait_committed(self.bootstrap, self.consumer_groups(), PARTITIONS, timeout)

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()


def gateway_process(base: Path, *args: str) -> Gateway:
    return start_gateway(base, *args, cwd=REPO)


@pytest.fixture(scope="module")
def stack(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("stack")
    gateway = gateway_process(base)
    running = Stack(bootstrap, Topics(), gateway, base)
    try:
        running.start_worker()
        yield running
    finally:
        running.stop()
        gateway.process.stop()
