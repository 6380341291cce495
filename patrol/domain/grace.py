"""The parking grace rule (CONTRACT §5) as a pure function of case state and one plate read.

One state per case key (zone, plate) holds at most one open case and the `horizon`: the latest
event time already decided by a closed case. A read with no open case at or before the horizon
is a replay or a stale read and changes nothing, which is what keeps replays from sending a
second SMS or emitting a second task. The key also remembers the local day of its last ticket
(rule 7, one ticket a day): later reads that day open nothing.

Restricted hours (rule 6) are screened before a read reaches the rule (`screen_plate_read`): a
read outside them never reaches a case.

Times in the state are exact integer microseconds since the epoch; only the opening read keeps
its UTC offset, because it is shown again in the task's evidence.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date, datetime, time, timedelta, tzinfo
from typing import TYPE_CHECKING, Any, Literal

from pydantic_core import from_json, to_json

from patrol.domain import ids
from patrol.domain.models import (
    POLICE_SUFFIX,
    Detection,
    DetectionKind,
    EnforcementTask,
    Evidence,
    Location,
    Source,
    SourceType,
    TaskSms,
    TaskType,
)
from patrol.domain.routing import Route
from patrol.domain.texts import sms_warning, task_summary
from patrol.domain.zones import OUTSIDE, Zone

if TYPE_CHECKING:
    from patrol.settings import Settings

ReadOutcome = Literal["accepted", "duplicate", "late", "already_ticketed"]
"""`already_ticketed`: the vehicle was ticketed in this zone earlier that local day (rule 7)."""
ScreenOutcome = Literal["accepted", "low_confidence", "exempt", "outside_zone", "outside_hours"]
CaseResult = Literal["violation", "self_corrected"]
SmsState = Literal["pending", "sent", "failed"]

_STATE_VERSION = 2
_READABLE_VERSIONS = (1, 2)  # version 1 had no ticket day
_SMS_STATES: tuple[SmsState, ...] = ("pending", "sent", "failed")
_SOURCE_TYPES = tuple(SourceType)


@dataclass(frozen=True, slots=True)
class GracePolicy:
    recheck: timedelta
    """R: how long after the deadline a read still confirms the violation."""
    retention: timedelta
    """How long a key with no open case remembers its horizon, to ignore replays."""
    tz: tzinfo
    """Local time: the calendar day of one ticket a day (PATROL_TIMEZONE)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> GracePolicy:
        return cls(recheck=settings.recheck, retention=settings.retention, tz=settings.tz)

    def local_day(self, moment: datetime) -> date:
        return moment.astimezone(self.tz).date()

    def day_end(self, day: date) -> datetime:
        """The first instant of the local day after `day`."""
        return datetime.combine(day + timedelta(days=1), time(), tzinfo=self.tz)


@dataclass(frozen=True, slots=True)
class PlateRead:
    """A validated plate_read that screen_plate_read accepted."""

    event_id: str
    plate: str
    observed_at: datetime
    location: Location
    evidence: Evidence

    @classmethod
    def of(cls, detection: Detection) -> PlateRead:
        if detection.kind is not DetectionKind.plate_read:
            raise ValueError(f"{detection.event_id}: a {detection.kind.value} is not a plate read")
        if detection.plate is None or detection.location is None:
            raise ValueError(f"{detection.event_id}: a plate read needs a plate and a location")
        return cls(
            event_id=detection.event_id,
            plate=detection.plate,
            observed_at=detection.observed_at,
            location=detection.location,
            evidence=Evidence.of(detection),
        )


@dataclass(frozen=True, slots=True)
class OpenCase:
    """A warned driver's grace period, waiting for a confirming read or its end."""

    first_seen: datetime
    deadline: datetime
    opener: Evidence
    sms_status: SmsState = "pending"


@dataclass(frozen=True, slots=True)
class CaseState:
    """Everything one case key (zone, plate) remembers."""

    plate: str
    zone_id: str
    open_case: OpenCase | None = None
    horizon: datetime | None = None
    closed_unconfirmed: OpenCase | None = None
    """The last case closed as self-corrected without a confirming read. A confirming read
    that arrives after that (delayed on another partition, or behind a backlog) still
    confirms it: rule 3 rests on the read's event time, not on when it arrived."""
    ticketed_on: date | None = None
    """The local day of the latest confirmed violation: no new case that day (rule 7)."""

    def case_id(self) -> str | None:
        """The id of the open case, if one is open."""
        if self.open_case is None:
            return None
        return ids.case_id(self.plate, self.zone_id, self.open_case.first_seen)


