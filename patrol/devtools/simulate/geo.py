"""Local metric coordinates around Pan'an county, good to centimetres over a few tens of km."""

from __future__ import annotations

import math
from dataclasses import dataclass

METRES_PER_DEGREE_LAT = 111_320.0


@dataclass(frozen=True, slots=True)
class LocalProjection:
    """Equirectangular projection: x metres east and y metres north of (lat0, lon0)."""

    lat0: float = 29.054
    lon0: float = 120.445

    @property
    def metres_per_degree_lon(self) -> float:
        return METRES_PER_DEGREE_LAT * math.cos(math.radians(self.lat0))

    def to_metres(self, lat: float, lon: float) -> tuple[float, float]:
        return (
            (lon - self.lon0) * self.metres_per_degree_lon,
            (lat - self.lat0) * METRES_PER_DEGREE_LAT,
        )

    def to_degrees(self, x: float, y: float) -> tuple[float, float]:
        """(lat, lon) of a point x metres east and y metres north of the origin."""
        return (
            self.lat0 + y / METRES_PER_DEGREE_LAT,
            self.lon0 + x / self.metres_per_degree_lon,
        )


COUNTY = LocalProjection()
