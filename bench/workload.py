"""Deterministic benchmark traffic: valid Detection JSON, built fast, in event-time order.

Pure: no I/O and no clock. The same arguments always give the same bytes, so the raw baseline
and the patrol worker are measured on identical input.
"""

from __future__ import annotations

import json
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from shapely.geometry import Point

from patrol.domain import ids
from patrol.domain.zones import ZoneMap

CHINA_STANDARD_TIME = timezone(timedelta(hours=8))
T0 = datetime(2026, 11, 27, 8, 0, tzinfo=CHINA_STANDARD_TIME)
MEDIA_BASE = "https://evidence.example/bench"
# Plate serial characters: letters skip I and O.
SERIAL_CHARS = "0123456789ABCDEFGHJKLMNPQRSTUVWXYZ"
ZHEJIANG_CITIES = "ABCDEFGHJKL"
CAMERAS_PER_ZONE = 4
DRONES = 6
# How much event time the throughput mix covers: detections per event-time second.
DETECTIONS_PER_EVENT_SECOND = 10

TopicKind = Literal["camera", "drone", "feedback"]


@dataclass(frozen=True, slots=True)
class ExpectedTask:
    """The illegal_parking task a confirming read yields: its id and `created_at`, as the
    worker computes them (`patrol.domain.ids`), so feedback can name it before it exists."""

    task_id: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class BenchRecord:
    """One record to produce. `confirms` marks a plate read that confirms a violation; `task`
    is the task it yields when the workload knows it does (a no-parking zone)."""

    topic_kind: TopicKind
    key: bytes
    value: bytes
    event_id: str
    kind: str
    confirms: bool = False
    task: ExpectedTask | None = None


@dataclass(frozen=True, slots=True)
class _Planned:
    at: datetime
    kind: str
    source_id: str
    topic_kind: TopicKind
    lat: float | None
    lon: float | None
    confidence: float | None = None
    plate: str | None = None
    confirms: bool = False
    zone_id: str | None = None
    """For a confirming read in a no-parking zone: the zone, and when its case opened."""
    opened: datetime | None = None


@dataclass(frozen=True, slots=True)
class ParkingSpot:
    zone_id: str
    grace_minutes: int
    lat: float
    lon: float
    camera: str
    no_parking: bool = True


def plate_number(index: int) -> str:
    """A distinct valid mainland plate for every index below 11 * 34**5 (浙A00000, ...)."""
    city, serial_index = divmod(index, len(SERIAL_CHARS) ** 5)
    if city >= len(ZHEJIANG_CITIES):
        raise ValueError(f"plate index {index} is beyond the {len(ZHEJIANG_CITIES)} cities")
    chars = []
    for _ in range(5):
        serial_index, digit = divmod(serial_index, len(SERIAL_CHARS))
        chars.append(SERIAL_CHARS[digit])
    return f"浙{ZHEJIANG_CITIES[city]}{''.join(reversed(chars))}"


def points_in(
    zones: ZoneMap, zone_id: str, count: int, rng: random.Random
) -> list[tuple[float, float]]:
    """`count` (lat, lon) points inside the zone, rounded as devices report them."""
    polygon = zones.polygon(zone_id)
    min_lon, min_lat, max_lon, max_lat = polygon.bounds
    found: list[tuple[float, float]] = []
    while len(found) < count:
        lon = round(rng.uniform(min_lon, max_lon), 6)
        lat = round(rng.uniform(min_lat, max_lat), 6)
        if polygon.contains(Point(lon, lat)):
            found.append((lat, lon))
    return found


def parking_spots(
    zones: ZoneMap, *, no_parking: bool, grace_minutes: int | None = None, per_zone: int = 32
) -> list[ParkingSpot]:
    """Places to park in zones that are (or are not) no-parking, with the camera watching each."""
    rng = random.Random(f"spots:{no_parking}:{grace_minutes}")
    spots = []
    for index, zone in enumerate(zones.zones):
        if zone.no_parking != no_parking:
            continue
        if grace_minutes is not None and zone.grace_minutes != grace_minutes:
            continue
        if zone.no_parking_hours:  # restricted all day, so a case opens whatever the bench's hour
            continue
        for n, (lat, lon) in enumerate(points_in(zones, zone.zone_id, per_zone, rng)):
            camera = f"cam-b{index:02d}{n % CAMERAS_PER_ZONE}"
            spots.append(
                ParkingSpot(zone.zone_id, zone.grace_minutes, lat, lon, camera, no_parking)
            )
    if not spots:
        raise ValueError("the zones file has no zone matching the benchmark's parking spots")
    return spots


