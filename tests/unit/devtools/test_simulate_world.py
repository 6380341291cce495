"""One world for the simulators: a vendor or a fire is a thing at a place for a time, seen by
the cameras facing it and the drone sorties passing it, gone once a team resolves it."""

from __future__ import annotations

import heapq
import json
import math
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from itertools import takewhile

import pytest

from patrol.devtools.simulate import CameraSimConfig, DroneSimConfig, camera_events, drone_events
from patrol.devtools.simulate.events import SimEvent
from patrol.devtools.simulate.geo import COUNTY
from patrol.devtools.simulate.hazards import BURNING, VENDING, Hazard, HazardWorld
from patrol.devtools.simulate.resolutions import ResolutionFeed
from patrol.domain.models import Detection
from patrol.domain.zones import Scene, load_zones

START = datetime(2026, 11, 27, 9, 0, tzinfo=timezone(timedelta(hours=8)))
HAZARDS = (VENDING, BURNING)
ZONES = load_zones()


def both(world: HazardWorld, minutes: float, seed: int = 7) -> list[Detection]:
    """The hazard detections of cameras and drones sharing `world`, in event-time order."""
    events: Iterator[SimEvent] = heapq.merge(
        camera_events(CameraSimConfig(), seed=seed, start=START, world=world),
        drone_events(DroneSimConfig(), seed=seed, start=START, world=world),
        key=lambda e: e.event_time,
    )
    end = START + timedelta(minutes=minutes)
    return [
        Detection.model_validate_json(e.value)
        for e in takewhile(lambda e: e.event_time < end, events)
        if e.kind in HAZARDS
    ]


def world(seed: int = 7) -> HazardWorld:
    return HazardWorld(CameraSimConfig().world(), seed=seed)


def metres(d: Detection, hazard: Hazard) -> float:
    assert d.location is not None
    x, y = COUNTY.to_metres(d.location.lat, d.location.lon)
    hx, hy = hazard.xy
    return math.hypot(x - hx, y - hy)


def second(d: Detection) -> float:
    return (d.observed_at - START).total_seconds()


def hazard(w: HazardWorld, hazard_id: str) -> Hazard:
    return next(h for h in w.until(24 * 3600) if h.hazard_id == hazard_id)


def near(detections: list[Detection], h: Hazard, radius: float = 25) -> list[Detection]:
    return [d for d in detections if d.kind == h.kind and metres(d, h) <= radius]


@pytest.fixture(scope="module")
def morning() -> tuple[HazardWorld, list[Detection]]:
    w = world()
    return w, both(w, 4 * 60)


def test_cameras_and_drones_built_apart_draw_the_same_world() -> None:
    cameras = HazardWorld(CameraSimConfig().world(), seed=3).until(12 * 3600)
    drones = HazardWorld(DroneSimConfig().world(), seed=3).until(12 * 3600)
    assert cameras == drones and len(cameras) > 20
    assert HazardWorld(CameraSimConfig().world(), seed=4).until(12 * 3600) != cameras


def test_every_vendor_and_fire_seen_is_one_of_the_worlds_where_it_is(
    morning: tuple[HazardWorld, list[Detection]],
) -> None:
    w, detections = morning
    assert detections
    for d in detections:
        assert any(
            h.kind == d.kind and metres(d, h) <= 15 and w.present(h, second(d) + 0.001)
            for h in w.until(second(d) + 0.001)
        ), d.event_id


def test_a_hazard_a_camera_faces_is_the_one_a_passing_drone_sees(
    morning: tuple[HazardWorld, list[Detection]],
) -> None:
    w, detections = morning
    seen_by_both = []
    for h in w.until(4 * 3600):
        sources = {d.source.type for d in near(detections, h, 15)}
        if sources == {"camera", "drone"}:
            seen_by_both.append(h)
    assert seen_by_both
    # the scripted market vendor stands beside the city loop the Anwen dock flies first
    vendor = hazard(w, "scripted-vendor")
    assert vendor in seen_by_both
    cameras = [d for d in near(detections, vendor, 15) if d.source.type == "camera"]
    drones = [d for d in near(detections, vendor, 15) if d.source.type == "drone"]
    assert {d.source.id for d in drones} == {"drone-anwen-01"}
    assert min(second(d) for d in drones) < 10 * 60  # the first sortie passes it
    assert len({d.source.id for d in cameras}) >= 1


def test_a_drone_sees_a_fire_again_on_each_sortie_while_it_burns() -> None:
    """Not five fires 400–1,700 m apart that nobody sees again: one fire, one place."""
    w = world()
    detections = [d for d in both(w, 8 * 60) if d.source.type == "drone"]
    fires = [d for d in detections if d.kind == BURNING]
    assert fires
    sites = {
        next(h.hazard_id for h in w.until(second(d)) if h.kind == BURNING and metres(d, h) <= 15)
        for d in fires
    }
    assert len(sites) < len(fires) / 2  # frames and sorties see the same fires again


