"""Hazard incidents (CONTRACT §6): grouping by distance and event time, replays, the state codec."""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from patrol.domain import ids, incidents
from patrol.domain.incidents import (
    EARTH_RADIUS_M,
    HazardDecision,
    HazardState,
    IncidentPolicy,
    advance_clock,
    apply_hazard,
    decode_hazard_state,
    encode_hazard_state,
    haversine_m,
    open_incident_count,
    screen_hazard,
)
from patrol.domain.models import Detection, Priority, TaskType
from patrol.domain.routing import Route
from patrol.domain.zones import Scene, Zone

ZONE = Zone("anwen-reservoir", "安文水库", "安文街道", Scene.water_source, False)
ROUTE = Route("ecology_environment", Priority.urgent, timedelta(minutes=30))
POLICY = IncidentPolicy(
    radius_m=100.0,
    window=timedelta(minutes=30),
    retention=timedelta(hours=24),
    min_confidence={TaskType.roadside_vending: 0.6, TaskType.open_burning: 0.5},
)
T0 = datetime.fromisoformat("2026-11-27T10:00:00+08:00")
LAT, LON = 29.0552, 120.4411
SECOND = timedelta(seconds=1)


def hazard(
    event_id: str,
    at: datetime = T0,
    lat: float = LAT,
    lon: float = LON,
    *,
    kind: str = "open_burning",
    confidence: float = 0.9,
) -> Detection:
    return Detection.model_validate(
        {
            "schema_version": 1,
            "event_id": event_id,
            "kind": kind,
            "source": {"type": "drone", "id": "uav-02", "route_id": "route-yuzhi"},
            "observed_at": at.isoformat(),
            "location": {"lat": lat, "lon": lon},
            "confidence": confidence,
            "media": ["https://evidence.example/uav-02/frame.jpg"],
        }
    )


def run(
    detections: list[Detection], state: HazardState | None = None
) -> tuple[HazardState | None, list[HazardDecision]]:
    decisions = []
    for d in detections:
        state, decision = apply_hazard(state, d, ZONE, ROUTE, POLICY)
        decisions.append(decision)
    return state, decisions


def north_of(lat: float, metres: float) -> float:
    return lat + math.degrees(metres / EARTH_RADIUS_M)


def east_of(lat: float, lon: float, metres: float) -> float:
    """About `metres` east along the parallel (callers check the distance where it matters)."""
    return lon + math.degrees(metres / (EARTH_RADIUS_M * math.cos(math.radians(lat))))


# Opening and merging.


def test_first_detection_opens_an_incident_with_one_task() -> None:
    state, (decision,) = run([hazard("b1")])

    task = decision.task
    assert decision.opened and not decision.merged
    assert task is not None
    assert task.task_id == ids.incident_task_id("open_burning", "b1")
    assert decision.incident_id == task.task_id
    assert task.task_type is TaskType.open_burning
    assert task.created_at == T0
    assert task.due_by == T0 + timedelta(minutes=30)
    assert task.priority is Priority.urgent
    assert task.department == "ecology_environment"
    assert (task.township, task.zone_id) == ("安文街道", "anwen-reservoir")
    assert task.plate is None and task.sms is None
    assert [e.event_id for e in task.evidence] == ["b1"]
    assert (task.location.lat, task.location.lon) == (LAT, LON)
    assert "露天焚烧" in task.summary and "安文水库" in task.summary
    assert open_incident_count(state) == 1


def test_nearby_detection_is_merged_without_a_task() -> None:
    state, (_, decision) = run([hazard("b1"), hazard("b2", T0 + SECOND, north_of(LAT, 40))])
    assert decision.merged and not decision.opened
    assert decision.task is None
    assert decision.incident_id == ids.incident_task_id("open_burning", "b1")
    assert open_incident_count(state) == 1


