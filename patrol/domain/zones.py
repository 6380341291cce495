"""Zones of the county (CONTRACT §4): GeoJSON polygons and point-in-zone look-ups."""

from __future__ import annotations

import importlib.resources
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from enum import StrEnum
from pathlib import Path

import shapely
import shapely.errors
from shapely.geometry import Point, shape
from shapely.geometry.base import BaseGeometry
from shapely.strtree import STRtree
from shapely.validation import explain_validity


class Scene(StrEnum):
    urban_road = "urban_road"
    residential = "residential"
    water_source = "water_source"
    market = "market"
    scenic = "scenic"
    rural = "rural"


_DAY_SECONDS = 24 * 60 * 60


@dataclass(frozen=True, slots=True)
class RestrictedHours:
    """One `no_parking_hours` interval, `start` inclusive and `end` exclusive, in seconds of
    the local day; `start > end` crosses midnight ("22:00-06:00")."""

    start: int
    end: int

    def __str__(self) -> str:
        return f"{_hhmm(self.start)}-{_hhmm(self.end)}"

    def contains(self, second_of_day: int) -> bool:
        if self.start < self.end:
            return self.start <= second_of_day < self.end
        return second_of_day >= self.start or second_of_day < self.end


def _hhmm(seconds: int) -> str:
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}"


@dataclass(frozen=True, slots=True)
class Zone:
    zone_id: str
    name: str
    township: str
    scene: Scene | None  # None only for OUTSIDE
    no_parking: bool
    grace_minutes: int = 10
    no_parking_hours: tuple[RestrictedHours, ...] = ()
    """When the no-parking rule applies, in local time; empty: all day (CONTRACT §4)."""

    def restricted_at(self, moment: datetime, tz: tzinfo) -> bool:
        """Whether parking here is forbidden at `moment` (a zone's hours are in local time)."""
        if not self.no_parking:
            return False
        if not self.no_parking_hours:
            return True
        local = moment.astimezone(tz)
        second = local.hour * 3600 + local.minute * 60 + local.second
        return any(hours.contains(second) for hours in self.no_parking_hours)


OUTSIDE = Zone(
    zone_id="outside",
    name="未划定区域",
    township="unassigned",
    scene=None,
    no_parking=False,
    grace_minutes=10,
)


class ZoneFileError(ValueError):
    """A zones file patrol cannot use; the message names the file, the feature and the fix."""


_ZONE_PROPERTIES = "zone_id, name, township, scene, no_parking, grace_minutes, no_parking_hours"
_SHIPPED_ZONES = "zones.geojson"


# Exact points remembered by `ZoneMap.locate`, at most: a county's fixed cameras, with room to
# spare. Points that move (drones, the frames of a hazard) are seldom seen twice and only fill it:
# at 65,536 the intake grew by some 15 MiB in the hour-long soak before its first clear.
LOCATE_CACHE_SIZE = 4_096


class ZoneMap:
    """The zones of one GeoJSON file, indexed for point look-ups.

    A point on a zone's boundary belongs to that zone. Zones should not overlap; if they do,
    the smallest-area zone containing the point wins (ties: the earlier feature in the file),
    so a look-up never depends on index order.
    """

    def __init__(self, zones: Sequence[Zone], polygons: Sequence[BaseGeometry]) -> None:
        if len(zones) != len(polygons):
            raise ValueError("every zone needs exactly one polygon")
        self._zones = tuple(zones)
        self._polygons = tuple(polygons)
        self._by_id = {zone.zone_id: i for i, zone in enumerate(self._zones)}
        self._located: dict[tuple[float, float], Zone] = {}
        for polygon in self._polygons:
            shapely.prepare(polygon)
        self._tree = STRtree(list(self._polygons))
        # Smallest area first, then file order: the deterministic pick for overlapping zones.
        self._rank = {
            i: rank
            for rank, i in enumerate(
                sorted(range(len(self._zones)), key=lambda i: (self._polygons[i].area, i))
            )
        }

    @property
    def zones(self) -> tuple[Zone, ...]:
        return self._zones

    def locate(self, lat: float, lon: float) -> Zone:
        """The zone containing the point (boundary included), or OUTSIDE."""
        # Fixed cameras report the same coordinates on every read: remember exact points.
        key = (lat, lon)
        zone = self._located.get(key)
        if zone is None:
            zone = self._locate(lat, lon)
            if len(self._located) >= LOCATE_CACHE_SIZE:
                self._located.clear()
            self._located[key] = zone
        return zone

    def _locate(self, lat: float, lon: float) -> Zone:
        hits = self._tree.query(Point(lon, lat), predicate="intersects")
        if len(hits) == 0:
            return OUTSIDE
        best = min((int(i) for i in hits), key=self._rank.__getitem__)
        return self._zones[best]

    def get(self, zone_id: str) -> Zone:
        """The zone with this id; OUTSIDE for "outside" and for ids this map does not know
        (e.g. state written before the zones file changed)."""
        index = self._by_id.get(zone_id)
        return OUTSIDE if index is None else self._zones[index]

    def polygon(self, zone_id: str) -> BaseGeometry:
        """The zone's shapely geometry in (lon, lat) order, as in the file."""
        index = self._by_id.get(zone_id)
        if index is None:
            raise KeyError(f"no zone {zone_id!r} in this zone map (OUTSIDE has no polygon)")
        return self._polygons[index]

    def __len__(self) -> int:
        return len(self._zones)


