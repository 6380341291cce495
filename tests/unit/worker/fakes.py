"""Fakes the agent tests share."""

from __future__ import annotations

from dataclasses import dataclass, field

Record = tuple[str, int, bytes | None, bytes | None]


@dataclass
class FakeBatches:
    """Records an agent adds, and which of them it submitted (as `PartitionBatches` would)."""

    pending: list[Record] = field(default_factory=list)
    submitted: list[Record] = field(default_factory=list)

    async def add(self, topic: str, partition: int, key: bytes | None, value: bytes | None) -> None:
        self.pending.append((topic, partition, key, value))

    async def submit(self) -> None:
        self.submitted += self.pending
        self.pending = []

    def on(self, topic: str) -> list[Record]:
        return [r for r in self.submitted if r[0] == topic]
