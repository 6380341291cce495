"""Security settings to aiokafka options and faust credentials, with no broker."""

from __future__ import annotations

import ssl
from pathlib import Path

import faust
import pytest

from patrol.kafka.security import (
    KafkaSecurityError,
    client_options,
    faust_credentials,
    sasl_password,
)
from patrol.settings import Settings


def test_plaintext_needs_nothing_and_gives_faust_no_credentials() -> None:
    assert client_options(Settings()) == {"security_protocol": "PLAINTEXT"}
    assert faust_credentials(Settings()) is None


def test_sasl_ssl_gives_a_tls_context_and_the_login(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("from-the-file\n")
    settings = Settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="PLAIN",
        kafka_sasl_username="patrol",
        kafka_sasl_password="from-the-variable",
        kafka_sasl_password_file=secret,
    )
    options = client_options(settings)
    assert isinstance(options.pop("ssl_context"), ssl.SSLContext)
    assert options == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "PLAIN",
        "sasl_plain_username": "patrol",
        "sasl_plain_password": "from-the-file",  # the file wins, without its newline
    }
    credentials = faust_credentials(settings)
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.username == "patrol"
    assert credentials.ssl_context is not None


def test_sasl_without_a_user_or_password_names_the_settings() -> None:
    settings = Settings(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_username="patrol")
    with pytest.raises(KafkaSecurityError, match="PATROL_KAFKA_SASL_PASSWORD_FILE"):
        client_options(settings)


def test_an_unreadable_password_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    settings = Settings(kafka_sasl_password_file=missing)
    with pytest.raises(KafkaSecurityError, match=f"PATROL_KAFKA_SASL_PASSWORD_FILE {missing}"):
        sasl_password(settings)


def test_a_certificate_without_its_key_is_refused(tmp_path: Path) -> None:
    cert = tmp_path / "client.pem"
    cert.write_text("x")
    settings = Settings(kafka_security_protocol="SSL", kafka_ssl_certfile=cert)
    with pytest.raises(
        KafkaSecurityError, match="PATROL_KAFKA_SSL_CERTFILE and PATROL_KAFKA_SSL_KEYFILE"
    ):
        client_options(settings)


def test_a_missing_ca_file_is_named(tmp_path: Path) -> None:
    settings = Settings(kafka_security_protocol="SSL", kafka_ssl_cafile=tmp_path / "ca.pem")
    with pytest.raises(KafkaSecurityError, match=r"PATROL_KAFKA_SSL_CAFILE .* not a readable file"):
        client_options(settings)


def test_the_password_never_shows_in_the_settings_repr() -> None:
    settings = Settings(kafka_sasl_password="hunter2")
    assert "hunter2" not in repr(settings)
