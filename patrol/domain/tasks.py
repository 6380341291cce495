"""The closed loop (CONTRACT §10, 发现—派单—处置—反馈): a task's state after dispatch, and what
feedback, the event-time clock and verification do to it. Pure functions: each takes a state
and one input and returns the new state and the status records it caused; none reads a clock.

* Progress only goes forward: dispatched → accepted → arrived → done (resolved, unresolvable),
  and a step may skip. `returned` (回退) hands the task back to the command center, which
  starts it over; `reopened` (a re-detection during verification) does the same. `extended`
  (延期) moves `due_by` and leaves the progress where it was.
* Lamps (红黄绿灯): with L = `due_by` − `start` (`start` is the dispatch, or the re-detection
  that reopened the task), a task that is not done turns yellow at `due_by` − L/5 and red at
  `due_by`. A lamp changes on the clock (the latest detection time), and on a feedback's own
  `at`, which steps the task's lamps before the feedback applies: the records then depend on
  event times, not on whether a clock step or the feedback came first.
* Verification (核查结案): a resolved hazard task is watched until `at` + the verify window
  (the hazard agent watches, since it sees the detections); a re-detection reopens it, the end
  of the window closes it. A resolved parking task and an unresolvable one close at once.
* Replays change nothing: a feedback id already applied, a task already known, a watch outcome
  for a task no longer under watch give no record.
* A closed task is forgotten `retention` (PATROL_DEDUP_RETENTION_HOURS) of event time after it
  closed, as a case key is after its last decision: the table holds the open tasks and those
  closed within the retention, not every task ever dispatched. A task opened with a `created_at`
  older than the clock less the retention is a replay of one already forgotten, and is ignored;
  feedback for a forgotten task is an `unknown_task`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict

from patrol.domain import texts
from patrol.domain.decode import Rejection
from patrol.domain.models import (
    DeadLetterReason,
    EnforcementTask,
    FeedbackStatus,
    Lamp,
    Location,
    StatusCause,
    TaskFeedback,
    TaskState,
    TaskStatus,
    TaskType,
)

if TYPE_CHECKING:
    from patrol.settings import Settings

_STATE_VERSION: Literal[1] = 1

DONE = 3
"""Progress of a task the field is finished with: resolved or unresolvable."""
# Refused feedback ids an open task keeps; past this a refused id is not remembered (its replay
# is refused again), so a sender retrying a refused step under new ids cannot grow the state.
MAX_REFUSED_IDS = 32
_PROGRESS = {
    FeedbackStatus.accepted: 1,
    FeedbackStatus.arrived: 2,
    FeedbackStatus.resolved: DONE,
    FeedbackStatus.unresolvable: DONE,
}
_LAMPS_STOP = frozenset({TaskState.resolved, TaskState.unresolvable, TaskState.closed})
"""A task in these states keeps the lamp it had: the field's part is done."""


@dataclass(frozen=True, slots=True)
class LoopPolicy:
    verify_window: timedelta
    max_extensions: int
    retention: timedelta = timedelta(hours=24)
    """How long a closed task is remembered (event time) before it is forgotten."""

    @classmethod
    def from_settings(cls, settings: Settings) -> LoopPolicy:
        return cls(
            verify_window=settings.verify_window,
            max_extensions=settings.max_extensions,
            retention=settings.retention,
        )


