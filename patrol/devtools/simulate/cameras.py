"""Fixed roadside cameras: parked vehicles, roadside vendors, open burning, heartbeats."""

from __future__ import annotations

import importlib.resources
import json
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from patrol.devtools.simulate.events import SimEvent, as_event_time
from patrol.devtools.simulate.geo import COUNTY
from patrol.devtools.simulate.hazards import (
    BURNING,
    VENDING,
    Hazard,
    HazardWorld,
    WorldConfig,
    spot_in_front,
    world_config,
)
from patrol.devtools.simulate.plates import Plate
from patrol.devtools.simulate.timeline import Action
from patrol.devtools.simulate.world import SimWorld
from patrol.domain.zones import Scene, ZoneMap

if TYPE_CHECKING:
    from patrol.devtools.simulate.drones import DroneRoute


@dataclass(frozen=True, slots=True)
class Camera:
    id: str
    name: str
    lat: float
    lon: float
    zone_id: str
    scene: Scene
    facing: int  # compass degrees the lens points to


def load_cameras(path: Path | None = None) -> tuple[Camera, ...]:
    """The cameras of a cameras.json file; None reads the shipped Pan'an cameras."""
    if path is None:
        text = (
            importlib.resources.files("patrol").joinpath("data", "cameras.json").read_text("utf-8")
        )
    else:
        text = path.read_text(encoding="utf-8")
    return tuple(
        Camera(
            id=str(c["id"]),
            name=str(c["name"]),
            lat=float(c["lat"]),
            lon=float(c["lon"]),
            zone_id=str(c["zone_id"]),
            scene=Scene(c["scene"]),
            facing=int(c["facing"]),
        )
        for c in json.loads(text)["cameras"]
    )


@dataclass(frozen=True, slots=True)
class DwellBand:
    """A share of parked vehicles that stay between min and max minutes."""

    share: float
    min_minutes: float
    max_minutes: float


# Most drivers leave within the 10-minute grace period; some overstay; a few park for hours.
DEFAULT_DWELL_MIX = (
    DwellBand(0.68, 2, 8),
    DwellBand(0.27, 10, 40),
    DwellBand(0.05, 60, 240),
)

# How often each scene sees parked vehicles (relative weights); vendors and fires: hazards.py.
PARKING_WEIGHT = {
    Scene.urban_road: 3.0,
    Scene.market: 3.0,
    Scene.residential: 2.0,
    Scene.scenic: 1.5,
    Scene.rural: 0.3,
    Scene.water_source: 0.2,
}
# Seconds between two frames of a vendor or a fire a camera watches.
FRAME_EVERY = {VENDING: (60.0, 180.0), BURNING: (45.0, 120.0)}


def _shipped_routes() -> tuple[DroneRoute, ...]:
    from patrol.devtools.simulate.drones import load_routes  # drones imports this module

    return load_routes()


@dataclass(frozen=True)
class CameraSimConfig:
    """What the cameras see. Rates are per second or hour of event time, all cameras together.

    `plate_reads_per_second` is a long-run mean: the streets start empty, so the first hour
    runs about a fifth lower while hours-long parkers accumulate. Vendors and fires are the
    world's (`world()`): give the drone simulator the same hazard settings.
    """

    cameras: tuple[Camera, ...] = field(default_factory=load_cameras)
    plate_reads_per_second: float = 0.2
    read_interval_seconds: tuple[float, float] = (60.0, 120.0)
    dwell_mix: tuple[DwellBand, ...] = DEFAULT_DWELL_MIX
    low_confidence_share: float = 0.1
    vending_per_hour: float = 2.0
    burning_per_hour: float = 1.0
    route_vending_per_hour: float = 0.3
    route_burning_per_hour: float = 0.6
    heartbeat_seconds: float = 30.0
    malformed_fraction: float = 0.0
    demo_script: bool = True
    routes: tuple[DroneRoute, ...] = field(default_factory=_shipped_routes)
    zones: ZoneMap | None = field(default=None, compare=False)

    def world(self) -> WorldConfig:
        return world_config(self)

    def mean_reads_per_vehicle(self) -> float:
        low, high = self.read_interval_seconds
        interval = (low + high) / 2
        total = sum(band.share for band in self.dwell_mix)
        return (
            sum(
                band.share * (1 + 60 * (band.min_minutes + band.max_minutes) / 2 / interval)
                for band in self.dwell_mix
            )
            / total
        )