@dataclass(frozen=True, slots=True)
class SmsRequest:
    """An SMS warning to send once for a newly opened case (CONTRACT §7)."""

    message_id: str
    case_id: str
    plate: str
    zone_id: str
    text: str
    deadline: datetime


@dataclass(frozen=True, slots=True)
class ClosedCase:
    case_id: str
    result: CaseResult


@dataclass(frozen=True, slots=True)
class GraceDecision:
    """What one read (or one clock step) did; the agent emits the sms and the task."""

    outcome: ReadOutcome | None
    """What became of the read; None for a clock step."""
    sms: SmsRequest | None = None
    task: EnforcementTask | None = None
    closed: tuple[ClosedCase, ...] = ()
    """Cases closed by this step, oldest first (rule 4 closes one and opens another)."""
    opened: bool = False
    late_confirmation: bool = False
    """The task confirms a case already closed as self-corrected (see closed_unconfirmed)."""


_CLOCK_STEP = GraceDecision(outcome=None)


def case_key(plate: str, zone_id: str) -> str:
    """The table key of the cases of a plate in a zone."""
    return f"{zone_id}|{plate}"


def screen_plate_read(
    detection: Detection,
    zone: Zone,
    *,
    min_confidence: float,
    exempt: frozenset[str],
    tz: tzinfo,
) -> ScreenOutcome:
    """Whether the grace rule applies to a plate read found in `zone` (rules 1 and 6)."""
    if zone.zone_id == OUTSIDE.zone_id or not zone.no_parking:
        return "outside_zone"
    if not zone.restricted_at(detection.observed_at, tz):
        return "outside_hours"
    if detection.confidence is None or detection.confidence < min_confidence:
        return "low_confidence"
    plate = detection.plate or ""
    if plate.endswith(POLICE_SUFFIX) or plate in exempt:
        return "exempt"
    return "accepted"


def beyond_retention(observed_at: datetime, clock: datetime | None, policy: GracePolicy) -> bool:
    """True for a read older than anything a key still remembers: treat it as late, unapplied.

    A key forgets its horizon `retention` after it, so a replay older than that would otherwise
    open a fresh case; the agent checks this against its event-time clock before apply_read.
    """
    return clock is not None and observed_at < clock - policy.retention


def _open(read: PlateRead, zone: Zone) -> tuple[OpenCase, SmsRequest]:
    deadline = read.observed_at + timedelta(minutes=zone.grace_minutes)
    case = OpenCase(first_seen=read.observed_at, deadline=deadline, opener=read.evidence)
    case_id = ids.case_id(read.plate, zone.zone_id, read.observed_at)
    sms = SmsRequest(
        message_id=ids.message_id(case_id),
        case_id=case_id,
        plate=read.plate,
        zone_id=zone.zone_id,
        text=sms_warning(read.plate, zone, read.observed_at, deadline),
        deadline=deadline,
    )
    return case, sms


def _confirm(
    state: CaseState, case: OpenCase, read: PlateRead, zone: Zone, route: Route
) -> EnforcementTask:
    case_id = ids.case_id(state.plate, state.zone_id, case.first_seen)
    due_by = read.observed_at + route.due_within
    return EnforcementTask(
        task_id=ids.case_task_id(case_id),
        task_type=TaskType.illegal_parking,
        created_at=read.observed_at,
        priority=route.priority,
        due_by=due_by,
        department=route.department,
        township=zone.township,
        zone_id=state.zone_id,
        location=read.location,
        plate=state.plate,
        evidence=[case.opener, read.evidence],
        sms=TaskSms(message_id=ids.message_id(case_id), status=case.sms_status),
        summary=task_summary(TaskType.illegal_parking, zone, route.department, due_by, state.plate),
    )


def _later(a: datetime | None, b: datetime) -> datetime:
    return b if a is None or b > a else a


def _later_day(a: date | None, b: date) -> date:
    return b if a is None or b > a else a


def _ticketed_that_day(state: CaseState, read: PlateRead, policy: GracePolicy) -> bool:
    """Rule 7: a ticket of this (plate, zone) on the read's local calendar day."""
    return state.ticketed_on is not None and policy.local_day(read.observed_at) == state.ticketed_on


_ALREADY_TICKETED = GraceDecision(outcome="already_ticketed")