class TaskRecord(BaseModel):
    """What the loop keeps of one task (the table's value, encoded as JSON)."""

    model_config = ConfigDict(frozen=True)

    v: Literal[1] = _STATE_VERSION
    task_id: str
    task_type: TaskType
    department: str
    township: str
    zone_id: str
    location: Location
    created_at: AwareDatetime
    start: AwareDatetime
    """Where the current time limit starts: the dispatch, or the re-detection that reopened."""
    due_by: AwareDatetime
    status: TaskState = TaskState.dispatched
    progress: int = 0
    lamp: Lamp = Lamp.green
    extensions: int = 0
    reopened: int = 0
    resolved_at: AwareDatetime | None = None
    watch_until: AwareDatetime | None = None
    feedback_ids: tuple[str, ...] = ()
    refused: int = 0
    """How many of `feedback_ids` were refused (at most MAX_REFUSED_IDS are kept)."""
    closed_at: AwareDatetime | None = None
    """When the task closed (event time); states written before this field have none."""

    @property
    def limit(self) -> timedelta:
        return self.due_by - self.start

    @property
    def yellow_at(self) -> datetime:
        return self.due_by - self.limit / 5

    @property
    def is_hazard(self) -> bool:
        return self.task_type is not TaskType.illegal_parking

    @property
    def is_open(self) -> bool:
        return self.status is not TaskState.closed


@dataclass(frozen=True, slots=True)
class Watch:
    """A resolved hazard task to watch for a re-detection (the hazard agent's part)."""

    task_id: str
    task_type: TaskType
    lat: float
    lon: float
    since: datetime
    until: datetime


@dataclass(frozen=True, slots=True)
class LoopDecision:
    statuses: tuple[TaskStatus, ...] = ()
    watch: Watch | None = None
    """A resolved hazard task the hazard agent is to watch."""
    rejection: Rejection | None = None
    duplicate: bool = False
    closed_on_time: bool | None = field(default=None)
    """Set when the task closed: whether its field work ended by its due time."""


def lamp_at(state: TaskRecord, moment: datetime) -> Lamp:
    """The lamp a task has at `moment` (the lamp it kept, once the field's part is done)."""
    if state.status in _LAMPS_STOP:
        return state.lamp
    if moment >= state.due_by:
        return Lamp.red
    if moment >= state.yellow_at:
        return Lamp.yellow
    return Lamp.green


def forget_at(state: TaskRecord, policy: LoopPolicy) -> datetime | None:
    """When a closed task is forgotten (None: it is open). A state closed before `closed_at`
    was kept counts from the latest event time it holds."""
    if state.is_open:
        return None
    closed = state.closed_at or max(
        t for t in (state.start, state.resolved_at, state.watch_until) if t is not None
    )
    return closed + policy.retention


def forgotten(state: TaskRecord, clock: datetime, policy: LoopPolicy) -> bool:
    """Whether the clock has passed the moment the task is forgotten."""
    forget = forget_at(state, policy)
    return forget is not None and clock >= forget


def beyond_retention(task: EnforcementTask, clock: datetime | None, policy: LoopPolicy) -> bool:
    """A task opened with a `created_at` older than the retention is a replay of one that may
    already be forgotten: opening it again would dispatch it a second time."""
    return clock is not None and task.created_at < clock - policy.retention


def next_step(state: TaskRecord, policy: LoopPolicy) -> datetime | None:
    """When the clock next has something to do to the task: a lamp change, or forgetting it."""
    return next_due(state) if state.is_open else forget_at(state, policy)


def next_due(state: TaskRecord | None) -> datetime | None:
    """When the task's lamp next changes on the clock (None: it will not)."""
    if state is None or state.status in _LAMPS_STOP:
        return None
    if state.lamp is Lamp.green:
        return state.yellow_at
    if state.lamp is Lamp.yellow:
        return state.due_by
    return None


def _status(
    state: TaskRecord,
    at: datetime,
    cause: StatusCause,
    *,
    feedback_id: str | None = None,
    event_id: str | None = None,
) -> TaskStatus:
    return TaskStatus(
        task_id=state.task_id,
        task_type=state.task_type,
        department=state.department,
        township=state.township,
        status=state.status,
        at=at,
        due_by=state.due_by,
        lamp=state.lamp,
        cause=cause,
        feedback_id=feedback_id,
        event_id=event_id,
        summary=texts.status_summary(
            state.task_type, state.township, state.status, state.lamp, state.due_by
        ),
    )


