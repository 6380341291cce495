"""Watches of resolved hazard tasks (CONTRACT §10 rule 4): the window's ends, the radius."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from patrol.domain import verification
from patrol.domain.models import Detection, TaskType
from patrol.domain.tasks import Watch

T0 = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)
LAT, LON = 29.05, 120.45
WATCH = Watch("t-1", TaskType.roadside_vending, LAT, LON, T0, T0 + timedelta(minutes=60))


def seen(at: datetime, north_m: float = 0.0, event_id: str = "e") -> Detection:
    return Detection.model_validate(
        {
            "schema_version": 1,
            "event_id": event_id,
            "kind": "roadside_vending",
            "source": {"type": "camera", "id": "cam-1"},
            "observed_at": at.isoformat(),
            "location": {"lat": LAT + north_m / 111_195, "lon": LON},
            "confidence": 0.9,
        }
    )


def test_a_detection_exactly_at_the_windows_end_still_reopens() -> None:
    rest, outcome = verification.match_detection((WATCH,), seen(WATCH.until), 100.0)
    assert outcome is not None and outcome.outcome == "redetected" and rest == ()


def test_a_detection_a_second_after_the_window_or_beyond_the_radius_does_not() -> None:
    late = seen(WATCH.until + timedelta(seconds=1))
    far = seen(T0 + timedelta(minutes=5), north_m=101)
    before = seen(T0 - timedelta(seconds=1))
    for detection in (late, far, before):
        rest, outcome = verification.match_detection((WATCH,), detection, 100.0)
        assert outcome is None and rest == (WATCH,)


def test_the_clock_at_the_windows_end_keeps_the_watch_and_past_it_verifies() -> None:
    assert verification.expire((WATCH,), WATCH.until) == ((WATCH,), [])
    rest, ended = verification.expire((WATCH,), WATCH.until + timedelta(microseconds=1))
    assert rest == () and [(o.outcome, o.at) for o in ended] == [("verified", WATCH.until)]


def test_watches_survive_encoding_and_a_repeated_watch_replaces_the_first() -> None:
    later = Watch("t-1", TaskType.roadside_vending, LAT, LON, T0, T0 + timedelta(minutes=90))
    watches = verification.add_watch(verification.add_watch((), WATCH), later)
    assert watches == (later,)
    assert verification.decode_watches(verification.encode_watches(watches)) == watches
