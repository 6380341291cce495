"""The worker's topics on a real broker: created with their partitions, mismatches refused."""

from __future__ import annotations

import uuid

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from patrol.kafka.topics import InternalTopics, PartitionMismatch, ensure_topics
from patrol.settings import Settings

pytestmark = pytest.mark.integration


async def partitions_of(bootstrap: str, names: list[str]) -> dict[str, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics(names)}
    finally:
        await admin.close()


async def test_internal_topics_are_created_and_a_partition_mismatch_is_refused(
    bootstrap: str,
) -> None:
    app_id = f"topics-{uuid.uuid4().hex[:8]}"
    await ensure_topics(Settings(kafka_bootstrap=bootstrap, app_id=app_id, partitions=3))
    internal = InternalTopics.of(app_id)
    names = [internal.cases, internal.hazards, internal.sms_outbox, internal.task_loop]
    assert await partitions_of(bootstrap, names) == dict.fromkeys(names, 3)
    assert sorted(internal.names) == sorted(names)

    with pytest.raises(PartitionMismatch, match="set PATROL_PARTITIONS=3"):
        await ensure_topics(Settings(kafka_bootstrap=bootstrap, app_id=app_id, partitions=6))
