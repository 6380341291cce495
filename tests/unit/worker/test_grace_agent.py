"""The grace agent driven with fakes, no broker: reads, clock steps, SMS outcomes, revokes."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import pytest
from prometheus_client import REGISTRY

from patrol.domain import grace
from patrol.domain.models import Detection, EnforcementTask, TaskType
from patrol.domain.routing import load_routing
from patrol.domain.zones import load_zones
from patrol.kafka import envelopes
from patrol.kafka.partitioning import partition_of
from patrol.settings import Settings
from patrol.sms import outbox
from patrol.worker.agent import Expiries
from patrol.worker.grace_agent import GraceAgent

from .fakes import FakeBatches

ZONES = load_zones()
ZONE = ZONES.get("anwen-wenxi-rd")
POINT = ZONES.polygon(ZONE.zone_id).representative_point()
T0 = datetime.fromisoformat("2026-11-27T10:00:00+08:00")
PARTITIONS = 3
CHANGELOG, OUTBOX = "test-cases-changelog", "test-sms-outbox"
POLICY = grace.GracePolicy.from_settings(Settings())


@dataclass
class Harness:
    agent: GraceAgent
    cases: dict[bytes, bytes]
    batches: FakeBatches
    tasks: list[EnforcementTask]

    async def send(self, *items: tuple[str, datetime], clock: datetime | None = None) -> None:
        """One batch record of plate reads (event id, time) for PLATE, as the intake makes it."""
        await self.send_plate(PLATE, *items, clock=clock)

    async def send_plate(
        self, plate: str, *items: tuple[str, datetime], clock: datetime | None = None
    ) -> None:
        raw = [
            envelopes.routed_item(read(eid, at, plate), ZONE.zone_id, 1_000) for eid, at in items
        ]
        latest = max([at for _, at in items] + ([clock] if clock else []))
        for value in envelopes.batch_records(raw, clock or latest):
            await self.agent.take(partition_of(key(plate), PARTITIONS), [], value)
        await self.agent.after_event()

    async def tick(self, clock: datetime, partition: int | None = None) -> None:
        """A batch record with no detections, only the intake's clock."""
        partitions = range(PARTITIONS) if partition is None else [partition]
        for p in partitions:
            for value in envelopes.batch_records([], clock):
                await self.agent.take(p, [], value)
        await self.agent.after_event()


PLATE = "浙G12345"


def key(plate: str) -> bytes:
    return grace.case_key(plate, ZONE.zone_id).encode()


def read(event_id: str, at: datetime, plate: str = PLATE) -> bytes:
    detection = {
        "schema_version": 1,
        "event_id": event_id,
        "kind": "plate_read",
        "source": {"type": "camera", "id": "cam-0001"},
        "observed_at": at.isoformat(),
        "location": {"lat": POINT.y, "lon": POINT.x},
        "confidence": 0.95,
        "plate": plate,
    }
    return Detection.model_validate(detection).model_dump_json().encode()


def harness(cases: dict[bytes, bytes] | None = None) -> Harness:
    tasks: list[EnforcementTask] = []

    async def emit_task(task: EnforcementTask, ingested_ms: int) -> None:
        tasks.append(task)

    table = {} if cases is None else cases
    batches = FakeBatches()
    agent = GraceAgent(
        policy=POLICY,
        zones=ZONES,
        routing=load_routing(None),
        partitions=PARTITIONS,
        cases=table,
        records=batches,
        changelog_topic=CHANGELOG,
        outbox_topic=OUTBOX,
        emit_task=emit_task,
    )
    return Harness(agent, table, batches, tasks)


def closed(result: str) -> float:
    value = REGISTRY.get_sample_value("patrol_grace_cases_closed_total", {"result": result})
    return value or 0.0


def minutes(m: float) -> timedelta:
    return timedelta(minutes=m)


async def test_a_read_opens_a_case_whose_changelog_and_warning_go_out_after_the_event() -> None:
    h = harness()
    raw = envelopes.routed_item(read("r0", T0), ZONE.zone_id, 1_000)
    (value,) = envelopes.batch_records([raw], T0)
    partition = partition_of(key(PLATE), PARTITIONS)

    await h.agent.take(partition, [], value)

    assert h.batches.submitted == []  # nothing leaves before the event is done
    assert [(r[0], r[1], r[2]) for r in h.batches.pending] == [
        (CHANGELOG, partition, key(PLATE)),
        (OUTBOX, partition, key(PLATE)),
    ]
    await h.agent.after_event()
    (warning,) = h.batches.on(OUTBOX)
    assert warning[3] is not None
    request = outbox.request_from_record(warning[3])
    assert request.plate == PLATE and request.deadline == T0 + minutes(10)
    assert grace.decode_case_state(h.cases[key(PLATE)]).open_case is not None
    assert h.agent.open_cases == 1


