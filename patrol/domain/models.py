"""The messages patrol reads and writes (CONTRACT §2, §3, §7, §8, §10), as pydantic v2 models."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

PROVINCES = "京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼"
_LETTER = "A-HJ-NP-Z"  # plate letters never use I or O
PLATE_PATTERN = re.compile(
    rf"^[{PROVINCES}][{_LETTER}]"
    rf"(?:[{_LETTER}0-9]{{4}}[{_LETTER}0-9挂学警港澳领]"  # 7 characters: ordinary plates
    rf"|[DF][{_LETTER}0-9][0-9]{{4}}"  # 8 characters: small new-energy vehicles
    rf"|[0-9]{{5}}[DF])$"  # 8 characters: large new-energy vehicles
)
# RFC 3339 date-time with an explicit offset; naive times are rejected on purpose.
RFC3339_PATTERN = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})$"
)
POLICE_SUFFIX = "警"
TRUSTED = {"patrol.trusted": True}
"""Validation context for detections this worker already validated (the intake's batch
records): the checks below only ever reject, never change a value, so skipping them on input
they accepted once builds the same objects at about half the cost."""


class SourceType(StrEnum):
    camera = "camera"
    drone = "drone"


class DetectionKind(StrEnum):
    plate_read = "plate_read"
    roadside_vending = "roadside_vending"
    open_burning = "open_burning"
    heartbeat = "heartbeat"


class TaskType(StrEnum):
    illegal_parking = "illegal_parking"
    roadside_vending = "roadside_vending"
    open_burning = "open_burning"


class Priority(StrEnum):
    urgent = "urgent"
    high = "high"
    normal = "normal"


class SmsStatus(StrEnum):
    sent = "sent"
    failed = "failed"


def parse_rfc3339(value: object) -> object:
    """Accept only RFC 3339 strings with an offset (or datetimes already aware)."""
    if isinstance(value, str):
        if not RFC3339_PATTERN.match(value):
            raise ValueError(
                f"{value!r} is not an RFC 3339 time with an explicit offset, "
                "e.g. 2026-11-27T10:00:00+08:00"
            )
        return value
    if isinstance(value, datetime):
        return value
    raise ValueError("must be an RFC 3339 string, e.g. 2026-11-27T10:00:00+08:00")


# Event times a detection may carry: a clock outside these years is broken, and the state's
# encoding (and every deadline computed from it) must stay within datetime's range.
EARLIEST_EVENT_TIME = datetime(2000, 1, 1, tzinfo=UTC)
LATEST_EVENT_TIME = datetime(2100, 1, 1, tzinfo=UTC)


class ImplausibleTime(ValueError):
    """A time outside EARLIEST/LATEST_EVENT_TIME; `future` if it lies beyond them."""

    def __init__(self, message: str, *, future: bool) -> None:
        super().__init__(message)
        self.future = future


def check_plausible_time(value: datetime, whose: str) -> datetime:
    """`value` if it lies within EARLIEST/LATEST_EVENT_TIME; else the error names `whose` clock
    to check."""
    if not EARLIEST_EVENT_TIME <= value < LATEST_EVENT_TIME:
        raise ImplausibleTime(
            f"{value.isoformat()} is outside the years "
            f"{EARLIEST_EVENT_TIME.year}–{LATEST_EVENT_TIME.year - 1}: check {whose} clock",
            future=value >= LATEST_EVENT_TIME,
        )
    return value


def check_media_urls(urls: list[str]) -> list[str]:
    """Evidence links: each an http(s) URL of at most 2,048 characters."""
    for url in urls:
        if not re.match(r"^https?://[^\s]+$", url) or len(url) > 2048:
            raise ValueError(f"{url[:80]!r} is not an http(s) URL")
    return urls


def is_valid_plate(plate: str) -> bool:
    return PLATE_PATTERN.fullmatch(plate) is not None


EventTime = Annotated[AwareDatetime, Field(description="RFC 3339 with an explicit offset")]


def _not_a_boolean(value: object) -> object:
    # JSON's true equals 1 to Python, and a Literal cannot be strict.
    if isinstance(value, bool):
        raise ValueError("must be the number 1, not a boolean")
    return value


SchemaVersion = Annotated[Literal[1], BeforeValidator(_not_a_boolean)]
"""Version 1 of an input schema. Inputs' numbers are strict (a JSON number, never a string or
a boolean): "wrong types" are dead-lettered (CONTRACT §2), not converted."""


def _no_media(value: object) -> object:
    return [] if value is None else value


class Location(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    lat: float = Field(ge=-90, le=90, allow_inf_nan=False, strict=True)
    lon: float = Field(ge=-180, le=180, allow_inf_nan=False, strict=True)


class Source(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    type: SourceType
    id: str = Field(min_length=1, max_length=128)
    route_id: str | None = Field(None, max_length=128)


class Detection(BaseModel):
    """One camera or drone detection (CONTRACT §2)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_version: SchemaVersion
    event_id: str = Field(min_length=1, max_length=128)
    kind: DetectionKind
    source: Source
    observed_at: EventTime
    location: Location | None = None
    confidence: float | None = Field(None, ge=0, le=1, allow_inf_nan=False, strict=True)
    plate: str | None = None
    plate_color: str | None = Field(None, max_length=32)
    media: Annotated[list[str], BeforeValidator(_no_media)] = Field(
        default_factory=list, max_length=10
    )

    @field_validator("observed_at", mode="before")
    @classmethod
    def _rfc3339(cls, value: object, info: ValidationInfo) -> object:
        if info.context is TRUSTED:
            return value
        return parse_rfc3339(value)

    @field_validator("observed_at")
    @classmethod
    def _plausible_time(cls, value: datetime, info: ValidationInfo) -> datetime:
        return value if info.context is TRUSTED else check_plausible_time(value, "the camera's")

    @field_validator("media")
    @classmethod
    def _urls(cls, value: list[str], info: ValidationInfo) -> list[str]:
        return value if info.context is TRUSTED else check_media_urls(value)

    @model_validator(mode="after")
    def _kind_rules(self, info: ValidationInfo) -> Detection:
        if info.context is TRUSTED:
            return self
        if self.kind is DetectionKind.heartbeat:
            if self.plate is not None:
                raise ValueError("plate is only allowed on plate_read detections")
            return self
        if self.confidence is None:
            raise ValueError(f"confidence is required for {self.kind.value} detections")
        if self.location is None:
            raise ValueError(f"location is required for {self.kind.value} detections")
        if self.source.type is SourceType.drone and not self.source.route_id:
            raise ValueError("source.route_id is required for drone detections")
        if self.kind is DetectionKind.plate_read:
            if self.plate is None:
                raise ValueError("plate is required for plate_read detections")
            if not is_valid_plate(self.plate):
                raise ValueError(
                    f"plate {self.plate!r} is not a valid mainland plate "
                    "(7 characters, or 8 for new-energy, e.g. 浙G12345 or 浙GD12345)"
                )
        elif self.plate is not None:
            raise ValueError(
                f"plate is only allowed on plate_read detections, not {self.kind.value}"
            )
        return self


