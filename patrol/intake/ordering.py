"""Event-time order across the input partitions an intake owns (as Kafka Streams does since
KIP-353 and KIP-695).

Each input partition is in offset order, but one partition can run hours ahead of another in
event time: a camera whose partition held an hour of heartbeats, a backlog after an outage, a
fresh app id replaying the topics from the start. Taken in fetch order, the fast partition moves
the event-time clock past detections still waiting on the slow one, and the same input gives
other decisions on another run. The merger releases the fetched records of all partitions as
one sequence: always the head with the smallest (event time, source id, event id). A partition
with nothing fetched holds the others back only while it has lag (records on the broker not yet
fetched), and never longer than `max_wait` seconds: live, with no lag, nothing waits.

Pure: the caller says which partitions have lag and what time it is.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Generic, TypeVar

P = TypeVar("P", bound=Hashable)
T = TypeVar("T")

OrderKey = tuple[datetime, str, str]
"""(event time, source id, event id): the order the merger releases records in."""


@dataclass(slots=True)
class _Partition(Generic[T]):
    buffered: deque[tuple[OrderKey, T]] = field(default_factory=deque)


class EventTimeMerger(Generic[P, T]):
    """Fetched records of several partitions, released in event-time order."""

    def __init__(self, max_wait: float) -> None:
        self.max_wait = max_wait
        self._partitions: dict[P, _Partition[T]] = {}
        self._held_since: float | None = None

    def assign(self, partitions: Iterable[P]) -> None:
        """The partitions owned now; buffered records of partitions no longer owned are dropped
        (their new owner fetches them again from the last commit)."""
        owned = set(partitions)
        if owned == self._partitions.keys():
            return
        for gone in set(self._partitions) - owned:
            del self._partitions[gone]
        for new in owned - set(self._partitions):
            self._partitions[new] = _Partition()
        self._held_since = None

    def clear(self, partitions: Iterable[P]) -> None:
        """Drop what is buffered of these partitions (they are fetched again, or gone)."""
        for key in partitions:
            partition = self._partitions.get(key)
            if partition is not None:
                partition.buffered.clear()
        self._held_since = None

    def add(self, partition: P, records: Iterable[tuple[OrderKey, T]]) -> None:
        """Records fetched from `partition`, in offset order."""
        self._partitions.setdefault(partition, _Partition()).buffered.extend(records)

    @property
    def buffered(self) -> int:
        return sum(len(p.buffered) for p in self._partitions.values())

    def buffered_of(self, partition: P) -> int:
        one = self._partitions.get(partition)
        return 0 if one is None else len(one.buffered)

    def holding(self, partition: P) -> bool:
        return bool(self._partitions.get(partition, _Partition()).buffered)

    def release(self, now: float, lagging: Callable[[P], bool]) -> list[T]:
        """The records that may go now, in order. `lagging(p)` is True when `p` has records on
        the broker beyond what was fetched (or it cannot tell yet)."""
        partitions = self._partitions
        heads = [
            (partition.buffered[0][0], index, key)
            for index, (key, partition) in enumerate(partitions.items())
            if partition.buffered
        ]
        if not heads:
            self._held_since = None
            return []
        waited_out = self._held_since is not None and now - self._held_since >= self.max_wait
        blocked = not waited_out and any(
            not p.buffered and lagging(key) for key, p in partitions.items()
        )
        released: list[T] = []
        if not blocked:
            heapq.heapify(heads)
            while heads:
                _, index, key = heapq.heappop(heads)
                buffered = partitions[key].buffered
                released.append(buffered.popleft()[1])
                if buffered:
                    heapq.heappush(heads, (buffered[0][0], index, key))
                elif not waited_out and lagging(key):
                    blocked = True  # it ran dry with more on the broker: wait for its fetch
                    break
        if blocked:
            if self._held_since is None:
                self._held_since = now
        else:
            self._held_since = None
        return released
