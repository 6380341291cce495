"""The hazard agent: roadside vending and open burning incidents, one table key per kind.

Hazard detections are few, and one key per kind makes grouping exact across any partition
boundary. A kind's state holds all its open incidents (tens of KB encoded), so the agent keeps
the decoded state beside the table and writes it back once per batch record, not per detection.
It writes the table's data and its changelog records itself, as the grace agent does: through a
`RecordBatches` (the worker's `PartitionBatches`), which lets an incident's state reach the
changelog only after the task it decided (and a watch's end only after its outcome).

It also keeps the watches of resolved hazard tasks (`patrol.domain.verification`), under a key
of their own beside the kind's incidents: the loop sends each watch to the kind's partition,
and the agent sends back a re-detection or, once its clock passes the window, a verification.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from datetime import datetime

from patrol import metrics
from patrol.domain import incidents, verification
from patrol.domain.models import Detection, TaskType
from patrol.domain.routing import RoutingTable
from patrol.domain.zones import ZoneMap
from patrol.kafka import loop_records
from patrol.kafka.envelopes import RoutedDetection
from patrol.kafka.loop_records import LoopRecord
from patrol.kafka.partitioning import partition_of
from patrol.worker.agent import BatchAgent, RecordBatches
from patrol.worker.grace_agent import EmitTask

log = logging.getLogger("patrol.worker.hazards")

SendWatchOutcome = Callable[[verification.WatchOutcome], Awaitable[None]]
"""Sends a watch's outcome to the loop (the task's partition of the loop topic)."""


async def _no_loop(outcome: verification.WatchOutcome) -> None:
    return None


def table_partition(key: bytes, partitions: int) -> int:
    """The partition a hazard table key lives on: a kind's watches live with its incidents,
    on the kind's partition, wherever their own key would hash to."""
    if key.startswith(verification.WATCH_KEY_PREFIX):
        key = key.removeprefix(verification.WATCH_KEY_PREFIX)
    return partition_of(key, partitions)


