"""The hazard agent: roadside vending and open burning incidents, one table key per kind.

Hazard detections are few, and one key per kind makes grouping exact across any partition
boundary. A kind's state holds all its open incidents (tens of KB encoded), so the agent keeps
the decoded state beside the table and writes it back once per batch record, not per detection.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from datetime import datetime

from patrol import metrics
from patrol.domain import incidents
from patrol.domain.models import TaskType
from patrol.domain.routing import RoutingTable
from patrol.domain.zones import ZoneMap
from patrol.kafka.envelopes import RoutedDetection
from patrol.kafka.partitioning import partition_of
from patrol.worker.agent import BatchAgent
from patrol.worker.grace_agent import EmitTask

log = logging.getLogger("patrol.worker.hazards")


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
        emit_task: EmitTask,
    ) -> None:
        self.policy = policy
        self.zones = zones
        self.routing = routing
        self.partitions = partitions
        self.states = states
        """The table: one encoded `incidents.HazardState` per kind."""
        self._emit_task = emit_task
        self._cache: dict[bytes, incidents.HazardState] = {}
        self._changed: set[bytes] = set()
        self._clocks: dict[int, datetime] = {}
        self._keys_of = {
            partition: [
                key for key in incidents.HAZARD_KEYS if partition_of(key, partitions) == partition
            ]
            for partition in range(partitions)
        }

    async def after_event(self) -> None:
        """Write the kinds that changed back to the table (and so to its changelog)."""
        for key in self._changed:
            self.states[key] = incidents.encode_hazard_state(self._cache[key])
        self._changed.clear()

    def revoked(self) -> None:
        self._clocks.clear()
        self._cache.clear()
        self._changed.clear()

    async def apply_read(self, partition: int, routed: RoutedDetection) -> None:
        detection = routed.detection
        key = incidents.hazard_key(detection.kind)
        zone = self.zones.get(routed.zone_id)
        route = self.routing.route(TaskType(detection.kind.value), zone.scene)
        new_state, decision = incidents.apply_hazard(
            self._load(key), detection, zone, route, self.policy
        )
        source_type, kind = detection.source.type.value, detection.kind.value
        metrics.detections(source_type, kind, decision.outcome).inc()
        if decision.outcome != "accepted":
            return
        self._store(key, new_state)
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
                self._store(key, new_state)

    def _load(self, key: bytes) -> incidents.HazardState | None:
        """The decoded state of one kind; decoded once, then kept beside the table."""
        state = self._cache.get(key)
        if state is None:
            raw = self.states.get(key)
            if raw is not None:
                state = self._cache[key] = incidents.decode_hazard_state(raw)
        return state

    def _store(self, key: bytes, state: incidents.HazardState | None) -> None:
        metrics.incidents_open.labels(key.decode()).set(incidents.open_incident_count(state))
        if state is None:
            self._cache.pop(key, None)
            self._changed.discard(key)
            if key in self.states:
                del self.states[key]
        else:
            self._cache[key] = state
            self._changed.add(key)
