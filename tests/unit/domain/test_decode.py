"""Raw values to Detections or specific rejections, with no broker."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from patrol.domain.decode import (
    Rejection,
    check_clock,
    dead_letter,
    decode_detection,
    decode_feedback,
    future_limit,
)
from patrol.domain.models import DeadLetterReason, Detection, TaskFeedback

GOOD: dict[str, Any] = {
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


def encode(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()


def reject(raw: bytes) -> Rejection:
    result = decode_detection(raw, max_bytes=1_048_576)
    assert isinstance(result, Rejection), result
    return result


def test_the_contract_example_is_a_detection() -> None:
    result = decode_detection(encode(GOOD), max_bytes=1_048_576)
    assert isinstance(result, Detection)
    assert result.plate == "浙G12345"
    assert result.observed_at.utcoffset() is not None


def test_unknown_extra_fields_are_ignored() -> None:
    assert isinstance(decode_detection(encode(GOOD | {"new_field": 1}), max_bytes=4096), Detection)


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"observed_at": "2026-11-27T10:00:00"}, "observed_at", "explicit offset"),
        ({"observed_at": 1795793700}, "observed_at", "RFC 3339"),
        ({"observed_at": "0001-01-01T00:00:00+08:00"}, "observed_at", "camera's clock"),
        ({"plate": "浙G1234"}, "detection", "not a valid mainland plate"),
        ({"plate": None}, "detection", "plate is required"),
        ({"confidence": 1.5}, "confidence", "less than or equal to 1"),
        ({"location": {"lat": 123, "lon": 120.4}}, "location.lat", "less than or equal to 90"),
        ({"kind": "jaywalking"}, "kind", "plate_read"),
        ({"kind": "open_burning"}, "detection", "plate is only allowed"),
        ({"schema_version": 2}, "schema_version", "1"),
        ({"event_id": ""}, "event_id", "at least 1"),
        ({"media": ["ftp://x"] * 1}, "media", "not an http(s) URL"),
        ({"media": ["https://e.example/a.jpg"] * 11}, "media", "at most 10"),
        ({"source": {"type": "drone", "id": "d1"}}, "detection", "route_id is required"),
    ],
)
def test_schema_errors_name_the_field(change: dict[str, Any], field: str, words: str) -> None:
    rejection = reject(encode(GOOD | change))
    assert rejection.reason is DeadLetterReason.schema
    assert any(e["field"] == field for e in rejection.errors), rejection.errors
    assert words in rejection.detail


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"confidence": True}, "confidence"),
        ({"confidence": "0.93"}, "confidence"),
        ({"location": {"lat": "29.0552", "lon": 120.4411}}, "location.lat"),
        ({"location": {"lat": 29.0552, "lon": True}}, "location.lon"),
        ({"schema_version": True}, "schema_version"),
        ({"schema_version": "1"}, "schema_version"),
    ],
)
def test_wrong_json_types_are_not_converted(change: dict[str, Any], field: str) -> None:
    rejection = reject(encode(GOOD | change))
    assert rejection.reason is DeadLetterReason.schema
    assert [e["field"] for e in rejection.errors] == [field]


def test_numbers_of_either_json_kind_pass() -> None:
    change = {"confidence": 1, "location": {"lat": 29, "lon": 120.4411}, "media": None}
    result = decode_detection(encode(GOOD | change), max_bytes=4096)
    assert isinstance(result, Detection)
    assert result.location is not None
    assert (result.confidence, result.location.lat, result.media) == (1.0, 29.0, [])


@pytest.mark.parametrize(
    ("raw", "words"),
    [(b"[1, 2]", "an array"), (b"42", "a number"), (b"null", "null"), (b'"x"', "a string")],
)
def test_json_that_is_not_an_object_is_invalid_json(raw: bytes, words: str) -> None:
    rejection = reject(raw)
    assert rejection.reason is DeadLetterReason.invalid_json
    assert rejection.detail == f"the value is JSON but not an object: it is {words}"


@pytest.mark.parametrize("when", ["2100-01-01T00:00:00Z", "9999-12-31T23:59:59+14:00"])
def test_a_time_past_every_plausible_year_is_clock_skew(when: str) -> None:
    rejection = reject(encode(GOOD | {"observed_at": when}))
    assert rejection.reason is DeadLetterReason.clock_skew
    assert "check the camera's clock" in rejection.detail
    assert rejection.errors[0]["field"] == "observed_at"


def test_missing_field_is_named() -> None:
    value = {k: v for k, v in GOOD.items() if k != "source"}
    rejection = reject(encode(value))
    assert rejection.errors[0] == {
        "field": "source",
        "type": "missing",
        "message": "Field required",
    }


def test_not_json_says_where() -> None:
    rejection = reject(b'{"event_id": ')
    assert rejection.reason is DeadLetterReason.invalid_json
    assert "line 1 column 14" in rejection.detail


def test_not_utf8_is_invalid_json_and_says_which_byte() -> None:
    rejection = reject(b'{"plate": "\xd5\xe3"}')  # GBK, not UTF-8: not JSON (RFC 8259)
    assert rejection.reason is DeadLetterReason.invalid_json
    assert "not UTF-8" in rejection.detail and "0xd5 at offset 11" in rejection.detail


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        (b"1" * 4301, "number out of range"),  # past Python's int conversion limit, too
        (b"1" * 5000 + b".5", "number out of range"),
        (b'"\\ud800"', "hex escape"),  # a lone surrogate
        (b"[" * 201 + b"]" * 201, "recursion limit"),
    ],
)
def test_json_the_parser_cannot_read_is_invalid_json_with_the_parsers_reason(
    extra: bytes, said: str
) -> None:
    rejection = reject(encode(GOOD)[:-1] + b', "note": ' + extra + b"}")
    assert rejection.reason is DeadLetterReason.invalid_json
    assert said in rejection.detail and "not a JSON object" not in rejection.detail


def test_too_large_is_rejected_before_parsing() -> None:
    result = decode_detection(b"x" * 2048, max_bytes=1024)
    assert isinstance(result, Rejection)
    assert result.reason is DeadLetterReason.too_large
    assert "2048 bytes" in result.detail and "PATROL_MAX_MESSAGE_BYTES" in result.detail


def test_tombstone_is_rejected() -> None:
    result = decode_detection(None, max_bytes=1024)
    assert isinstance(result, Rejection)


def test_dead_letter_keeps_what_is_needed_to_replay() -> None:
    raw = b"\xff not json"
    letter = dead_letter(
        reject(raw),
        topic="patrol.detections.camera",
        partition=3,
        offset=42,
        key=b"cam-0017",
        value=raw,
        received_at=datetime(2026, 11, 27, 2, 0, tzinfo=UTC),
    )
    assert base64.b64decode(letter.value_b64) == raw
    assert (letter.topic, letter.partition, letter.offset, letter.key) == (
        "patrol.detections.camera",
        3,
        42,
        "cam-0017",
    )


# --- clock_skew: a time too far ahead of the worker's wall clock (CONTRACT §2) -------------------

LIMIT = timedelta(minutes=10)
# The wall clock in UTC: the detections below say +08:00, so offsets must be compared as instants.
NOW = datetime(2026, 11, 27, 1, 58, tzinfo=UTC)


def detection_at(observed_at: datetime | str, **change: Any) -> Detection:
    at = observed_at if isinstance(observed_at, str) else observed_at.isoformat()
    return Detection.model_validate_json(encode(GOOD | {"observed_at": at} | change))


def test_a_time_exactly_at_the_limit_is_accepted_and_one_microsecond_past_is_not() -> None:
    at_limit = detection_at(NOW + LIMIT)
    past_limit = detection_at(NOW + LIMIT + timedelta(microseconds=1))

    assert check_clock(at_limit, NOW, LIMIT) is None
    rejection = check_clock(past_limit, NOW, LIMIT)
    assert rejection is not None
    assert rejection.reason is DeadLetterReason.clock_skew
    assert "is 10 min 1 s ahead" in rejection.detail  # rounded up: never reads as the limit


def test_past_and_present_times_are_accepted() -> None:
    for offset in (timedelta(0), -timedelta(days=3), timedelta(minutes=9, seconds=59)):
        assert check_clock(detection_at(NOW + offset), NOW, LIMIT) is None


@pytest.mark.parametrize(
    ("observed_at", "skewed"),
    [
        # 10:08 in China is 02:08 UTC: 10 minutes after NOW, within the limit.
        ("2026-11-27T10:08:00+08:00", False),
        ("2026-11-27T02:08:00+00:00", False),
        ("2026-11-27T02:08:00Z", False),
        # 10:08 UTC read as if it were local time would be 8 hours ahead.
        ("2026-11-27T10:08:00+00:00", True),
        ("2026-11-27T03:08:00-05:00", True),  # 08:08 UTC
        ("2026-11-27T08:08:00+06:00", False),  # 02:08 UTC
    ],
)
def test_offsets_are_compared_as_instants(observed_at: str, skewed: bool) -> None:
    for now in (NOW, NOW.astimezone(timezone(timedelta(hours=8)))):
        rejection = check_clock(detection_at(observed_at), now, LIMIT)
        assert (rejection is not None) is skewed, (observed_at, now)


def test_the_detail_names_the_device_how_far_ahead_and_the_setting() -> None:
    camera = detection_at("2026-11-28T10:00:00+08:00")
    drone = detection_at(
        "2026-11-27T13:05:00+08:00",
        kind="heartbeat",
        source={"type": "drone", "id": "drone-jianshan-01", "route_id": "route-7"},
        plate=None,
        plate_color=None,
        confidence=None,
    )

    camera_rejection = check_clock(camera, NOW, LIMIT)
    drone_rejection = check_clock(drone, NOW, LIMIT)

    assert camera_rejection is not None and drone_rejection is not None
    assert camera_rejection.detail == (
        "observed_at 2026-11-28T10:00:00+08:00 is 1 d 0 h 2 min ahead of the worker's clock "
        "(limit 10 min, PATROL_MAX_FUTURE_MINUTES): check the clock of camera cam-0017"
    )
    assert drone_rejection.detail.endswith("check the clock of drone drone-jianshan-01")
    assert " is 3 h 7 min ahead " in drone_rejection.detail
    assert camera_rejection.errors == [
        {
            "field": "observed_at",
            "type": "clock_skew",
            "message": "more than 10 min ahead of the worker's clock",
        }
    ]
    assert "浙G12345" not in camera_rejection.detail  # the plate is no help to a technician


def test_an_unlimited_setting_accepts_any_time_a_detection_can_carry() -> None:
    assert future_limit(10) == LIMIT
    assert future_limit(0.5) == timedelta(seconds=30)
    unlimited = future_limit(float("inf"))

    assert check_clock(detection_at("2099-12-31T23:59:59+08:00"), NOW, unlimited) is None
    rejection = check_clock(detection_at(NOW + timedelta(seconds=31)), NOW, future_limit(0.5))
    assert rejection is not None
    assert "is 31 s ahead of the worker's clock (limit 30 s," in rejection.detail


# --- feedback (CONTRACT §10): decoded by the same rules ------------------------------------------

FEEDBACK: dict[str, Any] = {
    "schema_version": 1,
    "feedback_id": "fb-000123",
    "task_id": "task-1",
    "status": "extended",
    "at": "2026-11-27T10:20:00+08:00",
    "extend_until": "2026-11-27T14:00:00+08:00",
    "media": None,
}


def test_feedback_with_an_absent_media_list_is_feedback() -> None:
    result = decode_feedback(encode(FEEDBACK), max_bytes=4096)
    assert isinstance(result, TaskFeedback)
    assert result.media == []


@pytest.mark.parametrize(
    ("change", "reason", "field"),
    [
        ({"at": "2200-01-01T00:00:00+08:00"}, DeadLetterReason.clock_skew, "at"),
        ({"extend_until": "2200-01-01T00:00:00+08:00"}, DeadLetterReason.schema, "extend_until"),
        ({"schema_version": True}, DeadLetterReason.schema, "schema_version"),
    ],
)
def test_feedback_far_ahead_is_clock_skew_only_in_its_event_time(
    change: dict[str, Any], reason: DeadLetterReason, field: str
) -> None:
    result = decode_feedback(encode(FEEDBACK | change), max_bytes=4096)
    assert isinstance(result, Rejection)
    assert result.reason is reason
    assert [e["field"] for e in result.errors] == [field]
