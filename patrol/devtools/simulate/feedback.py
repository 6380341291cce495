"""A simulated dispatch system: how field teams answer each task (CONTRACT §10 feedback).

Pure and seeded. A task's answers are a script drawn from its own random stream, derived from
the seed and the task id, so the same seed and the same tasks give the same feedback whatever
order or timing the tasks arrive in. A task reopened after a re-detection gets a second script
(round 2, 3, …) drawn the same way from its reopening.

Each answer's `at` is event time; `FeedbackSchedule` holds the answers until the simulation's
event-time clock reaches them (the Kafka side is `dispatcher.py`).
"""

from __future__ import annotations

import hashlib
import heapq
import json
import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from patrol.devtools.simulate.events import CHINA_STANDARD_TIME, MEDIA_BASE
from patrol.domain.models import EnforcementTask, FeedbackStatus, TaskType

MINUTE = timedelta(minutes=1)


@dataclass(frozen=True)
class FeedbackMix:
    """Shares of how a task goes (first round); they need not sum to 1 (relative weights).

    - `on_time`: accepted within minutes, resolved before due_by (some in the yellow fifth);
    - `late`: resolved after due_by (the lamp goes red first);
    - `extended`: 延期 once, to a later due_by, then resolved, mostly in the new time;
    - `returned`: 回退 (not ours), then the command center gives it to another team;
    - `unresolvable`: 挂账 after a look on site;
    - `silent`: nobody answers (the task goes yellow, then red, and stays open).
    A reopened task's next round is on time with `reopened_on_time`, else late.
    """

    on_time: float = 0.70
    late: float = 0.12
    extended: float = 0.07
    returned: float = 0.05
    unresolvable: float = 0.03
    silent: float = 0.03
    reopened_on_time: float = 0.85

    def outcomes(self) -> tuple[tuple[str, ...], tuple[float, ...]]:
        names = ("on_time", "late", "extended", "returned", "unresolvable", "silent")
        weights = tuple(float(getattr(self, name)) for name in names)
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"feedback shares must be ≥ 0 and not all 0, got {weights}")
        return names, weights


@dataclass(frozen=True, slots=True)
class ScriptedFeedback:
    """One TaskFeedback record to produce at `at` (event time): key task_id, value JSON."""

    at: datetime
    task_id: str
    feedback_id: str
    status: FeedbackStatus
    value: bytes

    @property
    def key(self) -> bytes:
        return self.task_id.encode()


@dataclass(frozen=True, slots=True)
class TaskScript:
    """What a team does with one round of one task."""

    task_id: str
    round: int
    outcome: str
    steps: tuple[ScriptedFeedback, ...]


TEAMS = {
    "comprehensive_enforcement": "{township}综合执法中队",
    "ecology_environment": "磐安生态环境执法队",
    "agriculture_rural": "{township}农业农村服务队",
    "market_supervision": "{township}市场监管所",
}
SECOND_TEAM = "{township}联合执法队"  # who the command center sends after a 回退

NOTES: dict[tuple[FeedbackStatus, TaskType | None], str] = {
    (FeedbackStatus.accepted, None): "已受理,安排人员前往",
    (FeedbackStatus.arrived, None): "已到达现场",
    (FeedbackStatus.resolved, TaskType.illegal_parking): "已贴单告知,车辆已驶离",
    (FeedbackStatus.resolved, TaskType.roadside_vending): "已劝离摊贩,现场已清理",
    (FeedbackStatus.resolved, TaskType.open_burning): "明火已扑灭,已对当事人宣传教育",
    (FeedbackStatus.extended, None): "需协调相关部门,申请延期",
    (FeedbackStatus.returned, None): "经核实不属本单位职责,退回指挥中心",
    (FeedbackStatus.unresolvable, None): "当事人不在场且无法联系,暂无法处置,挂账",
}


def _note(status: FeedbackStatus, task_type: TaskType) -> str:
    return NOTES.get((status, task_type)) or NOTES[(status, None)]


def _team(department: str, township: str, template: str | None = None) -> str:
    text = template or TEAMS.get(department, "{township}执法队")
    return text.format(township=township or "磐安县")


def _stream(seed: int, task_id: str, round_number: int) -> random.Random:
    # A string seed is hashed with SHA-512: the same on every machine and Python run.
    return random.Random(f"{seed}:feedback:{task_id}:{round_number}")


