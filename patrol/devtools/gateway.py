"""`patrol sms-gateway`: the stub SMS gateway shipped for development and tests (CONTRACT §7).

It accepts `POST /messages`, deduplicates by `Idempotency-Key`, keeps what it accepted in memory,
in order, lists it at `GET /messages`, and injects failures (503) and latency on demand, set at
start-up by options or at runtime by `PUT /faults`.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import random
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import click
from aiohttp import web

from patrol.domain.models import RFC3339_PATTERN
from patrol.settings import load_settings

log = logging.getLogger("patrol.gateway")

MESSAGE_FIELDS = ("message_id", "plate", "zone_id", "text", "deadline")
IDEMPOTENCY_HEADER = "Idempotency-Key"


@dataclass(slots=True)
class Faults:
    """Failure and latency the gateway injects into `POST /messages`."""

    fail_rate: float = 0.0
    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    fail_first: int = 0

    def problems(self) -> list[str]:
        found = []
        if not 0.0 <= self.fail_rate <= 1.0:
            found.append(f"fail_rate must be between 0 and 1, got {self.fail_rate}")
        if self.latency_ms < 0:
            found.append(f"latency_ms must be 0 or more, got {self.latency_ms}")
        if self.latency_jitter_ms < 0:
            found.append(f"latency_jitter_ms must be 0 or more, got {self.latency_jitter_ms}")
        if self.fail_first < 0:
            found.append(f"fail_first must be 0 or more, got {self.fail_first}")
        return found


class GatewayState:
    """Accepted messages in arrival order, POST counts per key, and the faults in force."""

    def __init__(self, faults: Faults | None = None, seed: int = 0) -> None:
        self.faults = faults or Faults()
        self.reseed(seed)
        self.accepted: dict[str, dict[str, str]] = {}
        self.attempts: dict[str, int] = {}

    def reseed(self, seed: int) -> None:
        self.seed = seed
        # Separate streams so changing latency never shifts which requests fail.
        self._failure_rng = random.Random(f"failure:{seed}")
        self._latency_rng = random.Random(f"latency:{seed}")

    def latency_seconds(self) -> float:
        jitter = self._latency_rng.uniform(0, self.faults.latency_jitter_ms)
        return (self.faults.latency_ms + jitter) / 1000

    def should_fail(self, key: str) -> bool:
        if self.attempts.get(key, 0) <= self.faults.fail_first:
            return True
        return self.faults.fail_rate > 0 and self._failure_rng.random() < self.faults.fail_rate

    def view(self, key: str) -> dict[str, Any]:
        return {**self.accepted[key], "attempt_count": self.attempts.get(key, 0)}


STATE = web.AppKey("gateway_state", GatewayState)

# Chinese warning texts stay readable in responses and in `curl` output.
_dumps = functools.partial(json.dumps, ensure_ascii=False)


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=_dumps)


def error(status: int, code: str, detail: str, **extra: Any) -> web.Response:
    return json_response({"error": code, "detail": detail, **extra}, status=status)


def message_problems(body: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Fields missing from a message, and fields present but unusable (with why)."""
    missing = [name for name in MESSAGE_FIELDS if name not in body or body[name] is None]
    invalid = []
    for name in MESSAGE_FIELDS:
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, str) or not value.strip():
            invalid.append(f"{name} must be a non-empty string")
        elif name == "deadline" and not RFC3339_PATTERN.match(value):
            invalid.append(
                "deadline must be RFC 3339 with an offset, e.g. 2026-11-27T10:10:00+08:00"
            )
    return missing, invalid


async def read_json_object(request: web.Request) -> dict[str, Any] | web.Response:
    try:
        body = json.loads(await request.read())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return error(400, "invalid_json", f"the body is not valid JSON: {exc}")
    if not isinstance(body, dict):
        return error(400, "invalid_json", "the body must be a JSON object")
    return body


async def post_message(request: web.Request) -> web.Response:
    state = request.app[STATE]
    latency = state.latency_seconds()
    if latency > 0:
        await asyncio.sleep(latency)
    key = request.headers.get(IDEMPOTENCY_HEADER, "").strip()
    if not key:
        return error(
            400,
            "missing_idempotency_key",
            f"send the header {IDEMPOTENCY_HEADER}: <message_id> so retries are not sent twice",
        )
    body = await read_json_object(request)
    if isinstance(body, web.Response):
        return body
    missing, invalid = message_problems(body)
    if missing:
        return error(
            400,
            "missing_fields",
            f"the message lacks {', '.join(missing)}; required: {', '.join(MESSAGE_FIELDS)}",
            fields=missing,
        )
    if invalid:
        return error(400, "invalid_fields", "; ".join(invalid))
    if body["message_id"] != key:
        return error(
            422,
            "idempotency_key_mismatch",
            f"{IDEMPOTENCY_HEADER} {key!r} differs from message_id {body['message_id']!r}",
        )
    state.attempts[key] = state.attempts.get(key, 0) + 1
    if state.should_fail(key):
        return error(503, "injected_failure", "the gateway is failing on purpose (fault injection)")
    if key in state.accepted:
        return json_response({**state.view(key), "duplicate": True}, status=200)
    state.accepted[key] = {
        **{name: body[name] for name in MESSAGE_FIELDS},
        "received_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
    }
    return json_response({**state.view(key), "duplicate": False}, status=201)


