"""The at-least-once commit discipline of the intake and the SMS sender, written once.

A consumer takes records, their effects are acknowledged later and not necessarily in order, and
the offset it may commit for a partition is never past a record whose effects are not
acknowledged yet: a crash then replays that record (and whatever finished behind it), never skips
it. `OffsetTracker` keeps, per partition, the spans of records taken and whether each is done:

- `track(tp, first, last)` when records are taken (the intake tracks a fetched round of a
  partition as one span, the sender each outbox record on its own);
- `done(tp, first)` once the span's effects are acknowledged by the broker;
- `committable()` gives, per partition whose position moved since `committed`, the first offset
  not done (or the one after the last taken, if all are), the offset to commit;
- `rewind(tp)` gives the first offset not done, to fetch again after a failed send, and forgets
  what was taken from there on (it will be taken again);
- `forget(partitions)` when they are revoked.

No Kafka client is touched here: the callers commit and seek.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterable
from typing import Generic, TypeVar

P = TypeVar("P", bound=Hashable)


class _Span:
    __slots__ = ("done", "last")

    def __init__(self, last: int) -> None:
        self.last = last
        self.done = False


class _Partition:
    __slots__ = ("committed", "next", "spans")

    def __init__(self) -> None:
        self.spans: OrderedDict[int, _Span] = OrderedDict()  # by first offset, in offset order
        self.next: int | None = None  # the offset after the last record taken
        self.committed: int | None = None  # what `committed` was last told for this partition

    def position(self) -> int | None:
        """The first offset not done, or the one after the last taken if all are."""
        spans = self.spans
        while spans:
            first, span = next(iter(spans.items()))
            if not span.done:
                return first
            spans.popitem(last=False)
        return self.next


class OffsetTracker(Generic[P]):
    """Per partition, the offset up to which everything taken is done."""

    def __init__(self) -> None:
        self._partitions: dict[P, _Partition] = {}

    def track(self, tp: P, first: int, last: int | None = None) -> None:
        """Records `first`..`last` (just `first` if no `last`) of `tp` were taken, in order."""
        end = first if last is None else last
        if end < first:
            raise ValueError(f"{tp}: span {first}..{end} ends before it starts")
        partition = self._partitions.get(tp)
        if partition is None:
            partition = self._partitions[tp] = _Partition()
        if partition.next is not None and first < partition.next:
            if any(not span.done for span in partition.spans.values()):
                raise ValueError(
                    f"{tp}: offset {first} taken again while {partition.next - 1} or an earlier"
                    " one is unfinished; rewind first"
                )
            partition.spans.clear()  # the consumer went back over what is done: taken again
        partition.spans[first] = _Span(end)
        partition.next = end + 1

    def done(self, tp: P, first: int) -> None:
        """The span of `tp` starting at `first` is acknowledged.

        A span no longer tracked (its partition was revoked or rewound meanwhile) is ignored:
        what it did is done, and the new owner or the next fetch replays from the last commit.
        """
        partition = self._partitions.get(tp)
        if partition is None:
            return
        span = partition.spans.get(first)
        if span is not None:
            span.done = True

    def position(self, tp: P) -> int | None:
        """The offset to commit for `tp` now (None: nothing taken from it)."""
        partition = self._partitions.get(tp)
        return None if partition is None else partition.position()

    def taken_up_to(self, tp: P) -> int | None:
        """The offset after the last record taken from `tp` (None: none was)."""
        partition = self._partitions.get(tp)
        return None if partition is None else partition.next

    def committable(self, only: Iterable[P] | None = None) -> dict[P, int]:
        """The offset to commit per partition, for those whose position moved since the last
        `committed` (of `only` these partitions, if given)."""
        items: Iterable[tuple[P, _Partition]]
        if only is None:
            items = self._partitions.items()
        else:
            items = ((tp, p) for tp in only if (p := self._partitions.get(tp)) is not None)
        offsets: dict[P, int] = {}
        for tp, partition in items:
            position = partition.position()
            if position is not None and position != partition.committed:
                offsets[tp] = position
        return offsets

    def committed(self, offsets: dict[P, int]) -> None:
        """These offsets were committed (partitions no longer tracked are ignored)."""
        for tp, offset in offsets.items():
            partition = self._partitions.get(tp)
            if partition is not None:
                partition.committed = offset

    def rewind(self, tp: P) -> int | None:
        """The first offset of `tp` not done, to fetch again from; what was taken from there on
        is forgotten. None if everything taken is done (or nothing was)."""
        partition = self._partitions.get(tp)
        if partition is None:
            return None
        position = partition.position()
        if not partition.spans:
            return None
        partition.spans.clear()  # the first is not done; nor, for a rewind, what follows it
        partition.next = position
        return position

    def pending(self, tp: P | None = None) -> int:
        """Spans taken and not done yet (of `tp`, or of every partition)."""
        if tp is None:
            partitions: Iterable[_Partition] = self._partitions.values()
        else:
            partitions = [one] if (one := self._partitions.get(tp)) is not None else []
        return sum(1 for p in partitions for span in p.spans.values() if not span.done)

    def forget(self, partitions: Iterable[P]) -> None:
        """The partitions were revoked: nothing of theirs is tracked any more."""
        for tp in partitions:
            self._partitions.pop(tp, None)

    def partitions(self) -> list[P]:
        return list(self._partitions)
