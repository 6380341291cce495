"""Messages on patrol's internal (repartition) topics.

Input topics are keyed by source id, but a grace case is (plate, zone) and an incident is a
place and a time, so the intake agent re-keys what it accepted onto internal topics whose
partitions own the state. The event-time clock travels the same way, so each partition sees
it in order with the reads it concerns.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter

from patrol.models import Detection


class RoutedDetection(BaseModel):
    """An accepted detection, located in its zone, on its way to the partition owning its state."""

    model_config = ConfigDict(frozen=True)

    t: Literal["d"] = "d"
    detection: Detection
    zone_id: str
    ingested_ms: int = Field(description="Kafka timestamp of the input record, for latency")


class ClockTick(BaseModel):
    """The intake's event-time clock, broadcast to every partition."""

    model_config = ConfigDict(frozen=True)

    t: Literal["c"] = "c"
    clock: AwareDatetime


Envelope = Annotated[RoutedDetection | ClockTick, Field(discriminator="t")]
ENVELOPE = TypeAdapter[RoutedDetection | ClockTick](Envelope)

CLOCK_KEY = b"~clock"


def encode(message: RoutedDetection | ClockTick) -> bytes:
    return message.model_dump_json().encode()


def decode(raw: bytes) -> RoutedDetection | ClockTick:
    return ENVELOPE.validate_json(raw)


def tick(clock: datetime) -> bytes:
    return encode(ClockTick(clock=clock))