def load_zones(path: Path | None = None) -> ZoneMap:
    """Read and validate a zones GeoJSON file; None reads the shipped Pan'an county zones."""
    if path is None:
        resource = importlib.resources.files("patrol").joinpath("data", _SHIPPED_ZONES)
        return parse_zones(
            resource.read_text(encoding="utf-8"), source=f"<patrol>/data/{_SHIPPED_ZONES}"
        )
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ZoneFileError(
            f"{path}: cannot read the zones file ({exc.strerror or exc}); "
            "check PATROL_ZONES names an existing GeoJSON file"
        ) from exc
    except UnicodeDecodeError as exc:
        raise ZoneFileError(f"{path}: not UTF-8 text ({exc}); save the file as UTF-8") from exc
    return parse_zones(text, source=str(path))


def parse_zones(text: str, *, source: str = "<zones>") -> ZoneMap:
    """Validate GeoJSON text as a zones FeatureCollection (CONTRACT §4)."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ZoneFileError(
            f"{source}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
            "fix the syntax or export the file again as GeoJSON"
        ) from exc
    if not isinstance(document, dict) or document.get("type") != "FeatureCollection":
        found = document.get("type") if isinstance(document, dict) else type(document).__name__
        raise ZoneFileError(
            f"{source}: expected a GeoJSON FeatureCollection, found {found!r}; "
            'wrap the zones in {"type": "FeatureCollection", "features": [...]}'
        )
    features = document.get("features")
    if not isinstance(features, list) or not features:
        raise ZoneFileError(
            f"{source}: the FeatureCollection has no features; add at least one zone polygon"
        )
    zones: list[Zone] = []
    polygons: list[BaseGeometry] = []
    seen: dict[str, int] = {}
    for index, feature in enumerate(features):
        zone, polygon = _parse_feature(feature, index=index, source=source)
        if zone.zone_id in seen:
            raise ZoneFileError(
                f"{source}: feature {index} (zone_id {zone.zone_id!r}): duplicate zone_id, "
                f"already used by feature {seen[zone.zone_id]}; give each zone a unique zone_id"
            )
        seen[zone.zone_id] = index
        zones.append(zone)
        polygons.append(polygon)
    return ZoneMap(zones, polygons)


def _parse_feature(feature: object, *, index: int, source: str) -> tuple[Zone, BaseGeometry]:
    where = f"{source}: feature {index}"
    if not isinstance(feature, dict) or feature.get("type") != "Feature":
        raise ZoneFileError(f'{where}: not a GeoJSON Feature; each entry needs "type": "Feature"')
    properties = feature.get("properties")
    if not isinstance(properties, dict):
        raise ZoneFileError(f"{where}: has no properties object; give it {_ZONE_PROPERTIES}")
    zone_id = properties.get("zone_id")
    if not isinstance(zone_id, str) or not zone_id.strip():
        raise ZoneFileError(f"{where}: zone_id is missing or empty; give every zone a unique id")
    if zone_id == OUTSIDE.zone_id:
        raise ZoneFileError(
            f"{where} (zone_id {zone_id!r}): {zone_id!r} is reserved for points in no zone; "
            "choose another zone_id"
        )
    where = f"{where} (zone_id {zone_id!r})"

    texts: dict[str, str] = {}
    for key in ("name", "township"):
        value = properties.get(key)
        if not isinstance(value, str) or not value.strip():
            raise ZoneFileError(f"{where}: {key} is missing or empty; set it to a non-empty string")
        texts[key] = value
    scene_value = properties.get("scene")
    if scene_value not in Scene.__members__.values():
        raise ZoneFileError(
            f"{where}: unknown scene {scene_value!r}; use one of "
            + ", ".join(s.value for s in Scene)
        )
    scene = Scene(str(scene_value))
    no_parking = properties.get("no_parking")
    if not isinstance(no_parking, bool):
        raise ZoneFileError(f"{where}: no_parking must be true or false, found {no_parking!r}")
    grace = properties.get("grace_minutes", 10)
    if isinstance(grace, float) and grace.is_integer():
        grace = int(grace)  # 10.0 is JSON's 10 written by another tool
    if isinstance(grace, bool) or not isinstance(grace, int) or grace <= 0:
        raise ZoneFileError(
            f"{where}: grace_minutes must be a positive whole number of minutes, found {grace!r} "
            "(leave it out for the default of 10)"
        )
    hours = _parse_hours(properties.get("no_parking_hours"), where=where)

    geometry = feature.get("geometry")
    geometry_type = geometry.get("type") if isinstance(geometry, dict) else None
    if geometry_type not in ("Polygon", "MultiPolygon"):
        raise ZoneFileError(
            f"{where}: geometry must be a Polygon or MultiPolygon, found {geometry_type!r}; "
            "draw the zone as an area, not a point or line"
        )
    try:
        polygon = shape(geometry)
    except (ValueError, TypeError, AttributeError, IndexError, shapely.errors.GEOSException) as exc:
        raise ZoneFileError(f"{where}: malformed {geometry_type} coordinates ({exc})") from exc
    if polygon.is_empty:
        raise ZoneFileError(f"{where}: the {geometry_type} is empty; give it coordinates")
    min_lon, min_lat, max_lon, max_lat = polygon.bounds
    if not (min_lon >= -180 and max_lon <= 180 and min_lat >= -90 and max_lat <= 90):
        raise ZoneFileError(
            f"{where}: coordinates out of range "
            f"(lon {min_lon}..{max_lon}, lat {min_lat}..{max_lat}); "
            "GeoJSON positions are [longitude, latitude] in WGS 84 — check for swapped values"
        )
    if not polygon.is_valid:
        raise ZoneFileError(
            f"{where}: invalid {geometry_type}: {explain_validity(polygon)}; "
            "fix the ring (no self-intersections, closed, at least 4 positions)"
        )
    zone = Zone(
        zone_id=zone_id,
        name=texts["name"],
        township=texts["township"],
        scene=scene,
        no_parking=no_parking,
        grace_minutes=grace,
        no_parking_hours=hours,
    )
    return zone, polygon


_HOURS_FORMAT = 'a list of "HH:MM-HH:MM" local-time intervals such as ["07:00-09:00"]'


def _parse_hours(value: object, *, where: str) -> tuple[RestrictedHours, ...]:
    """`no_parking_hours`: absent, null or [] mean all day."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ZoneFileError(f"{where}: no_parking_hours must be {_HOURS_FORMAT}, found {value!r}")
    return tuple(_parse_interval(item, where=where) for item in value)


