"""Batch records on the internal topics: what the intake packs is what the agents unpack."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given, settings
from hypothesis import strategies as st

from patrol.domain.decode import Rejection, decode_detection
from patrol.domain.models import Detection
from patrol.kafka import envelopes
from patrol.kafka.partitioning import murmur2, partition_of
from tests.unit.domain.test_decode import GOOD

CLOCK = datetime(2026, 11, 27, 2, 0, 5, tzinfo=UTC)


def raw_detection(n: int, *, padding: str = "") -> bytes:
    value = GOOD | {"event_id": f"cam-0017-{n:08d}", "note": padding}
    return json.dumps(value, ensure_ascii=False, indent=1).encode()


def unpack(records: list[bytes]) -> list[envelopes.RoutedBatch]:
    return [envelopes.decode(record) for record in records]


def test_an_item_carries_the_original_detection_its_zone_and_ingest_time() -> None:
    raw = b"  " + raw_detection(1) + b"\n"
    item = envelopes.routed_item(raw, 'zone "a"', 1_795_000_000_123)
    (batch,) = unpack(list(envelopes.batch_records([item], CLOCK)))
    (routed,) = batch.items
    assert routed.detection == Detection.model_validate_json(raw)
    assert routed.zone_id == 'zone "a"'
    assert routed.ingested_ms == 1_795_000_000_123
    assert batch.clock == CLOCK


def test_a_clock_without_detections_is_one_empty_batch() -> None:
    (batch,) = unpack(list(envelopes.batch_records([], CLOCK)))
    assert batch.items == []
    assert batch.clock == CLOCK


def test_no_clock_yet_is_null() -> None:
    item = envelopes.routed_item(raw_detection(1), "z", 1)
    (batch,) = unpack(list(envelopes.batch_records([item], None)))
    assert batch.clock is None


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=40_000), min_size=1, max_size=700))
def test_batches_keep_order_stay_within_limits_and_the_clock_comes_last(
    paddings: list[int],
) -> None:
    raws = [raw_detection(n, padding="x" * pad) for n, pad in enumerate(paddings)]
    items = [envelopes.routed_item(raw, "z", n) for n, raw in enumerate(raws)]
    records = list(envelopes.batch_records(items, CLOCK))
    batches = unpack(records)
    unpacked = [routed for batch in batches for routed in batch.items]
    assert [r.detection.event_id for r in unpacked] == [
        f"cam-0017-{n:08d}" for n in range(len(raws))
    ]
    assert [b.clock for b in batches] == [None] * (len(batches) - 1) + [CLOCK]
    for record, batch in zip(records, batches, strict=True):
        assert len(batch.items) <= envelopes.MAX_BATCH_ITEMS
        # only a batch of one may exceed the byte limit (a single large detection)
        assert len(record) <= envelopes.MAX_BATCH_BYTES + 64 or len(batch.items) == 1


def test_partition_of_is_the_producers_default_partitioner() -> None:
    partitioner = DefaultPartitioner()
    partitions = list(range(6))
    for n in range(200):
        key = f"zone-{n % 17}|浙G{n:05d}".encode()
        assert partition_of(key, 6) == partitioner(key, partitions, partitions)


def test_the_clock_keeps_its_offset_through_a_batch() -> None:
    clock = datetime(2026, 11, 27, 10, 0, tzinfo=UTC) + timedelta(microseconds=1)
    (batch,) = unpack(list(envelopes.batch_records([], clock.astimezone())))
    assert batch.clock == clock


_TIMES = st.builds(
    lambda date, sep, frac, offset: f"{date}{sep}10:00:0{frac}{offset}",
    st.sampled_from(["2026-11-27", "2024-02-29", "1999-12-31"]),
    st.sampled_from(["T", "t", " "]),
    st.sampled_from(["0", "5", "9.1", "0.123", "1.000001", "2.1234567", "3.123456789"]),
    st.sampled_from(["Z", "z", "+08:00", "-03:30", "+00:00", "+23:59", "", "+0800"]),
)
# JSON numbers of every type pydantic coerces to float (ints, bools, numeric strings).
_UNIT = st.one_of(
    st.floats(min_value=0, max_value=1), st.integers(0, 1), st.booleans(), st.just("0.9")
)
_LAT = st.one_of(st.floats(min_value=-90, max_value=90), st.integers(-90, 90), st.just("29.5"))
_LON = st.one_of(st.floats(min_value=-180, max_value=180), st.integers(-180, 180))
_URLS = st.sampled_from(["https://e.example/1.jpg", "http://e/2", "https://e/x?y=%E4"])
_DETECTIONS = st.builds(
    lambda kind, plate, source, drop, extra, rest: {
        k: v
        for k, v in (
            {"schema_version": 1, "kind": kind, "source": source}
            | {"plate": plate if kind == "plate_read" else None}
            | rest
            | extra
        ).items()
        if k not in drop
    },
    kind=st.sampled_from(["plate_read", "roadside_vending", "open_burning", "heartbeat"]),
    plate=st.sampled_from(["浙G12345", "浙GD12345", "浙G1234警"]),
    source=st.one_of(
        st.builds(
            lambda sid, extra: {"type": "camera", "id": sid} | extra,
            st.text(min_size=1, max_size=4),
            st.sampled_from([{}, {"route_id": None}, {"route_id": "r"}, {"x": 1}]),
        ),
        st.builds(
            lambda route: {"type": "drone", "id": "uav-1", "route_id": route},
            st.text(min_size=1),
        ),
    ),
    drop=st.sets(st.sampled_from(["plate_color", "media", "confidence"]), max_size=1),
    extra=st.sampled_from([{}, {"note": "ignored"}, {"source_extra": {"a": [1, 2]}}]),
    rest=st.fixed_dictionaries(
        {
            "event_id": st.text(min_size=1, max_size=8),
            "observed_at": _TIMES,
            "location": st.fixed_dictionaries({"lat": _LAT, "lon": _LON}),
            "confidence": _UNIT,
            "plate_color": st.one_of(st.none(), st.text(max_size=4)),
            "media": st.lists(_URLS, max_size=3),
        }
    ),
)


@settings(max_examples=400, deadline=None)
@given(_DETECTIONS)
def test_the_trusted_batch_decode_builds_what_full_validation_built(value: dict[str, Any]) -> None:
    """Batch records skip the checks the intake already made: for anything the intake
    accepts, the agents must see exactly the Detection full validation gave it."""
    raw = json.dumps(value, ensure_ascii=False).encode()
    validated = decode_detection(raw, max_bytes=1_048_576)
    if isinstance(validated, Rejection):
        return  # dead-lettered at the intake; never in a batch record
    item = envelopes.routed_item(raw, "z", 1)
    (batch,) = unpack(list(envelopes.batch_records([item], CLOCK)))
    (routed,) = batch.items
    trusted = routed.detection
    assert trusted == validated
    assert trusted.model_fields_set == validated.model_fields_set
    assert trusted.model_dump_json() == validated.model_dump_json()
    assert repr(trusted) == repr(validated)  # same value types, e.g. float, never int


def test_full_validation_still_rejects_what_the_trusted_decode_would_pass() -> None:
    bad = GOOD | {"plate": "not a plate", "media": ["ftp://x"], "observed_at": "2026-11-27"}
    assert isinstance(decode_detection(json.dumps(bad).encode(), max_bytes=1_048_576), Rejection)


@given(st.binary(max_size=64))
def test_murmur2_is_kafkas(key: bytes) -> None:
    assert murmur2(key) == aiokafka_murmur2(key)
