"""Summaries of py-spy's raw (collapsed-stack) output: where the worker spends its CPU.

Each line of a raw profile is `frame;frame;...;leaf count`, a frame being
`function (path:line)`. Pure: parsing and counting only; the scenario runs py-spy.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

_FRAME = re.compile(r"^(?P<function>.*?) \((?P<path>[^()]*?)(?::(?P<line>\d+))?\)$")


@dataclass(frozen=True, slots=True)
class HotSpot:
    name: str
    samples: int
    share: float

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "samples": self.samples, "percent": round(100 * self.share, 1)}


@dataclass(frozen=True, slots=True)
class ProfileSummary:
    samples: int
    self_time: list[HotSpot]
    """Functions by samples in which they were the frame running (leaf)."""
    inclusive: list[HotSpot]
    """Functions by samples in which they were anywhere on the stack."""
    packages: list[HotSpot]
    """Leaf samples by the package or module of the leaf frame."""

    def as_dict(self) -> dict[str, object]:
        return {
            "samples": self.samples,
            "self": [h.as_dict() for h in self.self_time],
            "inclusive": [h.as_dict() for h in self.inclusive],
            "packages": [h.as_dict() for h in self.packages],
        }


def frame_name(frame: str) -> str:
    """`function (path:line)` → `function (short/path.py)`: lines merged, paths shortened."""
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    return f"{match['function']} ({short_path(match['path'])})"


def short_path(path: str) -> str:
    for marker in ("site-packages/", "dist-packages/"):
        if marker in path:
            return path.split(marker, 1)[1]
    if "/patrol/" in path:
        return "patrol/" + path.rsplit("/patrol/", 1)[1]
    stdlib = re.search(r"/python3\.\d+/(.*)$", path)
    return stdlib.group(1) if stdlib else path


def package_of(frame: str) -> str:
    """The top-level package or module of a frame's code: patrol, faust, aiokafka, asyncio, ..."""
    match = _FRAME.match(frame.strip())
    if match is None:
        return "?"
    path = short_path(match["path"]).lstrip("/")
    if path.startswith("<"):
        return path  # <frozen runpy> and the like
    return path.split("/", 1)[0].removesuffix(".py") or "?"


def parse_collapsed(lines: Iterable[str]) -> list[tuple[list[str], int]]:
    """(frames root-first, samples) of each non-empty line; lines without a count are skipped."""
    stacks = []
    for line in lines:
        line = line.rstrip("\n")
        head, _, count = line.rpartition(" ")
        if not head or not count.isdigit():
            continue
        stacks.append((head.split(";"), int(count)))
    return stacks


def summarise(lines: Iterable[str], top: int = 15) -> ProfileSummary:
    stacks = parse_collapsed(lines)
    total = sum(count for _, count in stacks)
    leaf: Counter[str] = Counter()
    anywhere: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    for frames, count in stacks:
        if not frames:
            continue
        leaf[frame_name(frames[-1])] += count
        packages[package_of(frames[-1])] += count
        for name in {frame_name(f) for f in frames}:
            anywhere[name] += count

    def ranked(counter: Counter[str]) -> list[HotSpot]:
        return [HotSpot(name, n, n / total) for name, n in counter.most_common(top)]

    if total == 0:
        return ProfileSummary(0, [], [], [])
    return ProfileSummary(total, ranked(leaf), ranked(anywhere), ranked(packages))
