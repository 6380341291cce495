"""The core pipeline through the real broker, a real worker process and the real gateway."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

from patrol.kafka.topics import InternalTopics

from .helpers import produce_values, read_json, read_topic
from .stack import (
    NO_PARKING,
    T0,
    Stack,
    detection,
    heartbeat,
    minutes,
)

TICKETED = "浙G12345"
LEAVES = "浙GD54321"


def scenario_ticket() -> list[dict[str, Any]]:
    return [
        detection("a1-read-0", T0, plate=TICKETED),
        detection("a1-read-4", T0 + minutes(4), plate=TICKETED),
        detection("a1-read-10.5", T0 + minutes(10.5), plate=TICKETED),
    ]


def scenario_self_corrected() -> list[dict[str, Any]]:
    return [
        detection("a2-read-0", T0, plate=LEAVES, source="cam-0020"),
        detection("a2-read-5", T0 + minutes(5), plate=LEAVES, source="cam-0020"),
    ]


def scenario_heartbeats() -> list[dict[str, Any]]:
    return [heartbeat(f"a2-hb-{m}", T0 + minutes(m), source="cam-0020") for m in (8, 12, 16, 20)]


def scenario_return() -> list[dict[str, Any]]:
    return [detection("a2-read-25", T0 + minutes(25), plate=LEAVES, source="cam-0020")]


async def test_vehicle_still_there_after_grace_gets_one_sms_and_one_task(stack: Stack) -> None:
    await stack.send(stack.topics.camera, *scenario_ticket())
    tasks = await stack.tasks(min_count=1, timeout=60)
    sms = stack.gateway.wait_for(1)
    assert [m["plate"] for m in sms] == [TICKETED]
    assert sms[0]["zone_id"] == NO_PARKING
    assert TICKETED in sms[0]["text"] and "10:10" in sms[0]["text"]
    assert len(tasks) == 1
    task = tasks[0]
    assert task["task_type"] == "illegal_parking"
    assert task["plate"] == TICKETED
    assert task["zone_id"] == NO_PARKING
    assert [e["event_id"] for e in task["evidence"]] == ["a1-read-0", "a1-read-10.5"]
    assert task["created_at"] == (T0 + minutes(10.5)).isoformat()
    assert task["sms"]["message_id"] == sms[0]["message_id"]
    assert task["department"] == "comprehensive_enforcement"
    assert task["summary"]
    records = await read_json(stack.bootstrap, stack.topics.sms, min_count=1)
    assert [(r["message_id"], r["status"]) for r in records] == [(sms[0]["message_id"], "sent")]


async def test_vehicle_that_left_is_self_corrected_and_a_later_read_opens_a_new_case(
    stack: Stack,
) -> None:
    await stack.send(stack.topics.camera, *scenario_self_corrected())
    stack.gateway.wait_for(2)
    closed_before = stack.metric("patrol_grace_cases_closed_total", result="self_corrected")
    await stack.send(stack.topics.camera, *scenario_heartbeats())
    for _ in range(100):
        if stack.metric("patrol_grace_cases_closed_total", result="self_corrected") > closed_before:
            break
        await asyncio.sleep(0.3)
    assert stack.metric("patrol_grace_cases_closed_total", result="self_corrected") == (
        closed_before + 1
    )
    await stack.send(stack.topics.camera, *scenario_return())
    sms = stack.gateway.wait_for(3)
    leaves = [m for m in sms if m["plate"] == LEAVES]
    assert len(leaves) == 2
    assert leaves[0]["message_id"] != leaves[1]["message_id"]
    assert "10:35" in leaves[1]["text"]  # the new case's deadline: 10:25 + 10 min
    tasks = await stack.tasks(min_count=1)
    assert [t["plate"] for t in tasks] == [TICKETED]


async def test_replaying_everything_sends_nothing_new(stack: Stack) -> None:
    before_sms = stack.gateway.messages()
    before_tasks = await stack.tasks(min_count=1)
    outbox = InternalTopics.of(stack.topics.app_id).sms_outbox
    before_outbox = await read_topic(stack.bootstrap, outbox, min_count=len(before_sms))
    replay = [
        *scenario_ticket(),
        *scenario_self_corrected(),
        *scenario_heartbeats(),
        *scenario_return(),
    ]
    # every message taken in is counted once, under what became of it
    taken_in_before = stack.metric("patrol_detections_total")
    reads_accepted_before = stack.metric(
        "patrol_detections_total", kind="plate_read", outcome="accepted"
    )
    await stack.send(stack.topics.camera, *replay)
    await stack.send(stack.topics.camera, *reversed(replay))
    for _ in range(300):  # until the worker has decided every replayed message
        if stack.metric("patrol_detections_total") >= taken_in_before + 2 * len(replay):
            break
        await asyncio.sleep(0.3)
    assert stack.metric("patrol_detections_total") == taken_in_before + 2 * len(replay)
    assert (
        stack.metric("patrol_detections_total", kind="plate_read", outcome="accepted")
        == reads_accepted_before
    ), "a replayed plate read was taken as new"
    # decided and committed: a warning it caused would be in the outbox by now
    await stack.wait_committed()
    assert len(await read_topic(stack.bootstrap, outbox, min_count=len(before_outbox))) == len(
        before_outbox
    )
    assert await stack.tasks(min_count=len(before_tasks)) == before_tasks
    assert stack.gateway.messages() == before_sms


BAD_MESSAGES: list[tuple[str, bytes, str, str]] = [
    ("not json", b"{this is not json", "invalid_json", "not JSON"),
    ("not utf-8", b'{"event_id": "\xff\xfe"}', "invalid_json", "not UTF-8"),
    (
        "missing field",
        json.dumps(
            {k: v for k, v in detection("bad-1", T0, plate="浙G11111").items() if k != "event_id"}
        ).encode(),
        "schema",
        "event_id",
    ),
    (
        "naive time",
        json.dumps(
            detection("bad-2", T0, plate="浙G11111") | {"observed_at": "2026-11-27T10:00:00"}
        ).encode(),
        "schema",
        "offset",
    ),
    ("bad plate", json.dumps(detection("bad-3", T0, plate="ABC123")).encode(), "schema", "plate"),
    (
        "latitude 123",
        json.dumps(
            detection("bad-4", T0, plate="浙G11111", location={"lat": 123, "lon": 120.4})
        ).encode(),
        "schema",
        "location.lat",
    ),
    (
        "confidence 1.5",
        json.dumps(detection("bad-5", T0, plate="浙G11111", confidence=1.5)).encode(),
        "schema",
        "confidence",
    ),
    (
        "unknown kind",
        json.dumps(detection("bad-6", T0, kind="jaywalking")).encode(),
        "schema",
        "kind",
    ),
    (
        "plate on vending",
        json.dumps(detection("bad-7", T0, kind="roadside_vending", plate="浙G11111")).encode(),
        "schema",
        "plate is only allowed",
    ),
    ("2 MB value", b'{"pad": "' + b"x" * (2 * 1024 * 1024) + b'"}', "too_large", "bytes"),
    ("array", b"[1, 2, 3]", "invalid_json", "not an object: it is an array"),
    (
        "naive-looking epoch number",
        json.dumps(detection("bad-8", T0, plate="浙G11111") | {"observed_at": 1795793700}).encode(),
        "schema",
        "observed_at",
    ),
]


async def test_bad_messages_are_dead_lettered_and_good_ones_still_flow(stack: Stack) -> None:
    keys = [f"bad-{i}".encode() for i in range(len(BAD_MESSAGES))]
    await produce_values(
        stack.bootstrap,
        stack.topics.drone,
        [(key, value) for key, (_, value, _, _) in zip(keys, BAD_MESSAGES, strict=True)],
        max_request_size=8 * 1024 * 1024,
    )
    good = detection(
        "after-bad-0", T0, plate="浙G77777", source="drone-anwen-01", source_type="drone"
    )
    await stack.send(stack.topics.drone, good)
    letters = await read_json(
        stack.bootstrap, stack.topics.deadletter, min_count=len(BAD_MESSAGES), timeout=60
    )
    by_key = {letter["key"]: letter for letter in letters}
    assert len(letters) == len(BAD_MESSAGES)
    for key, (what, value, reason, detail) in zip(keys, BAD_MESSAGES, strict=True):
        letter = by_key[key.decode()]
        assert letter["reason"] == reason, what
        assert detail in letter["detail"], (what, letter["detail"])
        assert base64.b64decode(letter["value_b64"]) == value, what
        assert letter["topic"] == stack.topics.drone
        assert letter["offset"] >= 0
    sms = stack.gateway.wait_for(1, timeout=60)
    assert "浙G77777" in [m["plate"] for m in sms]
    assert stack.metric("patrol_deadletters_total") >= len(BAD_MESSAGES)
