"""The worker's own decisions, without a broker: a record the broker refused stops it, and it is
not ready while no broker answers."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError

from patrol.settings import Settings
from patrol.worker import app as app_module
from patrol.worker import faust_ext
from patrol.worker.app import PatrolWorker


@pytest.fixture
def worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> PatrolWorker:
    worker = PatrolWorker(Settings(app_id="unit", data_dir=tmp_path))
    crashes: list[BaseException] = []

    async def crash(exc: BaseException) -> None:
        crashes.append(exc)

    monkeypatch.setattr(worker.app, "crash", crash)
    worker.crashes = crashes  # type: ignore[attr-defined]
    return worker


async def test_a_task_the_broker_refused_stops_the_worker(worker: PatrolWorker) -> None:
    refused: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    refused.set_exception(KafkaTimeoutError())
    worker._check_sent(refused)
    cancelled: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    cancelled.cancel()  # the producer stopping: what it had not sent is replayed, no crash
    worker._check_sent(cancelled)
    await asyncio.sleep(0)
    assert [type(e) for e in worker.crashes] == [KafkaTimeoutError]  # type: ignore[attr-defined]


async def test_not_ready_until_a_broker_answers_and_again_once_none_does(
    worker: PatrolWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    # everything else readiness asks for holds
    worker.intake.started.set()
    monkeypatch.setattr(type(worker.app), "rebalancing", False)
    monkeypatch.setattr(worker.app.consumer, "assignment", lambda: {"a partition"})
    tables: Any = worker.app.tables
    tables.recovery.completed.set()
    answers = [True]

    async def reachable(self: Any) -> bool:
        return answers[-1]

    monkeypatch.setattr(faust_ext.Producer, "broker_reachable", reachable)
    clock = [1_000.0]
    fake_time = SimpleNamespace(monotonic=lambda: clock[-1], time=time.time)
    monkeypatch.setattr(app_module, "time", fake_time)  # the worker's clock, not the loop's

    assert not worker.is_ready()  # never heard from a broker
    await worker._probe_broker()
    assert worker.is_ready()
    answers.append(False)
    for _ in range(int(app_module.BROKER_READY_SECONDS)):
        clock.append(clock[-1] + 1)
        await worker._probe_broker()
        assert worker.is_ready()
    clock.append(clock[-1] + 1)
    await worker._probe_broker()
    assert not worker.is_ready()
    answers.append(True)
    await worker._probe_broker()
    assert worker.is_ready()