def test_exactly_the_radius_away_is_the_same_incident() -> None:
    # On the equator the float arithmetic lands on exactly 100.0 m, so the boundary is sharp.
    lat = math.degrees(100.0 / EARTH_RADIUS_M)
    assert haversine_m(0.0, 0.0, lat, 0.0) == 100.0
    _, (_, decision) = run([hazard("b1", T0, 0.0, 0.0), hazard("b2", T0, lat, 0.0)])
    assert decision.merged

    beyond = lat
    while haversine_m(0.0, 0.0, beyond, 0.0) == 100.0:
        beyond = math.nextafter(beyond, math.inf)
    _, (_, decision) = run([hazard("b1", T0, 0.0, 0.0), hazard("b2", T0, beyond, 0.0)])
    assert decision.opened


def test_half_a_metre_beyond_the_radius_is_a_new_incident() -> None:
    _, (_, decision) = run([hazard("b1"), hazard("b2", T0, north_of(LAT, 100.5))])
    assert decision.opened and decision.task is not None


@pytest.mark.parametrize("sign", [1, -1], ids=["later", "earlier"])
def test_exactly_the_window_apart_is_the_same_incident(sign: int) -> None:
    _, (_, decision) = run([hazard("b1"), hazard("b2", T0 + sign * POLICY.window)])
    assert decision.merged


@pytest.mark.parametrize("sign", [1, -1], ids=["later", "earlier"])
def test_one_second_beyond_the_window_is_a_new_incident(sign: int) -> None:
    _, (_, decision) = run([hazard("b1"), hazard("b2", T0 + sign * (POLICY.window + SECOND))])
    assert decision.opened


def test_any_detection_of_an_incident_can_extend_it() -> None:
    # b3 is 160 m from b1 but 80 m from b2, which already belongs to b1's incident.
    _, decisions = run(
        [
            hazard("b1"),
            hazard("b2", T0 + 20 * 60 * SECOND, north_of(LAT, 80)),
            hazard("b3", T0 + 40 * 60 * SECOND, north_of(LAT, 160)),
        ]
    )
    assert [d.opened for d in decisions] == [True, False, False]


def test_kinds_are_kept_apart_by_the_caller_but_each_opens_its_own_task() -> None:
    _, (vending,) = run([hazard("v1", kind="roadside_vending")])
    assert vending.task is not None
    assert vending.task.task_type is TaskType.roadside_vending
    assert vending.task.task_id == ids.incident_task_id("roadside_vending", "v1")


def test_plate_reads_are_not_hazards() -> None:
    plate_read = Detection.model_validate(
        {
            "schema_version": 1,
            "event_id": "r1",
            "kind": "plate_read",
            "source": {"type": "camera", "id": "cam-1"},
            "observed_at": T0.isoformat(),
            "location": {"lat": LAT, "lon": LON},
            "confidence": 0.9,
            "plate": "浙G12345",
        }
    )
    with pytest.raises(ValueError, match="not a hazard"):
        apply_hazard(None, plate_read, ZONE, ROUTE, POLICY)


# The grid index must never split what the distance rule joins.


def test_thirty_metres_across_a_row_boundary_is_one_incident() -> None:
    dlat = incidents._Grid(POLICY.radius_m).dlat
    boundary = math.ceil(LAT / dlat) * dlat
    south, north = north_of(boundary, -15), north_of(boundary, 15)
    assert math.floor(south / dlat) != math.floor(north / dlat)
    _, (_, decision) = run([hazard("b1", T0, south), hazard("b2", T0, north)])
    assert decision.merged


def test_thirty_metres_across_a_column_boundary_is_one_incident() -> None:
    grid = incidents._Grid(POLICY.radius_m)
    width = grid._width(math.floor(LAT / grid.dlat))
    boundary = math.ceil(LON / width) * width
    west, east = east_of(LAT, boundary, -15), east_of(LAT, boundary, 15)
    assert math.floor(west / width) != math.floor(east / width)
    assert haversine_m(LAT, west, LAT, east) == pytest.approx(30, abs=0.01)
    _, (_, decision) = run([hazard("b1", T0, LAT, west), hazard("b2", T0, LAT, east)])
    assert decision.merged