async def list_messages(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return json_response([state.view(key) for key in state.accepted])


async def clear_messages(request: web.Request) -> web.Response:
    state = request.app[STATE]
    cleared = len(state.accepted)
    state.accepted.clear()
    state.attempts.clear()
    return json_response({"cleared": cleared})


async def get_faults(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return json_response({**asdict(state.faults), "seed": state.seed})


async def put_faults(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = await read_json_object(request)
    if isinstance(body, web.Response):
        return body
    known = {"fail_rate", "latency_ms", "latency_jitter_ms", "fail_first", "seed"}
    unknown = sorted(set(body) - known)
    if unknown:
        return error(400, "unknown_fields", f"unknown {unknown}; known: {sorted(known)}")
    numbers = {name: value for name, value in body.items() if name != "seed"}
    if any(isinstance(v, bool) or not isinstance(v, int | float) for v in numbers.values()):
        return error(400, "invalid_fields", "fault values must be numbers")
    if "fail_first" in numbers and not isinstance(numbers["fail_first"], int):
        return error(400, "invalid_fields", "fail_first must be a whole number")
    if "seed" in body and (isinstance(body["seed"], bool) or not isinstance(body["seed"], int)):
        return error(400, "invalid_fields", "seed must be a whole number")
    faults = Faults(**{**asdict(state.faults), **numbers})
    problems = faults.problems()
    if problems:
        return error(400, "invalid_fields", "; ".join(problems))
    state.faults = faults
    if "seed" in body:
        state.reseed(body["seed"])
    log.info("faults now %s", asdict(faults))
    return json_response({**asdict(state.faults), "seed": state.seed})


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok", "accepted": len(request.app[STATE].accepted)})


@web.middleware
async def log_requests(
    request: web.Request,
    handler: Any,
) -> web.StreamResponse:
    message_id = request.headers.get(IDEMPOTENCY_HEADER, "-")
    try:
        response: web.StreamResponse = await handler(request)
    except web.HTTPException as exc:
        log.info("%s %s %d %s", request.method, request.path, exc.status, message_id)
        raise
    log.info("%s %s %d %s", request.method, request.path, response.status, message_id)
    return response


def create_gateway_app(faults: Faults | None = None, seed: int = 0) -> web.Application:
    """The gateway as an aiohttp application (used by the command and by in-process tests)."""
    app = web.Application(middlewares=[log_requests])
    app[STATE] = GatewayState(faults, seed)
    app.router.add_post("/messages", post_message)
    app.router.add_get("/messages", list_messages)
    app.router.add_delete("/messages", clear_messages)
    app.router.add_get("/faults", get_faults)
    app.router.add_put("/faults", put_faults)
    app.router.add_get("/healthz", healthz)
    return app


@click.command(
    "sms-gateway",
    help=(
        "Run the stub SMS gateway: POST /messages (deduplicated by Idempotency-Key), "
        "GET /messages (accepted, oldest first), DELETE /messages (clear), GET/PUT /faults "
        "(change fail_rate, latency_ms, latency_jitter_ms, fail_first, seed at runtime), "
        "GET /healthz. Messages are kept in memory only."
    ),
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Port to listen on.  [default: PATROL_SMS_PORT, else 8025]",
)
@click.option(
    "--fail-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Fraction of POST /messages answered 503 (not stored), drawn from the seeded RNG.",
)
@click.option(
    "--fail-first",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Answer 503 to the first N POSTs of every Idempotency-Key (deterministic retries).",
)
@click.option(
    "--latency-ms",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Delay added before answering each POST /messages, in milliseconds.",
)
@click.option(
    "--latency-jitter-ms",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Extra random delay, uniform between 0 and this many milliseconds.",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed of the failure and jitter RNGs."
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    default=None,
    help="Log level.  [default: PATROL_LOG_LEVEL, else info]",
)
def sms_gateway_command(
    host: str,
    port: int | None,
    fail_rate: float,
    fail_first: int,
    latency_ms: float,
    latency_jitter_ms: float,
    seed: int,
    log_level: str | None,
) -> None:
    settings = load_settings(sms_port=port, log_level=log_level)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    faults = Faults(
        fail_rate=fail_rate,
        latency_ms=latency_ms,
        latency_jitter_ms=latency_jitter_ms,
        fail_first=fail_first,
    )
    app = create_gateway_app(faults, seed)
    log.info("faults %s, seed %d", asdict(faults), seed)
    web.run_app(
        app,
        host=host,
        port=settings.sms_port,
        access_log=None,
        print=lambda _banner: log.info(
            "sms gateway listening on http://%s:%d", host, settings.sms_port
        ),
    )


if __name__ == "__main__":
    # `python -m patrol.devtools.gateway` runs the stub gateway, as `patrol sms-gateway` does.
    sms_gateway_command(prog_name="patrol sms-gateway")