def detection_json(
    *,
    event_id: str,
    kind: str,
    source_id: str,
    topic_kind: TopicKind,
    at: datetime,
    lat: float | None,
    lon: float | None,
    confidence: float | None = None,
    plate: str | None = None,
) -> bytes:
    """The Detection JSON (CONTRACT §2) the simulators would write for these fields."""
    body: dict[str, Any] = {
        "schema_version": 1,
        "event_id": event_id,
        "kind": kind,
        "source": {
            "type": topic_kind,
            "id": source_id,
            "route_id": f"route-{source_id}" if topic_kind == "drone" else None,
        },
        "observed_at": at.isoformat(timespec="milliseconds"),
    }
    if lat is not None and lon is not None:
        body["location"] = {"lat": lat, "lon": lon}
    if confidence is not None:
        body["confidence"] = confidence
    if plate is not None:
        body["plate"] = plate
        body["plate_color"] = "blue"
    if kind != "heartbeat":
        body["media"] = [f"{MEDIA_BASE}/{source_id}/{event_id}.jpg"]
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def as_sent(at: datetime) -> datetime:
    """The instant as `detection_json` writes it (milliseconds, truncated), as the worker reads
    it back."""
    return at.replace(microsecond=at.microsecond // 1000 * 1000)


def expected_task(plate: str, zone_id: str, opened: datetime, confirmed: datetime) -> ExpectedTask:
    """The task of the case of `plate` in `zone_id` opened at `opened`, confirmed at `confirmed`."""
    case = ids.case_id(plate, zone_id, as_sent(opened))
    return ExpectedTask(ids.case_task_id(case), as_sent(confirmed))


def _record(planned: _Planned, event_id: str) -> BenchRecord:
    value = detection_json(
        event_id=event_id,
        kind=planned.kind,
        source_id=planned.source_id,
        topic_kind=planned.topic_kind,
        at=planned.at,
        lat=planned.lat,
        lon=planned.lon,
        confidence=planned.confidence,
        plate=planned.plate,
    )
    task = None
    if planned.opened is not None and planned.zone_id is not None and planned.plate is not None:
        task = expected_task(planned.plate, planned.zone_id, planned.opened, planned.at)
    return BenchRecord(
        planned.topic_kind,
        planned.source_id.encode(),
        value,
        event_id,
        planned.kind,
        planned.confirms,
        task,
    )


def _visit_reads(
    spot: ParkingSpot, plate: str, arrived: datetime, rng: random.Random
) -> list[_Planned]:
    """A vehicle's plate reads while parked: a drive-by, a short stop, or a violation."""
    style = rng.random()
    offsets: list[tuple[float, bool]] = [(0.0, False)]
    if style >= 0.35:
        offsets.append((rng.uniform(1.0, spot.grace_minutes - 1.0), False))
    if style >= 0.6:
        offsets.append((spot.grace_minutes + rng.uniform(0.1, 4.0), True))
    return [
        _Planned(
            arrived + timedelta(minutes=minutes),
            "plate_read",
            spot.camera,
            "camera",
            spot.lat,
            spot.lon,
            round(rng.uniform(0.85, 0.99), 3),
            plate,
            confirms,
            spot.zone_id if confirms and spot.no_parking else None,
            arrived if confirms and spot.no_parking else None,
        )
        for minutes, confirms in offsets
    ]


def throughput_mix(
    zones: ZoneMap, n: int, *, seed: int = 7, start: datetime = T0
) -> list[BenchRecord]:
    """`n` detections in event-time order: ~78 % plate reads (mostly in no-parking zones, many
    distinct plates, about two in five visits end in a task), ~4 % hazards from cameras and
    drones around a few hot spots, the rest camera heartbeats."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    rng = random.Random(seed)
    span = timedelta(seconds=max(3600, n // DETECTIONS_PER_EVENT_SECOND))
    latest_arrival = span - timedelta(minutes=20)
    no_parking = parking_spots(zones, no_parking=True)
    allowed = parking_spots(zones, no_parking=False)
    plate_target = round(n * 0.78)
    hazard_target = round(n * 0.04)
    planned: list[_Planned] = []
    visit = 0
    while len(planned) < plate_target:
        pool = allowed if rng.random() < 0.1 else no_parking
        spot = pool[rng.randrange(len(pool))]
        arrived = start + latest_arrival * rng.random()
        planned.extend(_visit_reads(spot, plate_number(seed * 1_000_000 + visit), arrived, rng))
        visit += 1
    del planned[plate_target:]
    hot_spots = [spot for spot in no_parking + allowed if rng.random() < 0.05] or no_parking[:4]
    for i in range(hazard_target):
        spot = hot_spots[rng.randrange(len(hot_spots))]
        by_drone = rng.random() < 0.5
        planned.append(
            _Planned(
                start + span * rng.random(),
                "open_burning" if rng.random() < 0.3 else "roadside_vending",
                f"uav-b{i % DRONES}" if by_drone else spot.camera,
                "drone" if by_drone else "camera",
                round(spot.lat + rng.uniform(-0.0003, 0.0003), 6),
                round(spot.lon + rng.uniform(-0.0003, 0.0003), 6),
                round(rng.uniform(0.55, 0.97), 3),
            )
        )
    cameras = sorted({spot.camera for spot in no_parking + allowed})
    for _ in range(n - len(planned)):
        planned.append(
            _Planned(
                start + span * rng.random(),
                "heartbeat",
                cameras[rng.randrange(len(cameras))],
                "camera",
                None,
                None,
            )
        )
    planned.sort(key=lambda p: p.at)
    return [_record(p, f"bench{seed}-{i:07d}") for i, p in enumerate(planned)]


def open_case_spots(zones: ZoneMap) -> list[ParkingSpot]:
    """Spots for cases that must confirm: all zones with the common 10-minute grace."""
    return parking_spots(zones, no_parking=True, grace_minutes=10)


def opening_reads(
    spots: Sequence[ParkingSpot], count: int, *, prefix: str, first: int = 0, start: datetime = T0
) -> list[BenchRecord]:
    """A plate read at `start` for each of `count` distinct (plate, zone) cases; each opens one."""
    return [
        _case_read(spots, i, prefix=prefix, at=start, confirms=False)
        for i in range(first, first + count)
    ]


def confirming_read(
    spots: Sequence[ParkingSpot], index: int, *, prefix: str, start: datetime = T0
) -> BenchRecord:
    """The read that confirms case `index` of `opening_reads` (grace + 30 s)."""
    at = start + timedelta(minutes=spots[index % len(spots)].grace_minutes, seconds=30)
    return _case_read(spots, index, prefix=prefix, at=at, confirms=True, opened=start)


def _case_read(
    spots: Sequence[ParkingSpot],
    index: int,
    *,
    prefix: str,
    at: datetime,
    confirms: bool,
    opened: datetime | None = None,
) -> BenchRecord:
    spot = spots[index % len(spots)]
    stage = "confirm" if confirms else "open"
    planned = _Planned(
        at,
        "plate_read",
        spot.camera,
        "camera",
        spot.lat,
        spot.lon,
        0.95,
        plate_number(index),
        confirms,
        spot.zone_id if opened is not None else None,
        opened,
    )
    return _record(planned, f"{prefix}-{stage}-{index:07d}")


def heartbeat(camera: str, at: datetime, event_id: str) -> BenchRecord:
    planned = _Planned(at, "heartbeat", camera, "camera", None, None)
    return _record(planned, event_id)


def latency_stream(
    zones: ZoneMap,
    spots: Sequence[ParkingSpot],
    *,
    primed: int,
    rate: int,
    seconds: int,
    prefix: str,
    start: datetime = T0,
) -> list[BenchRecord]:
    """`rate * seconds` detections to offer at `rate`/s after `primed` cases were opened at
    `start` by `opening_reads`: a fifth confirm those cases (each yields a task), the rest open
    new cases, read cars in permitted zones, report hazards or are heartbeats."""
    total = rate * seconds
    confirmers = min(primed, total // 5)
    rng = random.Random(f"latency:{prefix}")
    allowed = parking_spots(zones, no_parking=False)
    now = start + timedelta(minutes=10, seconds=30)
    records: list[BenchRecord] = []
    confirm_every = total / confirmers if confirmers else float("inf")
    next_confirm, confirmed, opened = 0.0, 0, 0
    for i in range(total):
        at = now + timedelta(microseconds=i)
        if confirmed < confirmers and i >= next_confirm:
            records.append(confirming_read(spots, confirmed, prefix=prefix, start=start))
            confirmed += 1
            next_confirm += confirm_every
            continue
        roll = rng.random()
        if roll < 0.4:
            index = primed + opened
            opened += 1
            records.append(_case_read(spots, index, prefix=prefix, at=at, confirms=False))
        elif roll < 0.55:
            spot = allowed[rng.randrange(len(allowed))]
            plate = plate_number(5_000_000 + i)
            planned = _Planned(
                at, "plate_read", spot.camera, "camera", spot.lat, spot.lon, 0.93, plate
            )
            records.append(_record(planned, f"{prefix}-permitted-{i:07d}"))
        elif roll < 0.57:
            spot = spots[rng.randrange(len(spots))]
            planned = _Planned(
                at, "roadside_vending", spot.camera, "camera", spot.lat, spot.lon, 0.8
            )
            records.append(_record(planned, f"{prefix}-vending-{i:07d}"))
        else:
            camera = spots[rng.randrange(len(spots))].camera
            records.append(heartbeat(camera, at, f"{prefix}-heartbeat-{i:07d}"))
    return records


# --- feedback (CONTRACT §10): what the dispatch system reports on each task -----------------

FEEDBACK_STEPS = ("accepted", "arrived", "resolved")
# Each step's event time after the task's created_at: inside the parking tasks' time limit
# (120 min) and before their yellow lamp (at 96 min), so a step is one status record (resolved
# two: a parking task closes at once).
FEEDBACK_AFTER = (timedelta(minutes=5), timedelta(minutes=20), timedelta(minutes=45))
# In the latency run, each step is handed to the producer this many wall seconds after the
# bench saw its task on the dispatch topic: past the 3 s warm-up every task of the load is
# answered three times, so the worker takes one feedback record per task per step throughout.
FEEDBACK_WALL_DELAYS = (1.0, 2.0, 3.0)


@dataclass(frozen=True, slots=True)
class BenchFeedback:
    """One feedback record on the feedback topic, keyed by its task id."""

    task_id: str
    feedback_id: str
    status: str
    value: bytes

    def record(self) -> BenchRecord:
        return BenchRecord(
            "feedback", self.task_id.encode(), self.value, self.feedback_id, self.status
        )


def feedback_json(task_id: str, feedback_id: str, status: str, at: datetime) -> bytes:
    """The TaskFeedback JSON (CONTRACT §10) a dispatch system would write."""
    body = {
        "schema_version": 1,
        "feedback_id": feedback_id,
        "task_id": task_id,
        "status": status,
        "at": at.isoformat(timespec="milliseconds"),
        "team": None,
        "note": None,
        "extend_until": None,
        "media": [],
    }
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def task_feedback(task: ExpectedTask) -> list[BenchFeedback]:
    """The task's steps in order: accepted, arrived, resolved (`FEEDBACK_AFTER` its creation)."""
    out = []
    for status, after in zip(FEEDBACK_STEPS, FEEDBACK_AFTER, strict=True):
        fid = f"fb-{task.task_id}-{status}"
        out.append(
            BenchFeedback(
                task.task_id,
                fid,
                status,
                feedback_json(task.task_id, fid, status, task.created_at + after),
            )
        )
    return out


def feedback_for(records: Sequence[BenchRecord]) -> dict[str, list[BenchFeedback]]:
    """By task id, the feedback on every task these detections yield (`BenchRecord.task`)."""
    return {r.task.task_id: task_feedback(r.task) for r in records if r.task is not None}


class FeedbackSchedule:
    """When each task's steps are due, in wall seconds after the bench saw the task (pure: the
    caller passes the times). Steps come out in order; a task added twice is answered once."""

    def __init__(self, delays: Sequence[float] = FEEDBACK_WALL_DELAYS) -> None:
        if len(delays) != len(FEEDBACK_STEPS) or list(delays) != sorted(delays):
            raise ValueError(f"one nondecreasing delay per step {FEEDBACK_STEPS}, got {delays}")
        self._delays = tuple(delays)
        self._queues: tuple[deque[tuple[float, BenchFeedback]], ...] = tuple(
            deque() for _ in FEEDBACK_STEPS
        )
        self._tasks: set[str] = set()

    def add(self, task: ExpectedTask, seen: float) -> None:
        if task.task_id in self._tasks:
            return
        self._tasks.add(task.task_id)
        for queue, delay, step in zip(self._queues, self._delays, task_feedback(task), strict=True):
            queue.append((seen + delay, step))

    def due(self, now: float) -> list[BenchFeedback]:
        """The steps due by `now`, earliest step first; they leave the schedule."""
        out: list[BenchFeedback] = []
        for queue in self._queues:  # each queue is in the order tasks were seen
            while queue and queue[0][0] <= now:
                out.append(queue.popleft()[1])
        return out

    @property
    def tasks(self) -> int:
        return len(self._tasks)

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues)
