"""The consumer every patrol process builds for its group (the intake, the SMS sender, the
bench's and tests' watchers): offsets committed by hand, static membership, short sessions."""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer

from patrol.kafka.security import client_options
from patrol.settings import Settings


def group_consumer(settings: Settings, group: str, **options: Any) -> AIOKafkaConsumer:
    """A consumer in `group` as patrol's own consumers all are: offsets committed by hand, a
    new group starting at the earliest record, static membership under PATROL_INSTANCE_ID,
    the configured session timeout; `options` add to that (fetch sizes and waits)."""
    return AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=group,
        group_instance_id=settings.instance_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=int(settings.session_timeout_seconds * 1000),
        heartbeat_interval_ms=1000,
        **client_options(settings),
        **options,
    )
