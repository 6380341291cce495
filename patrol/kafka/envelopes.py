"""Messages on patrol's internal (repartition) topics.

Input topics are keyed by source id, but a grace case is (plate, zone) and an incident is a
place and a time, so the intake re-keys what it accepted onto internal topics whose partitions
own the state. It does so in batches: one record carries, in order, every accepted detection of
one intake round that belongs to one partition, followed by the intake's event-time clock. The
stateful agents then pay faust's per-event cost once per batch rather than once per detection,
and the clock travels in order with the reads it concerns.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from pydantic_core import to_json

from patrol.domain.models import TRUSTED, Detection

# A batch record stays well under the broker's default 1 MiB message limit.
MAX_BATCH_BYTES = 512 * 1024
MAX_BATCH_ITEMS = 500


class RoutedDetection(BaseModel):
    """An accepted detection, located in its zone, on its way to the partition owning its state."""

    model_config = ConfigDict(frozen=True)

    detection: Detection = Field(alias="d")
    zone_id: str = Field(alias="z")
    ingested_ms: int = Field(alias="ms", description="Kafka timestamp of the input record")


class RoutedBatch(BaseModel):
    """Detections for one partition, in intake order, then the intake's clock (if it has one)."""

    model_config = ConfigDict(frozen=True)

    items: list[RoutedDetection] = Field(default_factory=list)
    clock: AwareDatetime | None = None


def routed_item(raw_detection: bytes, zone_id: str, ingested_ms: int) -> bytes:
    """One batch item around the detection's original (already validated) JSON, unchanged.

    The original bytes are a valid JSON document (the Detection model parsed them), so they are
    embedded as they are: no second serialisation of the detection on the hot path.
    """
    return b'{"z":%s,"ms":%d,"d":%s}' % (
        to_json(zone_id),
        ingested_ms,
        raw_detection.strip(),
    )


def chunks(items: list[bytes]) -> Iterator[list[bytes]]:
    """`items` in runs that each fit one batch record (MAX_BATCH_ITEMS, MAX_BATCH_BYTES); an
    empty list gives one empty run."""
    start, size = 0, 0
    for index, item in enumerate(items):
        if index > start and (
            index - start >= MAX_BATCH_ITEMS or size + len(item) > MAX_BATCH_BYTES
        ):
            yield items[start:index]
            start, size = index, 0
        size += len(item) + 1
    yield items[start:]


def batch_records(items: list[bytes], clock: datetime | None) -> Iterator[bytes]:
    """`items` (from `routed_item`) packed into records within the size limits; the clock rides
    on the last one (and alone when there are no items)."""
    clock_json = b"null" if clock is None else to_json(clock.isoformat())
    runs = list(chunks(items))
    for run in runs[:-1]:
        yield b'{"items":[%s],"clock":null}' % b",".join(run)
    yield b'{"items":[%s],"clock":%s}' % (b",".join(runs[-1]), clock_json)


def decode(raw: bytes) -> RoutedBatch:
    """A batch record the intake wrote. Its detections passed the full validation there, so
    only pydantic's parsing and coercion run again, not the checks that can only reject."""
    return RoutedBatch.model_validate_json(raw, context=TRUSTED)