@settings(max_examples=300, deadline=None)
@given(
    lat=st.floats(min_value=-80, max_value=80),
    lon=st.floats(min_value=-179, max_value=179),
    bearing=st.floats(min_value=0, max_value=2 * math.pi),
    metres=st.floats(min_value=0, max_value=100),
)
def test_grid_finds_every_detection_within_the_radius(
    lat: float, lon: float, bearing: float, metres: float
) -> None:
    other_lat = lat + math.degrees(metres * math.cos(bearing) / EARTH_RADIUS_M)
    other_lon = lon + math.degrees(
        metres * math.sin(bearing) / (EARTH_RADIUS_M * math.cos(math.radians(lat)))
    )
    if haversine_m(lat, lon, other_lat, other_lon) > POLICY.radius_m:
        return
    _, (_, decision) = run([hazard("b1", T0, lat, lon), hazard("b2", T0, other_lat, other_lon)])
    assert decision.merged


# Replays and the clock.


def test_replayed_detections_never_open_another_incident() -> None:
    detections = [hazard("b1"), hazard("b2", T0 + 60 * SECOND, north_of(LAT, 30))]
    state, _ = run(detections)
    state, replays = run([detections[1], detections[0]], state)
    assert [d.outcome for d in replays] == ["duplicate", "duplicate"]

    # Still a duplicate while the ids are remembered, the incident open or not.
    kept, _ = advance_clock(state, T0 + POLICY.retention, POLICY)
    _, (replay,) = run([detections[0]], kept)
    assert replay.outcome == "duplicate" and replay.task is None
    # Once the incident has closed, the clock is past the retention of all its detections: a
    # replay of any is late, never a new incident.
    clock = T0 + 60 * SECOND + POLICY.window + POLICY.retention + SECOND
    closed_state, closed = advance_clock(state, clock, POLICY)
    assert closed == 1 and closed_state is None
    assert all(incidents.beyond_retention(d.observed_at, clock, POLICY) for d in detections)


def test_clock_closes_incidents_past_window_and_retention_and_forgets_ids_after_retention() -> None:
    state, _ = run([hazard("b1")])
    # The event id is remembered until retention passes; the incident stays open longer.
    kept, closed = advance_clock(state, T0 + POLICY.retention + SECOND, POLICY)
    assert kept is not None and (open_incident_count(kept), closed) == (1, 0)
    assert len(kept.seen) == 0
    joinable = T0 + POLICY.window + POLICY.retention
    same, closed = advance_clock(state, joinable, POLICY)
    assert (open_incident_count(same), closed) == (1, 0)
    gone, closed = advance_clock(state, joinable + SECOND, POLICY)
    assert (gone, closed) == (None, 1)
    assert advance_clock(None, T0, POLICY) == (None, 0)


def test_a_detection_late_but_within_retention_joins_its_incident_after_the_window() -> None:
    # The clock has gone past the window of b1 (a camera's heartbeats); a drone's frame of the
    # same fire, timed within the window of b1 but delivered now, still belongs to its incident.
    state, _ = run([hazard("b1")])
    clock = T0 + POLICY.window + 5 * 60 * SECOND
    state, closed = advance_clock(state, clock, POLICY)
    assert closed == 0
    late = hazard("b2", T0 + POLICY.window - SECOND, north_of(LAT, 30))
    assert not incidents.beyond_retention(late.observed_at, clock, POLICY)
    _, (decision,) = run([late], state)
    assert decision.outcome == "accepted" and decision.merged and decision.task is None


def test_detection_older_than_retention_is_late() -> None:
    state, _ = run([hazard("b1", T0 + POLICY.retention + SECOND)])
    _, (decision,) = run([hazard("b0", T0)], state)
    assert decision == HazardDecision(outcome="late")


def test_new_detection_after_an_incident_closed_opens_another() -> None:
    state, _ = run([hazard("b1")])
    state, _ = advance_clock(state, T0 + POLICY.window + SECOND, POLICY)
    _, (decision,) = run([hazard("b2", T0 + POLICY.window + SECOND)], state)
    assert decision.opened


# Screening.


@pytest.mark.parametrize(
    ("kind", "confidence", "expected"),
    [
        ("roadside_vending", 0.6, "accepted"),
        ("roadside_vending", 0.59, "low_confidence"),
        ("open_burning", 0.5, "accepted"),
        ("open_burning", 0.49, "low_confidence"),
    ],
)
def test_screen_hazard_thresholds(kind: str, confidence: float, expected: str) -> None:
    assert screen_hazard(hazard("h1", kind=kind, confidence=confidence), POLICY) == expected