def test_a_resolved_hazard_is_not_seen_after_it_was_resolved_and_a_returning_one_is_back() -> None:
    baseline_world = world()
    baseline = both(baseline_world, 3 * 60)
    vendor = hazard(baseline_world, "scripted-vendor")
    resolved_at = 30 * 60.0
    assert any(second(d) > resolved_at for d in near(baseline, vendor))  # without a team

    w = world()
    # the task's location is its first detection's, a few metres from the vendor
    lat, lon = COUNTY.to_degrees(vendor.xy[0] + 3, vendor.xy[1] - 2)
    assert w.resolve(VENDING, lat, lon, resolved_at, radius_m=100) == [vendor]
    seen = near(both(w, 3 * 60), vendor)
    assert vendor.returns_after is not None
    back = resolved_at + vendor.returns_after
    assert any(second(d) < resolved_at for d in seen)
    assert not any(resolved_at <= second(d) < back for d in seen)
    assert any(second(d) >= back for d in seen)  # back 15 minutes after the team left


def test_a_hazard_that_does_not_return_stays_gone() -> None:
    w = world()
    fire = next(
        h
        for h in w.until(3 * 3600)
        if h.kind == BURNING and h.returns_after is None and w.cameras_seeing(h)
    )
    resolved_at = fire.begins + min(fire.lasts / 2, 600)
    w.resolve(BURNING, fire.lat, fire.lon, resolved_at, radius_m=100)
    seen = near(both(w, 6 * 60), fire)
    assert seen and all(second(d) < resolved_at for d in seen)


def test_the_scripted_fire_rekindles_after_it_was_put_out() -> None:
    w = world()
    fire = hazard(w, "scripted-fire")
    w.resolve(BURNING, fire.lat, fire.lon, 20 * 60.0, radius_m=100)
    seen = [second(d) for d in near(both(w, 60), fire)]
    assert any(s < 20 * 60 for s in seen)
    assert not any(20 * 60 <= s < 30 * 60 for s in seen)
    assert any(30 * 60 <= s < 50 * 60 for s in seen)


def test_a_resolution_removes_only_what_is_there_then_of_that_kind_nearby() -> None:
    w = world()
    vendor = hazard(w, "scripted-vendor")
    assert w.resolve(BURNING, vendor.lat, vendor.lon, 600.0, radius_m=100) == []
    assert w.resolve(VENDING, vendor.lat + 0.01, vendor.lon, 600.0, radius_m=100) == []
    assert w.resolve(VENDING, vendor.lat, vendor.lon, 30.0, radius_m=100) == []  # not yet there
    assert w.episodes(vendor) == [(vendor.begins, vendor.begins + vendor.lasts)]


def test_a_returned_hazard_resolved_again_is_gone_for_good() -> None:
    w = world()
    vendor = hazard(w, "scripted-vendor")
    assert vendor.returns_after is not None
    w.resolve(VENDING, vendor.lat, vendor.lon, 1800.0, radius_m=100)
    back = 1800.0 + vendor.returns_after
    assert not w.present(vendor, back - 1) and w.present(vendor, back)
    w.resolve(VENDING, vendor.lat, vendor.lon, back + 600, radius_m=100)
    assert w.episodes(vendor) == [(vendor.begins, 1800.0), (back, back + 600)]
    assert w.next_presence(vendor, back + 600) is None


def test_fires_burn_mostly_in_the_countryside_and_vendors_stand_in_town() -> None:
    by_kind: Counter[tuple[str, bool]] = Counter()
    for h in world(11).until(7 * 24 * 3600):
        scene = ZONES.locate(h.lat, h.lon).scene
        by_kind[(h.kind, scene in (Scene.rural, Scene.water_source, None))] += 1
    assert by_kind[(BURNING, True)] > 2 * by_kind[(BURNING, False)]
    assert by_kind[(VENDING, False)] > 2 * by_kind[(VENDING, True)]


def test_some_hazards_are_drawn_to_come_back() -> None:
    drawn = world(5).until(7 * 24 * 3600)
    returning = {
        kind: sum(1 for h in drawn if h.kind == kind and h.returns_after) for kind in HAZARDS
    }
    total = Counter(h.kind for h in drawn)
    assert 0.2 < returning[VENDING] / total[VENDING] < 0.5
    assert 0.05 < returning[BURNING] / total[BURNING] < 0.3


def test_a_resolved_answer_to_a_hazard_task_removes_the_hazard_at_the_tasks_place() -> None:
    w = world()
    vendor = hazard(w, "scripted-vendor")
    feed = ResolutionFeed(w, START, radius_m=100)
    task = {
        "task_id": "t-vendor",
        "task_type": VENDING,
        "location": {"lat": vendor.lat + 0.00003, "lon": vendor.lon},
    }
    resolved = {
        "feedback_id": "fb-1",
        "task_id": "t-vendor",
        "status": "resolved",
        "at": (START + timedelta(minutes=40)).isoformat(),
    }
    accepted = {**resolved, "feedback_id": "fb-0", "status": "accepted"}
    feed.feedback(json.dumps(accepted).encode())
    feed.feedback(json.dumps(resolved).encode())  # read before its task: it waits
    assert w.present(vendor, 41 * 60)
    feed.task(json.dumps(task).encode())
    feed.task(json.dumps({**task, "task_id": "t-parking", "task_type": "illegal_parking"}).encode())
    feed.feedback(b"not json")
    assert feed.removed == 1
    assert not w.present(vendor, 41 * 60)
    feed.feedback(json.dumps(resolved).encode())  # a repeated answer changes nothing
    assert w.episodes(vendor)[0] == (vendor.begins, 40 * 60.0)
    assert len(w.episodes(vendor)) == 2  # the scripted vendor comes back
