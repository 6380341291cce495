"""Feedback from the dispatch system, taken in by the intake beside the detections.

Each record is validated here, in the intake's process: a malformed one, or one timed too far
ahead of the wall clock (`clock_skew`, the device-clock guard of the detections), is
dead-lettered with its reason; a valid one goes, with where it came from (for a later dead
letter), to its task's partition of the loop topic, in one batch record per partition a round
(`patrol.kafka.loop_records`). Whether the task exists and the step is allowed is the loop's to
say: it holds the state.

Feedback takes no part in the event-time merge of the detections (`patrol.intake.ordering`): it
moves no clock and decides no case, and the loop steps each task's lamps to a feedback's own
`at` before applying it, so its records do not depend on when it arrives.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from aiokafka import ConsumerRecord

from patrol import metrics
from patrol.domain import decode
from patrol.domain.models import DeadLetter
from patrol.kafka import loop_records
from patrol.kafka.loop_records import ForwardedFeedback
from patrol.kafka.partitioning import partition_of

log = logging.getLogger("patrol.intake.feedback")


class FeedbackScreen:
    """Validates a feedback record: its loop partition and batch item, or its dead letter."""

    def __init__(self, *, max_message_bytes: int, max_ahead: timedelta, partitions: int) -> None:
        self._max_bytes = max_message_bytes
        self._max_ahead = max_ahead
        self._partitions = partitions

    def take(
        self, record: ConsumerRecord[bytes, bytes], now: datetime
    ) -> tuple[int, bytes] | DeadLetter:
        fed = ForwardedFeedback(
            value=record.value or b"",
            key=record.key,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            timestamp_ms=record.timestamp,
        )
        try:
            checked = self._check(fed, now)
        except Exception as exc:
            log.exception("could not process %s[%d]@%d", fed.topic, fed.partition, fed.offset)
            checked = decode.processing_error(exc)
        if isinstance(checked, decode.Rejection):
            return rejected_feedback(fed, checked, now)
        return checked, loop_records.feedback_record(fed)

    def _check(self, fed: ForwardedFeedback, now: datetime) -> int | decode.Rejection:
        """The feedback's loop partition, or why it cannot be used."""
        parsed = decode.decode_feedback(fed.value, max_bytes=self._max_bytes)
        if isinstance(parsed, decode.Rejection):
            return parsed
        skewed = decode.check_feedback_clock(parsed, now, self._max_ahead)
        if skewed is not None:
            return skewed
        return partition_of(parsed.task_id.encode(), self._partitions)


def rejected_feedback(
    fed: ForwardedFeedback, rejection: decode.Rejection, now: datetime
) -> DeadLetter:
    """Count and log a refused feedback record, and make its dead letter."""
    metrics.task_feedback_total.labels("rejected").inc()
    metrics.deadletters_total.labels(rejection.reason.value).inc()
    log.warning(
        "feedback at %s[%d]@%d dead-lettered (%s): %s",
        fed.topic,
        fed.partition,
        fed.offset,
        rejection.reason.value,
        rejection.detail,
    )
    return decode.dead_letter(
        rejection,
        topic=fed.topic,
        partition=fed.partition,
        offset=fed.offset,
        key=fed.key,
        value=fed.value,
        received_at=now,
    )
