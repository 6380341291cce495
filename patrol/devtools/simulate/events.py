"""What the simulators produce: keyed Kafka records of Detection JSON, in event-time order."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

CHINA_STANDARD_TIME = timezone(timedelta(hours=8), "CST")
MEDIA_BASE = "https://evidence.example"

TopicKind = Literal["camera", "drone"]


@dataclass(frozen=True, slots=True)
class SimEvent:
    """One record to produce: key is the source id, value the Detection JSON (UTF-8).

    `kind` is the detection kind, or "malformed:<what>" for a deliberately broken message;
    `plate` is the plate read, if any, for summaries (never logged).
    """

    event_time: datetime
    topic_kind: TopicKind
    key: bytes
    value: bytes
    kind: str
    plate: str | None = None

    @property
    def is_malformed(self) -> bool:
        return self.kind.startswith("malformed")


def as_event_time(start: datetime) -> datetime:
    """The simulation start in China Standard Time; naive times are refused."""
    if start.tzinfo is None or start.utcoffset() is None:
        raise ValueError(f"start {start.isoformat()} has no UTC offset; give e.g. +08:00")
    return start.astimezone(CHINA_STANDARD_TIME)


@dataclass
class DetectionWriter:
    """Builds Detection JSON with per-source event ids like cam-0017-20261127T100000-0001.

    Corrupts a `malformed_fraction` of messages with its own random stream, so switching
    corruption on leaves the rest of the traffic the same.
    """

    topic_kind: TopicKind
    malformed_fraction: float = 0.0
    malformed_rng: random.Random = field(default_factory=lambda: random.Random(0))
    _counters: dict[str, int] = field(default_factory=dict)

    def detection(
        self,
        *,
        source_id: str,
        at: datetime,
        kind: str,
        lat: float,
        lon: float,
        confidence: float | None = None,
        plate: str | None = None,
        plate_color: str | None = None,
        route_id: str | None = None,
        with_media: bool = True,
    ) -> SimEvent:
        sequence = self._counters.get(source_id, 0) + 1
        self._counters[source_id] = sequence
        event_id = f"{source_id}-{at:%Y%m%dT%H%M%S}-{sequence:04d}"
        body: dict[str, Any] = {
            "schema_version": 1,
            "event_id": event_id,
            "kind": kind,
            "source": {"type": self.topic_kind, "id": source_id, "route_id": route_id},
            "observed_at": at.isoformat(timespec="milliseconds"),
            "location": {"lat": round(lat, 6), "lon": round(lon, 6)},
        }
        if confidence is not None:
            body["confidence"] = round(confidence, 3)
        if plate is not None:
            body["plate"] = plate
            body["plate_color"] = plate_color
        if with_media and kind != "heartbeat":
            body["media"] = [f"{MEDIA_BASE}/{source_id}/{at:%Y%m%d}/{event_id}.jpg"]
        if self.malformed_fraction > 0 and self.malformed_rng.random() < self.malformed_fraction:
            return self._malformed(body, at=at, source_id=source_id)
        return SimEvent(at, self.topic_kind, source_id.encode(), _encode(body), kind, plate)

    def _malformed(self, body: dict[str, Any], *, at: datetime, source_id: str) -> SimEvent:
        """A message as real devices get them wrong; the worker must dead-letter each."""
        rng = self.malformed_rng
        what = rng.choice(
            ("truncated_json", "naive_time", "bad_plate", "swapped_lat_lon", "missing_field")
        )
        broken = dict(body)
        if what == "truncated_json":
            text = _encode(body).decode()
            return self._broken(at, source_id, what, text[: len(text) // 2].encode())
        if what == "naive_time":
            broken["observed_at"] = at.replace(tzinfo=None).isoformat(timespec="seconds")
        elif what == "bad_plate":
            # O is never issued and the number is one character short.
            broken["kind"] = "plate_read"
            broken["plate"] = "浙GO" + "".join(str(rng.randint(0, 9)) for _ in range(3))
            broken.setdefault("confidence", 0.9)
        elif what == "swapped_lat_lon":
            location = body["location"]
            broken["location"] = {"lat": location["lon"], "lon": location["lat"]}
        else:
            broken.pop("event_id")
        return self._broken(at, source_id, what, _encode(broken))

    def _broken(self, at: datetime, source_id: str, what: str, value: bytes) -> SimEvent:
        return SimEvent(at, self.topic_kind, source_id.encode(), value, f"malformed:{what}")


def _encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
