"""The local broker launcher's error paths: no network, no Java process started."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from patrol.devtools.broker import (
    BrokerError,
    LocalBroker,
    check_java,
    check_port_free,
    fetch_jars,
    kafka_version,
)


def fake_run(stderr: str, returncode: int = 0):
    def run(cmd: Sequence[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(list(cmd), returncode, stdout="", stderr=stderr)

    return run


def test_missing_java_says_what_to_install() -> None:
    with pytest.raises(BrokerError, match=r"Java was not found.*JDK 17.*PATROL_KAFKA_BOOTSTRAP"):
        check_java(which=lambda _: None)


def test_old_java_is_refused_with_its_version() -> None:
    run = fake_run('openjdk version "11.0.22" 2024-01-16\n')
    with pytest.raises(BrokerError, match=r"Java 11 at /opt/java/bin/java is too old.*17"):
        check_java(which=lambda _: "/opt/java/bin/java", run=run)


def test_java_8_version_string_is_understood_as_8() -> None:
    run = fake_run('java version "1.8.0_392"\n')
    with pytest.raises(BrokerError, match=r"Java 8 .* too old"):
        check_java(which=lambda _: "/usr/bin/java", run=run)


def test_java_17_is_accepted() -> None:
    run = fake_run('openjdk version "17.0.15" 2025-04-15\n')
    assert check_java(which=lambda _: "/usr/bin/java", run=run) == "/usr/bin/java"


def test_port_taken_names_the_port_and_the_option() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(BrokerError, match=rf"port {port} .* already taken.*--port"):
            check_port_free(port)


def test_start_refuses_a_taken_port_before_touching_maven(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        broker = LocalBroker(tmp_path / "state", port=port)
        with pytest.raises(BrokerError, match="already taken"):
            broker.start()
    assert not (tmp_path / "state" / "broker.pid").exists()


def test_missing_maven_with_empty_cache_says_to_install_maven(tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match=r"not cached yet and Maven .* not on PATH"):
        fetch_jars(cache_root=tmp_path, which=lambda _: None)


def test_failed_maven_run_shows_what_maven_said(tmp_path: Path) -> None:
    run = fake_run("[ERROR] Could not resolve org.apache.kafka:kafka_2.13", returncode=1)
    with pytest.raises(BrokerError, match=r"(?s)could not fetch .*Could not resolve"):
        fetch_jars(cache_root=tmp_path, which=lambda _: "/usr/bin/mvn", run=run)


def test_cached_jars_need_no_maven(tmp_path: Path) -> None:
    libs = tmp_path / kafka_version() / "libs"
    libs.mkdir(parents=True)
    (libs / ".complete").write_text("x")
    assert fetch_jars(cache_root=tmp_path, which=lambda _: None) == libs


def test_pom_pins_one_kafka_4_version() -> None:
    assert kafka_version().startswith("4.")


def test_status_of_a_never_started_broker(tmp_path: Path) -> None:
    status = LocalBroker(tmp_path, port=19999).status()
    assert not status.running
    assert "not running" in status.describe()
    assert "127.0.0.1:19999" in status.describe()


def test_stale_pid_file_is_not_a_running_broker(tmp_path: Path) -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    (tmp_path / "broker.pid").write_text(str(proc.pid))
    broker = LocalBroker(tmp_path, port=19998)
    assert broker.running_pid() is None
    assert broker.stop() is False
