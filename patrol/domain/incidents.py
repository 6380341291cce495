"""Roadside vending and open burning grouped into incidents (CONTRACT §6), as pure functions.

The agent keeps one HazardState per detection kind. A detection joins an open incident of its
kind when any remembered detection of that incident is within `radius_m` (haversine, inclusive)
and within `window` of its event time (inclusive, either direction); otherwise it opens a new
incident, and only an opening yields an EnforcementTask.

Candidates are found through a grid of cells about `radius_m` on a side, so a membership check
reads the few cells around the detection instead of every incident. The grid is derived from the
state (never encoded) and built on first use, e.g. after a state is decoded; then each state
apply_hazard or advance_clock derives takes it over and updates it in place (a sighting in, a
trimmed one out), so a detection costs a few cells, not a rebuild from every sighting. The state
handed over loses its grid and rebuilds one if it is used again. Closing incidents shifts the
indexes the grid holds, so a state with fewer incidents builds a new one.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Literal

from pydantic_core import from_json, to_json

from patrol.domain import ids
from patrol.domain.models import Detection, DetectionKind, EnforcementTask, Evidence, TaskType
from patrol.domain.routing import Route
from patrol.domain.texts import task_summary
from patrol.domain.zones import Zone

if TYPE_CHECKING:
    from patrol.settings import Settings

HazardOutcome = Literal["accepted", "duplicate", "late"]
ScreenOutcome = Literal["accepted", "low_confidence"]

EARTH_RADIUS_M = 6_371_008.8
"""Mean Earth radius (IUGG), the sphere haversine distances are measured on."""
MAX_SIGHTINGS = 20
"""Detections remembered per incident for membership: the latest by event time."""

_STATE_VERSION = 1
_HAZARD_KINDS = {
    DetectionKind.roadside_vending: TaskType.roadside_vending,
    DetectionKind.open_burning: TaskType.open_burning,
}


def hazard_key(kind: DetectionKind) -> bytes:
    """The table key (and internal partitioning key) of a hazard kind's incidents."""
    return kind.value.encode()


HAZARD_KEYS = tuple(hazard_key(kind) for kind in _HAZARD_KINDS)


@dataclass(frozen=True, slots=True)
class IncidentPolicy:
    radius_m: float
    window: timedelta
    retention: timedelta
    """How long seen event ids are remembered, so a replay never opens another incident."""
    min_confidence: Mapping[TaskType, float]

    @classmethod
    def from_settings(cls, settings: Settings) -> IncidentPolicy:
        return cls(
            radius_m=settings.incident_radius_m,
            window=settings.incident_window,
            # Detections up to two windows behind the clock are taken, and their ids kept that
            # long, so a replay finds them; older ones are late. Short, to keep the state small.
            retention=2 * settings.incident_window,
            min_confidence={
                TaskType.roadside_vending: settings.vending_min_confidence,
                TaskType.open_burning: settings.burning_min_confidence,
            },
        )


@dataclass(frozen=True, slots=True)
class Sighting:
    lat: float
    lon: float
    at_us: int
    """Event time, microseconds since the epoch."""


@dataclass(frozen=True, slots=True)
class Incident:
    task_id: str
    sightings: tuple[Sighting, ...]
    """The latest MAX_SIGHTINGS detections by event time, oldest first."""
    detections: int
    """Every detection merged into the incident, the opener included."""

    @property
    def last_at_us(self) -> int:
        return self.sightings[-1].at_us


