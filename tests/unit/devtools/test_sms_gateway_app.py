"""The stub SMS gateway's HTTP behaviour, served in-process by aiohttp's test server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from click.testing import CliRunner

from patrol.devtools.gateway import Faults, create_gateway_app, sms_gateway_command


@asynccontextmanager
async def gateway(
    faults: Faults | None = None, seed: int = 0
) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(create_gateway_app(faults, seed))) as client:
        yield client


def message(message_id: str = "sms-case-1", **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "message_id": message_id,
        "plate": "浙G12345",
        "zone_id": "panan-anwen-old-street",
        "text": "您的车辆在安文老街违停,请于10:10前驶离。",
        "deadline": "2026-11-27T10:10:00+08:00",
    }
    body.update(changes)
    return body


async def post(client: TestClient[Any, Any], body: Any, key: str | None = None) -> Any:
    headers = {"Idempotency-Key": key} if key is not None else {}
    if isinstance(body, dict):
        response = await client.post("/messages", json=body, headers=headers)
    else:
        response = await client.post("/messages", data=body, headers=headers)
    return response.status, await response.json()


async def test_first_post_is_stored_and_a_repeat_is_a_duplicate() -> None:
    async with gateway() as client:
        first = await post(client, message(), key="sms-case-1")
        again = await post(client, message(), key="sms-case-1")
        listed = await (await client.get("/messages")).json()

    assert first[0] == 201 and first[1]["duplicate"] is False
    assert again[0] == 200 and again[1]["duplicate"] is True
    assert again[1]["received_at"] == first[1]["received_at"]
    assert len(listed) == 1
    assert listed[0]["attempt_count"] == 2
    assert {k: listed[0][k] for k in message()} == message()


async def test_messages_are_listed_oldest_first() -> None:
    async with gateway() as client:
        for n in (3, 1, 2):
            await post(client, message(f"sms-{n}"), key=f"sms-{n}")
        listed = await (await client.get("/messages")).json()

    assert [m["message_id"] for m in listed] == ["sms-3", "sms-1", "sms-2"]


async def test_missing_idempotency_key_is_refused() -> None:
    async with gateway() as client:
        status, body = await post(client, message())
        listed = await (await client.get("/messages")).json()

    assert status == 400
    assert body["error"] == "missing_idempotency_key"
    assert listed == []


async def test_idempotency_key_must_match_the_message_id() -> None:
    async with gateway() as client:
        status, body = await post(client, message("sms-case-1"), key="sms-case-2")

    assert status == 422
    assert body["error"] == "idempotency_key_mismatch"
    assert "sms-case-2" in body["detail"] and "sms-case-1" in body["detail"]


async def test_bad_json_and_missing_fields_are_explained() -> None:
    incomplete = message()
    del incomplete["plate"], incomplete["deadline"]
    async with gateway() as client:
        not_json = await post(client, b"{not json", key="sms-case-1")
        not_object = await post(client, b"[1, 2]", key="sms-case-1")
        missing = await post(client, incomplete, key="sms-case-1")
        naive = await post(client, message(deadline="2026-11-27T10:10:00"), key="sms-case-1")

    assert not_json[0] == 400 and not_json[1]["error"] == "invalid_json"
    assert not_object[0] == 400 and not_object[1]["error"] == "invalid_json"
    assert missing[0] == 400 and missing[1]["fields"] == ["plate", "deadline"]
    assert naive[0] == 400 and "deadline" in naive[1]["detail"]


async def test_fail_first_answers_503_then_accepts_and_counts_every_attempt() -> None:
    async with gateway(Faults(fail_first=2)) as client:
        statuses = [(await post(client, message(), key="sms-case-1"))[0] for _ in range(3)]
        listed = await (await client.get("/messages")).json()

    assert statuses == [503, 503, 201]
    assert [(m["message_id"], m["attempt_count"]) for m in listed] == [("sms-case-1", 3)]


async def test_a_503_is_not_stored() -> None:
    async with gateway(Faults(fail_rate=1.0)) as client:
        status, body = await post(client, message(), key="sms-case-1")
        listed = await (await client.get("/messages")).json()

    assert status == 503 and body["error"] == "injected_failure"
    assert listed == []


async def test_fail_rate_follows_the_seed() -> None:
    async def pattern(seed: int) -> list[int]:
        async with gateway(Faults(fail_rate=0.5), seed=seed) as client:
            return [(await post(client, message(f"m{n}"), key=f"m{n}"))[0] for n in range(40)]

    first, again = await pattern(7), await pattern(7)

    assert first == again
    assert 5 < first.count(503) < 35
    assert set(first) == {201, 503}


async def test_faults_change_at_runtime() -> None:
    async with gateway(Faults(fail_rate=1.0)) as client:
        failing = (await post(client, message(), key="sms-case-1"))[0]
        changed = await client.put("/faults", json={"fail_rate": 0, "latency_ms": 5})
        accepted = (await post(client, message(), key="sms-case-1"))[0]
        faults = await (await client.get("/faults")).json()

    assert (failing, changed.status, accepted) == (503, 200, 201)
    assert faults["fail_rate"] == 0 and faults["latency_ms"] == 5


async def test_invalid_faults_are_refused_and_leave_the_old_ones() -> None:
    async with gateway(Faults(fail_rate=0.25)) as client:
        out_of_range = await client.put("/faults", json={"fail_rate": 1.5})
        out_of_range_detail = (await out_of_range.json())["detail"]
        unknown = await client.put("/faults", json={"failrate": 0.1})
        not_a_number = await client.put("/faults", json={"latency_ms": "slow"})
        faults = await (await client.get("/faults")).json()

    assert [r.status for r in (out_of_range, unknown, not_a_number)] == [400, 400, 400]
    assert "fail_rate" in out_of_range_detail
    assert faults["fail_rate"] == 0.25


async def test_delete_clears_messages_and_attempt_counts() -> None:
    async with gateway() as client:
        await post(client, message(), key="sms-case-1")
        cleared = await (await client.delete("/messages")).json()
        listed = await (await client.get("/messages")).json()
        status, body = await post(client, message(), key="sms-case-1")

    assert cleared == {"cleared": 1}
    assert listed == []
    assert status == 201 and body["attempt_count"] == 1


async def test_healthz_answers() -> None:
    async with gateway() as client:
        response = await client.get("/healthz")
        assert response.status == 200
        assert (await response.json())["status"] == "ok"


def test_help_explains_every_option() -> None:
    result = CliRunner().invoke(sms_gateway_command, ["--help"], prog_name="patrol sms-gateway")

    assert result.exit_code == 0
    assert "Usage: patrol sms-gateway" in result.output
    for option in sms_gateway_command.params:
        assert option.help, f"{option.name} has no help text"
        assert option.opts[0] in result.output
