"""Exact instants: the fast epoch arithmetic agrees with plain datetime arithmetic."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from patrol.domain import ids

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
OFFSETS = st.integers(min_value=-86_399, max_value=86_399)
MOMENTS = st.builds(
    lambda naive, offset: naive.replace(tzinfo=timezone(timedelta(seconds=offset))),
    st.datetimes(min_value=datetime(1900, 1, 2), max_value=datetime(2200, 1, 1)),
    OFFSETS,
)


@given(MOMENTS)
def test_epoch_micros_is_exact(moment: datetime) -> None:
    assert ids.epoch_micros(moment) == (moment - EPOCH) // timedelta(microseconds=1)


@given(MOMENTS, OFFSETS)
def test_from_epoch_micros_gives_the_instant_at_the_offset(moment: datetime, offset: int) -> None:
    micros = ids.epoch_micros(moment)
    tz = UTC if offset == 0 else timezone(timedelta(seconds=offset))
    expected = (EPOCH + timedelta(microseconds=micros)).astimezone(tz)
    got = ids.from_epoch_micros(micros, offset)
    assert got == expected
    assert repr(got) == repr(expected)  # same wall time and the same tzinfo
