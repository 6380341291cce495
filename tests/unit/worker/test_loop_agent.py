"""The loop agent and the hazard agent's watches, driven with fakes: no broker."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from prometheus_client import REGISTRY

from patrol.domain import tasks, verification
from patrol.domain.models import DeadLetter, EnforcementTask, TaskStatus
from patrol.kafka import envelopes, loop_records
from patrol.kafka.loop_records import ForwardedFeedback, LoopRecord
from patrol.kafka.partitioning import partition_of
from patrol.settings import Settings
from patrol.worker.loop_agent import LoopAgent

from .fakes import FakeBatches
from .test_hazard_agent import POINT, T0, Harness, fire

PARTITIONS = 3


class Effects:
    def __init__(self) -> None:
        self.dispatched: list[bytes] = []
        self.statuses: list[TaskStatus] = []
        self.letters: list[DeadLetter] = []
        self.watches: list[tasks.Watch] = []

    async def dispatch(self, decided: loop_records.DecidedTask) -> None:
        self.dispatched.append(decided.value)

    async def status(self, record: TaskStatus, feedback_ms: int | None) -> None:
        self.statuses.append(record)

    async def dead_letter(self, key: bytes | None, letter: DeadLetter) -> None:
        self.letters.append(letter)

    async def watch(self, watch: tasks.Watch) -> None:
        self.watches.append(watch)


class Loop:
    def __init__(self, states: dict[bytes, bytes] | None = None) -> None:
        self.states: dict[bytes, bytes] = {} if states is None else states
        self.effects = Effects()
        self.changelog = FakeBatches()
        self.agent = LoopAgent(
            policy=tasks.LoopPolicy.from_settings(Settings()),
            partitions=PARTITIONS,
            states=self.states,
            records=self.changelog,
            changelog_topic="loop-changelog",
            effects=self.effects,
            max_message_bytes=65536,
        )
        self.offset = 0

    async def opened(self, *opened: EnforcementTask) -> None:
        """Tasks of one partition as the deciding agents send them: one batch record."""
        (partition,) = {partition_of(task.task_id.encode(), PARTITIONS) for task in opened}
        items = [loop_records.decided_item(t.model_dump_json(), 0) for t in opened]
        (value,) = loop_records.batch_records(items)
        await self.agent.take(partition, loop_records.headers(LoopRecord.tasks_decided), value)

    def forwarded(self, task_id: str, status: str, at: datetime, fid: str) -> ForwardedFeedback:
        self.offset += 1
        value = feedback_json(task_id, status, at, fid)
        return ForwardedFeedback(value, task_id.encode(), "fb", 0, self.offset, 0)

    async def feedback(self, task_id: str, status: str, at: datetime, fid: str) -> None:
        await self.feedback_batch(task_id, [self.forwarded(task_id, status, at, fid)])

    async def feedback_batch(self, task_id: str, batch: list[ForwardedFeedback]) -> None:
        """Feedback of one partition as the intake forwards it: one batch record."""
        (value,) = loop_records.batch_records([loop_records.feedback_record(f) for f in batch])
        await self.agent.take(
            partition_of(task_id.encode(), PARTITIONS),
            loop_records.headers(LoopRecord.feedback_batch),
            value,
        )

    async def tick(self, clock: datetime) -> None:
        """Every partition, as each worker's clock timer sends it."""
        for partition in range(PARTITIONS):
            await self.agent.take(
                partition, loop_records.headers(LoopRecord.tick), loop_records.tick_record(clock)
            )


def feedback_json(task_id: str, status: str, at: datetime, fid: str) -> bytes:
    """A TaskFeedback record as the dispatch system writes it."""
    return json.dumps(
        {
            "schema_version": 1,
            "feedback_id": fid,
            "task_id": task_id,
            "status": status,
            "at": at.isoformat(),
        }
    ).encode()


async def a_fire_task() -> EnforcementTask:
    hazards = Harness()
    await hazards.send(fire("f0", T0), clock=T0)
    (task,) = hazards.tasks
    return task


def open_red(department: str) -> float:
    return (
        REGISTRY.get_sample_value("patrol_tasks_open", {"department": department, "lamp": "red"})
        or 0.0
    )


async def test_a_task_opened_twice_gives_one_dispatched_record() -> None:
    loop, task = Loop(), await a_fire_task()
    await loop.opened(task)
    await loop.opened(task)
    # its state reaches the changelog on the task's partition, handed over after the event
    assert loop.changelog.submitted == []
    await loop.agent.after_event()
    ((topic, partition, key, value),) = loop.changelog.submitted
    assert (topic, partition, key) == (
        "loop-changelog",
        partition_of(task.task_id.encode(), PARTITIONS),
        task.task_id.encode(),
    )
    assert value == loop.states[key]
    assert [(s.status.value, s.cause.value) for s in loop.effects.statuses] == [
        ("dispatched", "dispatched")
    ]
    assert task.task_id.encode() in loop.states


