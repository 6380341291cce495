"""Every PATROL_* setting, read once from the environment (pydantic-settings)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import timedelta
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def user_cache_dir() -> Path:
    """Where patrol keeps caches and local state unless told otherwise."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "patrol"


CONTRACT_TOPICS: Mapping[str, str] = MappingProxyType(
    {
        "camera": "detections.camera",
        "drone": "detections.drone",
        "dispatch": "dispatch.tasks",
        "sms": "notifications.sms",
        "deadletter": "deadletter",
        "feedback": "dispatch.feedback",
        "status": "dispatch.status",
    }
)
"""The interface's topics by role, named after the prefix (by default `patrol.`)."""


def topic_names(prefix: str) -> dict[str, str]:
    """Each role's topic under `prefix`: `patrol` gives the interface's default names."""
    return {role: f"{prefix}.{suffix}" for role, suffix in CONTRACT_TOPICS.items()}


def topic_env(prefix: str) -> dict[str, str]:
    """The PATROL_TOPIC_* variables that put every topic under `prefix` (demo, bench, tests)."""
    return {f"PATROL_TOPIC_{role.upper()}": name for role, name in topic_names(prefix).items()}


_DEFAULT_TOPICS = topic_names("patrol")


class Settings(BaseSettings):
    """Configuration of the worker and its tools; each field is the variable PATROL_<NAME>."""

    model_config = SettingsConfigDict(env_prefix="PATROL_", extra="ignore", frozen=True)

    kafka_bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers")
    topic_camera: str = Field(_DEFAULT_TOPICS["camera"], description="camera detections (in)")
    topic_drone: str = Field(_DEFAULT_TOPICS["drone"], description="drone detections (in)")
    topic_dispatch: str = Field(_DEFAULT_TOPICS["dispatch"], description="enforcement tasks (out)")
    topic_sms: str = Field(_DEFAULT_TOPICS["sms"], description="SMS outcome audit (out)")
    topic_deadletter: str = Field(
        _DEFAULT_TOPICS["deadletter"], description="rejected messages (out)"
    )
    topic_feedback: str = Field(
        _DEFAULT_TOPICS["feedback"], description="task feedback from the dispatch system (in)"
    )
    topic_status: str = Field(_DEFAULT_TOPICS["status"], description="task status records (out)")
    partitions: int = Field(6, ge=1, le=256, description="partitions of topics the worker creates")
    app_id: str = Field("patrol", description="consumer group and prefix of internal topics")
    data_dir: Path = Field(
        default_factory=lambda: user_cache_dir() / "worker",
        description="local state of the worker",
    )
    web_host: str = Field("127.0.0.1", description="address of /metrics, /healthz, /readyz")
    web_port: int = Field(6066, ge=1, le=65535, description="port of /metrics, /healthz, /readyz")
    log_level: str = Field("info", description="debug, info, warning or error")
    instance_id: str | None = Field(
        None,
        description="a stable name for this worker, unique among the app's workers (e.g. its pod "
        "name): a worker restarted under the same name takes its partitions back at once instead "
        "of after the session timeout (static group membership); a stopped one keeps them for "
        "the session timeout",
    )
    session_timeout_seconds: float = Field(
        6.0,
        ge=1,
        le=90,
        description="a worker that stops heartbeating loses its partitions after this long "
        "(brokers accept 6 s and more unless group.min.session.timeout.ms says otherwise; at "
        "most 90 s, the consumer's request timeout)",
    )

    zones: Path | None = Field(None, description="GeoJSON zones file (default: shipped Pan'an)")
    routing: Path | None = Field(None, description="hazard routing table (default: shipped)")

    plate_min_confidence: float = Field(0.8, ge=0, le=1)
    exempt_plates: str = Field("", description="comma-separated plates exempt from the grace rule")
    recheck_minutes: int = Field(
        5, ge=0, description="R: how long after the deadline a read confirms"
    )
    vending_min_confidence: float = Field(0.6, ge=0, le=1)
    burning_min_confidence: float = Field(0.5, ge=0, le=1)
    incident_radius_m: float = Field(100.0, gt=0)
    incident_window_minutes: int = Field(30, gt=0)
    dedup_retention_hours: int = Field(
        24,
        ge=1,
        description="how long decided reads, and closed tasks, are remembered (event time) to "
        "ignore replays",
    )
    max_partition_wait_ms: int = Field(
        500,
        ge=0,
        description="how long the intake may hold fetched detections back for an input "
        "partition that has records on the broker not yet fetched, so a catch-up or a replay "
        "is taken in event-time order across partitions (live, with no lag, nothing waits)",
    )
    clock_tick_seconds: int = Field(
        5, ge=1, description="event-time step at which the clock is broadcast to every partition"
    )

    sms_url: str = Field("http://127.0.0.1:8025", description="base URL of the SMS gateway")
    sms_port: int = Field(8025, ge=1, le=65535, description="port of `patrol sms-gateway`")
    sms_timeout_seconds: float = Field(2.0, gt=0, description="one HTTP attempt's timeout")
    sms_retry_seconds: float = Field(60.0, gt=0, description="give up on an SMS after this long")
    sms_queue_size: int = Field(
        10_000,
        ge=1,
        description="SMS the sender holds in memory, at most (it takes 4 × the concurrency, "
        "and no more than this); the rest wait on the outbox topic",
    )
    sms_concurrency: int = Field(8, ge=1, description="SMS requests in flight, at most")
    sms_enabled: bool = Field(
        True,
        description="false: no SMS sender runs, warnings stay in the outbox topic and tasks say "
        "sms pending (for audit replays, which must not text drivers again)",
    )

    verify_window_minutes: int = Field(
        60,
        ge=0,
        description="how long (event time) a resolved hazard task stays under watch: a detection "
        "of the same kind near it in that time reopens it, none closes it as verified",
    )
    max_extensions: int = Field(
        1, ge=0, description="extensions (延期) a task may have; a further one is refused"
    )

    max_message_bytes: int = Field(1_048_576, ge=1024, description="larger detections are rejected")
    max_future_minutes: float = Field(
        10.0,
        ge=0,
        description="a detection timed more than this far ahead of the worker's wall clock comes "
        "from a device with a wrong clock: it is dead-lettered as clock_skew and never moves the "
        "event-time clock (simulations that run event time ahead of the wall clock raise it)",
    )
    timezone: str = Field(
        "Asia/Shanghai",
        description="the local time of no_parking_hours and of the one-ticket-a-day rule (an "
        "IANA time zone name)",
    )

    state_dir: Path = Field(
        default_factory=lambda: user_cache_dir() / "broker",
        description="where `patrol broker` keeps its data, log and pid file",
    )

    # How every process authenticates to Kafka (patrol.kafka.security).
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="how to connect to Kafka: PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-512"] = Field(
        "SCRAM-SHA-512", description="the SASL mechanism: PLAIN or SCRAM-SHA-512"
    )
    kafka_sasl_username: str | None = Field(None, description="the SASL user")
    kafka_sasl_password_file: Path | None = Field(
        None, description="a file whose first line is the SASL password (a mounted secret)"
    )
    # a plain str, not SecretStr: the worker hands its settings to its children as variables
    kafka_sasl_password: str | None = Field(
        None, repr=False, description="the SASL password itself, when there is no password file"
    )
    kafka_ssl_cafile: Path | None = Field(
        None, description="PEM file of the CA that signed the brokers' certificates"
    )
    kafka_ssl_certfile: Path | None = Field(
        None, description="PEM client certificate, for clusters that require one"
    )
    kafka_ssl_keyfile: Path | None = Field(None, description="PEM key of the client certificate")

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(
                f"unknown time zone {value!r}; use an IANA name such as Asia/Shanghai"
            ) from exc
        return value

    @cached_property
    def exempt_plate_set(self) -> frozenset[str]:
        return frozenset(p.strip() for p in self.exempt_plates.split(",") if p.strip())

    @cached_property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def recheck(self) -> timedelta:
        return timedelta(minutes=self.recheck_minutes)

    @property
    def retention(self) -> timedelta:
        return timedelta(hours=self.dedup_retention_hours)

    @property
    def incident_window(self) -> timedelta:
        return timedelta(minutes=self.incident_window_minutes)

    @property
    def verify_window(self) -> timedelta:
        return timedelta(minutes=self.verify_window_minutes)

    @property
    def input_topics(self) -> tuple[str, str]:
        return (self.topic_camera, self.topic_drone)


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, with explicit overrides (e.g. CLI options) on top."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    return Settings(**clean)  # type: ignore[arg-type]
