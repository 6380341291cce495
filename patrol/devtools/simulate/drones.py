"""Dock-based patrol drones flying preset routes (the county's two drone docks)."""

from __future__ import annotations

import bisect
import importlib.resources
import itertools
import json
import math
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from patrol.devtools.simulate.cameras import Camera, load_cameras
from patrol.devtools.simulate.events import SimEvent, as_event_time
from patrol.devtools.simulate.geo import COUNTY
from patrol.devtools.simulate.hazards import Hazard, HazardWorld, WorldConfig, world_config
from patrol.devtools.simulate.plates import Plate
from patrol.devtools.simulate.timeline import Action
from patrol.devtools.simulate.world import SimWorld
from patrol.domain.zones import Scene, ZoneMap


@dataclass(frozen=True, slots=True)
class DroneRoute:
    """A preset route from a dock and back, flown at a constant speed."""

    route_id: str
    name: str
    dock: str
    drone_id: str
    altitude_m: float
    speed_mps: float
    path: tuple[tuple[float, float], ...]  # (lat, lon) vertices, dock first
    cumulative_m: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.path) < 2:
            raise ValueError(f"route {self.route_id!r} needs at least two points")
        if self.speed_mps <= 0:
            raise ValueError(f"route {self.route_id!r} needs a positive speed_mps")
        points = [COUNTY.to_metres(lat, lon) for lat, lon in self.path]
        cumulative = [0.0]
        for (x0, y0), (x1, y1) in itertools.pairwise(points):
            cumulative.append(cumulative[-1] + math.hypot(x1 - x0, y1 - y0))
        object.__setattr__(self, "cumulative_m", tuple(cumulative))

    @property
    def length_m(self) -> float:
        return self.cumulative_m[-1]

    @property
    def flight_seconds(self) -> float:
        return self.length_m / self.speed_mps

    def position_at(self, distance_m: float) -> tuple[float, float]:
        """(lat, lon) after flying `distance_m` along the route (clamped to its ends)."""
        cumulative = self.cumulative_m
        distance = min(max(distance_m, 0.0), cumulative[-1])
        segment = max(1, bisect.bisect_left(cumulative, distance))
        segment = min(segment, len(self.path) - 1)
        start, end = cumulative[segment - 1], cumulative[segment]
        fraction = 0.0 if end == start else (distance - start) / (end - start)
        (x0, y0), (x1, y1) = (COUNTY.to_metres(*self.path[i]) for i in (segment - 1, segment))
        return COUNTY.to_degrees(x0 + fraction * (x1 - x0), y0 + fraction * (y1 - y0))


def load_routes(path: Path | None = None) -> tuple[DroneRoute, ...]:
    """The routes of a GeoJSON file of LineStrings; None reads the shipped Pan'an routes."""
    if path is None:
        resource = importlib.resources.files("patrol").joinpath("data", "drone_routes.geojson")
        text = resource.read_text("utf-8")
    else:
        text = path.read_text(encoding="utf-8")
    routes = []
    for feature in json.loads(text)["features"]:
        properties = feature["properties"]
        dock = str(properties["dock"])
        routes.append(
            DroneRoute(
                route_id=str(properties["route_id"]),
                name=str(properties["name"]),
                dock=dock,
                drone_id=str(properties.get("drone_id") or f"drone-{dock}-01"),
                altitude_m=float(properties["altitude_m"]),
                speed_mps=float(properties["speed_mps"]),
                path=tuple(
                    (float(lat), float(lon)) for lon, lat in feature["geometry"]["coordinates"]
                ),
            )
        )
    return tuple(routes)


# What a drone sights over each scene: (plate_read, roadside_vending, open_burning) weights.
# Only the plate reads are drawn from these now: a vendor or a fire a drone sees is one of the
# world's (hazards.py), where it is; the weights keep the plate reads at their former rate.
SIGHTING_WEIGHT: dict[Scene | None, tuple[float, float, float]] = {
    Scene.urban_road: (0.93, 0.06, 0.01),
    Scene.market: (0.85, 0.14, 0.01),
    Scene.residential: (0.95, 0.03, 0.02),
    Scene.scenic: (0.85, 0.10, 0.05),
    Scene.rural: (0.60, 0.05, 0.35),
    Scene.water_source: (0.65, 0.03, 0.32),
    None: (0.85, 0.05, 0.10),  # between zones: country roads and fields
}
SIGHTING_KINDS = ("plate_read", "roadside_vending", "open_burning")


