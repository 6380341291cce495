"""Turning raw Kafka values into Detections and TaskFeedback, or into specific reasons they
cannot be used.

Pure: no I/O and no clock; the worker supplies the Kafka coordinates, the receive time and the
wall clock a detection's time is checked against.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TypeVar

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from patrol.domain.models import (
    DeadLetter,
    DeadLetterReason,
    Detection,
    ImplausibleTime,
    TaskFeedback,
)


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a message cannot be used."""

    reason: DeadLetterReason
    detail: str
    errors: list[dict[str, str]] = field(default_factory=list)


def _field_path(loc: tuple[int | str, ...], what: str) -> str:
    return ".".join(str(part) for part in loc) or what.lower()


def _describe_schema_errors(exc: ValidationError, what: str) -> Rejection:
    errors = []
    for err in exc.errors(include_url=False):
        path = _field_path(err["loc"], what)
        message = err["msg"].removeprefix("Value error, ")
        errors.append({"field": path, "type": err["type"], "message": message})
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
    if len(errors) > 5:
        detail += f"; and {len(errors) - 5} more"
    return Rejection(DeadLetterReason.schema, f"not a valid {what}: {detail}", errors)


def decode_detection(raw: bytes | None, *, max_bytes: int) -> Detection | Rejection:
    """The Detection in `raw`, or a Rejection that says exactly what is wrong with it."""
    return _decode(Detection, raw, max_bytes, "detections")


def decode_feedback(raw: bytes | None, *, max_bytes: int) -> TaskFeedback | Rejection:
    """The TaskFeedback in `raw`, or a Rejection that says exactly what is wrong with it."""
    return _decode(TaskFeedback, raw, max_bytes, "feedback records")


_Model = TypeVar("_Model", Detection, TaskFeedback)


def _decode(
    model: type[_Model], raw: bytes | None, max_bytes: int, plural: str
) -> _Model | Rejection:
    if raw is None:
        return Rejection(DeadLetterReason.invalid_json, "the message has no value (a tombstone)")
    if len(raw) > max_bytes:
        return Rejection(
            DeadLetterReason.too_large,
            f"the value is {len(raw)} bytes; {plural} may be at most {max_bytes} bytes "
            "(PATROL_MAX_MESSAGE_BYTES)",
        )
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        first = errors[0]
        if first["type"] == "model_type" and not first["loc"]:
            kind = type(first["input"]).__name__
            return Rejection(
                DeadLetterReason.invalid_json,
                f"the value is JSON but not an object: it is {_JSON_KINDS.get(kind, kind)}",
            )
        skewed = _skewed_time(errors, _EVENT_TIME[model])
        if skewed is not None:
            return skewed
        if first["type"] != "json_invalid":
            return _describe_schema_errors(exc, model.__name__)
        return _explain_unparseable(raw, str(first.get("ctx", {}).get("error", first["msg"])))


_EVENT_TIME: dict[type, str] = {Detection: "observed_at", TaskFeedback: "at"}
_JSON_KINDS = {
    "list": "an array",
    "int": "a number",
    "float": "a number",
    "str": "a string",
    "bool": "a boolean",
    "NoneType": "null",
}


def _skewed_time(errors: list[ErrorDetails], event_time: str) -> Rejection | None:
    """A `clock_skew` Rejection when the only fault is an event time past every plausible year:
    a device clock far ahead is still a wrong clock (CONTRACT §2), not a malformed message."""
    if len(errors) != 1 or errors[0]["loc"] != (event_time,):
        return None
    cause = errors[0].get("ctx", {}).get("error")
    if not isinstance(cause, ImplausibleTime) or not cause.future:
        return None
    message = str(cause)
    return Rejection(
        DeadLetterReason.clock_skew,
        f"{event_time} {message}",
        [{"field": event_time, "type": "clock_skew", "message": message}],
    )


