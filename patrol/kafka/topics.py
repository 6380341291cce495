"""The internal topics' names, and creating the topics the worker reads and writes when they are
missing."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError

from patrol.kafka.security import KafkaSecurityError, client_options, explain_connect_failure
from patrol.settings import Settings


@dataclass(frozen=True)
class InternalTopics:
    """Where accepted detections go: cases by (zone, plate), hazards by kind; the SMS
    warnings waiting to be sent, partitioned like their cases (`patrol.sms.outbox`); and the
    closed loop's inputs by task id (`patrol.kafka.loop_records`)."""

    cases: str
    hazards: str
    sms_outbox: str
    task_loop: str

    @classmethod
    def of(cls, app_id: str) -> InternalTopics:
        return cls(
            cases=f"{app_id}-grace-cases",
            hazards=f"{app_id}-hazard-detections",
            sms_outbox=f"{app_id}-sms-outbox",
            task_loop=f"{app_id}-task-loop",
        )

    @property
    def names(self) -> tuple[str, ...]:
        """Every internal topic: each has PATROL_PARTITIONS partitions, placed by case key."""
        return (self.cases, self.hazards, self.sms_outbox, self.task_loop)


log = logging.getLogger("patrol.topics")

MAX_REQUEST_BYTES = 8 * 1024 * 1024
"""The largest produce request a patrol producer sends, and the largest dead letter: the
dead-letter topic must take oversized originals (base64), so it allows larger records."""
DEADLETTER_CONFIG = {"max.message.bytes": str(MAX_REQUEST_BYTES)}


def replication_for(brokers: int) -> int:
    """Three replicas where the cluster has three brokers or more, else one per broker."""
    return min(3, max(1, brokers))


def durability_config(replication: int) -> dict[str, str]:
    """The settings of a topic with `replication` replicas that keep an acknowledged record
    through the loss of a broker: with three replicas, an `acks=all` write is acknowledged only
    once two brokers hold it (min.insync.replicas=2), and one broker down still takes writes.
    With fewer replicas there is nothing to require."""
    return {"min.insync.replicas": "2"} if replication >= 3 else {}


class ClusterUnreachable(RuntimeError):
    pass


class PartitionMismatch(RuntimeError):
    pass


async def _check_internal_partitions(
    admin: AIOKafkaAdminClient, internal: InternalTopics, partitions: int
) -> None:
    """The intake places each case on partition hash(key) % PATROL_PARTITIONS of the internal
    topics, and its SMS outcome goes back to the partition its warning came from, so they must
    have exactly that many partitions."""
    for topic in await admin.describe_topics(list(internal.names)):
        found = len(topic.get("partitions", []))
        if found and found != partitions:
            raise PartitionMismatch(
                f"topic {topic['topic']} has {found} partitions but PATROL_PARTITIONS is "
                f"{partitions}: set PATROL_PARTITIONS={found}, or use a new PATROL_APP_ID"
            )


async def ensure_topics(settings: Settings) -> int:
    """Create the contract's and the internal topics if missing, replicated as the cluster
    allows (`replication_for`, `durability_config`); returns the replication used, which the
    faust app gives its own topics (changelogs) too."""
    try:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=settings.kafka_bootstrap,
            request_timeout_ms=15000,
            **client_options(settings),
        )
    except KafkaSecurityError as exc:
        raise ClusterUnreachable(str(exc)) from exc
    try:
        await admin.start()
    except KafkaConnectionError as exc:
        raise ClusterUnreachable(await explain_connect_failure(settings)) from exc
    try:
        brokers = len((await admin.describe_cluster())["brokers"])
        replication = replication_for(brokers)
        existing = set(await admin.list_topics())
        internal = InternalTopics.of(settings.app_id)
        wanted = {
            settings.topic_camera: {},
            settings.topic_drone: {},
            settings.topic_dispatch: {},
            settings.topic_sms: {},
            settings.topic_deadletter: DEADLETTER_CONFIG,
            settings.topic_feedback: {},
            settings.topic_status: {},
            # created here, before the intake produces to them, so they get their partitions
            **{name: {} for name in internal.names},
        }
        missing = [
            NewTopic(
                name,
                settings.partitions,
                replication,
                topic_configs={**durability_config(replication), **config},
            )
            for name, config in wanted.items()
            if name not in existing
        ]
        if missing:
            response = await admin.create_topics(missing)
            for name, code, *rest in response.topic_errors:
                # 36: another worker created it first
                if code not in (0, TopicAlreadyExistsError.errno):
                    message = rest[0] if rest else ""
                    raise RuntimeError(f"could not create topic {name}: error {code} {message}")
            log.info("created topics %s", ", ".join(t.name for t in missing))
        await _check_internal_partitions(admin, internal, settings.partitions)
        return replication
    finally:
        await admin.close()