def feedback_id(task_id: str, round_number: int, step: int, status: FeedbackStatus) -> str:
    """Stable per (task, round, step): a repeated run sends the same ids, which change nothing."""
    digest = hashlib.sha256(task_id.encode()).hexdigest()[:16]
    return f"fb-{digest}-r{round_number}-{step}-{status.value}"


@dataclass
class _Steps:
    task_id: str
    task_type: TaskType
    round: int
    team: str
    steps: list[ScriptedFeedback] = field(default_factory=list)
    last: datetime | None = None

    def add(
        self,
        status: FeedbackStatus,
        at: datetime,
        *,
        team: str | None = None,
        extend_until: datetime | None = None,
    ) -> datetime:
        # Whole seconds, strictly after the previous step.
        at = at.replace(microsecond=0)
        if self.last is not None and at <= self.last:
            at = self.last + timedelta(seconds=1)
        self.last = at
        fid = feedback_id(self.task_id, self.round, len(self.steps) + 1, status)
        body: dict[str, Any] = {
            "schema_version": 1,
            "feedback_id": fid,
            "task_id": self.task_id,
            "status": status.value,
            "at": at.astimezone(CHINA_STANDARD_TIME).isoformat(timespec="seconds"),
            "team": team or self.team,
            "note": _note(status, self.task_type),
            "extend_until": (
                extend_until.astimezone(CHINA_STANDARD_TIME).isoformat(timespec="seconds")
                if extend_until is not None
                else None
            ),
            "media": (
                [f"{MEDIA_BASE}/feedback/{fid}.jpg"] if status is FeedbackStatus.resolved else []
            ),
        }
        value = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        self.steps.append(ScriptedFeedback(at, self.task_id, fid, status, value))
        return at


def task_script(
    task: EnforcementTask,
    *,
    seed: int,
    mix: FeedbackMix | None = None,
    round_number: int = 1,
    start: datetime | None = None,
    due_by: datetime | None = None,
) -> TaskScript:
    """The answers to one round of a task: round 1 from its dispatch (`created_at`, `due_by`),
    a later round from the re-detection that reopened it (`start`, the new `due_by`)."""
    mix = mix or FeedbackMix()
    rng = _stream(seed, task.task_id, round_number)
    begin = start or task.created_at
    due = due_by or task.due_by
    limit = max(due - begin, 10 * MINUTE)
    steps = _Steps(
        task.task_id, task.task_type, round_number, _team(task.department, task.township)
    )
    if round_number == 1:
        names, weights = mix.outcomes()
        outcome = rng.choices(names, weights=weights)[0]
    else:
        outcome = "on_time" if rng.random() < mix.reopened_on_time else "late"

    def accept_and_arrive(after: datetime, team: str | None = None) -> datetime:
        # Most teams accept within minutes; the way there takes a tenth to a quarter of L.
        accepted = steps.add(
            FeedbackStatus.accepted, after + rng.uniform(1, min(8, limit / MINUTE / 6)) * MINUTE
        )
        if rng.random() < 0.1:
            return accepted  # some never report arriving: a forward step may skip
        return steps.add(
            FeedbackStatus.arrived, accepted + rng.uniform(0.08, 0.25) * limit, team=team
        )

    if outcome == "silent":
        pass
    elif outcome == "on_time":
        there = accept_and_arrive(begin)
        # Resolved between just after arriving and due_by: about a sixth in the yellow fifth.
        steps.add(
            FeedbackStatus.resolved, max(there + MINUTE, begin + rng.uniform(0.4, 0.97) * limit)
        )
    elif outcome == "late":
        there = accept_and_arrive(begin + rng.uniform(0, 0.2) * limit)
        steps.add(
            FeedbackStatus.resolved, max(there + MINUTE, begin + rng.uniform(1.03, 1.5) * limit)
        )
    elif outcome == "extended":
        there = accept_and_arrive(begin)
        asked = max(there + MINUTE, begin + rng.uniform(0.5, 0.75) * limit)
        new_due = (due + rng.uniform(0.5, 1.0) * limit).replace(second=0, microsecond=0)
        new_due = max(new_due, due.replace(microsecond=0) + MINUTE)
        asked = steps.add(FeedbackStatus.extended, asked, extend_until=new_due)
        on_time = rng.random() < 0.8
        until = new_due - asked
        resolved = asked + (rng.uniform(0.3, 0.95) if on_time else rng.uniform(1.05, 1.3)) * until
        steps.add(FeedbackStatus.resolved, resolved)
    elif outcome == "returned":
        accepted = begin + rng.uniform(1, 10) * MINUTE
        steps.add(FeedbackStatus.accepted, accepted)
        back = steps.add(FeedbackStatus.returned, accepted + rng.uniform(0.1, 0.3) * limit)
        second = _team(task.department, task.township, SECOND_TEAM)
        accepted = steps.add(
            FeedbackStatus.accepted, back + rng.uniform(10, 30) * MINUTE, team=second
        )
        steps.add(
            FeedbackStatus.resolved,
            max(accepted + 10 * MINUTE, begin + rng.uniform(0.9, 1.4) * limit),
            team=second,
        )
    elif outcome == "unresolvable":
        there = accept_and_arrive(begin)
        steps.add(FeedbackStatus.unresolvable, there + rng.uniform(5, 20) * MINUTE)
    else:  # pragma: no cover - outcomes() lists every name above
        raise AssertionError(outcome)
    return TaskScript(task.task_id, round_number, outcome, tuple(steps.steps))