def check_clock(detection: Detection, now: datetime, max_ahead: timedelta) -> Rejection | None:
    """A `clock_skew` Rejection if `detection` is timed more than `max_ahead` after `now` (the
    worker's wall clock): its device's clock is wrong, and its time must not become event time.
    """
    ahead = detection.observed_at - now  # aware datetimes: offsets are compared correctly
    if ahead <= max_ahead:
        return None
    source = detection.source
    message = (
        f"observed_at {detection.observed_at.isoformat()} is {_duration(ahead)} ahead of the "
        f"worker's clock (limit {_duration(max_ahead)}, PATROL_MAX_FUTURE_MINUTES): check the "
        f"clock of {source.type.value} {source.id}"
    )
    too_far = f"more than {_duration(max_ahead)} ahead of the worker's clock"
    return Rejection(
        DeadLetterReason.clock_skew,
        message,
        [{"field": "observed_at", "type": "clock_skew", "message": too_far}],
    )


def check_feedback_clock(
    feedback: TaskFeedback, now: datetime, max_ahead: timedelta
) -> Rejection | None:
    """A `clock_skew` Rejection if a feedback's `at` is more than `max_ahead` after `now`: the
    sending app's clock is wrong, and its time must not step a task's lamps."""
    ahead = feedback.at - now
    if ahead <= max_ahead:
        return None
    message = (
        f"at {feedback.at.isoformat()} is {_duration(ahead)} ahead of the worker's clock (limit "
        f"{_duration(max_ahead)}, PATROL_MAX_FUTURE_MINUTES): check the clock of the app that "
        f"sent feedback {feedback.feedback_id}"
        + (f" (team {feedback.team})" if feedback.team else "")
    )
    too_far = f"more than {_duration(max_ahead)} ahead of the worker's clock"
    return Rejection(
        DeadLetterReason.clock_skew,
        message,
        [{"field": "at", "type": "clock_skew", "message": too_far}],
    )


def future_limit(minutes: float) -> timedelta:
    """PATROL_MAX_FUTURE_MINUTES as a timedelta; more than a timedelta holds (inf) is no limit."""
    if minutes >= timedelta.max.total_seconds() / 60:
        return timedelta.max
    return timedelta(minutes=minutes)


def _duration(delta: timedelta) -> str:
    """`delta` as a technician reads it: "1 d 0 h 2 min", "3 h 5 min", "10 min 1 s", "45 s".

    Seconds are rounded up, so a time just past the limit never reads as the limit itself.
    """
    seconds = math.ceil(delta.total_seconds())
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h {minutes} min"
    if hours:
        return f"{hours} h {minutes} min"
    if minutes and seconds:
        return f"{minutes} min {seconds} s"
    return f"{minutes} min" if minutes else f"{seconds} s"


def _explain_unparseable(raw: bytes, parser_error: str) -> Rejection:
    """Why JSON's parser refused `raw` (`parser_error`, pydantic's words), said as precisely as
    the standard library's parser can say it. Every case is `invalid_json`: JSON is UTF-8 text
    (RFC 8259), so bytes that are not UTF-8 are not JSON either."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejection(
            DeadLetterReason.invalid_json,
            f"the value is not UTF-8, so not JSON: byte 0x{raw[exc.start]:02x} at offset "
            f"{exc.start} ({exc.reason})",
        )
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        return Rejection(
            DeadLetterReason.invalid_json,
            f"the value is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
        )
    except RecursionError:  # json.loads recurses once per level of nesting
        return Rejection(
            DeadLetterReason.invalid_json,
            "the value is not JSON that can be read: nested too deeply",
        )
    except ValueError:  # a number of more digits than Python converts (sys.int_info)
        pass
    # Valid to the standard library, but past what the parser takes: a number out of range,
    # nesting deeper than 200 levels, a lone surrogate escape.
    return Rejection(
        DeadLetterReason.invalid_json, f"the value is not JSON that can be read: {parser_error}"
    )


def processing_error(exc: Exception) -> Rejection:
    """The Rejection for a message patrol's own code failed on (a defect: log it where caught)."""
    return Rejection(DeadLetterReason.processing_error, f"{type(exc).__name__}: {exc}")


def dead_letter(
    rejection: Rejection,
    *,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    received_at: datetime,
) -> DeadLetter:
    """The dead-letter record for a rejected message: enough to find and replay it."""
    return DeadLetter(
        reason=rejection.reason,
        detail=rejection.detail,
        topic=topic,
        partition=partition,
        offset=offset,
        key=None if key is None else key.decode("utf-8", errors="backslashreplace"),
        value_b64=base64.b64encode(value or b"").decode("ascii"),
        received_at=received_at,
        errors=rejection.errors,
    )