def open_task(state: TaskRecord | None, task: EnforcementTask) -> tuple[TaskRecord, LoopDecision]:
    """A task emitted on the dispatch topic: its state and its first record (once)."""
    if state is not None:
        return state, LoopDecision(duplicate=True)
    opened = TaskRecord(
        task_id=task.task_id,
        task_type=task.task_type,
        department=task.department,
        township=task.township,
        zone_id=task.zone_id,
        location=task.location,
        created_at=task.created_at,
        start=task.created_at,
        due_by=task.due_by,
    )
    return opened, LoopDecision(
        statuses=(_status(opened, task.created_at, StatusCause.dispatched),)
    )


def advance_clock(state: TaskRecord, clock: datetime) -> tuple[TaskRecord, LoopDecision]:
    """The lamp changes the clock reaching `clock` causes, each at its own time."""
    records: list[TaskStatus] = []
    while (due := next_due(state)) is not None and clock >= due:
        lamp = Lamp.yellow if state.lamp is Lamp.green else Lamp.red
        state = state.model_copy(update={"lamp": lamp})
        records.append(_status(state, due, StatusCause.clock))
    return state, LoopDecision(statuses=tuple(records))


def _reject(detail: str) -> LoopDecision:
    return LoopDecision(rejection=Rejection(DeadLetterReason.invalid_transition, detail))


def apply_feedback(
    state: TaskRecord | None, feedback: TaskFeedback, policy: LoopPolicy
) -> tuple[TaskRecord | None, LoopDecision]:
    """One report from the field. A refused one leaves the state as it was, but an open task
    keeps its `feedback_id` as it keeps an applied one's (up to MAX_REFUSED_IDS of them): the
    id is the idempotency key, so a replay changes nothing even after a return or a reopening
    would have let it apply. A closed task never opens again, so it keeps none."""
    if state is None:
        return None, LoopDecision(
            rejection=Rejection(
                DeadLetterReason.unknown_task,
                f"task {feedback.task_id!r} was never dispatched by this application: check the "
                "task id, and that the feedback goes to the app (PATROL_APP_ID) that emitted it",
            )
        )
    if feedback.feedback_id in state.feedback_ids:
        return state, LoopDecision(duplicate=True)
    status = feedback.status
    if not state.is_open:
        return state, _reject(f"task {state.task_id} is closed; {status.value} is refused")
    stepped, clocked = advance_clock(state, feedback.at)
    refusal = _refusal(stepped, feedback, policy)
    if refusal is not None:
        if state.refused >= MAX_REFUSED_IDS:  # a sender that keeps trying: the state stays small
            return state, _reject(refusal)
        seen = (*state.feedback_ids, feedback.feedback_id)
        kept = state.model_copy(update={"feedback_ids": seen, "refused": state.refused + 1})
        return kept, _reject(refusal)
    update: dict[str, object] = {
        "status": TaskState(status.value),
        "feedback_ids": (*stepped.feedback_ids, feedback.feedback_id),
    }
    if status in _PROGRESS:
        update["progress"] = _PROGRESS[status]
    if status is FeedbackStatus.returned:
        update["progress"] = 0
    if status is FeedbackStatus.extended:
        assert feedback.extend_until is not None  # the model requires it
        update["due_by"] = feedback.extend_until
        update["extensions"] = stepped.extensions + 1
    if status is FeedbackStatus.resolved:
        update["resolved_at"] = feedback.at
    changed = stepped.model_copy(update=update)
    if status is FeedbackStatus.extended:
        # The lamp starts over from the new due time (it may go back to green).
        changed = changed.model_copy(update={"lamp": _fresh_lamp(changed, feedback.at)})
    records = [*clocked.statuses]
    records.append(
        _status(changed, feedback.at, StatusCause.feedback, feedback_id=feedback.feedback_id)
    )
    on_time = changed.due_by >= feedback.at
    if status is FeedbackStatus.unresolvable or (
        status is FeedbackStatus.resolved
        and (not changed.is_hazard or policy.verify_window <= timedelta(0))
    ):
        # A resolved parking task, or 挂账 (on the books as unresolvable): nothing is left to
        # verify, so it closes at once, as the contract has a resolved parking task close.
        changed = changed.model_copy(update={"status": TaskState.closed, "closed_at": feedback.at})
        records.append(_status(changed, feedback.at, StatusCause.verified))
        return changed, LoopDecision(statuses=tuple(records), closed_on_time=on_time)
    if status is FeedbackStatus.resolved:
        until = feedback.at + policy.verify_window
        changed = changed.model_copy(update={"watch_until": until})
        watch = Watch(
            task_id=changed.task_id,
            task_type=changed.task_type,
            lat=changed.location.lat,
            lon=changed.location.lon,
            since=feedback.at,
            until=until,
        )
        return changed, LoopDecision(statuses=tuple(records), watch=watch)
    return changed, LoopDecision(statuses=tuple(records))


