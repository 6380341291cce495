"""Stable identities of cases, SMS warnings and tasks, and the instants they are built from.

Every id is a hash of what identifies the thing, never a random number: the same case or
incident yields the same id in every process, so replays and restarts cannot mint a new one.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta, timezone

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def epoch_micros(moment: datetime) -> int:
    """The instant of an aware datetime as integer microseconds since the Unix epoch (exact)."""
    if moment.utcoffset() is None:
        raise ValueError(f"{moment!r} has no UTC offset; patrol only handles aware times")
    since = moment - _EPOCH
    return (since.days * 86_400 + since.seconds) * 1_000_000 + since.microseconds


# The epoch shown at each UTC offset met so far: adding a timedelta to an aware datetime keeps
# its tzinfo, so one addition gives the instant already at its offset (no astimezone).
_EPOCH_AT: dict[int, datetime] = {0: _EPOCH}


def from_epoch_micros(micros: int, offset_seconds: int = 0) -> datetime:
    """The datetime at that instant, shown at the given UTC offset."""
    epoch = _EPOCH_AT.get(offset_seconds)
    if epoch is None:
        tz = timezone(timedelta(seconds=offset_seconds))
        epoch = _EPOCH_AT[offset_seconds] = _EPOCH.astimezone(tz)
    return epoch + timedelta(microseconds=micros)


def offset_seconds(moment: datetime) -> int:
    offset = moment.utcoffset()
    if offset is None:
        raise ValueError(f"{moment!r} has no UTC offset; patrol only handles aware times")
    return int(offset.total_seconds())


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:20]


def case_id(plate: str, zone_id: str, first_seen: datetime) -> str:
    """The grace case of `plate` in `zone_id` opened at `first_seen` (any offset, same instant)."""
    return "case-" + _digest("case", plate, zone_id, str(epoch_micros(first_seen)))


def message_id(case_id: str) -> str:
    """The one SMS warning of a case; also its Idempotency-Key at the gateway."""
    return "sms-" + _digest("sms", case_id)


def case_task_id(case_id: str) -> str:
    """The illegal_parking task a case can confirm, at most one."""
    return "task-" + _digest("task", case_id)


def incident_task_id(kind: str, opener_event_id: str) -> str:
    """The task of a hazard incident, named by the detection that opened it."""
    return "task-" + _digest("incident", kind, opener_event_id)
