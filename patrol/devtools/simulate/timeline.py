"""A discrete-event timeline: actions run in event-time order and emit what happens then."""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta

from patrol.devtools.simulate.events import SimEvent

# An action runs at its scheduled second (since the start) and returns the events of that moment.
Action = Callable[[float], Iterable[SimEvent]]


class Timeline:
    """Schedules actions at seconds since `start`; ties run in the order they were scheduled."""

    def __init__(self, start: datetime) -> None:
        self.start = start
        self._queue: list[tuple[float, int, Action]] = []
        self._sequence = 0
        self.now = 0.0
        """The second of the action running (or that ran last)."""

    def at(self, second: float, action: Action) -> None:
        # Millisecond resolution: the resolution of observed_at in the messages.
        heapq.heappush(self._queue, (round(second, 3), self._sequence, action))
        self._sequence += 1

    def time(self, second: float) -> datetime:
        return self.start + timedelta(seconds=second)

    def run(self) -> Iterator[SimEvent]:
        while self._queue:
            second, _, action = heapq.heappop(self._queue)
            self.now = second
            yield from action(second)