class Evidence(BaseModel):
    model_config = ConfigDict(frozen=True)

    event_id: str
    observed_at: AwareDatetime
    source: Source
    confidence: float | None
    media: list[str] = Field(default_factory=list)

    @classmethod
    def of(cls, detection: Detection) -> Evidence:
        return cls(
            event_id=detection.event_id,
            observed_at=detection.observed_at,
            source=detection.source,
            confidence=detection.confidence,
            media=list(detection.media),
        )


class TaskSms(BaseModel):
    model_config = ConfigDict(frozen=True)

    message_id: str
    status: Literal["sent", "failed", "pending"]


class EnforcementTask(BaseModel):
    """A task for the county's dispatch system (CONTRACT §8)."""

    model_config = ConfigDict(frozen=True)

    schema_version: Literal[1] = 1
    task_id: str
    task_type: TaskType
    created_at: AwareDatetime
    priority: Priority
    due_by: AwareDatetime
    department: str
    township: str
    zone_id: str
    location: Location
    plate: str | None
    evidence: list[Evidence]
    sms: TaskSms | None
    summary: str


class SmsRecord(BaseModel):
    """The final outcome of one SMS warning (CONTRACT §7), as written to the SMS topic."""

    model_config = ConfigDict(frozen=True)

    message_id: str
    case_id: str
    plate: str
    zone_id: str
    status: SmsStatus
    attempts: int = Field(ge=0)
    at: AwareDatetime
    error: str | None = Field(None, description="why the last attempt failed, when it failed")


