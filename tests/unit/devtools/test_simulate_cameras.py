"""The camera simulator: reproducible, valid, realistic enough to exercise every rule."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from itertools import pairwise, takewhile

import pytest
from pydantic import ValidationError

from patrol.devtools.simulate import CameraSimConfig, SimEvent, camera_events, load_cameras
from patrol.domain.models import Detection, is_valid_plate
from patrol.domain.zones import Scene, load_zones

START = datetime(2026, 11, 27, 8, 0, tzinfo=timezone(timedelta(hours=8)))
ZONES = load_zones()


def first(events: Iterator[SimEvent], minutes: float) -> list[SimEvent]:
    end = START + timedelta(minutes=minutes)
    return list(takewhile(lambda e: e.event_time < end, events))


def cameras(minutes: float, *, seed: int = 7, **config: object) -> list[SimEvent]:
    return first(camera_events(CameraSimConfig(**config), seed=seed, start=START), minutes)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def morning() -> list[SimEvent]:
    """Three hours of the default mix, demo scene included."""
    return cameras(180)


@pytest.fixture(scope="module")
def morning_detections(morning: list[SimEvent]) -> list[Detection]:
    return [Detection.model_validate_json(e.value) for e in morning]


def test_same_seed_gives_byte_identical_records() -> None:
    a = cameras(60, seed=11, malformed_fraction=0.05)
    b = cameras(60, seed=11, malformed_fraction=0.05)
    assert [(e.event_time, e.key, e.value, e.kind) for e in a] == [
        (e.event_time, e.key, e.value, e.kind) for e in b
    ]


def test_different_seeds_give_different_traffic() -> None:
    a = [e.value for e in cameras(30, seed=1)]
    b = [e.value for e in cameras(30, seed=2)]
    assert a != b


def test_records_come_in_event_time_order_and_start_at_start(morning: list[SimEvent]) -> None:
    times = [e.event_time for e in morning]
    assert times == sorted(times)
    assert START <= times[0] < START + timedelta(seconds=30)


def test_every_record_is_a_valid_detection_keyed_by_its_camera(
    morning: list[SimEvent], morning_detections: list[Detection]
) -> None:
    camera_ids = {c.id for c in load_cameras()}
    for event, detection in zip(morning, morning_detections, strict=True):
        assert event.key.decode() == detection.source.id
        assert detection.source.id in camera_ids
        assert detection.source.type == "camera"
        assert detection.observed_at == event.event_time
        assert detection.kind == event.kind
        assert detection.observed_at.utcoffset() == timedelta(hours=8)
    assert len({d.event_id for d in morning_detections}) == len(morning_detections)


def test_plates_are_valid_and_look_like_the_county(morning_detections: list[Detection]) -> None:
    plates = {d.plate for d in morning_detections if d.kind == "plate_read"}
    assert plates and all(p is not None and is_valid_plate(p) for p in plates)
    assert all(d.plate is None for d in morning_detections if d.kind != "plate_read")
    jinhua = sum(1 for p in plates if p and p.startswith("浙G"))
    assert jinhua / len(plates) > 0.5
    assert any(p and not p.startswith("浙") for p in plates)
    assert any(p and len(p) == 8 for p in plates)  # new-energy
    assert any(p and p.endswith("警") for p in plates)


def test_all_kinds_appear_with_a_spread_of_confidence(morning_detections: list[Detection]) -> None:
    kinds = Counter(d.kind.value for d in morning_detections)
    assert set(kinds) == {"plate_read", "roadside_vending", "open_burning", "heartbeat"}
    reads = [d.confidence for d in morning_detections if d.kind == "plate_read"]
    assert sum(1 for c in reads if c is not None and c < 0.8) / len(reads) > 0.03
    assert sum(1 for c in reads if c is not None and c >= 0.85) / len(reads) > 0.7


def test_each_camera_sends_a_heartbeat_every_30_seconds(morning: list[SimEvent]) -> None:
    beats: defaultdict[bytes, list[datetime]] = defaultdict(list)
    for event in morning:
        if event.kind == "heartbeat":
            beats[event.key].append(event.event_time)
    assert len(beats) == len(load_cameras())
    for times in beats.values():
        gaps = {(b - a).total_seconds() for a, b in pairwise(times)}
        assert gaps == {30.0}


def test_cameras_stand_in_their_stated_zones() -> None:
    shipped = load_cameras()
    assert len(shipped) >= 12
    for camera in shipped:
        zone = ZONES.locate(camera.lat, camera.lon)
        assert zone.zone_id == camera.zone_id, camera.id
        assert zone.scene is camera.scene
    no_parking = sum(1 for c in shipped if ZONES.get(c.zone_id).no_parking)
    assert len(shipped) / 2 < no_parking < len(shipped)


def test_plate_reads_locate_in_the_cameras_zone(morning_detections: list[Detection]) -> None:
    zone_of = {c.id: c.zone_id for c in load_cameras()}
    for d in morning_detections:
        if d.kind == "plate_read" and d.location is not None:
            assert ZONES.locate(d.location.lat, d.location.lon).zone_id == zone_of[d.source.id]


def read_spans(detections: list[Detection]) -> dict[tuple[str, str], list[datetime]]:
    reads: defaultdict[tuple[str, str], list[datetime]] = defaultdict(list)
    for d in detections:
        if d.kind == "plate_read" and d.plate:
            reads[(d.source.id, d.plate)].append(d.observed_at)
    return reads


def test_dwell_mix_gives_both_overstays_and_self_corrections() -> None:
    events = cameras(240, seed=3, demo_script=False)
    reads = read_spans([Detection.model_validate_json(e.value) for e in events])
    spans = [max(t) - min(t) for t in reads.values()]
    short = sum(1 for s in spans if s < timedelta(minutes=10))
    long = sum(1 for s in spans if s >= timedelta(minutes=10))
    assert short > long > 0
    # An overstay is read again between its deadline and deadline + 5 minutes.
    assert any(
        any(timedelta(minutes=10) <= t - min(times) <= timedelta(minutes=15) for t in times)
        for times in reads.values()
    )


def test_reads_repeat_every_one_to_two_minutes_while_a_vehicle_stays() -> None:
    events = cameras(120, seed=4, demo_script=False)
    reads = read_spans([Detection.model_validate_json(e.value) for e in events])
    gaps = [(b - a).total_seconds() for times in reads.values() for a, b in pairwise(times)]
    assert gaps and all(60 <= g <= 120 for g in gaps)


def test_demo_script_shows_a_ticket_a_self_correction_and_hazards_early() -> None:
    detections = [Detection.model_validate_json(e.value) for e in cameras(20, seed=99)]
    reads = read_spans([d for d in detections if d.confidence is not None and d.confidence >= 0.8])
    graced = {c.id for c in load_cameras() if ZONES.get(c.zone_id).no_parking}
    civilian = {k: v for k, v in reads.items() if k[0] in graced and not k[1].endswith("警")}
    ticket = [
        k
        for k, times in civilian.items()
        if min(times) < START + timedelta(minutes=2)
        and any(timedelta(minutes=10) <= t - min(times) <= timedelta(minutes=15) for t in times)
    ]
    leaves = [
        k
        for k, times in civilian.items()
        if min(times) < START + timedelta(minutes=2)
        and max(times) - min(times) < timedelta(minutes=5)
    ]
    assert ticket and leaves
    early = [d for d in detections if d.observed_at < START + timedelta(minutes=3)]
    assert any(d.kind == "roadside_vending" and (d.confidence or 0) >= 0.6 for d in early)
    burning = [d for d in early if d.kind == "open_burning" and d.location is not None]
    assert any(
        ZONES.locate(d.location.lat, d.location.lon).scene is Scene.water_source
        for d in burning
        if d.location
    )


def test_rate_sets_the_plate_reads_per_second_of_event_time() -> None:
    events = cameras(8 * 60, seed=5, plate_reads_per_second=0.5, demo_script=False)
    per_second = sum(1 for e in events if e.kind == "plate_read") / (8 * 3600)
    assert 0.35 < per_second < 0.6


def test_a_vendor_is_seen_many_times() -> None:
    events = cameras(180, seed=8, demo_script=False, vending_per_hour=3, burning_per_hour=0)
    frames = Counter(e.key for e in events if e.kind == "roadside_vending")
    assert frames and max(frames.values()) >= 5
    assert not any(e.kind == "open_burning" for e in events)


def test_malformed_messages_are_each_rejected_by_the_contract() -> None:
    events = cameras(60, seed=12, malformed_fraction=0.2)
    malformed = [e for e in events if e.is_malformed]
    assert 0.1 < len(malformed) / len(events) < 0.3
    assert len({e.kind for e in malformed}) >= 4
    for event in malformed:
        with pytest.raises(ValidationError):
            Detection.model_validate_json(event.value)
    for event in events:
        if not event.is_malformed:
            Detection.model_validate_json(event.value)


def test_malformed_fraction_leaves_the_rest_of_the_traffic_unchanged() -> None:
    clean = cameras(30, seed=12)
    dirty = cameras(30, seed=12, malformed_fraction=0.3)
    assert len(clean) == len(dirty)
    kept = [(c.value, d.value) for c, d in zip(clean, dirty, strict=True) if not d.is_malformed]
    assert kept and all(c == d for c, d in kept)


def test_naive_start_is_refused() -> None:
    with pytest.raises(ValueError, match="no UTC offset"):
        camera_events(CameraSimConfig(), seed=1, start=datetime(2026, 11, 27, 8, 0))
