"""The loop agent: the state of every task on the partitions this worker owns (发现—派单—处置—反馈).

It takes the records of the internal loop topic (`patrol.kafka.loop_records`) in order: tasks
decided and feedback (batch records, each item in order), a clock tick, a watch's outcome. For
each it applies the pure rule (`patrol.domain.tasks`) and hands the effects to a `LoopEffects`:
tasks for the dispatch topic (in the step that opens each, with its first status record),
status records, dead letters, and watches for the hazard agent. It keeps, beside the table, when
the clock next has something to do to each task (turn its lamp, or forget it once it has been
closed for the retention) and the count of open tasks by department and lamp (the
`patrol_tasks_open` gauge); both are rebuilt from the table after an assignment.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from patrol import metrics
from patrol.domain import decode, tasks
from patrol.domain.models import (
    DeadLetter,
    EnforcementTask,
    StatusCause,
    TaskState,
    TaskStatus,
)
from patrol.domain.verification import WatchOutcome
from patrol.intake.feedback import rejected_feedback
from patrol.kafka import loop_records
from patrol.kafka.loop_records import DecidedTask, ForwardedFeedback, LoopRecord
from patrol.kafka.partitioning import partition_of
from patrol.worker.agent import Expiries, RecordBatches

log = logging.getLogger("patrol.worker.loop")


class LoopEffects(Protocol):
    """Where the loop's effects go (the worker's producer; a list in a test)."""

    async def dispatch(self, decided: DecidedTask) -> None: ...

    async def status(self, record: TaskStatus, feedback_ms: int | None) -> None: ...

    async def dead_letter(self, key: bytes | None, letter: DeadLetter) -> None: ...

    async def watch(self, watch: tasks.Watch) -> None: ...


class LoopAgent:
    """Applies task openings, feedback, clock ticks and watch outcomes to the tasks' states."""

    def __init__(
        self,
        *,
        policy: tasks.LoopPolicy,
        partitions: int,
        states: MutableMapping[bytes, bytes],
        records: RecordBatches,
        changelog_topic: str,
        effects: LoopEffects,
        max_message_bytes: int,
    ) -> None:
        self.policy = policy
        self.partitions = partitions
        self.states = states
        """The table's data: one encoded `tasks.TaskRecord` per task id."""
        self._records = records
        self._changelog = changelog_topic
        self._effects = effects
        self._max_bytes = max_message_bytes
        self._clocks: dict[int, datetime] = {}
        self._lamp_changes: dict[int, Expiries] = {}
        self._open: Counter[tuple[str, str]] = Counter()
        self._recounted: set[tuple[str, str]] = set()
        """Open counts changed in the event at hand: their gauges are set after it."""
        self._indexed = False

    # --- what the faust app hands over ------------------------------------------------------

    async def take(
        self, partition: int, headers: Iterable[tuple[str, bytes]], value: bytes
    ) -> None:
        self._index()
        kind = loop_records.kind_of(headers)
        try:
            if kind is LoopRecord.tasks_decided:
                for item in loop_records.batch_items(value):
                    await self._isolated(partition, self._decided_item, item)
            elif kind is LoopRecord.tasks_opened:
                for item in loop_records.batch_items(value):
                    await self._isolated(partition, self._open_item, item)
            elif kind is LoopRecord.feedback_batch:
                for item in loop_records.batch_items(value):
                    await self._isolated(partition, self._feedback_item, item)
            elif kind is LoopRecord.task_opened:
                await self.open(partition, EnforcementTask.model_validate_json(value))
            elif kind is LoopRecord.feedback:
                await self.feedback(partition, loop_records.decode_feedback_record(value))
            elif kind is LoopRecord.tick:
                await self.advance_clock(partition, loop_records.decode_tick(value))
            elif kind is LoopRecord.watch_outcome:
                await self.watch_ended(partition, loop_records.decode_watch_outcome(value))
            else:
                log.error("a record of unknown kind on loop partition %d; skipped", partition)
        except (ValueError, KeyError, TypeError):
            log.exception("an unreadable %s record on loop partition %d", kind, partition)

    async def _isolated(
        self, partition: int, apply: Callable[[int, Any], Awaitable[None]], item: Any
    ) -> None:
        """One item of a batch record: one that fails is logged, and the rest still apply."""
        try:
            await apply(partition, item)
        except Exception:
            log.exception("could not apply an item of a loop batch on partition %d", partition)

    async def _decided_item(self, partition: int, item: Any) -> None:
        decided = loop_records.decided_task(item)
        await self.open(partition, decided.task, decided)

    async def _open_item(self, partition: int, item: Any) -> None:
        await self.open(partition, loop_records.opened_task(item))

    async def _feedback_item(self, partition: int, item: Any) -> None:
        await self.feedback(partition, loop_records.forwarded(item))

    async def after_event(self) -> None:
        """The event's changelog records to the producer, a batch per partition, before the
        agent takes the next event (and so before faust can commit this one); the open gauges
        the event changed are set once each, not on every change."""
        await self._records.submit()
        if self._recounted:
            for counted in self._recounted:
                metrics.tasks_open_by_lamp(*counted).set(self._open[counted])
            self._recounted.clear()

    def revoked(self) -> None:
        """Partitions moved: the index and the open counts are rebuilt from the table."""
        self._clocks.clear()
        self._lamp_changes.clear()
        for counted in self._open:  # zeroed, not left at what this worker no longer holds
            self._open[counted] = 0
        self._publish_open()
        self._open.clear()
        self._recounted.clear()
        self._indexed = False

    # --- the inputs ----------------------------------------------------------------------------

    async def open(
        self, partition: int, task: EnforcementTask, decided: DecidedTask | None = None
    ) -> None:
        """A task to open; with `decided`, to dispatch as well (once: a duplicate is not)."""
        key = task.task_id.encode()
        before = self._load(key)
        clock = self._clocks.get(partition)
        if before is None and tasks.beyond_retention(task, clock, self.policy):
            log.info("task %s is older than the retention: a replay, not opened", task.task_id)
            if decided is not None:  # dispatched all the same, as its deciding agent decided
                await self._effects.dispatch(decided)
            return
        state, decision = tasks.open_task(before, task)
        if decision.duplicate:
            return
        if decided is not None:
            await self._effects.dispatch(decided)
        await self._apply(partition, key, None, state, decision, None)
        await self._catch_up(partition, key, state)

    async def feedback(self, partition: int, fed: ForwardedFeedback) -> None:
        parsed = decode.decode_feedback(fed.value, max_bytes=self._max_bytes)
        if isinstance(parsed, decode.Rejection):  # the forwarder checked it: not expected
            await self._reject(fed, parsed)
            return
        key = parsed.task_id.encode()
        before = self._load(key)
        state, decision = tasks.apply_feedback(before, parsed, self.policy)
        if decision.rejection is not None:
            await self._reject(fed, decision.rejection)
            if state is not None and state is not before:  # its id kept, after its dead letter
                await self._apply(partition, key, before, state, decision, None)
            return
        if decision.duplicate or state is None:
            metrics.task_feedback("duplicate").inc()
            return
        metrics.task_feedback("applied").inc()
        await self._apply(partition, key, before, state, decision, fed.timestamp_ms)
        await self._catch_up(partition, key, state)

    async def advance_clock(self, partition: int, clock: datetime) -> None:
        current = self._clocks.get(partition)
        if current is not None and clock <= current:
            return
        self._clocks[partition] = clock
        for key in self._lamp_changes_of(partition).pop_due(clock + timedelta(seconds=1)):
            await self._step(partition, key, clock)

    async def watch_ended(self, partition: int, outcome: WatchOutcome) -> None:
        key = outcome.task_id.encode()
        before = self._load(key)
        if outcome.outcome == "redetected":
            assert outcome.event_id is not None
            state, decision = tasks.redetected(before, outcome.event_id, outcome.at)
        else:
            state, decision = tasks.verified(before, outcome.at)
        if state is not None and not decision.duplicate:
            await self._apply(partition, key, before, state, decision, None)
            await self._catch_up(partition, key, state)

    # --- effects -------------------------------------------------------------------------------

    async def _catch_up(self, partition: int, key: bytes, state: tasks.TaskRecord) -> None:
        """Turn at once what the clock has already passed: a task opened in a catch-up, or one
        whose feedback or re-detection is older than the clock (an extension dated before it, a
        reopening from a late frame), would otherwise wait for the next tick's later clock."""
        clock = self._clocks.get(partition)
        due = tasks.next_step(state, self.policy)
        if clock is not None and due is not None and due <= clock:
            await self._step(partition, key, clock)

    async def _step(self, partition: int, key: bytes, clock: datetime) -> None:
        before = self._load(key)
        if before is None:
            return
        if tasks.forgotten(before, clock, self.policy):
            del self.states[key]
            await self._records.add(self._changelog, partition, key, None)
            return
        state, decision = tasks.advance_clock(before, clock)
        if decision.statuses:
            await self._apply(partition, key, before, state, decision, None)
        else:
            self._schedule(partition, key, state)

    async def _apply(
        self,
        partition: int,
        key: bytes,
        before: tasks.TaskRecord | None,
        state: tasks.TaskRecord,
        decision: tasks.LoopDecision,
        feedback_ms: int | None,
    ) -> None:
        # As the grace agent writes its cases: faust's per-key changelog path buffered each
        # write and held every agent while it drained (the bench's catch-up stalled on it).
        encoded = tasks.encode_task(state)
        self.states[key] = encoded
        await self._records.add(self._changelog, partition, key, encoded)
        self._count(before, -1, changed=True)
        self._count(state, +1, changed=True)
        self._schedule(partition, key, state)
        for record in decision.statuses:
            self._evaluate(before or state, record, decision)
            # A feedback's latency is timed once, on the record it caused first.
            timed = feedback_ms if record.cause is StatusCause.feedback else None
            await self._effects.status(record, timed)
            if timed is not None:
                feedback_ms = None
        if decision.watch is not None:
            await self._effects.watch(decision.watch)

    async def _reject(self, fed: ForwardedFeedback, rejection: decode.Rejection) -> None:
        letter = rejected_feedback(fed, rejection, datetime.now(UTC))
        await self._effects.dead_letter(fed.key, letter)

    @staticmethod
    def _evaluate(
        before: tasks.TaskRecord, record: TaskStatus, decision: tasks.LoopDecision
    ) -> None:
        """综合评价: what each record says about its department."""
        department = record.department
        metrics.status_records(record.status, record.cause).inc()  # StrEnums: their values
        if record.cause is StatusCause.redetected:
            metrics.tasks_reopened(department).inc()
            return
        if record.cause is StatusCause.clock:  # a lamp change: the status did not change
            return
        since = (record.at - before.start).total_seconds()
        if record.status is TaskState.accepted:
            metrics.task_time_to_accepted(department).observe(max(0.0, since))
        elif record.status is TaskState.resolved:
            metrics.task_time_to_resolved(department).observe(max(0.0, since))
        elif record.status is TaskState.extended:
            metrics.tasks_extended(department).inc()
        elif record.status is TaskState.returned:
            metrics.tasks_returned(department).inc()
        elif record.status is TaskState.closed and decision.closed_on_time is not None:
            timeliness = "on_time" if decision.closed_on_time else "late"
            metrics.tasks_closed(department, timeliness).inc()

    # --- the table and the index -----------------------------------------------------------------

    def _load(self, key: bytes) -> tasks.TaskRecord | None:
        raw = self.states.get(key)
        return None if raw is None else tasks.decode_task(raw)

    def _schedule(self, partition: int, key: bytes, state: tasks.TaskRecord) -> None:
        self._lamp_changes_of(partition).schedule(key, tasks.next_step(state, self.policy))

    def _lamp_changes_of(self, partition: int) -> Expiries:
        changes = self._lamp_changes.get(partition)
        if changes is None:
            changes = self._lamp_changes[partition] = Expiries()
        return changes

    def _count(self, state: tasks.TaskRecord | None, delta: int, *, changed: bool = False) -> None:
        if state is not None and state.is_open:
            counted = (state.department, state.lamp)  # a StrEnum: the label is its value
            self._open[counted] += delta
            if changed:
                self._recounted.add(counted)

    def _publish_open(self) -> None:
        for (department, lamp), count in self._open.items():
            metrics.tasks_open_by_lamp(department, lamp).set(count)

    def _index(self) -> None:
        """After an assignment, learn each recovered task's next lamp change and open count."""
        if self._indexed:
            return
        self._indexed = True
        for key, raw in list(self.states.items()):
            state = tasks.decode_task(raw)
            self._schedule(partition_of(key, self.partitions), key, state)
            self._count(state, +1)
        self._publish_open()