class DeadLetterReason(StrEnum):
    invalid_json = "invalid_json"
    schema = "schema"
    too_large = "too_large"
    processing_error = "processing_error"
    clock_skew = "clock_skew"
    unknown_task = "unknown_task"
    invalid_transition = "invalid_transition"


class DeadLetter(BaseModel):
    """A message patrol could not use, with enough to find and replay it (CONTRACT §3)."""

    model_config = ConfigDict(frozen=True)

    reason: DeadLetterReason
    detail: str
    topic: str
    partition: int
    offset: int
    key: str | None
    value_b64: str
    received_at: AwareDatetime
    errors: list[dict[str, str]] = Field(
        default_factory=list, description="each schema error: field path, error type, message"
    )


class FeedbackStatus(StrEnum):
    """What a field team reports of a task (CONTRACT §10)."""

    accepted = "accepted"
    arrived = "arrived"
    resolved = "resolved"
    extended = "extended"  # 延期
    returned = "returned"  # 回退
    unresolvable = "unresolvable"  # 挂账


class TaskFeedback(BaseModel):
    """One report from the dispatch system or a field team's app (CONTRACT §10)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_version: SchemaVersion
    feedback_id: str = Field(min_length=1, max_length=128)
    task_id: str = Field(min_length=1, max_length=256)
    status: FeedbackStatus
    at: EventTime
    team: str | None = Field(None, max_length=256)
    note: str | None = Field(None, max_length=4096)
    extend_until: AwareDatetime | None = None
    media: Annotated[list[str], BeforeValidator(_no_media)] = Field(
        default_factory=list, max_length=10
    )

    @field_validator("at", "extend_until", mode="before")
    @classmethod
    def _rfc3339(cls, value: object) -> object:
        return value if value is None else parse_rfc3339(value)

    @field_validator("at", "extend_until")
    @classmethod
    def _plausible_time(cls, value: datetime | None) -> datetime | None:
        return value if value is None else check_plausible_time(value, "the sender's")

    @field_validator("media")
    @classmethod
    def _urls(cls, value: list[str]) -> list[str]:
        return check_media_urls(value)

    @model_validator(mode="after")
    def _extension(self) -> TaskFeedback:
        if self.status is FeedbackStatus.extended and self.extend_until is None:
            raise ValueError("extend_until is required when status is extended")
        if self.status is not FeedbackStatus.extended and self.extend_until is not None:
            raise ValueError(
                f"extend_until is only allowed when status is extended, not {self.status.value}"
            )
        return self


class TaskState(StrEnum):
    """Where a task stands: `dispatched` first, then the feedback's statuses, `reopened` after a
    re-detection, `closed` at the end (CONTRACT §10)."""

    dispatched = "dispatched"
    accepted = "accepted"
    arrived = "arrived"
    resolved = "resolved"
    extended = "extended"
    returned = "returned"
    unresolvable = "unresolvable"
    reopened = "reopened"
    closed = "closed"


class Lamp(StrEnum):
    """红黄绿灯: green in time, yellow in the last fifth of the time limit, red when overdue."""

    green = "green"
    yellow = "yellow"
    red = "red"


class StatusCause(StrEnum):
    dispatched = "dispatched"
    feedback = "feedback"
    clock = "clock"
    redetected = "redetected"
    verified = "verified"


class TaskStatus(BaseModel):
    """One change of a task, as written to the status topic (CONTRACT §10)."""

    model_config = ConfigDict(frozen=True)

    schema_version: Literal[1] = 1
    task_id: str
    task_type: TaskType
    department: str
    township: str
    status: TaskState
    at: AwareDatetime = Field(description="event time of the cause")
    due_by: AwareDatetime = Field(description="after extensions and reopening")
    lamp: Lamp
    cause: StatusCause
    feedback_id: str | None = None
    event_id: str | None = None
    summary: str
