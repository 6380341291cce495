"""One world for every simulator: roadside vendors and open fires that exist at a place for a
time, seen by each camera facing them and each drone sortie passing them, removed when a team
resolves their task, and some of them back later (docs/simulators.md).

Pure and seeded: the hazards are drawn in order of their start from streams derived from the
seed alone, so the camera and the drone simulators, separate processes, build the same world.
What they cannot derive is when a team resolves a hazard: `HazardWorld.resolve` is told (from
the feedback topic, `resolutions.py`; or by a test), and every simulator holding the world
stops seeing the hazard from then on; a hazard drawn to come back returns a while later.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from shapely.geometry import Point

from patrol.devtools.simulate.geo import COUNTY
from patrol.domain.zones import Scene, ZoneMap, load_zones

if TYPE_CHECKING:
    from patrol.devtools.simulate.cameras import Camera
    from patrol.devtools.simulate.drones import DroneRoute

VENDING = "roadside_vending"
BURNING = "open_burning"

# How often each scene has vendors and fires (relative weights); None: between zones, fields.
VENDING_WEIGHT: dict[Scene | None, float] = {
    Scene.market: 4.0,
    Scene.urban_road: 3.0,
    Scene.scenic: 2.0,
    Scene.residential: 1.0,
    Scene.rural: 0.2,
    Scene.water_source: 0.1,
    None: 0.2,
}
BURNING_WEIGHT: dict[Scene | None, float] = {
    Scene.rural: 4.0,
    Scene.water_source: 2.0,
    Scene.scenic: 1.0,
    Scene.residential: 0.3,
    Scene.urban_road: 0.1,
    Scene.market: 0.1,
    None: 3.0,
}


@dataclass(frozen=True, slots=True)
class HazardKindTraits:
    """How long one kind stays when nobody comes, how clearly it is seen, how often it comes
    back after a team removed it (a vendor back once the team has left, a fire rekindled)."""

    lasts_minutes: tuple[float, float]
    quality: tuple[float, float]
    returns_share: float
    returns_after_minutes: tuple[float, float]
    returns_for_minutes: tuple[float, float]


TRAITS = {
    VENDING: HazardKindTraits((20, 120), (0.45, 0.95), 0.35, (10, 40), (20, 90)),
    BURNING: HazardKindTraits((10, 45), (0.35, 0.95), 0.15, (10, 30), (10, 30)),
}


@dataclass(frozen=True, slots=True)
class Hazard:
    """A vendor or a fire at (lat, lon), from `begins` for `lasts` seconds of event time (since
    the simulation's start) unless a team removes it; if `returns_after` is set, it is back
    that long after a removal, for `returns_for` seconds (once)."""

    hazard_id: str
    kind: str
    lat: float
    lon: float
    begins: float
    lasts: float
    quality: float
    returns_after: float | None
    returns_for: float
    site: str  # the camera it was placed before, or the drone route it lies along

    @property
    def xy(self) -> tuple[float, float]:
        return COUNTY.to_metres(self.lat, self.lon)


class WorldOptions(Protocol):
    """The world options a simulator's config carries (cameras and drones alike)."""

    @property
    def cameras(self) -> tuple[Camera, ...]: ...
    @property
    def routes(self) -> tuple[DroneRoute, ...]: ...
    @property
    def vending_per_hour(self) -> float: ...
    @property
    def burning_per_hour(self) -> float: ...
    @property
    def route_vending_per_hour(self) -> float: ...
    @property
    def route_burning_per_hour(self) -> float: ...
    @property
    def demo_script(self) -> bool: ...
    @property
    def zones(self) -> ZoneMap | None: ...


def world_config(options: WorldOptions) -> WorldConfig:
    """The world a simulator with these options shares with the others of its run."""
    return WorldConfig(
        cameras=options.cameras,
        routes=options.routes,
        vending_per_hour=options.vending_per_hour,
        burning_per_hour=options.burning_per_hour,
        route_vending_per_hour=options.route_vending_per_hour,
        route_burning_per_hour=options.route_burning_per_hour,
        demo_script=options.demo_script,
        zones=options.zones,
    )


@dataclass(frozen=True)
class WorldConfig:
    """What the world is drawn from. Every simulator of a run must be given the same one (the
    CLIs give cameras and drones the same options) for them to share the world.

    Rates are new hazards per hour of event time: at camera sites (in front of a camera
    chosen by scene) and along the drone routes out of the cameras' view."""

    cameras: tuple[Camera, ...]
    routes: tuple[DroneRoute, ...]
    vending_per_hour: float = 2.0
    burning_per_hour: float = 1.0
    route_vending_per_hour: float = 0.3
    route_burning_per_hour: float = 0.6
    demo_script: bool = True
    camera_view_m: float = 60.0
    camera_half_angle_degrees: float = 35.0
    drone_sight_m: float = 120.0
    zones: ZoneMap | None = field(default=None, compare=False)


Removed = Callable[[Hazard, float], None]
"""Called when a hazard is removed at a second; the second argument is that second."""


class HazardWorld:
    """The hazards of one seeded world, drawn lazily in order of their start, and what teams did
    to them. Time is seconds of event time since the simulation's start."""

    def __init__(self, config: WorldConfig, *, seed: int) -> None:
        self.config = config
        self.seed = seed
        self.zones = config.zones if config.zones is not None else load_zones()
        self._drawn: list[Hazard] = []
        self._removals: dict[str, list[float]] = {}
        self._listeners: list[Removed] = []
        self._sources = self._processes()
        self._merged = heapq.merge(*self._sources, key=lambda h: (h.begins, h.hazard_id))
        self._next: Hazard | None = next(self._merged, None)

    # -- drawing -----------------------------------------------------------------------------

    def _processes(self) -> list[Iterator[Hazard]]:
        config = self.config
        sources: list[Iterator[Hazard]] = []
        if config.demo_script:
            sources.append(iter(self._scripted()))
        for kind, per_hour, weights in (
            (VENDING, config.vending_per_hour, VENDING_WEIGHT),
            (BURNING, config.burning_per_hour, BURNING_WEIGHT),
        ):
            if per_hour > 0 and config.cameras:
                sources.append(self._at_cameras(kind, per_hour, weights))
        for kind, per_hour, weights in (
            (VENDING, config.route_vending_per_hour, VENDING_WEIGHT),
            (BURNING, config.route_burning_per_hour, BURNING_WEIGHT),
        ):
            if per_hour > 0 and config.routes:
                sources.append(self._along_routes(kind, per_hour, weights))
        return sources

    def _traits(self, rng: random.Random, kind: str) -> tuple[float, float, float | None, float]:
        traits = TRAITS[kind]
        lasts = 60 * rng.uniform(*traits.lasts_minutes)
        quality = rng.uniform(*traits.quality)
        returns = rng.random() < traits.returns_share
        after = 60 * rng.uniform(*traits.returns_after_minutes)
        stays = 60 * rng.uniform(*traits.returns_for_minutes)
        return lasts, quality, after if returns else None, stays

    def _at_cameras(
        self, kind: str, per_hour: float, weights: dict[Scene | None, float]
    ) -> Iterator[Hazard]:
        rng = random.Random(f"{self.seed}:hazards:{kind}:cameras")
        cameras = self.config.cameras
        second, number = 0.0, 0
        while True:
            second += rng.expovariate(per_hour / 3600)
            number += 1
            camera = rng.choices(cameras, weights=[weights[c.scene] for c in cameras])[0]
            lat, lon = spot_in_front(camera, rng, 8, 40, self.zones)
            lasts, quality, after, stays = self._traits(rng, kind)
            yield Hazard(
                f"{kind}-c{number:04d}",
                kind,
                lat,
                lon,
                second,
                lasts,
                quality,
                after,
                stays,
                camera.id,
            )

    def _along_routes(
        self, kind: str, per_hour: float, weights: dict[Scene | None, float]
    ) -> Iterator[Hazard]:
        rng = random.Random(f"{self.seed}:hazards:{kind}:routes")
        routes = self.config.routes
        top = max(weights.values())
        second, number = 0.0, 0
        while True:
            second += rng.expovariate(per_hour / 3600)
            number += 1
            # A point beside a route, more likely where the scene suits the kind.
            for _ in range(100):
                route = rng.choices(routes, weights=[r.length_m for r in routes])[0]
                lat, lon = beside(
                    route,
                    rng.uniform(0, route.length_m),
                    rng.uniform(-0.8, 0.8) * self.config.drone_sight_m,
                )
                if rng.random() < weights[self.zones.locate(lat, lon).scene] / top:
                    break
            if self._watched_by_a_camera(lat, lon):
                continue  # the camera-site process covers what cameras watch
            lasts, quality, after, stays = self._traits(rng, kind)
            yield Hazard(
                f"{kind}-r{number:04d}",
                kind,
                lat,
                lon,
                second,
                lasts,
                quality,
                after,
                stays,
                route.route_id,
            )

    def _scripted(self) -> list[Hazard]:
        """The demo's scene: a market vendor from minute 1 who stays until a team comes and is
        back 15 minutes after it left, and a fire at a water source from 90 s until put out,
        which rekindles 10 minutes later (复燃) and burns another 20 minutes unless put out
        again: within the verify window, so the worker reopens its task."""
        cameras = self.config.cameras
        rng = random.Random(f"{self.seed}:hazards:scripted")
        hazards = []
        vending = sorted(
            (c for c in cameras if c.scene in (Scene.market, Scene.urban_road)),
            key=lambda c: c.scene is not Scene.market,
        )
        if vending:
            lat, lon = spot_in_front(vending[0], rng, 8, 40, self.zones)
            hazards.append(
                Hazard(
                    "scripted-vendor",
                    VENDING,
                    lat,
                    lon,
                    60,
                    4 * 3600,
                    0.88,
                    15 * 60,
                    3600,
                    vending[0].id,
                )
            )
        water = [c for c in cameras if c.scene is Scene.water_source]
        if water:
            lat, lon = spot_in_front(water[0], rng, 8, 40, self.zones)
            hazards.append(
                Hazard(
                    "scripted-fire",
                    BURNING,
                    lat,
                    lon,
                    90,
                    3600,
                    0.82,
                    10 * 60,
                    20 * 60,
                    water[0].id,
                )
            )
        return hazards

    def _watched_by_a_camera(self, lat: float, lon: float) -> bool:
        point = Hazard("", "", lat, lon, 0, 0, 0, None, 0, "")
        return any(self.camera_sees(camera, point) for camera in self.config.cameras)

    def until(self, second: float) -> list[Hazard]:
        """Every hazard that begins at or before `second` (drawing more as needed)."""
        while self._next is not None and self._next.begins <= second:
            self._drawn.append(self._next)
            self._next = next(self._merged, None)
        return self._drawn

    def nth(self, index: int) -> Hazard | None:
        """The hazard `index` in order of start (None: the world has no more)."""
        while len(self._drawn) <= index and self._next is not None:
            self._drawn.append(self._next)
            self._next = next(self._merged, None)
        return self._drawn[index] if index < len(self._drawn) else None

    # -- presence ----------------------------------------------------------------------------

    def episodes(self, hazard: Hazard) -> list[tuple[float, float]]:
        """The spans [from, to) of event seconds the hazard is there, as far as known now."""
        removals = self._removals.get(hazard.hazard_id, [])
        first_end = hazard.begins + hazard.lasts
        if not removals:
            return [(hazard.begins, first_end)]
        spans = [(hazard.begins, removals[0])]
        if hazard.returns_after is not None:
            back = removals[0] + hazard.returns_after
            end = back + hazard.returns_for
            if len(removals) > 1:
                end = min(end, removals[1])
            if end > back:
                spans.append((back, end))
        return spans

    def present(self, hazard: Hazard, second: float) -> bool:
        return any(start <= second < end for start, end in self.episodes(hazard))

    def next_presence(self, hazard: Hazard, second: float) -> tuple[float, float] | None:
        """The span the hazard is in at `second`, or the next one after it, if known."""
        for start, end in self.episodes(hazard):
            if second < end:
                return (max(start, second), end)
        return None

    # -- what teams do -----------------------------------------------------------------------

    def subscribe(self, removed: Removed) -> None:
        """Call `removed` for each removal from now on, and for those made already."""
        self._listeners.append(removed)
        for hazard in self._drawn:
            for at in self._removals.get(hazard.hazard_id, []):
                removed(hazard, at)

    def resolve(
        self, kind: str, lat: float, lon: float, second: float, radius_m: float
    ) -> list[Hazard]:
        """A team resolved a task of `kind` located at (lat, lon) at `second`: every hazard of
        that kind there then, within `radius_m`, is removed. Returns those removed."""
        x, y = COUNTY.to_metres(lat, lon)
        removed = []
        for hazard in self.until(second):
            if hazard.kind != kind or not self.present(hazard, second):
                continue
            hx, hy = hazard.xy
            if math.hypot(hx - x, hy - y) > radius_m:
                continue
            removals = self._removals.setdefault(hazard.hazard_id, [])
            if len(removals) >= 2:
                continue
            removals.append(second)
            removed.append(hazard)
            for listener in self._listeners:
                listener(hazard, second)
        return removed

    # -- who sees what -----------------------------------------------------------------------

    def camera_sees(self, camera: Camera, hazard: Hazard) -> bool:
        """Within the camera's view distance and its lens' angle."""
        cx, cy = COUNTY.to_metres(camera.lat, camera.lon)
        hx, hy = hazard.xy
        distance = math.hypot(hx - cx, hy - cy)
        if distance > self.config.camera_view_m:
            return False
        if distance < 1:
            return True
        bearing = math.degrees(math.atan2(hx - cx, hy - cy)) % 360
        off = abs((bearing - camera.facing + 180) % 360 - 180)
        return off <= self.config.camera_half_angle_degrees

    def cameras_seeing(self, hazard: Hazard) -> list[Camera]:
        return [c for c in self.config.cameras if self.camera_sees(c, hazard)]

    def passes(self, route: DroneRoute, hazard: Hazard) -> list[float]:
        """Metres along the route at which a drone flying it is closest to the hazard, once per
        stretch of the route within `drone_sight_m` of it."""
        sight = self.config.drone_sight_m
        hx, hy = hazard.xy
        found: list[float] = []
        best: tuple[float, float] | None = None  # (distance, metres along) in the current run
        for along, (x, y) in route_samples(route):
            distance = math.hypot(hx - x, hy - y)
            if distance <= sight:
                if best is None or distance < best[0]:
                    best = (distance, along)
            elif best is not None:
                found.append(best[1])
                best = None
        if best is not None:
            found.append(best[1])
        return found


_SAMPLES: dict[tuple[str, float], list[tuple[float, tuple[float, float]]]] = {}
SAMPLE_EVERY_M = 10.0


def route_samples(route: DroneRoute) -> list[tuple[float, tuple[float, float]]]:
    """Points every 10 m along a route, in metres: (metres along, (x, y))."""
    cache_key = (route.route_id, route.length_m)
    samples = _SAMPLES.get(cache_key)
    if samples is None:
        count = max(2, int(route.length_m / SAMPLE_EVERY_M) + 1)
        samples = []
        for i in range(count):
            along = route.length_m * i / (count - 1)
            samples.append((along, COUNTY.to_metres(*route.position_at(along))))
        _SAMPLES[cache_key] = samples
    return samples


def beside(route: DroneRoute, along: float, offset_m: float) -> tuple[float, float]:
    """(lat, lon) `offset_m` to the right of the route at `along` metres (left if negative)."""
    ahead = min(route.length_m, along + 5)
    behind = max(0.0, ahead - 10)
    x0, y0 = COUNTY.to_metres(*route.position_at(behind))
    x1, y1 = COUNTY.to_metres(*route.position_at(ahead))
    length = math.hypot(x1 - x0, y1 - y0) or 1.0
    x, y = COUNTY.to_metres(*route.position_at(along))
    return COUNTY.to_degrees(x + offset_m * (y1 - y0) / length, y - offset_m * (x1 - x0) / length)


def spot_in_front(
    camera: Camera, rng: random.Random, nearest: float, farthest: float, zones: ZoneMap
) -> tuple[float, float]:
    """A point in front of the camera, inside the camera's zone when the zone allows."""
    distance = rng.uniform(nearest, farthest)
    bearing = math.radians(camera.facing + rng.uniform(-12, 12))
    x, y = COUNTY.to_metres(camera.lat, camera.lon)
    try:
        polygon = zones.polygon(camera.zone_id)
    except KeyError:
        polygon = None
    for shrink in (1.0, 0.5, 0.25):
        lat, lon = COUNTY.to_degrees(
            x + shrink * distance * math.sin(bearing), y + shrink * distance * math.cos(bearing)
        )
        if polygon is None or polygon.contains(Point(lon, lat)):
            return lat, lon
    return camera.lat, camera.lon
