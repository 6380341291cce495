"""The hazard agent driven with fakes, no broker: incidents, write-back, clock, revoke, and where
its table's records go."""

from __future__ import annotations

from datetime import datetime, timedelta

from prometheus_client import REGISTRY

from patrol.domain import incidents, tasks, verification
from patrol.domain.models import Detection, DetectionKind, EnforcementTask, TaskType
from patrol.domain.routing import load_routing
from patrol.domain.zones import load_zones
from patrol.kafka import envelopes, loop_records
from patrol.kafka.loop_records import LoopRecord
from patrol.kafka.partitioning import partition_of
from patrol.settings import Settings
from patrol.worker.hazard_agent import HazardAgent, table_partition

from .fakes import FakeBatches

ZONES = load_zones()
RESERVOIR = ZONES.get("jianshan-liuan-reservoir")
POINT = ZONES.polygon(RESERVOIR.zone_id).representative_point()
T0 = datetime.fromisoformat("2026-11-27T10:00:00+08:00")
PARTITIONS = 3
FIRE = incidents.hazard_key(DetectionKind.open_burning)
FIRE_PARTITION = partition_of(FIRE, PARTITIONS)
CHANGELOG = "test-hazard-incidents-changelog"


def fire(event_id: str, at: datetime, north_m: float = 0.0) -> bytes:
    detection = {
        "schema_version": 1,
        "event_id": event_id,
        "kind": "open_burning",
        "source": {"type": "drone", "id": "uav-01", "route_id": "route-1"},
        "observed_at": at.isoformat(),
        "location": {"lat": POINT.y + north_m / 111_320, "lon": POINT.x},
        "confidence": 0.9,
    }
    raw = Detection.model_validate(detection).model_dump_json().encode()
    return envelopes.routed_item(raw, RESERVOIR.zone_id, 1_000)


class Harness:
    def __init__(self, states: dict[bytes, bytes] | None = None) -> None:
        self.states: dict[bytes, bytes] = {} if states is None else states
        self.tasks: list[EnforcementTask] = []
        self.outcomes: list[verification.WatchOutcome] = []
        """What the agent sent the loop of the watches it kept."""
        self.batches = FakeBatches()
        self.agent = HazardAgent(
            policy=incidents.IncidentPolicy.from_settings(Settings()),
            zones=ZONES,
            routing=load_routing(None),
            partitions=PARTITIONS,
            states=self.states,
            records=self.batches,
            changelog_topic=CHANGELOG,
            emit_task=self._emit,
            send_watch_outcome=self._outcome,
        )

    async def _emit(self, task: EnforcementTask, ingested_ms: int) -> None:
        self.tasks.append(task)

    async def _outcome(self, outcome: verification.WatchOutcome) -> None:
        self.outcomes.append(outcome)

    async def watch(self, watch: tasks.Watch) -> None:
        """A watch record from the loop, on the fire's partition."""
        await self.agent.take(
            FIRE_PARTITION, loop_records.headers(LoopRecord.watch), loop_records.watch_record(watch)
        )

    async def send(self, *items: bytes, clock: datetime | None = None) -> None:
        for value in envelopes.batch_records(list(items), clock):
            await self.agent.take(FIRE_PARTITION, [], value)
        await self.agent.after_event()


def open_fires() -> float:
    return REGISTRY.get_sample_value("patrol_incidents_open", {"kind": "open_burning"}) or 0.0


async def test_frames_of_one_fire_give_one_urgent_task_and_reach_the_table_per_record() -> None:
    h = Harness()
    await h.agent.take(
        FIRE_PARTITION,
        [],
        next(
            envelopes.batch_records([fire("f0", T0), fire("f1", T0 + timedelta(minutes=4), 30)], T0)
        ),
    )
    assert h.states == {} and h.batches.pending == []  # written after the event, not per read
    await h.agent.after_event()
    (task,) = h.tasks
    assert task.priority.value == "urgent" and [e.event_id for e in task.evidence] == ["f0"]
    assert incidents.open_incident_count(incidents.decode_hazard_state(h.states[FIRE])) == 1
    # one changelog record for the kind, on the event's partition, submitted with the event
    assert h.batches.submitted == [(CHANGELOG, FIRE_PARTITION, FIRE, h.states[FIRE])]


async def test_a_fire_far_away_is_a_second_incident_and_the_clock_closes_them() -> None:
    h = Harness()
    await h.send(fire("f0", T0), fire("far", T0 + timedelta(minutes=1), 500))
    assert len(h.tasks) == 2 and open_fires() == 2
    await h.send(clock=T0 + timedelta(hours=2))
    assert open_fires() == 0
    # the closed incidents leave the table and its changelog alike
    assert h.states == {} and h.batches.on(CHANGELOG)[-1] == (
        CHANGELOG,
        FIRE_PARTITION,
        FIRE,
        None,
    )


async def test_a_fire_older_than_the_retention_is_late_once_the_kinds_state_is_gone() -> None:
    h = Harness()
    await h.send(fire("f0", T0))
    await h.send(clock=T0 + timedelta(hours=26))
    assert h.states == {}  # every incident closed and forgotten
    late = {"source_type": "drone", "kind": "open_burning", "outcome": "late"}
    before = REGISTRY.get_sample_value("patrol_detections_total", late) or 0.0
    await h.send(fire("old", T0 + timedelta(hours=1)))
    assert [t.evidence[0].event_id for t in h.tasks] == ["f0"]  # no task the loop would not open
    assert REGISTRY.get_sample_value("patrol_detections_total", late) == before + 1


async def test_after_a_revoke_the_state_is_read_again_from_the_table() -> None:
    first = Harness()
    await first.send(fire("f0", T0))
    first.agent.revoked()
    second = Harness(dict(first.states))
    await second.send(fire("f2", T0 + timedelta(minutes=8), 20), fire("f0", T0))
    assert second.tasks == []  # the same incident, and a replayed frame: nothing new


async def test_a_watch_lives_on_its_kinds_partition_and_its_end_leaves_a_tombstone() -> None:
    h = Harness()
    until = T0 + timedelta(minutes=60)
    await h.watch(tasks.Watch("t-1", TaskType.open_burning, POINT.y, POINT.x, T0, until))
    await h.agent.after_event()
    key = verification.watch_key(TaskType.open_burning)
    assert h.batches.submitted == [(CHANGELOG, FIRE_PARTITION, key, h.states[key])]
    await h.send(clock=until + timedelta(seconds=1))
    assert [o.outcome for o in h.outcomes] == ["verified"]
    assert key not in h.states and h.batches.on(CHANGELOG)[-1] == (
        CHANGELOG,
        FIRE_PARTITION,
        key,
        None,
    )


def test_a_kinds_watches_are_placed_on_the_kinds_partition_for_any_partition_count() -> None:
    for partitions in range(1, 33):
        for kind in (DetectionKind.roadside_vending, DetectionKind.open_burning):
            kind_key = incidents.hazard_key(kind)
            watches = verification.watch_key(TaskType(kind.value))
            assert table_partition(watches, partitions) == partition_of(kind_key, partitions)
            assert table_partition(kind_key, partitions) == partition_of(kind_key, partitions)
    # at 8 partitions the watch key's own hash lands elsewhere: what table_partition is for
    watches = verification.watch_key(TaskType.roadside_vending)
    vending = incidents.hazard_key(DetectionKind.roadside_vending)
    assert partition_of(watches, 8) != partition_of(vending, 8)