def _parse_interval(item: object, *, where: str) -> RestrictedHours:
    problem = f"{where}: no_parking_hours entry {item!r}"
    if not isinstance(item, str) or item.count("-") != 1:
        raise ZoneFileError(f'{problem} is not "HH:MM-HH:MM"; write e.g. "07:00-09:00"')
    start_text, end_text = item.split("-")
    start = _parse_clock(start_text, problem=problem, allow_midnight_end=False)
    end = _parse_clock(end_text, problem=problem, allow_midnight_end=True)
    if start == end:  # "00:00-24:00" is not: 24:00 parses as the day's length
        raise ZoneFileError(
            f"{problem} starts and ends at the same time; for a zone restricted all day leave "
            'no_parking_hours out or write "00:00-24:00"'
        )
    return RestrictedHours(start, end)


def _parse_clock(text: str, *, problem: str, allow_midnight_end: bool) -> int:
    hours_text, _, minutes_text = text.strip().partition(":")
    digits = hours_text + minutes_text
    if (
        len(hours_text) != 2
        or len(minutes_text) != 2
        or not (digits.isascii() and digits.isdigit())
    ):
        raise ZoneFileError(f'{problem}: {text!r} is not a time "HH:MM" (e.g. "07:30")')
    hours, minutes = int(hours_text), int(minutes_text)
    if allow_midnight_end and (hours, minutes) == (24, 0):
        return _DAY_SECONDS
    if hours > 23 or minutes > 59:
        raise ZoneFileError(
            f"{problem}: {text!r} is not a time of day (00:00 to 23:59; 24:00 may end an interval)"
        )
    return hours * 3600 + minutes * 60
