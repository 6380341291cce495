"""Batch records on the internal topics: what the intake packs is what the agents unpack."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given, settings
from hypothesis import strategies as st

from patrol import envelopes
from patrol.intake_consumer import partition_of
from patrol.models import Detection
from tests.unit.test_intake import GOOD

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