@dataclass(frozen=True)
class DroneSimConfig:
    """Drone missions. Rates are per second of event time while a drone flies.

    The hazard settings (vendors and fires per hour, the demo scene, the cameras) describe the
    world the drones fly over; give the camera simulator the same ones."""

    routes: tuple[DroneRoute, ...] = field(default_factory=load_routes)
    sightings_per_flight_second: float = 0.03
    mission_interval_minutes: float = 30.0
    first_mission_within_minutes: float = 2.0
    heartbeat_seconds: float = 15.0
    malformed_fraction: float = 0.0
    cameras: tuple[Camera, ...] = field(default_factory=load_cameras)
    vending_per_hour: float = 2.0
    burning_per_hour: float = 1.0
    route_vending_per_hour: float = 0.3
    route_burning_per_hour: float = 0.6
    demo_script: bool = True
    zones: ZoneMap | None = field(default=None, compare=False)

    def world(self) -> WorldConfig:
        return world_config(self)


def drone_events(
    config: DroneSimConfig,
    *,
    seed: int,
    start: datetime,
    world: HazardWorld | None = None,
) -> Iterator[SimEvent]:
    """Drone detections in event-time order, forever: each dock launches a sortie every
    `mission_interval_minutes` (the first within `first_mission_within_minutes`), taking its
    routes in turn. Heartbeats and plate reads carry the drone's position on the route and the
    route id; a vendor or fire of the `world` the drone passes within sight of is seen where it
    is (the drone geolocates it, to a few metres). The same seed, start and config give
    byte-identical records, as long as no hazard is resolved meanwhile."""
    hazards = world if world is not None else HazardWorld(config.world(), seed=seed)
    return _DroneFleet(config, seed=seed, start=as_event_time(start), hazards=hazards).run()


# Drone frames of a hazard: how many as it passes, and seconds between them.
HAZARD_FRAMES = (2, 4)
HAZARD_FRAME_GAP = (2.0, 4.0)
GEOLOCATION_ERROR_M = 3.0
# A hazard that ended this long before a take-off is not looked for any more.
FORGET_AFTER_SECONDS = 3 * 3600