async def test_a_confirming_read_emits_the_task_with_the_sms_outcome_it_knows() -> None:
    h = harness()
    await h.send(("r0", T0))
    message_id = outbox.request_from_record(h.batches.on(OUTBOX)[0][3] or b"").message_id
    outcome = outbox.outcome_record([outbox.SmsOutcome(key(PLATE), message_id, "sent")])
    await h.agent.take(partition_of(key(PLATE), PARTITIONS), outbox.OUTCOME_HEADERS, outcome)
    await h.agent.after_event()

    await h.send(("r1", T0 + minutes(10.5)))

    (task,) = h.tasks
    assert [e.event_id for e in task.evidence] == ["r0", "r1"]
    assert task.sms is not None and task.sms.status == "sent"
    assert h.agent.open_cases == 0


async def test_a_clock_step_past_deadline_plus_r_closes_the_case_as_self_corrected() -> None:
    h = harness()
    await h.send(("r0", T0))
    before = closed("self_corrected")
    await h.tick(T0 + minutes(15))  # deadline + R: still open
    assert h.agent.open_cases == 1
    await h.tick(T0 + minutes(15) + timedelta(seconds=1))
    assert closed("self_corrected") == before + 1
    assert h.agent.open_cases == 0 and h.tasks == []
    state = grace.decode_case_state(h.cases[key(PLATE)])
    assert state.open_case is None and state.closed_unconfirmed is not None


async def test_after_a_revoke_the_index_is_rebuilt_from_what_the_table_recovered() -> None:
    first = harness()
    await first.send(("r0", T0))
    recovered = dict(first.cases)  # what a changelog restore gives the new owner

    first.agent.revoked()
    second = harness(recovered)
    await second.tick(T0 + minutes(16))

    assert second.agent.open_cases == 0
    state = grace.decode_case_state(second.cases[key(PLATE)])
    assert state.open_case is None
    (record,) = second.batches.on(CHANGELOG)  # the close-out reached the changelog
    assert record[2] == key(PLATE)


async def test_a_revoked_agent_given_its_partitions_back_closes_its_cases_once() -> None:
    h = harness()
    await h.send(("r0", T0))
    before = closed("self_corrected")
    h.agent.revoked()
    await h.tick(T0 + minutes(16))
    await h.tick(T0 + minutes(17))
    assert closed("self_corrected") == before + 1


async def test_a_detection_that_fails_is_logged_and_the_rest_of_the_batch_applies(
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = harness()
    broken = b'{"z":"anwen-wenxi-rd","ms":1,"d":{"schema_version":1}}'
    good = envelopes.routed_item(read("r0", T0), ZONE.zone_id, 1_000)
    value = b'{"items":[%s],"clock":null}' % good
    with caplog.at_level(logging.ERROR):
        await h.agent.take(0, [], b"not a batch")
        await h.agent.take(0, [], broken)
        await h.agent.take(partition_of(key(PLATE), PARTITIONS), [], value)
    await h.agent.after_event()
    assert "could not decode a batch" in caplog.text
    assert h.agent.open_cases == 1


async def test_a_close_out_of_100000_cases_closes_each_once() -> None:
    route = load_routing(None).route(TaskType.illegal_parking, ZONE.scene)
    detection = Detection.model_validate_json(read("o", T0))
    opened, _ = grace.apply_read(None, grace.PlateRead.of(detection), ZONE, route, POLICY)
    assert opened is not None
    plates = [f"浙G{n:05d}" for n in range(100_000)]
    cases = {key(p): grace.encode_case_state(replace(opened, plate=p)) for p in plates}
    h = harness(cases)
    before = closed("self_corrected")

    await h.tick(T0 + minutes(16))

    assert closed("self_corrected") == before + 100_000
    assert h.agent.open_cases == 0
    assert len({r[2] for r in h.batches.on(CHANGELOG)}) == 100_000
    assert all(grace.decode_case_state(raw).open_case is None for raw in cases.values())


def test_expiries_pop_a_bucket_only_once_the_clock_has_passed_its_whole_second() -> None:
    expiries = Expiries()
    due = T0 + timedelta(milliseconds=500)
    expiries.schedule(b"k", due)
    assert expiries.pop_due(T0 + timedelta(milliseconds=900)) == set()
    assert expiries.pop_due(T0 + timedelta(seconds=1)) == {b"k"}
    assert expiries.pop_due(T0 + timedelta(hours=1)) == set()  # popped once
    expiries.schedule(b"k", None)  # nothing ever due: not indexed
    assert expiries.buckets == {}


async def test_a_stale_index_entry_is_scheduled_again_not_closed() -> None:
    h = harness()
    await h.send(("r0", T0))
    # the read at T0 + 20 min closes the first case and opens another, due 15 min later
    await h.send(("r1", T0 + minutes(20)))
    await h.tick(T0 + minutes(21))
    assert h.agent.open_cases == 1
    await h.tick(T0 + minutes(35) + timedelta(seconds=1))
    assert h.agent.open_cases == 0
