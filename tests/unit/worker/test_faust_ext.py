"""The worker's faust app fetches with a short wait (patrol.transport)."""

from __future__ import annotations

from pathlib import Path

from patrol.settings import Settings
from patrol.worker import transport
from patrol.worker.app import PatrolWorker


async def test_the_agents_consumer_waits_at_most_briefly_for_a_fetch(tmp_path: Path) -> None:
    app = PatrolWorker(Settings(app_id="unit", data_dir=tmp_path)).app
    assert isinstance(app.transport, transport.Transport)
    thread = app.consumer._new_consumer_thread()

    consumer = thread._create_worker_consumer(app.transport)
    stock = super(transport.ConsumerThread, thread)._create_worker_consumer(app.transport)
    try:
        assert consumer._fetch_max_wait_ms == transport.FETCH_MAX_WAIT_MS == 20
        assert stock._fetch_max_wait_ms == 1500  # faust's own: what the override is for
        assert consumer._group_id == stock._group_id == "unit-state"
    finally:
        await consumer.stop()
        await stock.stop()