def apply_read(
    state: CaseState | None, read: PlateRead, zone: Zone, route: Route, policy: GracePolicy
) -> tuple[CaseState | None, GraceDecision]:
    """Apply one accepted plate read to the state of its case key (rules 1–5)."""
    if state is None:
        state = CaseState(plate=read.plate, zone_id=zone.zone_id)
    elif state.plate != read.plate or state.zone_id != zone.zone_id:
        raise ValueError(
            f"read {read.event_id} ({zone.zone_id}|{read.plate}) applied to the state of "
            f"{case_key(state.plate, state.zone_id)}"
        )
    case = state.open_case

    late_confirmation = _confirm_closed(state, read, zone, route, policy)
    if late_confirmation is not None:
        return late_confirmation

    if case is None:
        if state.horizon is not None and read.observed_at <= state.horizon:
            return state, GraceDecision(outcome="duplicate")
        if _ticketed_that_day(state, read, policy):
            return state, _ALREADY_TICKETED
        new_case, sms = _open(read, zone)
        return replace(state, open_case=new_case), GraceDecision(
            outcome="accepted", sms=sms, opened=True
        )

    if read.event_id == case.opener.event_id:
        return state, GraceDecision(outcome="duplicate")
    if read.observed_at < case.first_seen:
        return state, GraceDecision(outcome="late")
    if read.observed_at < case.deadline:
        return state, GraceDecision(outcome="accepted")

    case_id = ids.case_id(state.plate, state.zone_id, case.first_seen)
    confirm_until = case.deadline + policy.recheck
    # A case opened before a late-confirmed ticket of the same day (see _confirm_closed) can
    # neither confirm nor be followed by a new case that day; the clock closes it.
    if _ticketed_that_day(state, read, policy):
        return state, _ALREADY_TICKETED
    if read.observed_at <= confirm_until:
        task = _confirm(state, case, read, zone, route)
        closed = replace(
            state,
            open_case=None,
            horizon=_later(state.horizon, read.observed_at),
            ticketed_on=_later_day(state.ticketed_on, policy.local_day(read.observed_at)),
        )
        return closed, GraceDecision(
            outcome="accepted", task=task, closed=(ClosedCase(case_id, "violation"),)
        )

    # No horizon needed here: reads older than the new case are already "late" against it.
    new_case, sms = _open(read, zone)
    reopened = replace(state, open_case=new_case, closed_unconfirmed=case)
    return reopened, GraceDecision(
        outcome="accepted",
        sms=sms,
        closed=(ClosedCase(case_id, "self_corrected"),),
        opened=True,
    )


def _confirm_closed(
    state: CaseState, read: PlateRead, zone: Zone, route: Route, policy: GracePolicy
) -> tuple[CaseState, GraceDecision] | None:
    """A confirming read for the case last closed as self-corrected, arriving late."""
    closed = state.closed_unconfirmed
    if closed is None or read.event_id == closed.opener.event_id:
        return None
    if not closed.deadline <= read.observed_at <= closed.deadline + policy.recheck:
        return None
    if _ticketed_that_day(state, read, policy):
        return None
    task = _confirm(state, closed, read, zone, route)
    confirmed = replace(
        state,
        closed_unconfirmed=None,
        horizon=_later(state.horizon, read.observed_at),
        ticketed_on=_later_day(state.ticketed_on, policy.local_day(read.observed_at)),
    )
    return confirmed, GraceDecision(outcome="accepted", task=task, late_confirmation=True)


def advance_clock(
    state: CaseState | None, clock: datetime, policy: GracePolicy
) -> tuple[CaseState | None, GraceDecision]:
    """Move the key's event-time clock: close a case that can no longer be confirmed, and
    forget the key (None) once no replay it could still reject is within retention."""
    if state is None:
        return None, _CLOCK_STEP
    closed: tuple[ClosedCase, ...] = ()
    case = state.open_case
    if case is not None:
        confirm_until = case.deadline + policy.recheck
        if clock <= confirm_until:
            return state, _CLOCK_STEP
        case_id = ids.case_id(state.plate, state.zone_id, case.first_seen)
        closed = (ClosedCase(case_id, "self_corrected"),)
        state = replace(
            state,
            open_case=None,
            horizon=_later(state.horizon, confirm_until),
            closed_unconfirmed=case,
        )
    forget_after = next_due(state, policy)
    if forget_after is None or clock > forget_after:
        return None, GraceDecision(outcome=None, closed=closed)
    if closed:
        return state, GraceDecision(outcome=None, closed=closed)
    return state, _CLOCK_STEP


