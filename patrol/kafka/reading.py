"""Reading a whole topic as it stands: every record from the first to the end offsets taken when
the read starts (the audit replay's comparison, the soak's changelog census)."""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

FETCH_TIMEOUT_MS = 500
MAX_RECORDS = 5000


async def read_to_end(
    bootstrap: str, topic: str, **options: Any
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of every partition of `topic`, tombstones included, up to the end offsets
    read first; records written meanwhile are left out. Empty if the topic does not exist.
    `options` go to the consumer (security settings: `patrol.kafka.security.client_options`).
    """
    # "earliest": with the default "latest" an assigned partition's first reset can land after
    # seek_to_beginning, and the read starts at the end (seen: a changelog read as empty).
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **options,
    )
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:  # the metadata at start may predate the topic
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return []
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        await consumer.seek_to_beginning(*tps)
        records: list[ConsumerRecord[bytes, bytes]] = []
        remaining = {tp for tp in tps if ends[tp] > 0}
        while remaining:
            batch = await consumer.getmany(
                *remaining, timeout_ms=FETCH_TIMEOUT_MS, max_records=MAX_RECORDS
            )
            for tp, got in batch.items():
                records += [r for r in got if r.offset < ends[tp]]
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
        return records
    finally:
        await consumer.stop()
