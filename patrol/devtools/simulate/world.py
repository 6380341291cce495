"""What every simulated producer draws on: its random streams, plates, zones and timeline."""

from __future__ import annotations

import random
from datetime import datetime
from typing import Literal

from patrol.devtools.simulate.events import DetectionWriter
from patrol.devtools.simulate.plates import PlatePool
from patrol.devtools.simulate.timeline import Timeline
from patrol.domain.zones import ZoneMap, load_zones


class SimWorld:
    """Seeded state each camera or drone simulation keeps of its own (the vendors and fires
    they share are hazards.py's HazardWorld).

    Each concern has its own random stream derived from the seed, so turning one on (e.g.
    malformed messages) leaves the others' draws unchanged.
    """

    def __init__(
        self,
        source_type: Literal["camera", "drone"],
        *,
        seed: int,
        start: datetime,
        zones: ZoneMap | None,
        malformed_fraction: float,
    ) -> None:
        self.rng = random.Random(seed)
        # Cameras and drones draw different vehicles: one plate is one vehicle in a run.
        plates = "plates" if source_type == "camera" else "drone-plates"
        self.plates = PlatePool(random.Random(f"{seed}:{plates}"))
        self.zones = zones if zones is not None else load_zones()
        self.writer = DetectionWriter(
            source_type,
            malformed_fraction=malformed_fraction,
            malformed_rng=random.Random(f"{seed}:malformed"),
        )
        self.timeline = Timeline(start)