def next_due(state: CaseState | None, policy: GracePolicy) -> datetime | None:
    """The event time after which the key needs a clock step: its open case can no longer be
    confirmed, or (no case open) it has nothing left to remember (None: nothing ever)."""
    if state is None:
        return None
    if state.open_case is not None:
        return state.open_case.deadline + policy.recheck
    if state.horizon is None:
        return None
    forget = state.horizon + policy.retention
    if state.ticketed_on is not None:
        # rule 7 holds to the end of the ticket's local day, whatever the retention
        return max(forget, policy.day_end(state.ticketed_on))
    return forget


def record_sms_outcome(
    state: CaseState | None, message_id: str, status: Literal["sent", "failed"]
) -> CaseState | None:
    """Remember the final SMS status of the case it warned, so its task reports it."""
    if state is None:
        return state
    if _warned_by(state, state.open_case, message_id):
        assert state.open_case is not None
        return replace(state, open_case=replace(state.open_case, sms_status=status))
    if _warned_by(state, state.closed_unconfirmed, message_id):
        assert state.closed_unconfirmed is not None
        closed = replace(state.closed_unconfirmed, sms_status=status)
        return replace(state, closed_unconfirmed=closed)
    return state


def _warned_by(state: CaseState, case: OpenCase | None, message_id: str) -> bool:
    if case is None:
        return False
    return ids.message_id(ids.case_id(state.plate, state.zone_id, case.first_seen)) == message_id


# Encoded form (compact JSON, UTF-8, no spaces):
#   [version, plate, zone_id, horizon_us | null, open | null(, closed_unconfirmed | null
#    (, ticketed_on as a proleptic Gregorian ordinal))]
#   open = [first_seen_us, offset_s, grace_s, sms_state, event_id,
#           source_type, source_id, route_id | null, confidence | null, [media...]]
def _encode_case(case: OpenCase | None) -> list[Any] | None:
    if case is None:
        return None
    opener = case.opener
    first_us = ids.epoch_micros(case.first_seen)
    return [
        first_us,
        ids.offset_seconds(case.first_seen),
        ids.epoch_micros(case.deadline) - first_us,
        _SMS_STATES.index(case.sms_status),
        opener.event_id,
        _SOURCE_TYPES.index(opener.source.type),
        opener.source.id,
        opener.source.route_id,
        opener.confidence,
        opener.media,
    ]


def encode_case_state(state: CaseState) -> bytes:
    horizon = None if state.horizon is None else ids.epoch_micros(state.horizon)
    payload = [_STATE_VERSION, state.plate, state.zone_id, horizon, _encode_case(state.open_case)]
    if state.closed_unconfirmed is not None or state.ticketed_on is not None:
        payload.append(_encode_case(state.closed_unconfirmed))
    if state.ticketed_on is not None:
        payload.append(state.ticketed_on.toordinal())
    # pydantic-core's JSON (Rust): the same bytes as json.dumps(ensure_ascii=False) without
    # spaces, in a sixth of the time; a case state is encoded on every change and decoded on
    # every read of its key.
    return to_json(payload)


def _decode_case(part: list[Any] | None) -> OpenCase | None:
    if part is None:
        return None
    first_us, offset, grace_us, sms, event_id, src_type, src_id, route_id, conf, media = part
    first_seen = ids.from_epoch_micros(first_us, offset)
    # Validated constructors: cheaper than model_construct, and the stored values (taken from
    # a validated detection) pass unchanged.
    source = Source(type=_SOURCE_TYPES[src_type], id=src_id, route_id=route_id)
    opener = Evidence(
        event_id=event_id,
        observed_at=first_seen,
        source=source,
        confidence=conf,
        media=media,
    )
    return OpenCase(
        first_seen=first_seen,
        deadline=ids.from_epoch_micros(first_us + grace_us, offset),
        opener=opener,
        sms_status=_SMS_STATES[sms],
    )


def decode_case_state(raw: bytes) -> CaseState:
    try:
        version, plate, zone_id, horizon, open_part, *rest = from_json(raw)
    except (ValueError, TypeError) as error:
        raise ValueError(f"not an encoded grace case state: {error}") from error
    if version not in _READABLE_VERSIONS:
        raise ValueError(
            f"grace case state version {version!r}; this worker reads {_READABLE_VERSIONS}"
        )
    return CaseState(
        plate=plate,
        zone_id=zone_id,
        open_case=_decode_case(open_part),
        horizon=None if horizon is None else ids.from_epoch_micros(horizon),
        closed_unconfirmed=_decode_case(rest[0]) if rest else None,
        ticketed_on=date.fromordinal(rest[1]) if len(rest) > 1 else None,
    )
