"""Zones of the county (CONTRACT §4): GeoJSON polygons and point-in-zone look-ups."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Scene(StrEnum):
    urban_road = "urban_road"
    residential = "residential"
    water_source = "water_source"
    market = "market"
    scenic = "scenic"
    rural = "rural"


@dataclass(frozen=True, slots=True)
class Zone:
    zone_id: str
    name: str
    township: str
    scene: Scene | None  # None only for OUTSIDE
    no_parking: bool
    grace_minutes: int = 10


OUTSIDE = Zone(
    zone_id="outside",
    name="未划定区域",
    township="unassigned",
    scene=None,
    no_parking=False,
    grace_minutes=10,
)