class _DroneFleet(SimWorld):
    def __init__(
        self, config: DroneSimConfig, *, seed: int, start: datetime, hazards: HazardWorld
    ) -> None:
        if not config.routes:
            raise ValueError("the drone simulation needs at least one route")
        super().__init__(
            "drone",
            seed=seed,
            start=start,
            zones=config.zones,
            malformed_fraction=config.malformed_fraction,
        )
        self.config = config
        self.seed = seed
        self.hazards = hazards

    def run(self) -> Iterator[SimEvent]:
        docks: dict[str, list[DroneRoute]] = {}
        for route in self.config.routes:
            docks.setdefault(route.dock, []).append(route)
        for routes in docks.values():
            takeoff = 60 * self.rng.uniform(0.25, self.config.first_mission_within_minutes)
            self._schedule_mission(tuple(routes), 0, takeoff)
        return self.timeline.run()

    def _schedule_mission(
        self, routes: tuple[DroneRoute, ...], number: int, takeoff: float
    ) -> None:
        route = routes[number % len(routes)]

        def fly(second: float) -> Iterable[SimEvent]:
            landing = second + route.flight_seconds
            # The dock swaps batteries for at least five minutes between missions.
            following = max(second + 60 * self.config.mission_interval_minutes, landing + 300)
            self._schedule_mission(routes, number + 1, following)
            self._plan_flight(route, second)
            self._look_for_hazards(route, number, second)
            return ()

        self.timeline.at(takeoff, fly)

    def _plan_flight(self, route: DroneRoute, takeoff: float) -> None:
        duration = route.flight_seconds
        beat = 0.0
        while beat <= duration:
            self.timeline.at(takeoff + beat, self._emit(route, takeoff, "heartbeat"))
            beat += self.config.heartbeat_seconds
        rate = self.config.sightings_per_flight_second
        if rate <= 0:
            return
        moment = self.rng.expovariate(rate)
        while moment < duration:
            lat, lon = route.position_at(moment * route.speed_mps)
            scene = self.zones.locate(lat, lon).scene
            kind = self.rng.choices(SIGHTING_KINDS, weights=SIGHTING_WEIGHT[scene])[0]
            if kind == "plate_read":
                self._plan_plate_read(route, takeoff, moment, duration)
            moment += self.rng.expovariate(rate)

    def _look_for_hazards(self, route: DroneRoute, number: int, takeoff: float) -> None:
        """Each hazard the sortie passes within sight of, checked as the drone passes it: a
        hazard a team removed meanwhile is not there to see."""
        landing = takeoff + route.flight_seconds
        for hazard in self.hazards.until(landing):
            spans = self.hazards.episodes(hazard)
            if spans[-1][1] < takeoff - FORGET_AFTER_SECONDS:
                continue
            for index, along in enumerate(self.hazards.passes(route, hazard)):
                passing = takeoff + along / route.speed_mps
                rng = random.Random(
                    f"{self.seed}:sighting:{hazard.hazard_id}:{route.drone_id}:{number}:{index}"
                )
                self.timeline.at(passing, self._pass(route, hazard, rng, landing))

    def _pass(
        self, route: DroneRoute, hazard: Hazard, rng: random.Random, landing: float
    ) -> Action:
        def overfly(second: float) -> Iterable[SimEvent]:
            if not self.hazards.present(hazard, second):
                return ()
            x, y = hazard.xy
            at = second
            for _ in range(rng.randint(*HAZARD_FRAMES)):
                lat, lon = COUNTY.to_degrees(
                    x + rng.gauss(0, GEOLOCATION_ERROR_M), y + rng.gauss(0, GEOLOCATION_ERROR_M)
                )
                confidence = min(0.99, max(0.05, rng.gauss(hazard.quality, 0.05)))
                self.timeline.at(
                    min(at, landing),
                    self._emit_at(route, hazard.kind, lat, lon, confidence),
                )
                at += rng.uniform(*HAZARD_FRAME_GAP)
            return ()

        return overfly

    def _emit_at(
        self, route: DroneRoute, kind: str, lat: float, lon: float, confidence: float
    ) -> Action:
        def emit(second: float) -> Iterable[SimEvent]:
            yield self.writer.detection(
                source_id=route.drone_id,
                at=self.timeline.time(second),
                kind=kind,
                lat=lat,
                lon=lon,
                confidence=confidence,
                route_id=route.route_id,
            )

        return emit

    def _plan_plate_read(
        self, route: DroneRoute, takeoff: float, moment: float, duration: float
    ) -> None:
        """One or two frames seconds apart as the drone passes over the same vehicle."""
        rng = self.rng
        plate = self.plates.draw()
        frames = rng.randint(1, 2)
        low = rng.random() < 0.2
        confidences = [rng.uniform(0.5, 0.8) if low else rng.uniform(0.8, 0.97)] * frames
        for frame, confidence in enumerate(confidences):
            at = min(moment + frame * rng.uniform(2, 4), duration)
            self.timeline.at(
                takeoff + at,
                self._emit(route, takeoff, "plate_read", confidence=confidence, plate=plate),
            )

    def _emit(
        self,
        route: DroneRoute,
        takeoff: float,
        kind: str,
        *,
        confidence: float | None = None,
        plate: Plate | None = None,
    ) -> Action:
        def emit(second: float) -> Iterable[SimEvent]:
            lat, lon = route.position_at((second - takeoff) * route.speed_mps)
            # GNSS noise of a metre or two around the true position on the route.
            x, y = COUNTY.to_metres(lat, lon)
            lat, lon = COUNTY.to_degrees(
                x + self.rng.uniform(-1.5, 1.5), y + self.rng.uniform(-1.5, 1.5)
            )
            yield self.writer.detection(
                source_id=route.drone_id,
                at=self.timeline.time(second),
                kind=kind,
                lat=lat,
                lon=lon,
                confidence=confidence,
                plate=plate.number if plate else None,
                plate_color=plate.color if plate else None,
                route_id=route.route_id,
            )

        return emit