async def test_ticks_turn_the_lamps_and_the_open_gauge_follows() -> None:
    loop, task = Loop(), await a_fire_task()
    before = open_red(task.department)
    await loop.opened(task)
    await loop.tick(task.due_by - timedelta(seconds=1))
    await loop.tick(task.due_by)
    lamps = [s.lamp.value for s in loop.effects.statuses]
    assert lamps == ["green", "yellow", "red"]
    assert open_red(task.department) == before  # set once the event is done, as the worker does
    await loop.agent.after_event()
    assert open_red(task.department) == before + 1


async def test_an_unknown_task_and_a_step_back_are_dead_lettered_with_their_reasons() -> None:
    loop, task = Loop(), await a_fire_task()
    await loop.opened(task)
    await loop.feedback("nobody", "accepted", T0, "fb-1")
    await loop.feedback(task.task_id, "arrived", T0 + timedelta(minutes=5), "fb-2")
    await loop.feedback(task.task_id, "accepted", T0 + timedelta(minutes=6), "fb-3")
    assert [letter.reason.value for letter in loop.effects.letters] == [
        "unknown_task",
        "invalid_transition",
    ]
    assert [s.feedback_id for s in loop.effects.statuses] == [None, "fb-2"]


async def test_a_refused_feedback_id_is_kept_in_the_table_and_its_replay_gives_nothing() -> None:
    first, task = Loop(), await a_fire_task()
    await first.opened(task)
    await first.feedback(task.task_id, "arrived", T0 + timedelta(minutes=5), "fb-2")
    await first.feedback(task.task_id, "accepted", T0 + timedelta(minutes=6), "fb-3")
    await first.agent.after_event()
    key = task.task_id.encode()
    *_, (topic, _partition, written_key, value) = first.changelog.submitted
    assert topic == "loop-changelog" and written_key == key and value is not None
    assert tasks.decode_task(value).feedback_ids == ("fb-2", "fb-3")
    second = Loop(dict(first.states))  # a new worker recovered the changelog
    await second.feedback(task.task_id, "returned", T0 + timedelta(minutes=7), "fb-4")
    await second.feedback(task.task_id, "accepted", T0 + timedelta(minutes=6), "fb-3")  # replay
    assert second.effects.letters == []
    assert [s.feedback_id for s in second.effects.statuses] == ["fb-4"]


async def test_a_recovered_table_is_indexed_so_its_lamps_still_turn() -> None:
    first, task = Loop(), await a_fire_task()
    await first.opened(task)
    second = Loop(dict(first.states))  # a new worker recovered the changelog
    await second.tick(task.due_by)
    assert [s.lamp.value for s in second.effects.statuses] == ["yellow", "red"]


async def test_a_resolved_fire_is_watched_and_a_frame_near_it_reopens_it_without_a_new_task() -> (
    None
):
    loop, task = Loop(), await a_fire_task()
    await loop.opened(task)
    await loop.feedback(task.task_id, "resolved", T0 + timedelta(minutes=20), "fb-r")
    (watch,) = loop.effects.watches
    assert watch.until == T0 + timedelta(minutes=80)

    hazards = Harness()
    outcomes = hazards.outcomes
    await hazards.send(fire("f0", T0), clock=T0)
    await hazards.watch(watch)
    # 40 minutes after the last frame the incident itself has closed: only the watch knows it
    await hazards.send(
        fire("f-back", T0 + timedelta(minutes=60), north_m=30), clock=T0 + timedelta(minutes=60)
    )
    (outcome,) = outcomes
    assert (outcome.outcome, outcome.event_id) == ("redetected", "f-back")
    assert len(hazards.tasks) == 1  # the first fire's task only
    # later frames of the same fire join the reopened incident, not a new one
    await hazards.send(
        fire("f-back-2", T0 + timedelta(minutes=62), north_m=40), clock=T0 + timedelta(minutes=62)
    )
    assert len(hazards.tasks) == 1

    await loop.agent.take(
        0,
        loop_records.headers(LoopRecord.watch_outcome),
        loop_records.watch_outcome_record(outcome),
    )
    reopened = loop.effects.statuses[-1]
    assert (reopened.status.value, reopened.cause.value, reopened.event_id) == (
        "reopened",
        "redetected",
        "f-back",
    )


