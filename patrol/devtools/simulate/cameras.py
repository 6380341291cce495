"""Fixed roadside cameras: parked vehicles, roadside vendors, open burning, heartbeats."""

from __future__ import annotations

import importlib.resources
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from shapely.geometry import Point

from patrol.devtools.simulate.events import SimEvent, as_event_time
from patrol.devtools.simulate.geo import COUNTY
from patrol.devtools.simulate.plates import Plate
from patrol.devtools.simulate.timeline import Action
from patrol.devtools.simulate.world import SimWorld
from patrol.domain.zones import Scene, ZoneMap


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

# How often each scene sees parked vehicles, vendors and fires (relative weights).
PARKING_WEIGHT = {
    Scene.urban_road: 3.0,
    Scene.market: 3.0,
    Scene.residential: 2.0,
    Scene.scenic: 1.5,
    Scene.rural: 0.3,
    Scene.water_source: 0.2,
}
VENDING_WEIGHT = {
    Scene.market: 4.0,
    Scene.urban_road: 3.0,
    Scene.scenic: 2.0,
    Scene.residential: 1.0,
    Scene.rural: 0.2,
    Scene.water_source: 0.1,
}
BURNING_WEIGHT = {
    Scene.rural: 4.0,
    Scene.water_source: 2.0,
    Scene.scenic: 1.0,
    Scene.residential: 0.3,
    Scene.urban_road: 0.1,
    Scene.market: 0.1,
}


@dataclass(frozen=True)
class CameraSimConfig:
    """What the cameras see. Rates are per second or hour of event time, all cameras together.

    `plate_reads_per_second` is a long-run mean: the streets start empty, so the first hour
    runs about a fifth lower while hours-long parkers accumulate.
    """

    cameras: tuple[Camera, ...] = field(default_factory=load_cameras)
    plate_reads_per_second: float = 0.2
    read_interval_seconds: tuple[float, float] = (60.0, 120.0)
    dwell_mix: tuple[DwellBand, ...] = DEFAULT_DWELL_MIX
    low_confidence_share: float = 0.1
    vending_per_hour: float = 2.0
    burning_per_hour: float = 1.0
    heartbeat_seconds: float = 30.0
    malformed_fraction: float = 0.0
    demo_script: bool = True
    zones: ZoneMap | None = field(default=None, compare=False)

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


def camera_events(config: CameraSimConfig, *, seed: int, start: datetime) -> Iterator[SimEvent]:
    """Camera detections in event-time order, forever; the same seed, start and config give
    byte-identical records.

    With `demo_script`, the first minutes also hold a scripted scene: a vehicle that overstays
    its grace period on a no-parking road (a ticket about 11 minutes in), one that leaves after
    4 minutes (self-corrected), a police car (exempt), a market vendor and, when a camera
    watches a water source, a fire there.
    """
    return _CameraWorld(config, seed=seed, start=as_event_time(start)).run()


@dataclass
class _Spot:
    camera: Camera
    lat: float
    lon: float


class _CameraWorld(SimWorld):
    def __init__(self, config: CameraSimConfig, *, seed: int, start: datetime) -> None:
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

    def run(self) -> Iterator[SimEvent]:
        config = self.config
        for camera in config.cameras:
            self.timeline.at(self.rng.uniform(0, config.heartbeat_seconds), self._heartbeat(camera))
        if config.demo_script:
            self._script_demo()
        if config.plate_reads_per_second > 0:
            self._next_arrival(0.0)
        if config.vending_per_hour > 0:
            self._next_hazard(0.0, "roadside_vending")
        if config.burning_per_hour > 0:
            self._next_hazard(0.0, "open_burning")
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

    # -- vendors and fires -------------------------------------------------------------------

    def _next_hazard(self, after: float, kind: str) -> None:
        per_hour = (
            self.config.vending_per_hour
            if kind == "roadside_vending"
            else self.config.burning_per_hour
        )
        gap = self.rng.expovariate(per_hour / 3600)

        def begin(second: float) -> Iterable[SimEvent]:
            self._next_hazard(second, kind)
            if kind == "roadside_vending":
                camera = self._pick(VENDING_WEIGHT)
                lasts = 60 * self.rng.uniform(15, 90)
                self._hazard(kind, camera, second, lasts, (60, 180), self.rng.uniform(0.45, 0.95))
            else:
                camera = self._pick(BURNING_WEIGHT)
                lasts = 60 * self.rng.uniform(8, 40)
                self._hazard(kind, camera, second, lasts, (45, 120), self.rng.uniform(0.35, 0.95))
            return ()

        self.timeline.at(after + gap, begin)

    def _hazard(
        self,
        kind: str,
        camera: Camera,
        begins: float,
        lasts: float,
        every: tuple[float, float],
        quality: float,
    ) -> None:
        """A vendor or a fire the camera sees again and again while it lasts; how clearly
        (`quality`) varies by scene and light, so some are mostly below the thresholds."""
        spot = self._spot_near(camera, 8, 40)
        ends = begins + lasts

        def frame(second: float) -> Iterable[SimEvent]:
            following = second + self.rng.uniform(*every)
            if following < ends:
                self.timeline.at(following, frame)
            dx, dy = self.rng.uniform(-4, 4), self.rng.uniform(-4, 4)
            x, y = COUNTY.to_metres(spot.lat, spot.lon)
            lat, lon = COUNTY.to_degrees(x + dx, y + dy)
            confidence = min(0.99, max(0.05, self.rng.gauss(quality, 0.06)))
            yield self.writer.detection(
                source_id=camera.id,
                at=self.timeline.time(second),
                kind=kind,
                lat=lat,
                lon=lon,
                confidence=confidence,
            )

        self.timeline.at(begins, frame)

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
        vending = sorted(
            (c for c in cameras if c.scene in (Scene.market, Scene.urban_road)),
            key=lambda c: c.scene is not Scene.market,
        )
        if vending:
            self._hazard("roadside_vending", vending[0], 60, 25 * 60, (60, 120), 0.88)
        water = [c for c in cameras if c.scene is Scene.water_source]
        if water:
            self._hazard("open_burning", water[0], 90, 15 * 60, (45, 90), 0.82)

    # -- placement ---------------------------------------------------------------------------

    def _pick(self, weights: dict[Scene, float]) -> Camera:
        cameras = self.config.cameras
        return self.rng.choices(cameras, weights=[weights[c.scene] for c in cameras])[0]

    def _spot_near(self, camera: Camera, nearest: float, farthest: float) -> _Spot:
        """A point in front of the camera, inside the camera's zone when the zone allows."""
        distance = self.rng.uniform(nearest, farthest)
        bearing = math.radians(camera.facing + self.rng.uniform(-12, 12))
        x, y = COUNTY.to_metres(camera.lat, camera.lon)
        try:
            polygon = self.zones.polygon(camera.zone_id)
        except KeyError:
            polygon = None
        for shrink in (1.0, 0.5, 0.25):
            lat, lon = COUNTY.to_degrees(
                x + shrink * distance * math.sin(bearing), y + shrink * distance * math.cos(bearing)
            )
            if polygon is None or polygon.contains(Point(lon, lat)):
                return _Spot(camera, lat, lon)
        return _Spot(camera, camera.lat, camera.lon)