def camera_events(
    config: CameraSimConfig,
    *,
    seed: int,
    start: datetime,
    world: HazardWorld | None = None,
) -> Iterator[SimEvent]:
    """Camera detections in event-time order, forever; the same seed, start and config give
    byte-identical records, as long as no hazard is resolved meanwhile.

    Vendors and fires are the `world`'s (by default the one the seed and config give): each
    camera facing one sends frames of it while it is there. A hazard resolved in the world
    (`HazardWorld.resolve`) is not seen from then on, and one drawn to come back is seen again.

    With `demo_script`, the first minutes also hold a scripted scene: a vehicle that overstays
    its grace period on a no-parking road (a ticket about 11 minutes in), one that leaves after
    4 minutes (self-corrected), a police car (exempt), a market vendor and, when a camera
    watches a water source, a fire there.
    """
    hazards = world if world is not None else HazardWorld(config.world(), seed=seed)
    return _CameraWorld(config, seed=seed, start=as_event_time(start), hazards=hazards).run()


@dataclass
class _Spot:
    camera: Camera
    lat: float
    lon: float


class _CameraWorld(SimWorld):
    def __init__(
        self, config: CameraSimConfig, *, seed: int, start: datetime, hazards: HazardWorld
    ) -> None:
        if not config.cameras:
            raise ValueError("the camera simulation needs at least one camera")
        super().__init__(
            "camera",
            seed=seed,
            start=start,
            zones=config.zones,
            malformed_fraction=config.malformed_fraction,
        )
        self.config = config
        self.seed = seed
        self.hazards = hazards
        self._hazards_seen = 0

    def run(self) -> Iterator[SimEvent]:
        config = self.config
        for camera in config.cameras:
            self.timeline.at(self.rng.uniform(0, config.heartbeat_seconds), self._heartbeat(camera))
        if config.demo_script:
            self._script_demo()
        if config.plate_reads_per_second > 0:
            self._next_arrival(0.0)
        self._next_hazards()
        self.hazards.subscribe(self._removed)
        return self.timeline.run()

    # -- heartbeats -------------------------------------------------------------------------

    def _heartbeat(self, camera: Camera) -> Action:
        def beat(second: float) -> Iterable[SimEvent]:
            self.timeline.at(second + self.config.heartbeat_seconds, beat)
            yield self.writer.detection(
                source_id=camera.id,
                at=self.timeline.time(second),
                kind="heartbeat",
                lat=camera.lat,
                lon=camera.lon,
            )

        return beat

    # -- parked vehicles ---------------------------------------------------------------------

    def _next_arrival(self, after: float) -> None:
        config = self.config
        vehicles_per_second = config.plate_reads_per_second / config.mean_reads_per_vehicle()
        gap = self.rng.expovariate(vehicles_per_second)

        def arrive(second: float) -> Iterable[SimEvent]:
            self._next_arrival(second)
            camera = self._pick(PARKING_WEIGHT)
            band = self.rng.choices(config.dwell_mix, weights=[b.share for b in config.dwell_mix])[
                0
            ]
            dwell = 60 * self.rng.uniform(band.min_minutes, band.max_minutes)
            self._park(self.plates.draw(), camera, arrive_at=second, dwell_seconds=dwell)
            return ()

        self.timeline.at(after + gap, arrive)

    def _park(
        self,
        plate: Plate,
        camera: Camera,
        *,
        arrive_at: float,
        dwell_seconds: float,
        read_interval: tuple[float, float] | None = None,
        confident: bool = False,
    ) -> None:
        """Read the vehicle soon after it stops and then every minute or two until it leaves."""
        spot = self._spot_near(camera, 4, 25)
        leaves_at = arrive_at + dwell_seconds
        low, high = read_interval or self.config.read_interval_seconds

        def read(second: float) -> Iterable[SimEvent]:
            following = second + self.rng.uniform(low, high)
            if following < leaves_at:
                self.timeline.at(following, read)
            if confident or self.rng.random() >= self.config.low_confidence_share:
                confidence = self.rng.uniform(0.85, 0.99)
            else:
                confidence = self.rng.uniform(0.5, 0.8)
            yield self.writer.detection(
                source_id=camera.id,
                at=self.timeline.time(second),
                kind="plate_read",
                lat=spot.lat,
                lon=spot.lon,
                confidence=confidence,
                plate=plate.number,
                plate_color=plate.color,
            )

        self.timeline.at(arrive_at + self.rng.uniform(5, 30), read)

    # -- vendors and fires: the world's ------------------------------------------------------

    def _next_hazards(self) -> None:
        """Watch the world's hazards as they begin, each with every camera facing it."""
        hazard = self.hazards.nth(self._hazards_seen)
        if hazard is None:
            return

        def appear(second: float) -> Iterable[SimEvent]:
            self._hazards_seen += 1
            for camera in self.hazards.cameras_seeing(hazard):
                self._watch(hazard, camera, episode=0, first=second)
            self._next_hazards()
            return ()

        self.timeline.at(hazard.begins, appear)

    def _removed(self, hazard: Hazard, second: float) -> None:
        """A team removed the hazard: one drawn to come back is watched again when it is back."""
        spans = self.hazards.episodes(hazard)
        if hazard.returns_after is None or len(spans) < 2:
            return
        back = spans[1][0]
        for camera in self.hazards.cameras_seeing(hazard):
            self._watch(hazard, camera, episode=1, first=max(back, self.timeline.now))

    def _watch(self, hazard: Hazard, camera: Camera, *, episode: int, first: float) -> None:
        """Frames of a vendor or a fire while it is there; how clearly (the hazard's quality)
        varies by scene and light, so some are mostly below the thresholds. Frames have their
        own random stream per hazard, camera and visit, so a removal learned at any moment
        leaves the rest of the traffic as it was."""
        rng = random.Random(f"{self.seed}:frames:{hazard.hazard_id}:{camera.id}:{episode}")
        every = FRAME_EVERY[hazard.kind]

        def frame(second: float) -> Iterable[SimEvent]:
            spans = self.hazards.episodes(hazard)
            # (the timeline rounds to the millisecond: a first frame may fall just before)
            if episode >= len(spans) or not spans[episode][0] - 0.001 <= second < spans[episode][1]:
                return  # gone (ended, or removed by a team)
            self.timeline.at(second + rng.uniform(*every), frame)
            x, y = hazard.xy
            lat, lon = COUNTY.to_degrees(x + rng.uniform(-4, 4), y + rng.uniform(-4, 4))
            confidence = min(0.99, max(0.05, rng.gauss(hazard.quality, 0.06)))
            yield self.writer.detection(
                source_id=camera.id,
                at=self.timeline.time(second),
                kind=hazard.kind,
                lat=lat,
                lon=lon,
                confidence=confidence,
            )

        self.timeline.at(first, frame)

    # -- the scripted demo scene -------------------------------------------------------------

    def _script_demo(self) -> None:
        zones = self.zones
        cameras = self.config.cameras
        grace_roads = [
            c
            for c in cameras
            if c.scene is Scene.urban_road
            and zones.get(c.zone_id).no_parking
            and zones.get(c.zone_id).grace_minutes == 10
        ]
        if len(grace_roads) >= 1:
            # Read every 60–90 s for 17 minutes: a read lands between minute 10 and 15.
            self._park(
                self.plates.draw(police_share=0),
                grace_roads[0],
                arrive_at=20,
                dwell_seconds=17 * 60,
                read_interval=(60, 90),
                confident=True,
            )
        if len(grace_roads) >= 2:
            self._park(
                self.plates.draw(police_share=0),
                grace_roads[1],
                arrive_at=40,
                dwell_seconds=4 * 60,
                read_interval=(60, 90),
                confident=True,
            )
        if len(grace_roads) >= 3:
            self._park(
                self.plates.draw_police(),
                grace_roads[2],
                arrive_at=30,
                dwell_seconds=20 * 60,
                read_interval=(60, 90),
                confident=True,
            )
        # The scene's vendor and fire are the world's (hazards.py, HazardWorld._scripted).

    # -- placement ---------------------------------------------------------------------------

    def _pick(self, weights: dict[Scene, float]) -> Camera:
        cameras = self.config.cameras
        return self.rng.choices(cameras, weights=[weights[c.scene] for c in cameras])[0]

    def _spot_near(self, camera: Camera, nearest: float, farthest: float) -> _Spot:
        """A point in front of the camera, inside the camera's zone when the zone allows."""
        lat, lon = spot_in_front(camera, self.rng, nearest, farthest, self.zones)
        return _Spot(camera, lat, lon)
