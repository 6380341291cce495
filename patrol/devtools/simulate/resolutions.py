"""How the camera and drone simulators learn that a team removed a hazard: from the worker's
dispatch topic (a hazard task's kind and location) and the feedback topic (`resolved`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from datetime import datetime

from patrol.devtools.simulate.hazards import BURNING, VENDING, Hazard, HazardWorld
from patrol.devtools.simulate.producer import BrokerUnreachable
from patrol.devtools.simulate.tail import TopicTail
from patrol.kafka.security import client_options
from patrol.settings import Settings

HAZARD_TASKS = frozenset({VENDING, BURNING})


@dataclass(frozen=True, slots=True)
class _Place:
    kind: str
    lat: float
    lon: float


@dataclass
class ResolutionFeed:
    """Hazard tasks by id, and `resolved` answers to them, applied to the world: the hazards of
    the task's kind within `radius_m` of its location (its first detection, a few metres from
    the hazard) are removed at the answer's `at`. An answer read before its task waits."""

    world: HazardWorld
    start: datetime
    radius_m: float
    tasks: dict[str, _Place] = field(default_factory=dict)
    waiting: dict[str, list[datetime]] = field(default_factory=dict)
    applied: set[str] = field(default_factory=set)
    removed: int = 0

    def task(self, value: bytes | None) -> None:
        try:
            task = json.loads(value or b"")
            if task["task_type"] not in HAZARD_TASKS:
                return
            place = _Place(
                task["task_type"], float(task["location"]["lat"]), float(task["location"]["lon"])
            )
            task_id = str(task["task_id"])
        except (ValueError, KeyError, TypeError):
            return
        self.tasks.setdefault(task_id, place)
        for at in self.waiting.pop(task_id, []):
            self._resolve(task_id, at)

    def feedback(self, value: bytes | None) -> None:
        try:
            answer = json.loads(value or b"")
            if answer["status"] != "resolved":
                return
            task_id, feedback_id = str(answer["task_id"]), str(answer["feedback_id"])
            at = datetime.fromisoformat(answer["at"])
        except (ValueError, KeyError, TypeError):
            return
        if feedback_id in self.applied:
            return  # a repeated answer changes nothing
        self.applied.add(feedback_id)
        if task_id in self.tasks:
            self._resolve(task_id, at)
        else:
            self.waiting.setdefault(task_id, []).append(at)

    def _resolve(self, task_id: str, at: datetime) -> list[Hazard]:
        place = self.tasks[task_id]
        second = (at - self.start).total_seconds()
        if second < 0:
            return []  # an answer from before this simulation: not this world's
        removed = self.world.resolve(place.kind, place.lat, place.lon, second, self.radius_m)
        self.removed += len(removed)
        return removed


async def learn_resolutions(
    feed: ResolutionFeed, settings: Settings, stop: asyncio.Event, *, client_id: str
) -> None:
    """Follow the dispatch and feedback topics into `feed` until `stop` is set. A broker that
    does not answer ends it quietly: the simulator producing to it says so itself."""
    tail = TopicTail(
        settings.kafka_bootstrap,
        [settings.topic_dispatch, settings.topic_feedback],
        client_id=client_id,
        security=client_options(settings),
    )
    try:
        await tail.start()
    except BrokerUnreachable:
        return
    try:
        while not stop.is_set():
            for record in await tail.poll(timeout_ms=200):
                if record.topic == settings.topic_dispatch:
                    feed.task(record.value)
                else:
                    feed.feedback(record.value)
    finally:
        with contextlib.suppress(Exception):
            await tail.stop()