def _fresh_lamp(state: TaskRecord, moment: datetime) -> Lamp:
    """The lamp computed anew (not only forward), for a task whose due time just moved."""
    return lamp_at(state.model_copy(update={"lamp": Lamp.green}), moment)


def _refusal(state: TaskRecord, feedback: TaskFeedback, policy: LoopPolicy) -> str | None:
    """Why a feedback cannot apply to the task as it stands, or None."""
    status, task = feedback.status, state.task_id
    if status is FeedbackStatus.extended:
        if state.progress >= DONE:
            return f"task {task} is {state.status.value}; an extension is refused"
        if state.extensions >= policy.max_extensions:
            return (
                f"task {task} was extended {state.extensions} time(s) already; at most "
                f"{policy.max_extensions} (PATROL_MAX_EXTENSIONS)"
            )
        assert feedback.extend_until is not None
        if feedback.extend_until <= state.due_by:
            return (
                f"extend_until {feedback.extend_until.isoformat()} is not later than the task's "
                f"due_by {state.due_by.isoformat()}"
            )
        return None
    if status is FeedbackStatus.returned:
        if state.progress >= DONE or state.status is TaskState.returned:
            return f"task {task} is {state.status.value}; it cannot be returned"
        return None
    if _PROGRESS[status] <= state.progress:
        return (
            f"task {task} is {state.status.value}; {status.value} would be a step back "
            "(steps go dispatched → accepted → arrived → resolved or unresolvable)"
        )
    return None


def redetected(
    state: TaskRecord | None, event_id: str, observed_at: datetime
) -> tuple[TaskRecord | None, LoopDecision]:
    """A detection of the same hazard while the resolved task was under watch: reopen it
    with a new time limit from the detection (no new task)."""
    if state is None or state.status is not TaskState.resolved:
        return state, LoopDecision(duplicate=True)
    reopened = state.model_copy(
        update={
            "status": TaskState.reopened,
            "progress": 0,
            "lamp": Lamp.green,
            "start": observed_at,
            "due_by": observed_at + state.limit,
            "reopened": state.reopened + 1,
            "resolved_at": None,
            "watch_until": None,
        }
    )
    record = _status(reopened, observed_at, StatusCause.redetected, event_id=event_id)
    return reopened, LoopDecision(statuses=(record,))


def verified(state: TaskRecord | None, at: datetime) -> tuple[TaskRecord | None, LoopDecision]:
    """The watch ended with no re-detection: the task closes as verified."""
    if state is None or state.status is not TaskState.resolved:
        return state, LoopDecision(duplicate=True)
    closed = state.model_copy(
        update={"status": TaskState.closed, "watch_until": None, "closed_at": at}
    )
    on_time = state.resolved_at is not None and state.resolved_at <= state.due_by
    return closed, LoopDecision(
        statuses=(_status(closed, at, StatusCause.verified),), closed_on_time=on_time
    )


def encode_task(state: TaskRecord) -> bytes:
    return state.model_dump_json().encode()


def decode_task(raw: bytes) -> TaskRecord:
    return TaskRecord.model_validate_json(raw)
