"""The feedback intake: validates what the dispatch system reports, and forwards it to the loop.

Feedback is few records (one per task step), so it is checked here, in the worker, rather than
in the intake child: a malformed record or one timed too far ahead of the wall clock
(`clock_skew`, the device-clock guard of the detections) is dead-lettered with its reason; a
valid one goes to its task's partition of the loop topic, whose order the loop then applies.
Whether the task exists and the step is allowed is the loop's to say (it holds the state).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from patrol import metrics
from patrol.domain import decode
from patrol.domain.models import DeadLetter
from patrol.kafka.loop_records import ForwardedFeedback

log = logging.getLogger("patrol.worker.feedback")

Forward = Callable[[str, ForwardedFeedback], Awaitable[None]]
"""Sends a valid feedback record (by its task id) to the loop topic."""
SendDeadLetter = Callable[[bytes | None, DeadLetter], Awaitable[None]]


class FeedbackIntake:
    def __init__(
        self,
        *,
        max_message_bytes: int,
        max_ahead: timedelta,
        forward: Forward,
        dead_letter: SendDeadLetter,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._max_bytes = max_message_bytes
        self._max_ahead = max_ahead
        self._forward = forward
        self._dead_letter = dead_letter
        self._now = now

    async def take(self, fed: ForwardedFeedback) -> None:
        parsed = decode.decode_feedback(fed.value, max_bytes=self._max_bytes)
        now = self._now()
        rejection = (
            parsed
            if isinstance(parsed, decode.Rejection)
            else decode.check_feedback_clock(parsed, now, self._max_ahead)
        )
        if rejection is None:
            assert not isinstance(parsed, decode.Rejection)
            await self._forward(parsed.task_id, fed)
            return
        await self._dead_letter(fed.key, rejected_feedback(fed, rejection, now))


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