async def test_a_watch_with_nothing_seen_ends_verified_once_the_clock_passes_its_end() -> None:
    hazards = Harness()
    outcomes = hazards.outcomes
    until = T0 + timedelta(minutes=60)
    watch = tasks.Watch("t-1", tasks.TaskType.open_burning, POINT.y, POINT.x, T0, until)
    await hazards.watch(watch)
    await hazards.send(clock=until)
    assert outcomes == []  # the window's end itself is still inside
    await hazards.send(clock=until + timedelta(seconds=1))
    assert [(o.outcome, o.at) for o in outcomes] == [("verified", until)]
    await hazards.send(clock=until + timedelta(minutes=5))
    assert len(outcomes) == 1


def test_envelopes_are_untouched_by_the_loop() -> None:
    # the intake's batch records carry no loop header: the hazard agent reads them as before
    assert loop_records.kind_of(()) is None
    assert next(envelopes.batch_records([], T0)).startswith(b'{"items":[]')


async def test_the_lamps_of_a_reopened_task_are_not_counted_as_rework_again() -> None:
    loop, task = Loop(), await a_fire_task()
    await loop.opened(task)
    await loop.feedback(task.task_id, "resolved", T0 + timedelta(minutes=5), "fb-r")
    outcome = verification.WatchOutcome(task.task_id, "redetected", T0 + timedelta(minutes=9), "e")
    before = rework(task.department)
    await loop.agent.take(
        partition_of(task.task_id.encode(), PARTITIONS),
        loop_records.headers(LoopRecord.watch_outcome),
        loop_records.watch_outcome_record(outcome),
    )
    await loop.tick(T0 + timedelta(days=1))
    assert [(s.status.value, s.cause.value) for s in loop.effects.statuses][-3:] == [
        ("reopened", "redetected"),
        ("reopened", "clock"),
        ("reopened", "clock"),
    ]
    assert rework(task.department) == before + 1


def rework(department: str) -> float:
    sample = REGISTRY.get_sample_value("patrol_tasks_reopened_total", {"department": department})
    return sample or 0.0


async def test_a_feedback_batch_applies_each_item_in_order_and_an_unreadable_one_alone() -> None:
    loop, task = Loop(), await a_fire_task()
    await loop.opened(task)
    accepted = loop.forwarded(task.task_id, "accepted", T0 + timedelta(minutes=2), "fb-a")
    arrived = loop.forwarded(task.task_id, "arrived", T0 + timedelta(minutes=9), "fb-b")
    items = [loop_records.feedback_record(accepted), b'{"v":"not base64!"}']
    items.append(loop_records.feedback_record(arrived))
    (value,) = loop_records.batch_records(items)
    await loop.agent.take(
        partition_of(task.task_id.encode(), PARTITIONS),
        loop_records.headers(LoopRecord.feedback_batch),
        value,
    )
    assert [(s.status.value, s.feedback_id) for s in loop.effects.statuses] == [
        ("dispatched", None),
        ("accepted", "fb-a"),
        ("arrived", "fb-b"),
    ]


async def test_a_task_is_dispatched_once_in_the_step_that_opens_it() -> None:
    loop, task = Loop(), await a_fire_task()
    await loop.opened(task)
    await loop.opened(task)  # a replay: the loop knows it, nothing more goes out
    assert loop.effects.dispatched == [task.model_dump_json().encode()]
    assert [s.status.value for s in loop.effects.statuses] == ["dispatched"]


async def test_tasks_an_earlier_release_dispatched_itself_are_opened_not_dispatched() -> None:
    loop, task = Loop(), await a_fire_task()
    partition = partition_of(task.task_id.encode(), PARTITIONS)
    (value,) = loop_records.batch_records([task.model_dump_json().encode()])
    await loop.agent.take(partition, loop_records.headers(LoopRecord.tasks_opened), value)
    assert loop.effects.dispatched == []
    assert [s.status.value for s in loop.effects.statuses] == ["dispatched"]


async def test_a_task_older_than_the_retention_is_dispatched_but_not_opened() -> None:
    loop, task = Loop(), await a_fire_task()
    await loop.tick(task.created_at + loop.agent.policy.retention + timedelta(seconds=1))
    await loop.opened(task)
    assert loop.effects.dispatched == [task.model_dump_json().encode()]
    assert loop.effects.statuses == []
    assert task.task_id.encode() not in loop.states


