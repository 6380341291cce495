"""Following this run's dispatch topic: each task counted once by id and announced as it arrives."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from patrol.devtools.demo.report import TaskTally, task_line


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
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.client_id = client_id
        self.tasks = tasks
        self.say = say

    async def follow(self) -> None:
        """Announce and count each new task until cancelled."""
        from aiokafka import AIOKafkaConsumer, TopicPartition

        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            client_id=self.client_id,
        )
        await consumer.start()
        try:
            partitions: set[int] = set()
            while not partitions:
                partitions = consumer.partitions_for_topic(self.topic) or set()
                if not partitions:
                    # The worker creates the topic; until then ask the broker again.
                    await consumer._client.force_metadata_update()
                    await asyncio.sleep(0.5)
            consumer.assign([TopicPartition(self.topic, p) for p in sorted(partitions)])
            while True:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    for record in records:
                        self.show(record.value)
        finally:
            await consumer.stop()

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
            self.say(task_line(task))

    def stopped(self, follower: asyncio.Task[None]) -> None:
        """Done callback of the follow() task: a failure is said, not raised."""
        if not follower.cancelled() and follower.exception() is not None:
            self.say(
                f"note: stopped reading the dispatch topic ({follower.exception()!r}); "
                "the task counts stop here, the worker goes on"
            )
