"""The SMS outbox: warnings wait on an internal Kafka topic until the sender has sent them.

The grace agent produces one outbox record per opened case (keyed, and partitioned, like the
case), with the same producer and before the same commit as the case's changelog write. The
sender process (`patrol.sms.sender`) consumes the outbox in its own consumer group, sends each
warning, then produces two records and only after the broker acknowledged both commits the
outbox offset:

* the audit record (`SmsRecord`) on the SMS topic, keyed by message id (CONTRACT §7);
* its outcome on the internal cases topic, in the case's partition, in a record of the outcomes
  of that partition finished together and marked by the `OUTCOME_HEADER`; the grace agent
  applies them to the cases in order with their reads, so a case's task reports whether its
  owner was warned.

A backlog of warnings therefore costs the worker no memory and survives a crash of the worker
or the sender: whatever was not committed is sent again, and the gateway deduplicates by
`Idempotency-Key`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from pydantic_core import from_json, to_json

from patrol.domain.grace import SmsRequest
from patrol.sms.notifier import SmsRequestLike

OUTCOME_HEADER = ("patrol-record", b"sms-outcome")
OUTCOME_HEADERS = [OUTCOME_HEADER]


def request_record(request: SmsRequestLike) -> bytes:
    """An SMS request as the value of an outbox record."""
    fields = {
        "message_id": request.message_id,
        "case_id": request.case_id,
        "plate": request.plate,
        "zone_id": request.zone_id,
        "text": request.text,
        "deadline": request.deadline.isoformat(),
    }
    return to_json(fields)


def request_from_record(value: bytes) -> SmsRequest:
    """The request in an outbox record; ValueError, KeyError or TypeError if it is not one."""
    fields = from_json(value)
    fields["deadline"] = datetime.fromisoformat(fields["deadline"])
    return SmsRequest(**fields)


@dataclass(frozen=True, slots=True)
class SmsOutcome:
    """The final status of one warning, as the grace agent applies it to its case."""

    case_key: bytes
    message_id: str
    status: Literal["sent", "failed"]


def outcome_record(outcomes: Iterable[SmsOutcome]) -> bytes:
    """Outcomes of warnings of one partition's cases, as one record for the cases topic."""
    items = [[o.case_key.decode(), o.message_id, o.status] for o in outcomes]
    return to_json({"o": items})


def outcomes_from_record(value: bytes) -> list[SmsOutcome]:
    """The outcomes in a record; ValueError, KeyError or TypeError if it is not one."""
    outcomes = []
    for case_key, message_id, status in from_json(value)["o"]:
        if status not in ("sent", "failed"):
            raise ValueError(f"unknown SMS status {status!r}")
        outcomes.append(SmsOutcome(str(case_key).encode(), str(message_id), status))
    return outcomes


def is_outcome(headers: Iterable[tuple[str, bytes]] | None) -> bool:
    """Whether a cases-topic record with these headers is an SMS outcome (not a batch)."""
    return any(tuple(header) == OUTCOME_HEADER for header in headers or ())
