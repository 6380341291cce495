"""Licence plates that look like the traffic in a Jinhua mountain county."""

from __future__ import annotations

import random
from dataclasses import dataclass

# Plate letters skip I and O.
LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"
DIGITS = "0123456789"
ZHEJIANG_CITIES = "ABCDEFHJKL"  # every Zhejiang prefecture except G (Jinhua, drawn separately)
OUT_OF_PROVINCE = (
    "沪A",
    "沪B",
    "苏E",
    "苏A",
    "皖A",
    "赣E",
    "闽D",
    "粤B",
    "京N",
    "鲁B",
    "豫A",
    "川A",
)


@dataclass(frozen=True, slots=True)
class Plate:
    number: str
    color: str  # blue, green (new energy), yellow (large vehicles), white (police)

    @property
    def is_police(self) -> bool:
        return self.number.endswith("警")


def _serial(rng: random.Random, length: int) -> str:
    # Mostly digits, sometimes one or two letters, as issued plates are.
    letters = rng.choices((0, 1, 2), weights=(55, 35, 10))[0]
    chars = [rng.choice(DIGITS) for _ in range(length)]
    for position in rng.sample(range(length), letters):
        chars[position] = rng.choice(LETTERS)
    return "".join(chars)


def random_plate(rng: random.Random, *, police_share: float = 0.02) -> Plate:
    """One plate: mostly 浙G (Jinhua), then other Zhejiang cities and other provinces;
    about a fifth new-energy (8 characters), a few yellow large-vehicle and police plates."""
    if rng.random() < police_share:
        return Plate(f"浙G{rng.choice(LETTERS)}{rng.randint(0, 999):03d}警", "white")
    origin = rng.random()
    if origin < 0.72:
        prefix = "浙G"
    elif origin < 0.88:
        prefix = "浙" + rng.choice(ZHEJIANG_CITIES)
    else:
        prefix = rng.choice(OUT_OF_PROVINCE)
    kind = rng.random()
    if kind < 0.17:
        return Plate(
            f"{prefix}{rng.choice('DF')}{rng.choice(LETTERS + DIGITS)}{_digits(rng, 4)}", "green"
        )
    if kind < 0.20:
        return Plate(f"{prefix}{_digits(rng, 5)}{rng.choice('DF')}", "green")
    if kind < 0.25:
        return Plate(f"{prefix}{_serial(rng, 5)}", "yellow")
    return Plate(f"{prefix}{_serial(rng, 5)}", "blue")


def police_plate(rng: random.Random) -> Plate:
    return Plate(f"浙G{rng.choice(LETTERS)}{rng.randint(0, 999):03d}警", "white")


def _digits(rng: random.Random, length: int) -> str:
    return "".join(rng.choice(DIGITS) for _ in range(length))


class PlatePool:
    """Draws plates without repeats, so one plate is one vehicle in a simulation."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._issued: set[str] = set()

    def draw(self, *, police_share: float = 0.02) -> Plate:
        while True:
            plate = random_plate(self._rng, police_share=police_share)
            if plate.number not in self._issued:
                self._issued.add(plate.number)
                return plate

    def draw_police(self) -> Plate:
        while True:
            plate = police_plate(self._rng)
            if plate.number not in self._issued:
                self._issued.add(plate.number)
                return plate
