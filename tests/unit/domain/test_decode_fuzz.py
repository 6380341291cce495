"""Fuzzing the intake's decoding: any bytes, any JSON, any near-valid Detection is a Detection
the intake can place and screen, or a Rejection it can dead-letter, never an exception."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from patrol.domain import grace, incidents
from patrol.domain.decode import Rejection, check_clock, dead_letter, decode_detection, future_limit
from patrol.domain.models import DeadLetterReason, Detection, DetectionKind
from patrol.domain.zones import load_zones
from patrol.metrics import DETECTION_OUTCOMES
from patrol.settings import Settings

MAX_BYTES = 4096
NOW = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)
SETTINGS = Settings()
ZONES = load_zones()
POLICY = incidents.IncidentPolicy.from_settings(SETTINGS)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

PLATE_READ: dict[str, Any] = {
    "schema_version": 1,
    "event_id": "cam-0017-20261127T100000-0001",
    "kind": "plate_read",
    "source": {"type": "camera", "id": "cam-0017", "route_id": None},
    "observed_at": "2026-11-27T10:00:00+08:00",
    "location": {"lat": 29.0552, "lon": 120.4411},
    "confidence": 0.93,
    "plate": "浙G12345",
    "plate_color": "blue",
    "media": ["https://evidence.example/cam-0017/0001.jpg"],
}
DRONE_FIRE: dict[str, Any] = PLATE_READ | {
    "event_id": "drone-02-0001",
    "kind": "open_burning",
    "source": {"type": "drone", "id": "drone-02", "route_id": "route-anwen-01"},
    "plate": None,
    "plate_color": None,
}
HEARTBEAT: dict[str, Any] = {
    "schema_version": 1,
    "event_id": "hb-1",
    "kind": "heartbeat",
    "source": {"type": "camera", "id": "cam-0001"},
    "observed_at": "2026-11-27T10:00:00+08:00",
}
VALID = (PLATE_READ, DRONE_FIRE, HEARTBEAT, DRONE_FIRE | {"kind": "roadside_vending"})


def intake(raw: bytes | None, max_bytes: int = MAX_BYTES) -> Detection | Rejection:
    """What the intake does with one value before it routes it (patrol.intake.consumer):
    decode, check the clock, then place and screen a detection, or build its dead letter."""
    decoded = decode_detection(raw, max_bytes=max_bytes)
    if isinstance(decoded, Detection):
        decoded = check_clock(decoded, NOW, future_limit(SETTINGS.max_future_minutes)) or decoded
    if isinstance(decoded, Rejection):
        assert isinstance(decoded.reason, DeadLetterReason)
        assert decoded.detail
        letter = dead_letter(
            decoded,
            topic="patrol.detections.camera",
            partition=0,
            offset=1,
            key=b"\xff cam",
            value=raw,
            received_at=NOW,
        )
        json.loads(letter.model_dump_json())  # the dead letter itself can be produced and read
        return decoded
    if decoded.kind is DetectionKind.heartbeat:
        return decoded
    assert decoded.location is not None
    zone = ZONES.locate(decoded.location.lat, decoded.location.lon)
    if decoded.kind is DetectionKind.plate_read:
        outcome = grace.screen_plate_read(
            decoded,
            zone,
            min_confidence=SETTINGS.plate_min_confidence,
            exempt=SETTINGS.exempt_plate_set,
            tz=SETTINGS.tz,
        )
        grace.case_key(decoded.plate or "", zone.zone_id).encode()
    else:
        outcome = incidents.screen_hazard(decoded, POLICY)
    assert outcome in DETECTION_OUTCOMES
    return decoded


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=20,
)
odd_times = st.sampled_from(
    [
        "2026-11-27T10:00:00",
        "2026-11-27T10:00:00+24:00",
        "2026-11-27T10:00:00+23:59",
        "2026-11-27T10:00:00-23:59",
        "2026-02-30T10:00:00+08:00",
        "9999-12-31T23:59:59+14:00",
        "0001-01-01T00:00:00-14:00",
        "1999-12-31T23:59:59.999999Z",
        "2099-12-31T23:59:59.9999999999Z",
        "2100-01-01T00:00:00Z",
        "2026-11-27 10:00:00Z",
        "2026-11-27T10:00:00.5+08:00",
        "20261127T100000Z",
        "2126-11-27T10:00:00Z",
        "",
        "now",
    ]
) | st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
).map(datetime.isoformat)
odd_values = (
    json_values
    | odd_times
    | st.sampled_from(
        [
            1e308,
            -1e308,
            5e-324,
            2**63,
            -(2**63) - 1,
            "\ud800",
            "浙G1234警",
            "浙G12345警",
            "x" * 5000,
            {"lat": 91, "lon": 181},
            {"lat": "29.05", "lon": "120.44"},
            {"lat": 29.0552},
            ["https://e.example/a.jpg"] * 11,
            ["javascript:alert(1)"],
            ["https://" + "a" * 3000],
        ]
    )
)
field_names = st.sampled_from(
    [*PLATE_READ, "location.lat", "location.lon", "source.type", "source.id", "source.route_id"]
)


@st.composite
def near_valid(draw: st.DrawFn) -> dict[str, Any]:
    """A valid detection with up to three fields removed, retyped or given an odd value."""
    value: dict[str, Any] = json.loads(json.dumps(draw(st.sampled_from(VALID))))
    for _ in range(draw(st.integers(0, 3))):
        name = draw(field_names)
        target, _, leaf = name.rpartition(".")
        holder = value.get(target) if target else value
        if not isinstance(holder, dict):
            continue
        if draw(st.booleans()):
            holder.pop(leaf or name, None)
        else:
            holder[leaf or name] = draw(odd_values)
    return value


@FUZZ
@given(st.binary(max_size=600))
def test_any_bytes_are_a_detection_or_a_rejection(raw: bytes) -> None:
    intake(raw)


@FUZZ
@given(json_values)
def test_any_json_is_a_detection_or_a_rejection(value: object) -> None:
    intake(json.dumps(value).encode())
    intake(json.dumps(value, ensure_ascii=False).encode("utf-8", errors="surrogatepass"))


@FUZZ
@given(near_valid())
def test_a_near_valid_detection_is_a_detection_or_a_rejection(value: dict[str, Any]) -> None:
    intake(json.dumps(value).encode())


@FUZZ
@given(
    st.sampled_from(VALID),
    st.integers(min_value=0, max_value=400),
    st.binary(min_size=0, max_size=3),
)
def test_a_valid_detection_cut_short_or_spliced_is_a_rejection_or_still_valid(
    valid: dict[str, Any], at: int, splice: bytes
) -> None:
    raw = json.dumps(valid, ensure_ascii=False).encode()
    at = min(at, len(raw))
    intake(raw[:at])
    intake(raw[:at] + splice + raw[at + len(splice) :])


@FUZZ
@given(st.sampled_from(VALID), st.integers(min_value=1, max_value=900), st.integers(1, 32))
def test_deeply_nested_or_oversized_values_are_rejected_not_raised(
    valid: dict[str, Any], depth: int, max_bytes: int
) -> None:
    nested = "[" * depth + "]" * depth
    intake(json.dumps(valid).replace('"media": [', f'"media": [{nested},').encode(), 1 << 20)
    intake(("[" * depth).encode(), 1 << 20)
    result = intake(json.dumps(valid).encode(), max_bytes=max_bytes)
    assert isinstance(result, Rejection)
    assert result.reason is DeadLetterReason.too_large


def test_the_valid_seeds_are_detections_and_a_tombstone_is_a_rejection() -> None:
    for valid in VALID:
        assert isinstance(intake(json.dumps(valid).encode()), Detection)
    assert isinstance(intake(None), Rejection)
    far = PLATE_READ | {"observed_at": (NOW + timedelta(days=3)).isoformat()}
    skewed = intake(json.dumps(far).encode())
    assert isinstance(skewed, Rejection)
    assert skewed.reason is DeadLetterReason.clock_skew


def test_nesting_deeper_than_pythons_recursion_limit_is_a_rejection() -> None:
    depth = sys.getrecursionlimit() * 10
    assert isinstance(intake(b"[" * depth, max_bytes=1 << 20), Rejection)
