"""Following this run's dispatch topic: each task counted once by id and announced as it arrives."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from typing import Any

from patrol.devtools.demo.lamps import LampBoard
from patrol.devtools.demo.report import TaskTally, task_line
from patrol.devtools.simulate.tail import TopicTail


class DispatchFollower:
    """Reads every partition of the dispatch topic from the start, with no group and no commit:
    the demo's own topic holds only this run's tasks."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        client_id: str,
        tasks: TaskTally,
        say: Callable[[str], None],
        lamps: LampBoard | None = None,
        security: Mapping[str, Any] | None = None,
    ) -> None:
        self.tail = TopicTail(bootstrap, [topic], client_id=client_id, security=security)
        self.tasks = tasks
        self.say = say
        self.lamps = lamps

    async def follow(self) -> None:
        """Announce and count each new task until cancelled."""
        await self.tail.start()
        try:
            while True:
                for record in await self.tail.poll(timeout_ms=500):
                    self.show(record.value)
        finally:
            await self.tail.stop()

    def show(self, value: bytes | None) -> None:
        """Count one dispatch record and announce it, unless its task id was seen already."""
        if value is None:
            return
        try:
            task = json.loads(value)
        except ValueError:
            self.say("▶ (a dispatch record that is not JSON)")
            return
        if isinstance(task, dict) and self.tasks.add(task):
            if self.lamps is not None:
                self.lamps.add_task(task)
            self.say(task_line(task))

    def stopped(self, follower: asyncio.Task[None]) -> None:
        """Done callback of the follow() task: a failure is said, not raised."""
        if not follower.cancelled() and follower.exception() is not None:
            self.say(
                f"note: stopped reading the dispatch topic ({follower.exception()!r}); "
                "the task counts stop here, the worker goes on"
            )


class StatusFollower:
    """Reads the status topic from the start into the lamp board, announcing each task that
    goes red or is reopened."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        client_id: str,
        lamps: LampBoard,
        say: Callable[[str], None],
        security: Mapping[str, Any] | None = None,
    ) -> None:
        self.tail = TopicTail(bootstrap, [topic], client_id=client_id, security=security)
        self.lamps = lamps
        self.say = say

    async def follow(self) -> None:
        await self.tail.start()
        try:
            while True:
                for record in await self.tail.poll(timeout_ms=500):
                    self.show(record.value)
        finally:
            await self.tail.stop()

    def show(self, value: bytes | None) -> None:
        line = self.lamps.add_value(value)
        if line is not None:
            self.say(line)

    def stopped(self, follower: asyncio.Task[None]) -> None:
        if not follower.cancelled() and follower.exception() is not None:
            self.say(
                f"note: stopped reading the status topic ({follower.exception()!r}); "
                "the lamps stop here, the worker goes on"
            )