@given(
    kind=st.sampled_from(["roadside_vending", "open_burning"]),
    confidence=st.floats(min_value=0, max_value=1),
)
def test_below_threshold_never_opens_an_incident(kind: str, confidence: float) -> None:
    detection = hazard("h1", kind=kind, confidence=confidence)
    threshold = POLICY.min_confidence[TaskType(kind)]
    state: HazardState | None = None
    decision = None
    if screen_hazard(detection, POLICY) == "accepted":
        state, decision = apply_hazard(state, detection, ZONE, ROUTE, POLICY)
    opened = decision is not None and decision.opened
    assert opened == (confidence >= threshold)


# Order independence: clusters are found whatever order their detections arrive in.

CLUSTER_CENTRES = [(29.0552, 120.4411), (29.0652, 120.4411), (29.0552, 120.4611)]


@st.composite
def clustered_detections(draw: st.DrawFn) -> tuple[list[set[str]], list[Detection]]:
    """Up to three clusters over 1 km apart; members within radius/2 of their centre and within
    the window of each other."""
    clusters: list[set[str]] = []
    detections: list[Detection] = []
    for c, (lat, lon) in enumerate(CLUSTER_CENTRES[: draw(st.integers(1, 3))]):
        members: set[str] = set()
        for m in range(draw(st.integers(1, 6))):
            bearing = draw(st.floats(0, 2 * math.pi))
            metres = draw(st.floats(0, POLICY.radius_m / 2))
            offset_s = draw(st.integers(0, int(POLICY.window.total_seconds())))
            event_id = f"c{c}-m{m}"
            members.add(event_id)
            detections.append(
                hazard(
                    event_id,
                    T0 + timedelta(seconds=offset_s),
                    lat + math.degrees(metres * math.cos(bearing) / EARTH_RADIUS_M),
                    east_of(lat, lon, metres * math.sin(bearing)),
                )
            )
        clusters.append(members)
    order = draw(st.permutations(detections))
    return clusters, list(order)


@settings(max_examples=200, deadline=None)
@given(clustered_detections())
def test_partition_into_incidents_does_not_depend_on_arrival_order(
    case: tuple[list[set[str]], list[Detection]],
) -> None:
    clusters, detections = case
    raw: bytes | None = None
    incident_of: dict[str, str] = {}
    tasks = 0
    for detection in detections:
        state = None if raw is None else decode_hazard_state(raw)
        state, decision = apply_hazard(state, detection, ZONE, ROUTE, POLICY)
        raw = encode_hazard_state(state)
        assert decision.incident_id is not None
        incident_of[detection.event_id] = decision.incident_id
        tasks += decision.task is not None

    partition: dict[str, set[str]] = {}
    for event_id, incident_id in incident_of.items():
        partition.setdefault(incident_id, set()).add(event_id)
    assert sorted(map(sorted, partition.values())) == sorted(map(sorted, clusters))
    assert tasks == len(clusters)


# The encoded state.


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(-0.01, 0.01), st.floats(-0.01, 0.01), st.integers(0, 4 * 3600)),
        max_size=40,
    ),
    st.integers(0, 6 * 3600),
)
def test_encoded_state_round_trips(offsets: list[tuple[float, float, int]], clock_s: int) -> None:
    state: HazardState | None = None
    for n, (dlat, dlon, seconds) in enumerate(offsets):
        detection = hazard(f"h{n}", T0 + timedelta(seconds=seconds), LAT + dlat, LON + dlon)
        state, _ = apply_hazard(state, detection, ZONE, ROUTE, POLICY)
    state, _ = advance_clock(state, T0 + timedelta(seconds=clock_s), POLICY)
    if state is None:
        return
    decoded = decode_hazard_state(encode_hazard_state(state))
    assert decoded == state
    assert all(len(i.sightings) <= incidents.MAX_SIGHTINGS for i in decoded.incidents)


def test_decoding_garbage_says_what_it_is() -> None:
    with pytest.raises(ValueError, match="hazard state"):
        decode_hazard_state(b"{")
    with pytest.raises(ValueError, match="version"):
        decode_hazard_state(b"[7,null,[],{}]")