@dataclass(order=True)
class _Due:
    at: datetime
    feedback_id: str
    record: ScriptedFeedback = field(compare=False)


class FeedbackSchedule:
    """The answers not yet sent, in `at` order; tasks and reopenings in, due answers out.

    A task seen twice (redelivery, a restart reading from the beginning) is scripted once; a
    reopening is scripted once per (task, time it reopened)."""

    def __init__(self, *, seed: int, mix: FeedbackMix | None = None) -> None:
        self.seed = seed
        self.mix = mix or FeedbackMix()
        self.tasks: dict[str, EnforcementTask] = {}
        self.outcomes: Counter[str] = Counter()
        self._rounds: dict[str, int] = {}
        self._reopenings: set[tuple[str, datetime]] = set()
        self._early_reopenings: dict[str, list[tuple[datetime, datetime]]] = {}
        self._queue: list[_Due] = []

    @property
    def pending(self) -> int:
        return len(self._queue)

    @property
    def reopened(self) -> int:
        return len(self._reopenings)

    def add_task(self, task: EnforcementTask) -> TaskScript | None:
        """Script a newly dispatched task (None if it was scripted already)."""
        if task.task_id in self.tasks:
            return None
        self.tasks[task.task_id] = task
        self._rounds[task.task_id] = 1
        script = task_script(task, seed=self.seed, mix=self.mix)
        self._push(script)
        for at, due_by in self._early_reopenings.pop(task.task_id, []):
            self.reopen(task.task_id, at, due_by)
        return script

    def reopen(self, task_id: str, at: datetime, due_by: datetime) -> TaskScript | None:
        """A status record `reopened` (a re-detection): the team goes again, from `at`.

        Rounds are numbered in the order the task's reopenings are read: they are one task's
        records on the status topic, keyed by task id, so one partition holds them in order."""
        if (task_id, at) in self._reopenings:
            return None
        task = self.tasks.get(task_id)
        if task is None:
            # The status topic was read ahead of the dispatch topic: wait for the task.
            early = self._early_reopenings.setdefault(task_id, [])
            if (at, due_by) not in early:
                early.append((at, due_by))
            return None
        self._reopenings.add((task_id, at))
        round_number = 1 + sum(1 for tid, _ in self._reopenings if tid == task_id)
        # A reopening ends the previous round: answers it still had are not sent.
        self._queue = [d for d in self._queue if not (d.record.task_id == task_id and d.at > at)]
        heapq.heapify(self._queue)
        script = task_script(
            task, seed=self.seed, mix=self.mix, round_number=round_number, start=at, due_by=due_by
        )
        self._push(script)
        return script

    def due(self, clock: datetime) -> list[ScriptedFeedback]:
        """The answers whose `at` the event-time clock has reached, in `at` order."""
        out: list[ScriptedFeedback] = []
        while self._queue and self._queue[0].at <= clock:
            out.append(heapq.heappop(self._queue).record)
        return out

    def next_at(self) -> datetime | None:
        return self._queue[0].at if self._queue else None

    def _push(self, script: TaskScript) -> None:
        self.outcomes[script.outcome if script.round == 1 else "reopened"] += 1
        for step in script.steps:
            heapq.heappush(self._queue, _Due(step.at, step.feedback_id, step))


def scripted(tasks: Iterable[EnforcementTask], *, seed: int) -> list[ScriptedFeedback]:
    """Every first-round answer to `tasks`, in `at` order (tests and tools)."""
    schedule = FeedbackSchedule(seed=seed)
    for task in tasks:
        schedule.add_task(task)
    return schedule.due(datetime.max.replace(tzinfo=CHINA_STANDARD_TIME))
