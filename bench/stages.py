"""Where a task's latency goes, hop by hop, read from the timestamps its records carry.

A producer stamps each record as it joins a batch (CreateTime), and the latency run's dispatch
topic is broker-timed, so for each task the run leaves four moments on the one host clock:

* the confirming read handed to the bench's producer (`sent`);
* the intake's batch record that carried the read to its case's partition of
  `<app>-grace-cases`;
* the grace agent's `tasks-decided` record that carried the task to `<app>-task-loop`;
* the task readable on the dispatch topic.

Their differences are the three hops: the **intake** (fetch, validation, routing, its round
linger), the **deciding agent** (the intake's send, the worker's fetch, the grace rule) and the
**loop agent** (the worker's send and fetch again, opening the task's state, the dispatch
write). Together they are the dispatch latency the bench reports, so a slow run tells which
process and which hop it was slow in.

Read after the load, from the topics the run leaves on the broker; nothing is added to the hot
path.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic_core import from_json

from bench.kafka import confirming_event_id
from bench.report import percentile
from patrol.kafka.loop_records import LoopRecord, batch_items, kind_of
from patrol.kafka.reading import read_to_end
from patrol.kafka.topics import InternalTopics

STAGES = ("intake", "deciding agent", "loop agent")


@dataclass
class HopTimes:
    """When each confirming read (by event id) left the intake and had its task decided, in s."""

    routed: dict[str, float] = field(default_factory=dict)
    decided: dict[str, float] = field(default_factory=dict)

    def take_routed(self, value: bytes, at: float, wanted: set[str]) -> None:
        """A `grace-cases` batch record: the detections it routed."""
        for item in from_json(value).get("items") or ():
            event_id = item["d"].get("event_id")
            if event_id in wanted:
                self.routed.setdefault(event_id, at)

    def take_decided(self, value: bytes, at: float, wanted: set[str]) -> None:
        """A `tasks-decided` batch record: the tasks it carried, by their confirming read."""
        for item in batch_items(value):
            event_id = confirming_event_id(from_json(item["task"]))
            if event_id in wanted:
                self.decided.setdefault(event_id, at)


def hop_latencies(
    sent: Mapping[str, float],
    hops: HopTimes,
    dispatched: Mapping[str, float],
    keys: Iterable[str],
) -> dict[str, list[float]]:
    """Each hop's time in ms, over the confirming reads in `keys` that reached the dispatch
    topic and were seen at every hop (all three lists are over the same reads)."""
    out: dict[str, list[float]] = {stage: [] for stage in STAGES}
    for key in keys:
        if key in dispatched and key in hops.routed and key in hops.decided:
            moments = (sent[key], hops.routed[key], hops.decided[key], dispatched[key])
            for stage, (start, end) in zip(STAGES, itertools.pairwise(moments), strict=True):
                out[stage].append(1000 * (end - start))
    return out


def hop_figures(latencies: dict[str, list[float]]) -> dict[str, dict[str, Any]]:
    """p50 and p99 of each hop, and how many tasks they are over."""
    return {
        stage: {
            "p50_ms": round(percentile(values, 50), 2),
            "p99_ms": round(percentile(values, 99), 2),
            "tasks": len(values),
        }
        for stage, values in latencies.items()
    }


async def read_hop_times(
    bootstrap: str, internal: InternalTopics, confirming: Iterable[str]
) -> HopTimes:
    """The moments the run's confirming reads passed the intake and the grace agent."""
    wanted = set(confirming)
    hops = HopTimes()
    for record in await read_to_end(bootstrap, internal.cases):
        if kind_of(record.headers) is None:  # a batch record, not an SMS outcome
            hops.take_routed(record.value, record.timestamp / 1000, wanted)
    for record in await read_to_end(bootstrap, internal.task_loop):
        if kind_of(record.headers) is LoopRecord.tasks_decided:
            hops.take_decided(record.value, record.timestamp / 1000, wanted)
    return hops