class HazardAgent(BatchAgent):
    """Groups hazard detections into incidents and emits one task per incident."""

    log = log

    def __init__(
        self,
        *,
        policy: incidents.IncidentPolicy,
        zones: ZoneMap,
        routing: RoutingTable,
        partitions: int,
        states: MutableMapping[bytes, bytes],
        records: RecordBatches,
        changelog_topic: str,
        emit_task: EmitTask,
        send_watch_outcome: SendWatchOutcome = _no_loop,
    ) -> None:
        self.policy = policy
        self.zones = zones
        self.routing = routing
        self.partitions = partitions
        self.states = states
        """The table's data: one encoded `incidents.HazardState` per kind, and its watches."""
        self._records = records
        self._changelog = changelog_topic
        self._emit_task = emit_task
        self._send_watch_outcome = send_watch_outcome
        self._cache: dict[bytes, incidents.HazardState] = {}
        self._changed: dict[bytes, int] = {}
        """Kinds changed in the event at hand, to write back after it: key → partition."""
        self._clocks: dict[int, datetime] = {}
        self._keys_of = {
            partition: [
                key for key in incidents.HAZARD_KEYS if partition_of(key, partitions) == partition
            ]
            for partition in range(partitions)
        }
        # A kind's watches are written on the kind's partition (the loop sends them there).
        self._watch_keys_of = {
            partition: [verification.watch_key(TaskType(key.decode())) for key in keys]
            for partition, keys in self._keys_of.items()
        }

    async def take(
        self, partition: int, headers: Iterable[tuple[str, bytes]], value: bytes
    ) -> None:
        """A batch record from the intake, or a watch the loop sent."""
        if loop_records.kind_of(headers) is LoopRecord.watch:
            try:
                watch = loop_records.decode_watch(value)
            except (ValueError, KeyError, TypeError) as exc:
                log.error("an unreadable watch record on partition %d (%s)", partition, exc)
                return
            key = verification.watch_key(watch.task_type)
            await self._store_watches(
                partition, key, verification.add_watch(self._watches(key), watch)
            )
            clock = self._clocks.get(partition)
            if clock is not None:
                await self._expire_watches(partition, key, clock)
            return
        await self.apply_batch(partition, value)

    async def after_event(self) -> None:
        """Write the kinds that changed back to the table and their changelog, and hand the
        event's records to the producer, before the agent takes the next event (and so before
        faust can commit this one)."""
        changed, self._changed = self._changed, {}
        for key, partition in changed.items():
            state = self._cache.get(key)
            await self._write(
                partition, key, None if state is None else incidents.encode_hazard_state(state)
            )
        await self._records.submit()

    def revoked(self) -> None:
        self._clocks.clear()
        self._cache.clear()
        self._changed.clear()

    async def apply_read(self, partition: int, routed: RoutedDetection) -> None:
        detection = routed.detection
        key = incidents.hazard_key(detection.kind)
        zone = self.zones.get(routed.zone_id)
        route = self.routing.route(TaskType(detection.kind.value), zone.scene)
        source_type, kind = detection.source.type.value, detection.kind.value
        # Late whether or not the kind still holds a state: once every incident has closed and
        # its ids are forgotten, the state's own watermark is gone with it (as grace_agent).
        if incidents.beyond_retention(
            detection.observed_at, self._clocks.get(partition), self.policy
        ):
            metrics.detections(source_type, kind, "late").inc()
            return
        state = self._load(key)
        if await self._reopens(partition, key, state, detection):
            metrics.detections(source_type, kind, "accepted").inc()
            return
        new_state, decision = incidents.apply_hazard(state, detection, zone, route, self.policy)
        metrics.detections(source_type, kind, decision.outcome).inc()
        if decision.outcome != "accepted":
            return
        self._store(partition, key, new_state)
        if decision.merged:
            metrics.incident_detections_merged(kind).inc()
        if decision.task is not None:
            await self._emit_task(decision.task, routed.ingested_ms)

    async def advance_clock(self, partition: int, clock: datetime) -> None:
        current = self._clocks.get(partition)
        if current is not None and clock <= current:
            return
        self._clocks[partition] = clock
        for key in self._keys_of.get(partition, ()):
            state = self._load(key)
            if state is None:
                continue
            new_state, _closed = incidents.advance_clock(state, clock, self.policy)
            if new_state is not state:
                self._store(partition, key, new_state)
        for watch_key in self._watch_keys_of.get(partition, ()):
            await self._expire_watches(partition, watch_key, clock)

    # --- verification -------------------------------------------------------------------------

    async def _reopens(
        self,
        partition: int,
        key: bytes,
        state: incidents.HazardState | None,
        detection: Detection,
    ) -> bool:
        """Whether the detection ends a resolved task's watch: then it joins that task's
        incident, and the loop reopens the task (no new task)."""
        watch_key = verification.watch_key(TaskType(detection.kind.value))
        watches = self._watches(watch_key)
        if not watches or incidents.seen_before(state, detection):
            return False
        rest, outcome = verification.match_detection(watches, detection, self.policy.radius_m)
        if outcome is None:
            return False
        await self._store_watches(partition, watch_key, rest)
        self._store(
            partition, key, incidents.rejoin(state, outcome.task_id, detection, self.policy)
        )
        await self._send_watch_outcome(outcome)
        return True

    async def _expire_watches(self, partition: int, watch_key: bytes, clock: datetime) -> None:
        watches = self._watches(watch_key)
        if not watches:
            return
        rest, ended = verification.expire(watches, clock)
        if ended:
            await self._store_watches(partition, watch_key, rest)
            for outcome in ended:
                await self._send_watch_outcome(outcome)

    def _watches(self, watch_key: bytes) -> verification.Watches:
        raw = self.states.get(watch_key)
        return () if raw is None else verification.decode_watches(raw)

    async def _store_watches(
        self, partition: int, watch_key: bytes, watches: verification.Watches
    ) -> None:
        if watches:
            await self._write(partition, watch_key, verification.encode_watches(watches))
        elif watch_key in self.states:
            await self._write(partition, watch_key, None)

    async def _write(self, partition: int, key: bytes, encoded: bytes | None) -> None:
        """Set (or, with None, delete) a key in the table's data and its changelog partition."""
        if encoded is None:
            self.states.pop(key, None)
        else:
            self.states[key] = encoded
        await self._records.add(self._changelog, partition, key, encoded)

    def _load(self, key: bytes) -> incidents.HazardState | None:
        """The decoded state of one kind; decoded once, then kept beside the table."""
        state = self._cache.get(key)
        if state is None:
            raw = self.states.get(key)
            if raw is not None:
                state = self._cache[key] = incidents.decode_hazard_state(raw)
        return state

    def _store(self, partition: int, key: bytes, state: incidents.HazardState | None) -> None:
        """Keep a kind's new state beside the table; `after_event` writes it back."""
        metrics.incidents_open.labels(key.decode()).set(incidents.open_incident_count(state))
        if state is None:
            self._cache.pop(key, None)
            if key in self.states or key in self._changed:
                self.states.pop(key, None)  # so `_load` does not find it again meanwhile
                self._changed[key] = partition  # its tombstone
        else:
            self._cache[key] = state
            self._changed[key] = partition
