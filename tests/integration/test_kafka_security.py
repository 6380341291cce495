"""patrol against a broker that requires SASL_SSL (a local CA's certificate, SCRAM-SHA-512 and
PLAIN users): a wrong password stops the worker with a message naming the setting to check;
the right one creates the topics and takes a detection through the intake, and the whole worker
turns one into a task."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from bench.processes import free_port
from patrol.devtools.broker import LocalBroker, SecureListener, make_certificates
from patrol.devtools.processes import patrol_env
from patrol.domain import incidents
from patrol.domain.zones import load_zones
from patrol.intake.consumer import IntakeConsumer
from patrol.kafka import envelopes
from patrol.kafka.security import client_options
from patrol.kafka.topics import ClusterUnreachable, InternalTopics, ensure_topics
from patrol.settings import Settings

from .helpers import REPO, ManagedProcess, Topics, read_json, read_records, wait_http
from .stack import T0, detection

pytestmark = pytest.mark.integration

# this file's own broker: PLAINTEXT on PORT, SASL_SSL on the next port
PORT = int(os.environ.get("PATROL_TEST_SECURE_BROKER_PORT", "19540"))
SECURE_PORT = PORT + 1
USER, PASSWORD = "patrol-worker", "s3cret-Ü"


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    broker = LocalBroker(
        tmp_path_factory.mktemp("secure-broker"),
        port=PORT,
        heap="512m",
        secure=SecureListener(SECURE_PORT, ((USER, PASSWORD),)),
    )
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()


def secure_env(broker: LocalBroker, password_file: Path, mechanism: str) -> dict[str, str]:
    return {
        "PATROL_KAFKA_BOOTSTRAP": f"127.0.0.1:{SECURE_PORT}",
        "PATROL_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "PATROL_KAFKA_SASL_MECHANISM": mechanism,
        "PATROL_KAFKA_SASL_USERNAME": USER,
        "PATROL_KAFKA_SASL_PASSWORD_FILE": str(password_file),
        "PATROL_KAFKA_SSL_CAFILE": str(broker.ca_file),
    }


def secure_settings(
    broker: LocalBroker, password_file: Path, mechanism: str, **more: object
) -> Settings:
    env = secure_env(broker, password_file, mechanism)
    return Settings(
        kafka_bootstrap=env["PATROL_KAFKA_BOOTSTRAP"],
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism=mechanism,  # type: ignore[arg-type]
        kafka_sasl_username=USER,
        kafka_sasl_password_file=password_file,
        kafka_ssl_cafile=broker.ca_file,
        **more,  # type: ignore[arg-type]
    )


def test_a_wrong_password_stops_the_worker_naming_the_password_setting(
    secure_broker: LocalBroker, tmp_path: Path
) -> None:
    wrong = tmp_path / "password"
    wrong.write_text("not-the-password\n")
    env = patrol_env(
        {**secure_env(secure_broker, wrong, "SCRAM-SHA-512"), "PATROL_WEB_PORT": "16590"}
    )
    result = subprocess.run(
        [sys.executable, "-m", "patrol.cli", "worker"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert f"refused the SASL SCRAM-SHA-512 login of user '{USER}'" in result.stderr, result.stderr[
        -2000:
    ]
    assert "PATROL_KAFKA_SASL_PASSWORD_FILE" in result.stderr
    assert "not-the-password" not in result.stdout + result.stderr


async def test_a_certificate_from_another_ca_is_refused_naming_the_ca_setting(
    secure_broker: LocalBroker, tmp_path: Path
) -> None:
    password = tmp_path / "password"
    password.write_text(PASSWORD)
    other_ca = make_certificates(tmp_path / "other-ca")
    settings = secure_settings(secure_broker, password, "PLAIN").model_copy(
        update={"kafka_ssl_cafile": other_ca}
    )
    with pytest.raises(ClusterUnreachable, match=r"TLS handshake .* PATROL_KAFKA_SSL_CAFILE"):
        await ensure_topics(settings)


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-512", "PLAIN"])
async def test_the_right_password_creates_the_topics_and_takes_a_detection_in(
    secure_broker: LocalBroker, tmp_path: Path, mechanism: str
) -> None:
    password = tmp_path / "password"
    password.write_text(PASSWORD + "\n")  # a mounted secret's trailing newline is no part of it
    topics = Topics()
    settings = secure_settings(
        secure_broker,
        password,
        mechanism,
        app_id=topics.app_id,
        topic_camera=topics.camera,
        topic_drone=topics.drone,
        topic_deadletter=topics.deadletter,
        partitions=1,
    )
    await ensure_topics(settings)

    read = detection("sec-read-0", T0, plate="浙G5S511")
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, acks="all", **client_options(settings)
    )
    await producer.start()
    try:
        await producer.send_and_wait(
            topics.camera, json.dumps(read, ensure_ascii=False).encode(), key=b"cam-0017"
        )
    finally:
        await producer.stop()

    intake = IntakeConsumer(
        settings, load_zones(), incidents.IncidentPolicy.from_settings(settings)
    )
    await intake.start()
    try:
        cases = await read_records(
            f"127.0.0.1:{PORT}", InternalTopics.of(topics.app_id).cases, min_count=1, timeout=60
        )
    finally:
        await intake.stop()
    routed = [
        item.detection.event_id
        for record in cases
        if record.value is not None
        for item in envelopes.decode(record.value).items
    ]
    assert routed == ["sec-read-0"]


async def test_the_worker_over_sasl_ssl_turns_a_detection_into_a_task(
    secure_broker: LocalBroker, tmp_path: Path
) -> None:
    """The whole worker (the faust app, its changelogs, the intake) over SCRAM-SHA-512."""
    password = tmp_path / "password"
    password.write_text(PASSWORD + "\n")
    topics = Topics()
    port = free_port()
    env = patrol_env(
        {
            **secure_env(secure_broker, password, "SCRAM-SHA-512"),
            **topics.env(),
            "PATROL_WEB_PORT": str(port),
            "PATROL_DATA_DIR": str(tmp_path / "data"),
            "PATROL_PARTITIONS": "2",
            "PATROL_SMS_ENABLED": "false",
        }
    )
    worker = ManagedProcess("secure-worker", ["worker"], env, tmp_path / "worker.log").start()
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", timeout=120, proc=worker.proc)
        settings = secure_settings(secure_broker, password, "SCRAM-SHA-512")
        stall = detection(
            "sec-stall-0",
            T0,
            kind="roadside_vending",
            zone="anwen-market",
            confidence=0.9,
            source="cam-0104",
        )
        producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap, acks="all", **client_options(settings)
        )
        await producer.start()
        try:
            await producer.send_and_wait(
                topics.camera, json.dumps(stall, ensure_ascii=False).encode(), key=b"cam-0104"
            )
        finally:
            await producer.stop()
        tasks = await read_json(f"127.0.0.1:{PORT}", topics.dispatch, min_count=1, timeout=90)
        assert [t["evidence"][0]["event_id"] for t in tasks] == ["sec-stall-0"]
        statuses = await read_json(f"127.0.0.1:{PORT}", topics.status, min_count=1, timeout=60)
        assert [s["status"] for s in statuses] == ["dispatched"]
    finally:
        worker.stop()
    assert PASSWORD not in (tmp_path / "worker.log").read_text(encoding="utf-8")