@dataclass(frozen=True, slots=True)
class HazardDecision:
    outcome: HazardOutcome
    task: EnforcementTask | None = None
    """Only when the detection opened an incident."""
    merged: bool = False
    opened: bool = False
    incident_id: str | None = None
    """The task id of the incident the detection opened or joined."""


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres."""
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    dphi = phi2 - phi1
    dlmb = math.radians(lon2 - lon1)
    h = math.sin(dphi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlmb / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


# Slightly wider cells than the exact bound, so float rounding never drops a neighbour.
_SAFETY = 1.0 + 1e-9


class _Grid:
    """Sightings bucketed by (row, column): rows `dlat` high, columns per row as wide as a
    radius at the row's poleward edge, so everything within the radius of a point lies in the
    rows next to it and a few columns either side."""

    __slots__ = ("cells", "dlat", "half_angle", "widths")

    def __init__(self, radius_m: float) -> None:
        self.dlat = math.degrees(radius_m / EARTH_RADIUS_M) * _SAFETY
        self.half_angle = math.sin(radius_m / (2 * EARTH_RADIUS_M))
        self.cells: dict[tuple[int, int], list[tuple[int, Sighting]]] = {}
        self.widths: dict[int, float] = {}

    def _lon_span(self, abs_lat: float) -> float:
        """Most longitude a point within the radius can differ by, at latitudes up to abs_lat."""
        cos_lat = math.cos(math.radians(min(abs_lat, 90.0)))
        if cos_lat <= self.half_angle:
            return 360.0
        return math.degrees(2 * math.asin(self.half_angle / cos_lat)) * _SAFETY

    def _width(self, row: int) -> float:
        width = self.widths.get(row)
        if width is None:
            poleward = max(abs(row * self.dlat), abs((row + 1) * self.dlat))
            width = self.widths[row] = self._lon_span(poleward + self.dlat)
        return width

    def _row(self, lat: float) -> int:
        return math.floor(lat / self.dlat)

    def _cell(self, sighting: Sighting) -> tuple[int, int]:
        row = self._row(sighting.lat)
        return row, math.floor(sighting.lon / self._width(row))

    def add(self, index: int, sighting: Sighting) -> None:
        self.cells.setdefault(self._cell(sighting), []).append((index, sighting))

    def remove(self, index: int, sighting: Sighting) -> bool:
        """Forget this very sighting (not an equal one) of incident `index`; False if absent."""
        cell = self._cell(sighting)
        entries = self.cells.get(cell, [])
        for n, (i, s) in enumerate(entries):
            if s is sighting and i == index:
                del entries[n]
                if not entries:
                    del self.cells[cell]
                return True
        return False

    def near(self, lat: float, lon: float) -> Iterator[tuple[int, Sighting]]:
        """Every sighting that may be within the radius of (lat, lon), and some that are not."""
        row = self._row(lat)
        span = self._lon_span(abs(lat) + self.dlat)
        for r in (row - 1, row, row + 1):
            width = self._width(r)
            for c in range(math.floor((lon - span) / width), math.floor((lon + span) / width) + 1):
                yield from self.cells.get((r, c), ())


def _seen_key(event_id: str) -> str:
    # A 64-bit digest keeps the replay memory small whatever the event ids look like.
    return hashlib.blake2b(event_id.encode("utf-8"), digest_size=8).hexdigest()


# Below every event time a datetime can have, in microseconds since the epoch.
_NO_CUTOFF = -(1 << 63)
# Forgotten entries a seen log may hold beyond as many as it shows, before it is compacted.
_SEEN_SLACK = 64


class _SeenLog:
    """The storage shared by a line of _Seen views: digests in the order they were first seen,
    never removed, and a heap of what the newest view shows, earliest event time first. Only
    that view (the log's `version`) may change it."""

    __slots__ = ("entries", "heap", "version")

    def __init__(self, items: Iterable[tuple[str, int]]) -> None:
        self.entries: dict[str, tuple[int, int]] = {}
        """digest -> (event time, position in `entries`)"""
        for key, at_us in items:
            self.entries[key] = (at_us, len(self.entries))
        self.heap = [(at_us, key) for key, (at_us, _) in self.entries.items()]
        heapq.heapify(self.heap)
        self.version = 0


class _Seen(Mapping[str, int]):
    """An immutable mapping of seen digests to event times, in the order they were first seen,
    that adds a digest or forgets the earliest ones in O(log n) instead of copying a dict.

    A view shows the first `size` entries of its log whose event time is at least `cutoff`.
    Appending or pruning changes the log only when the view is the log's newest one (and hands
    that role to the view it makes): a view's own entries never change, so every state holding
    one sees what it always saw. From an older view, the mapping is copied into a new log."""

    __slots__ = ("_count", "_cutoff", "_log", "_size", "_version")

    def __init__(self, log: _SeenLog, size: int, cutoff: int, count: int) -> None:
        self._log = log
        self._size = size
        self._cutoff = cutoff
        self._count = count
        log.version += 1
        self._version = log.version

    @classmethod
    def of(cls, items: Iterable[tuple[str, int]]) -> _Seen:
        log = _SeenLog(items)
        return cls(log, len(log.entries), _NO_CUTOFF, len(log.entries))

    def _shows(self, entry: tuple[int, int] | None) -> bool:
        return entry is not None and entry[1] < self._size and entry[0] >= self._cutoff

    def __getitem__(self, key: str) -> int:
        entry = self._log.entries.get(key)
        if entry is None or not self._shows(entry):
            raise KeyError(key)
        return entry[0]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._shows(self._log.entries.get(key))

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[str]:
        # A copy: the log may grow while the caller iterates.
        return iter(self.as_dict())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, _Seen):
            return self.as_dict() == other.as_dict()
        if isinstance(other, Mapping):
            return self.as_dict() == dict(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(self.as_dict())

    def as_dict(self) -> dict[str, int]:
        cutoff = self._cutoff
        shown = itertools.islice(self._log.entries.items(), self._size)
        return {key: at_us for key, (at_us, _) in shown if at_us >= cutoff}

    def added(self, key: str, at_us: int) -> _Seen:
        """This mapping and `key` (first seen now) -> `at_us`."""
        log = self._log
        if log.version == self._version and at_us >= self._cutoff and key not in log.entries:
            log.entries[key] = (at_us, self._size)
            heapq.heappush(log.heap, (at_us, key))
            return _Seen(log, self._size + 1, self._cutoff, self._count + 1)
        items = self.as_dict()
        items[key] = at_us
        return _Seen.of(items.items())

    def since(self, cutoff: int) -> _Seen:
        """Only the entries with event times at or after `cutoff`; this view when that is all."""
        if cutoff <= self._cutoff:
            return self
        log = self._log
        if log.version != self._version:
            kept = {key: at_us for key, at_us in self.as_dict().items() if at_us >= cutoff}
            return self if len(kept) == self._count else _Seen.of(kept.items())
        heap = log.heap
        if not heap or heap[0][0] >= cutoff:
            return self
        while heap and heap[0][0] < cutoff:
            heapq.heappop(heap)
        if len(log.entries) > 2 * len(heap) + _SEEN_SLACK:
            # Mostly forgotten entries: a new log, paid for by what was forgotten. The heap no
            # longer matches this view, so it must not change the log again.
            log.version += 1
            return _Seen.of((k, at) for k, (at, _) in log.entries.items() if at >= cutoff)
        return _Seen(log, self._size, cutoff, len(heap))


@dataclass(frozen=True, slots=True)
class HazardState:
    """The open incidents of one hazard kind and the event ids seen within retention."""

    incidents: tuple[Incident, ...] = ()
    seen: Mapping[str, int] = field(default_factory=dict)
    """Digest of each seen event id -> its event time (microseconds), in the order first seen.
    States made here hold a read-only mapping that shares storage with the states before and
    after them (see _Seen), so a detection adds its id without copying every other one."""
    watermark_us: int | None = None
    """The latest event time this state has been told of."""
    _grids: dict[float, _Grid] = field(default_factory=dict, compare=False, repr=False)
    _seen_view: _Seen | None = field(default=None, compare=False, repr=False)
    """`seen` as a _Seen, when it was given as another mapping (a decoded state's dict)."""
    _open_floor: int | None = field(default=None, compare=False, repr=False)
    """At most the earliest `last_at_us` of the incidents (None: not known), so advance_clock
    sees without a scan that no incident closes. Derived, never encoded."""

    def _seen(self) -> _Seen:
        """`seen` as a _Seen (a copy, made once, when it was given as another mapping)."""
        if isinstance(self.seen, _Seen):
            return self.seen
        view = self._seen_view
        if view is None:
            view = _Seen.of(self.seen.items())
            object.__setattr__(self, "_seen_view", view)
        return view

    def grid(self, radius_m: float) -> _Grid:
        """The grid of every sighting, built on first use. A state derived by apply_hazard or
        advance_clock takes this state's grid over and updates it (this state then rebuilds one
        if it is used again)."""
        grid = self._grids.get(radius_m)
        if grid is None:
            grid = _Grid(radius_m)
            for index, incident in enumerate(self.incidents):
                for sighting in incident.sightings:
                    grid.add(index, sighting)
            self._grids[radius_m] = grid
        return grid


def _task_type(detection: Detection) -> TaskType:
    task_type = _HAZARD_KINDS.get(detection.kind)
    if task_type is None:
        raise ValueError(f"{detection.event_id}: a {detection.kind.value} is not a hazard")
    return task_type


def screen_hazard(detection: Detection, policy: IncidentPolicy) -> ScreenOutcome:
    """Whether a vending or burning detection is confident enough to count."""
    threshold = policy.min_confidence[_task_type(detection)]
    if detection.confidence is None or detection.confidence < threshold:
        return "low_confidence"
    return "accepted"


def _matching_incident(
    state: HazardState, lat: float, lon: float, at_us: int, policy: IncidentPolicy
) -> int | None:
    window_us = policy.window // timedelta(microseconds=1)
    best: int | None = None
    for index, sighting in state.grid(policy.radius_m).near(lat, lon):
        if best is not None and index >= best:
            continue
        if abs(sighting.at_us - at_us) > window_us:
            continue
        if haversine_m(lat, lon, sighting.lat, sighting.lon) <= policy.radius_m:
            best = index
    return best


def _open_task(
    detection: Detection, task_type: TaskType, task_id: str, zone: Zone, route: Route
) -> EnforcementTask:
    assert detection.location is not None  # screened detections always have one
    due_by = detection.observed_at + route.due_within
    return EnforcementTask(
        task_id=task_id,
        task_type=task_type,
        created_at=detection.observed_at,
        priority=route.priority,
        due_by=due_by,
        department=route.department,
        township=zone.township,
        zone_id=zone.zone_id,
        location=detection.location,
        plate=None,
        evidence=[Evidence.of(detection)],
        sms=None,
        summary=task_summary(task_type, zone, route.department, due_by, None),
    )


def beyond_retention(observed_at: datetime, clock: datetime | None, policy: IncidentPolicy) -> bool:
    """True for a detection older than the agent's event-time clock minus the retention: late,
    as `apply_hazard` treats it against a state's watermark, also where no state is left."""
    return clock is not None and observed_at < clock - policy.retention


def apply_hazard(
    state: HazardState | None,
    detection: Detection,
    zone: Zone,
    route: Route,
    policy: IncidentPolicy,
) -> tuple[HazardState, HazardDecision]:
    """Merge an accepted hazard detection into an open incident or open a new one."""
    task_type = _task_type(detection)
    if detection.location is None:
        raise ValueError(f"{detection.event_id}: a hazard detection needs a location")
    if state is None:
        state = HazardState()
    at_us = ids.epoch_micros(detection.observed_at)
    key = _seen_key(detection.event_id)
    seen_before = state._seen()
    if key in seen_before:
        return state, HazardDecision(outcome="duplicate")
    retention_us = policy.retention // timedelta(microseconds=1)
    if state.watermark_us is not None and at_us < state.watermark_us - retention_us:
        return state, HazardDecision(outcome="late")

    lat, lon = detection.location.lat, detection.location.lon
    sighting = Sighting(lat, lon, at_us)
    seen = seen_before.added(key, at_us)
    watermark = at_us if state.watermark_us is None else max(state.watermark_us, at_us)
    index = _matching_incident(state, lat, lon, at_us, policy)
    # The new state takes the grid over: one sighting in (and maybe one out) instead of a
    # rebuild from every sighting.
    grid = state._grids.pop(policy.radius_m)
    grids = {policy.radius_m: grid}

    if index is not None:
        # An incident's last event time never goes back, so the floor still holds.
        floor = state._open_floor
        incident = state.incidents[index]
        sightings = tuple(sorted((*incident.sightings, sighting), key=lambda s: s.at_us))
        joined = Incident(
            task_id=incident.task_id,
            sightings=sightings[-MAX_SIGHTINGS:],
            detections=incident.detections + 1,
        )
        grid.add(index, sighting)
        if len(sightings) > MAX_SIGHTINGS and not grid.remove(index, sightings[0]):
            grids = {}  # cannot happen; rebuilt on first use if it did
        incidents = (*state.incidents[:index], joined, *state.incidents[index + 1 :])
        new_state = HazardState(
            incidents=incidents,
            seen=seen,
            watermark_us=watermark,
            _grids=grids,
            _open_floor=floor,
        )
        return new_state, HazardDecision(
            outcome="accepted", merged=True, incident_id=incident.task_id
        )

    task_id = ids.incident_task_id(task_type.value, detection.event_id)
    opened = Incident(task_id=task_id, sightings=(sighting,), detections=1)
    grid.add(len(state.incidents), sighting)
    floor = state._open_floor
    if not state.incidents:
        floor = at_us
    elif floor is not None:
        floor = min(floor, at_us)
    new_state = HazardState(
        incidents=(*state.incidents, opened),
        seen=seen,
        watermark_us=watermark,
        _grids=grids,
        _open_floor=floor,
    )
    task = _open_task(detection, task_type, task_id, zone, route)
    return new_state, HazardDecision(
        outcome="accepted", task=task, opened=True, incident_id=task_id
    )


def advance_clock(
    state: HazardState | None, clock: datetime, policy: IncidentPolicy
) -> tuple[HazardState | None, int]:
    """Close incidents no detection can join any more and forget event ids past retention.
    Returns None once there is nothing left to remember, with how many incidents closed.

    A detection is taken while it is at most the retention behind the clock (older ones are
    late), and joins an incident with a detection within the window of its own time, so an
    incident closes only once the clock is past its last event + the window + the retention:
    a detection that arrives late but not too late still finds its incident."""
    if state is None:
        return None, 0
    clock_us = ids.epoch_micros(clock)
    retention_us = policy.retention // timedelta(microseconds=1)
    joinable_us = policy.window // timedelta(microseconds=1) + retention_us
    incidents = state.incidents
    floor = state._open_floor
    if floor is None or clock_us - floor > joinable_us:
        still_open = tuple(i for i in incidents if clock_us - i.last_at_us <= joinable_us)
        if len(still_open) == len(incidents):
            still_open = incidents
        floor = min((i.last_at_us for i in still_open), default=None)
        if still_open is incidents:
            object.__setattr__(state, "_open_floor", floor)  # exact now; derived, not encoded
    else:
        still_open = incidents  # every incident's last event time is at or after the floor
    seen_before = state._seen()
    seen = seen_before.since(clock_us - retention_us)
    closed = len(incidents) - len(still_open)
    if not still_open and not seen:
        return None, closed
    watermark = clock_us if state.watermark_us is None else max(state.watermark_us, clock_us)
    if closed == 0 and seen is seen_before and watermark == state.watermark_us:
        return state, 0
    # Closing shifts the incidents' indexes, which the grid holds: the new state rebuilds it.
    grids: dict[float, _Grid] = {}
    if closed == 0:
        grids = dict(state._grids)
        state._grids.clear()
    return HazardState(
        incidents=still_open, seen=seen, watermark_us=watermark, _grids=grids, _open_floor=floor
    ), closed


def open_incident_count(state: HazardState | None) -> int:
    return 0 if state is None else len(state.incidents)


# Encoded form (compact JSON, UTF-8, no spaces):
#   [version, watermark_us | null, [[task_id, detections, [[lat, lon, at_us], ...]], ...],
#    {seen_digest: at_us, ...}]
def encode_hazard_state(state: HazardState) -> bytes:
    incidents = [
        [i.task_id, i.detections, [[s.lat, s.lon, s.at_us] for s in i.sightings]]
        for i in state.incidents
    ]
    seen = state.seen.as_dict() if isinstance(state.seen, _Seen) else dict(state.seen)
    payload = [_STATE_VERSION, state.watermark_us, incidents, seen]
    return to_json(payload)


def decode_hazard_state(raw: bytes) -> HazardState:
    try:
        version, watermark, incidents, seen = from_json(raw)
    except (ValueError, TypeError) as error:
        raise ValueError(f"not an encoded hazard state: {error}") from error
    if version != _STATE_VERSION:
        raise ValueError(f"hazard state version {version!r}; this worker reads {_STATE_VERSION}")
    return HazardState(
        incidents=tuple(
            Incident(
                task_id=task_id,
                sightings=tuple(Sighting(lat, lon, at) for lat, lon, at in sightings),
                detections=detections,
            )
            for task_id, detections, sightings in incidents
        ),
        seen=seen,
        watermark_us=watermark,
    )


def rejoin(
    state: HazardState | None, task_id: str, detection: Detection, policy: IncidentPolicy
) -> HazardState:
    """A detection that reopened a resolved task: it joins that task's incident (opened again
    if it had closed), so the detections after it merge there instead of opening a new task."""
    if detection.location is None:
        raise ValueError(f"{detection.event_id}: a hazard detection needs a location")
    if state is None:
        state = HazardState()
    at_us = ids.epoch_micros(detection.observed_at)
    sighting = Sighting(detection.location.lat, detection.location.lon, at_us)
    incidents = list(state.incidents)
    for index, incident in enumerate(incidents):
        if incident.task_id == task_id:
            sightings = tuple(sorted((*incident.sightings, sighting), key=lambda s: s.at_us))
            incidents[index] = Incident(
                task_id, sightings[-MAX_SIGHTINGS:], incident.detections + 1
            )
            break
    else:
        incidents.append(Incident(task_id, (sighting,), 1))
    watermark = at_us if state.watermark_us is None else max(state.watermark_us, at_us)
    # Rare (a reopening): the grid and the open floor are rebuilt on first use.
    return HazardState(
        incidents=tuple(incidents),
        seen=state._seen().added(_seen_key(detection.event_id), at_us),
        watermark_us=watermark,
    )


def seen_before(state: HazardState | None, detection: Detection) -> bool:
    """Whether this detection (its event id) was applied to the state already."""
    return state is not None and _seen_key(detection.event_id) in state._seen()