async def test_records_of_one_task_a_record_from_an_earlier_release_are_still_applied() -> None:
    loop, task = Loop(), await a_fire_task()
    partition = partition_of(task.task_id.encode(), PARTITIONS)
    await loop.agent.take(
        partition, loop_records.headers(LoopRecord.task_opened), task.model_dump_json().encode()
    )
    fed = loop.forwarded(task.task_id, "accepted", T0 + timedelta(minutes=2), "fb-old")
    await loop.agent.take(
        partition, loop_records.headers(LoopRecord.feedback), loop_records.feedback_record(fed)
    )
    assert [s.status.value for s in loop.effects.statuses] == ["dispatched", "accepted"]


def test_batch_records_split_within_the_size_limits_and_skip_an_empty_list() -> None:
    items = [b'{"n":%d}' % n for n in range(envelopes.MAX_BATCH_ITEMS + 1)]
    records = list(loop_records.batch_records(items))
    assert [len(loop_records.batch_items(r)) for r in records] == [envelopes.MAX_BATCH_ITEMS, 1]
    assert list(loop_records.batch_records([])) == []


async def test_tasks_whose_partitions_moved_away_leave_the_open_gauge() -> None:
    loop, task = Loop(), await a_fire_task()
    await loop.opened(task)
    await loop.tick(task.due_by)
    await loop.agent.after_event()
    before = open_red(task.department)
    loop.states.clear()  # the partition went to another worker, and its state with it
    loop.agent.revoked()
    assert open_red(task.department) == before - 1
    await loop.tick(task.due_by + timedelta(minutes=1))  # re-indexed: nothing to count here
    assert open_red(task.department) == before - 1


async def test_a_closed_task_leaves_the_table_after_the_retention_and_stays_gone() -> None:
    loop, task = Loop(), await a_fire_task()
    key = task.task_id.encode()
    retention = loop.agent.policy.retention
    await loop.opened(task)
    await loop.feedback(task.task_id, "unresolvable", T0 + timedelta(minutes=30), "fb-1")
    closed_at = T0 + timedelta(minutes=30)
    await loop.tick(closed_at + retention - timedelta(seconds=1))
    await loop.agent.after_event()
    assert key in loop.states
    await loop.tick(closed_at + retention)
    await loop.agent.after_event()
    # gone from the table, and a tombstone on its changelog partition
    assert key not in loop.states
    assert loop.changelog.submitted[-1] == (
        "loop-changelog",
        partition_of(key, PARTITIONS),
        key,
        None,
    )
    records = len(loop.effects.statuses)
    # the task replayed gives no second dispatched record; its feedback is an unknown task
    await loop.opened(task)
    await loop.feedback(task.task_id, "accepted", closed_at + retention, "fb-2")
    assert len(loop.effects.statuses) == records
    assert key not in loop.states
    assert [letter.reason.value for letter in loop.effects.letters] == ["unknown_task"]


async def test_a_recovered_table_forgets_tasks_closed_long_ago_at_the_first_tick() -> None:
    first, task = Loop(), await a_fire_task()
    await first.opened(task)
    await first.feedback(task.task_id, "unresolvable", T0 + timedelta(minutes=30), "fb-1")
    second = Loop(dict(first.states))  # a new worker recovered the changelog
    await second.tick(T0 + timedelta(days=3))
    await second.agent.after_event()
    assert second.states == {}
    assert [value for *_, value in second.changelog.submitted] == [None]


async def test_an_extension_dated_before_the_clock_turns_its_lamps_at_once() -> None:
    loop, task = Loop(), await a_fire_task()
    await loop.opened(task)
    await loop.tick(task.due_by + timedelta(hours=1))
    assert [s.lamp.value for s in loop.effects.statuses] == ["green", "yellow", "red"]
    until = task.due_by + timedelta(minutes=30)
    value = json.dumps(
        {
            "schema_version": 1,
            "feedback_id": "fb-ext",
            "task_id": task.task_id,
            "status": "extended",
            "at": (task.created_at + timedelta(minutes=10)).isoformat(),
            "extend_until": until.isoformat(),
        }
    ).encode()
    forwarded = ForwardedFeedback(value, task.task_id.encode(), "fb", 0, 1, 0)
    await loop.feedback_batch(task.task_id, [forwarded])
    # no later tick: the clock (an hour past the old due time) already passed both new lamp times
    limit = until - task.created_at
    assert [
        (s.status.value, s.lamp.value, s.cause.value, s.at) for s in loop.effects.statuses[3:]
    ] == [
        ("extended", "green", "feedback", task.created_at + timedelta(minutes=10)),
        ("extended", "yellow", "clock", until - limit / 5),
        ("extended", "red", "clock", until),
    ]
