"""The intake's routing of one fetched round, without a broker: what goes where, with what clock."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord, TopicPartition
from prometheus_client import REGISTRY

from patrol.domain import grace, incidents
from patrol.domain.models import DeadLetter
from patrol.domain.zones import load_zones
from patrol.intake import consumer
from patrol.intake.consumer import IntakeConsumer, _Round
from patrol.kafka import envelopes
from patrol.kafka.partitioning import partition_of
from patrol.settings import Settings
from tests.unit.domain.test_decode import GOOD

SETTINGS = Settings(app_id="unit", partitions=6, clock_tick_seconds=5)
ZONES = load_zones()
NO_PARKING = next(z for z in ZONES.zones if z.no_parking)


def intake() -> IntakeConsumer:
    return IntakeConsumer(SETTINGS, ZONES, incidents.IncidentPolicy.from_settings(SETTINGS))


def record(value: bytes, offset: int = 0, topic: str = SETTINGS.topic_camera) -> Any:
    return ConsumerRecord(
        topic=topic,
        partition=1,
        offset=offset,
        timestamp=1_795_000_000_000 + offset,
        timestamp_type=0,
        key=b"cam-0017",
        value=value,
        checksum=None,
        serialized_key_size=8,
        serialized_value_size=len(value),
        headers=(),
    )


def plate_read(n: int, observed_at: datetime, **change: Any) -> bytes:
    point = ZONES.polygon(NO_PARKING.zone_id).representative_point()
    value = GOOD | {
        "event_id": f"cam-0017-{n:06d}",
        "observed_at": observed_at.isoformat(),
        "location": {"lat": point.y, "lon": point.x},
        "plate": f"浙G{n:05d}",
    }
    return json.dumps(value | change, ensure_ascii=False).encode()


T0 = datetime.fromisoformat("2026-11-27T10:00:00+08:00")
# The wall clock of a round: the reads above are a little older, as reads normally are.
WALL = T0 + timedelta(minutes=30)


def heartbeat(at: datetime, source_id: str = "cam-0017", event_id: str = "hb-1") -> bytes:
    value = {k: v for k, v in GOOD.items() if k not in ("plate", "plate_color", "location")}
    value |= {"kind": "heartbeat", "event_id": event_id, "media": [], "confidence": None}
    value |= {"source": {"type": "camera", "id": source_id}, "observed_at": at.isoformat()}
    return json.dumps(value).encode()


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_plate_read_in_a_no_parking_zone_goes_to_its_cases_partition() -> None:
    worker, work = intake(), _Round(WALL)
    raw = plate_read(1, T0)
    worker._take(work, record(raw))

    key = grace.case_key("浙G00001", NO_PARKING.zone_id).encode()
    target = (worker.topics.cases, partition_of(key, 6))
    assert list(work.routed) == [target]
    (batch,) = [envelopes.decode(r) for r in envelopes.batch_records(work.routed[target], None)]
    (routed,) = batch.items
    assert routed.detection.event_id == "cam-0017-000001"
    assert routed.zone_id == NO_PARKING.zone_id
    assert routed.ingested_ms == 1_795_000_000_000
    assert worker.clock == T0


def test_bad_input_becomes_a_dead_letter_naming_where_it_came_from() -> None:
    worker, work = intake(), _Round(WALL)
    worker._take(work, record(b"{not json", offset=7, topic=SETTINGS.topic_drone))
    worker._take(work, record(plate_read(2, T0, plate="浙G1"), offset=8))

    assert not work.routed
    letters = [DeadLetter.model_validate_json(value) for _key, value in work.deadletters]
    assert [(d.reason.value, d.topic, d.offset) for d in letters] == [
        ("invalid_json", SETTINGS.topic_drone, 7),
        ("schema", SETTINGS.topic_camera, 8),
    ]
    assert base64.b64decode(letters[0].value_b64) == b"{not json"
    assert worker.clock is None  # nothing usable was seen


def test_a_record_that_breaks_the_decoder_is_dead_lettered_and_the_round_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = consumer.decode_detection

    def breaking(raw: bytes | None, *, max_bytes: int) -> Any:
        if raw is not None and b"breaks" in raw:
            raise RuntimeError("the decoder broke")
        return real(raw, max_bytes=max_bytes)

    monkeypatch.setattr(consumer, "decode_detection", breaking)
    worker, work = intake(), _Round(WALL)
    huge = plate_read(1, T0)[:-1] + b', "note": ' + b"9" * 4301 + b"}"  # past int()'s limit
    fetched = [
        record(b'{"breaks": 1}', offset=3),
        record(huge, offset=4),
        record(plate_read(2, T0), offset=5),
    ]
    tp = TopicPartition(SETTINGS.topic_camera, 1)
    for _order, (_tp, taken, rejection) in [worker._classify(tp, r, work) for r in fetched]:
        worker._take(work, taken, rejection)

    letters = [DeadLetter.model_validate_json(value) for _key, value in work.deadletters]
    assert [(d.reason.value, d.offset) for d in letters] == [
        ("processing_error", 3),
        ("invalid_json", 4),
    ]
    assert "RuntimeError: the decoder broke" in letters[0].detail
    assert "number out of range" in letters[1].detail
    assert sum(len(items) for items in work.routed.values()) == 1  # the good read went on


def test_heartbeats_and_screened_out_reads_move_the_clock_but_route_nothing() -> None:
    worker, work = intake(), _Round(WALL)
    heartbeat = {k: v for k, v in GOOD.items() if k not in ("plate", "plate_color", "location")}
    heartbeat |= {"kind": "heartbeat", "event_id": "hb-1", "media": [], "confidence": None}
    worker._take(work, record(json.dumps(heartbeat | {"observed_at": T0.isoformat()}).encode()))
    later = T0 + timedelta(seconds=30)
    worker._take(work, record(plate_read(3, later, confidence=0.2), offset=1))

    assert not work.routed and not work.deadletters
    assert worker.clock == later


def test_the_clock_goes_with_every_batch_and_to_idle_partitions_each_tick() -> None:
    worker = intake()
    partitions = [
        (topic, p) for topic in (worker.topics.cases, worker.topics.hazards) for p in range(6)
    ]

    first = _Round(WALL)
    worker._take(first, record(plate_read(1, T0)))
    (busy,) = first.routed
    assert {target for target, clock in worker._clock_due(first)} == set(partitions)

    # the clock moved less than a tick: only the partition with detections gets it
    second = _Round(WALL)
    worker._take(second, record(plate_read(1, T0 + timedelta(seconds=3)), offset=1))
    due = dict(worker._clock_due(second))
    assert list(due) == [busy]
    assert due[busy] == T0 + timedelta(seconds=3)

    # a heartbeat a tick later reaches every partition, idle ones included
    third = _Round(WALL)
    heartbeat = {k: v for k, v in GOOD.items() if k not in ("plate", "plate_color", "location")}
    heartbeat |= {"kind": "heartbeat", "event_id": "hb-2", "media": [], "confidence": None}
    at = T0 + timedelta(seconds=9)
    worker._take(third, record(json.dumps(heartbeat | {"observed_at": at.isoformat()}).encode()))
    due = dict(worker._clock_due(third))
    assert set(due) == set(partitions)  # each last got it at least a tick (5 s) ago
    assert set(due.values()) == {at}
    assert not third.routed


def test_a_device_with_a_wrong_clock_is_dead_lettered_and_moves_neither_clock_nor_sources() -> None:
    worker = intake()
    worker._take(_Round(WALL), record(plate_read(1, T0)))
    heard_from = dict(worker.sources_seen)
    counted = (
        sample("patrol_clock_skew_detections_total", source_type="camera"),
        sample("patrol_deadletters_total", reason="clock_skew"),
        sample("patrol_detections_total", source_type="camera", kind="unknown", outcome="invalid"),
    )

    work = _Round(WALL)
    tomorrow = WALL + timedelta(days=1)
    worker._take(work, record(heartbeat(tomorrow, "cam-0099"), offset=1))
    worker._take(work, record(plate_read(2, WALL + timedelta(minutes=10, seconds=1)), offset=2))

    assert not work.routed
    letters = [DeadLetter.model_validate_json(value) for _key, value in work.deadletters]
    assert [(d.reason.value, d.offset, d.received_at) for d in letters] == [
        ("clock_skew", 1, WALL),
        ("clock_skew", 2, WALL),
    ]
    assert letters[0].detail.endswith("check the clock of camera cam-0099")
    assert " is 1 d 0 h 0 min ahead of the worker's clock (limit 10 min," in letters[0].detail
    assert " is 10 min 1 s ahead " in letters[1].detail
    assert worker.clock == T0  # the event-time clock did not move
    assert worker.sources_seen.keys() == heard_from.keys()  # cam-0099 was not heard from
    assert (
        sample("patrol_clock_skew_detections_total", source_type="camera"),
        sample("patrol_deadletters_total", reason="clock_skew"),
        sample("patrol_detections_total", source_type="camera", kind="unknown", outcome="invalid"),
    ) == tuple(before + 2 for before in counted)

    # A read at the limit itself is a good read: routed, and it moves the clock.
    at_limit = _Round(WALL)
    worker._take(at_limit, record(plate_read(3, WALL + timedelta(minutes=10)), offset=3))
    assert at_limit.routed and not at_limit.deadletters
    assert worker.clock == WALL + timedelta(minutes=10)


def test_the_limit_is_patrol_max_future_minutes() -> None:
    settings = Settings(app_id="unit", partitions=6, max_future_minutes=60 * 24 * 2)
    worker = IntakeConsumer(settings, ZONES, incidents.IncidentPolicy.from_settings(settings))
    work = _Round(WALL)

    worker._take(work, record(heartbeat(WALL + timedelta(days=1))))

    assert not work.deadletters
    assert worker.clock == WALL + timedelta(days=1)
