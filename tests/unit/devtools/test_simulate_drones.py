"""The drone simulator: missions fly their routes, detections sit on the route."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from itertools import pairwise, takewhile

import pytest
from shapely.geometry import LineString, Point

from patrol.devtools.simulate import DroneSimConfig, SimEvent, drone_events, load_routes
from patrol.devtools.simulate.geo import COUNTY
from patrol.devtools.simulate.hazards import WorldConfig
from patrol.domain.models import Detection, is_valid_plate
from patrol.domain.zones import load_zones

START = datetime(2026, 11, 27, 9, 0, tzinfo=timezone(timedelta(hours=8)))
ROUTES = {route.route_id: route for route in load_routes()}
ZONES = load_zones()


def drones(minutes: float, *, seed: int = 7, **config: object) -> list[SimEvent]:
    end = START + timedelta(minutes=minutes)
    events = drone_events(DroneSimConfig(**config), seed=seed, start=START)  # type: ignore[arg-type]
    return list(takewhile(lambda e: e.event_time < end, events))


@pytest.fixture(scope="module")
def day() -> list[Detection]:
    return [Detection.model_validate_json(e.value) for e in drones(8 * 60, seed=21)]


def test_shipped_routes_leave_from_two_docks_at_drone_speeds() -> None:
    assert {r.dock for r in ROUTES.values()} == {"anwen", "jianshan"}
    for route in ROUTES.values():
        assert 8 <= route.speed_mps <= 12
        assert route.path[0] == route.path[-1]  # back to the dock
        assert 2_000 < route.length_m < 15_000


def test_same_seed_same_bytes_different_seed_different() -> None:
    a, b, c = drones(120, seed=5), drones(120, seed=5), drones(120, seed=6)
    assert [(e.event_time, e.key, e.value) for e in a] == [
        (e.event_time, e.key, e.value) for e in b
    ]
    assert [e.value for e in a] != [e.value for e in c]


def test_every_detection_is_valid_and_tagged_with_its_route(day: list[Detection]) -> None:
    assert day
    for d in day:
        assert d.source.type == "drone"
        assert d.source.route_id in ROUTES
        assert d.source.id == ROUTES[d.source.route_id].drone_id
        if d.kind == "plate_read":
            assert d.plate is not None and is_valid_plate(d.plate)
    assert {d.source.id for d in day} == {"drone-anwen-01", "drone-jianshan-01"}


def test_the_drones_position_lies_within_5_m_of_its_route(day: list[Detection]) -> None:
    """Heartbeats and plate reads carry the drone's position; a vendor or a fire is located
    where it is, within the drone's sight of the route (hazards.py)."""
    lines = {
        route_id: LineString([COUNTY.to_metres(lat, lon) for lat, lon in route.path])
        for route_id, route in ROUTES.items()
    }
    sight = WorldConfig(cameras=(), routes=()).drone_sight_m
    hazards = 0
    for d in day:
        assert d.location is not None and d.source.route_id is not None
        where = Point(COUNTY.to_metres(d.location.lat, d.location.lon))
        off = lines[d.source.route_id].distance(where)
        if d.kind in ("heartbeat", "plate_read"):
            assert off <= 5.0, d.event_id
        else:
            hazards += 1
            assert off <= sight + 15, d.event_id
    assert hazards


def test_the_drone_moves_along_the_route_at_its_speed(day: list[Detection]) -> None:
    beats = [d for d in day if d.kind == "heartbeat" and d.source.id == "drone-anwen-01"]
    moved = 0
    for a, b in pairwise(beats):
        seconds = (b.observed_at - a.observed_at).total_seconds()
        if seconds != 15 or a.source.route_id != b.source.route_id:
            continue  # between missions
        assert a.location is not None and b.location is not None
        metres = Point(COUNTY.to_metres(a.location.lat, a.location.lon)).distance(
            Point(COUNTY.to_metres(b.location.lat, b.location.lon))
        )
        assert metres <= ROUTES[a.source.route_id or ""].speed_mps * seconds + 5
        moved += metres > 50
    assert moved > 10


def test_drones_fly_missions_and_are_silent_between_them(day: list[Detection]) -> None:
    times = sorted(d.observed_at for d in day if d.source.id == "drone-jianshan-01")
    assert times[0] < START + timedelta(minutes=2)
    gaps = [b - a for a, b in pairwise(times)]
    assert sum(1 for g in gaps if g > timedelta(minutes=10)) >= 8  # 8 h, a mission each 30 min


def test_hazards_are_seen_in_several_frames(day: list[Detection]) -> None:
    fires = [d for d in day if d.kind == "open_burning"]
    assert fires
    # Frames of one sighting are seconds apart, so most fires have a neighbour within 15 s.
    near = sum(
        1
        for a in fires
        if any(
            b is not a and abs((b.observed_at - a.observed_at).total_seconds()) <= 15 for b in fires
        )
    )
    assert near / len(fires) > 0.8
