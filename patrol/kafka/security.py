"""How every patrol process authenticates to Kafka: the PATROL_KAFKA_SECURITY_PROTOCOL,
PATROL_KAFKA_SASL_* and PATROL_KAFKA_SSL_* settings, turned once into the options an aiokafka
client takes (`client_options`) and the credentials faust's app takes (`faust_credentials`).

The password may come from a file (PATROL_KAFKA_SASL_PASSWORD_FILE, as a Kubernetes secret is
mounted) or from PATROL_KAFKA_SASL_PASSWORD; the file wins. A connection that fails is
explained by `explain_connect_failure`, naming the setting to check.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

from aiokafka.errors import KafkaError

from patrol.settings import Settings

SASL_PROTOCOLS = ("SASL_PLAINTEXT", "SASL_SSL")
TLS_PROTOCOLS = ("SSL", "SASL_SSL")


class KafkaSecurityError(ValueError):
    """Security settings that cannot work, with the setting to fix."""


def sasl_password(settings: Settings) -> str | None:
    """The SASL password: the first line of PATROL_KAFKA_SASL_PASSWORD_FILE, or the value of
    PATROL_KAFKA_SASL_PASSWORD."""
    path = settings.kafka_sasl_password_file
    if path is not None:
        try:
            text = path.read_text("utf-8")
        except OSError as exc:
            raise KafkaSecurityError(
                f"cannot read PATROL_KAFKA_SASL_PASSWORD_FILE {path}: {exc.strerror}"
            ) from exc
        lines = text.splitlines()
        return lines[0] if lines else ""
    return settings.kafka_sasl_password


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context for SSL and SASL_SSL (None otherwise): the cluster's CA from
    PATROL_KAFKA_SSL_CAFILE (the system's when unset), a client certificate if given."""
    if settings.kafka_security_protocol not in TLS_PROTOCOLS:
        return None
    from aiokafka.helpers import create_ssl_context

    cert, key = settings.kafka_ssl_certfile, settings.kafka_ssl_keyfile
    if (cert is None) != (key is None):
        raise KafkaSecurityError(
            "a client certificate needs both PATROL_KAFKA_SSL_CERTFILE and "
            "PATROL_KAFKA_SSL_KEYFILE; set both or neither"
        )
    for name, path in (("CAFILE", settings.kafka_ssl_cafile), ("CERTFILE", cert), ("KEYFILE", key)):
        if path is not None and not Path(path).is_file():
            raise KafkaSecurityError(f"PATROL_KAFKA_SSL_{name} {path} is not a readable file")
    try:
        context: ssl.SSLContext = create_ssl_context(
            cafile=settings.kafka_ssl_cafile, certfile=cert, keyfile=key
        )
    except (ssl.SSLError, OSError) as exc:
        raise KafkaSecurityError(
            f"cannot load the TLS files (PATROL_KAFKA_SSL_CAFILE, _CERTFILE, _KEYFILE): {exc}"
        ) from exc
    return context


def client_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for any aiokafka client (consumer, producer, admin) of `settings`."""
    protocol = settings.kafka_security_protocol
    options: dict[str, Any] = {"security_protocol": protocol}
    context = ssl_context(settings)
    if context is not None:
        options["ssl_context"] = context
    if protocol in SASL_PROTOCOLS:
        username, password = settings.kafka_sasl_username, sasl_password(settings)
        if not username or password is None:
            raise KafkaSecurityError(
                f"PATROL_KAFKA_SECURITY_PROTOCOL={protocol} needs PATROL_KAFKA_SASL_USERNAME and "
                "PATROL_KAFKA_SASL_PASSWORD_FILE (or PATROL_KAFKA_SASL_PASSWORD)"
            )
        options.update(
            sasl_mechanism=settings.kafka_sasl_mechanism,
            sasl_plain_username=username,
            sasl_plain_password=password,
        )
    return options


def faust_credentials(settings: Settings) -> Any:
    """faust's `broker_credentials` for `settings` (None for PLAINTEXT)."""
    import faust

    options = client_options(settings)
    protocol = settings.kafka_security_protocol
    if protocol in SASL_PROTOCOLS:
        return faust.SASLCredentials(
            username=options["sasl_plain_username"],
            password=options["sasl_plain_password"],
            mechanism=settings.kafka_sasl_mechanism,
            ssl_context=options.get("ssl_context"),
        )
    if protocol == "SSL":
        return faust.SSLCredentials(options["ssl_context"])
    return None


async def explain_connect_failure(settings: Settings, timeout: float = 10.0) -> str:
    """Why a client of `settings` cannot connect, as one sentence naming what to check.

    aiokafka's bootstrap logs the cause and raises "Unable to bootstrap"; this opens one
    connection to the first bootstrap server the same way, to find the cause again."""
    from aiokafka.conn import create_conn

    first = settings.kafka_bootstrap.split(",")[0].strip()
    host, _, port = first.rpartition(":")
    protocol = settings.kafka_security_protocol
    where = f"Kafka at {settings.kafka_bootstrap} ({protocol})"
    try:
        options = client_options(settings)
    except KafkaSecurityError as exc:
        return f"cannot connect to {where}: {exc}"
    try:
        conn = await asyncio.wait_for(
            create_conn(host, int(port), request_timeout_ms=int(timeout * 1000), **options),
            timeout,
        )
    except ssl.SSLError as exc:
        return (
            f"the TLS handshake with {where} failed ({exc.reason or exc}): check "
            "PATROL_KAFKA_SSL_CAFILE (the CA that signed the brokers' certificates) and that "
            "the brokers' listener is SSL"
        )
    except KafkaError as exc:
        if protocol in SASL_PROTOCOLS:
            return (
                f"{where} refused the SASL {settings.kafka_sasl_mechanism} login of user "
                f"{settings.kafka_sasl_username!r} ({type(exc).__name__}): check "
                "PATROL_KAFKA_SASL_USERNAME and PATROL_KAFKA_SASL_PASSWORD_FILE (or "
                "PATROL_KAFKA_SASL_PASSWORD), and PATROL_KAFKA_SASL_MECHANISM"
            )
        return f"cannot connect to {where}: {exc}"
    except (OSError, TimeoutError) as exc:
        return (
            f"cannot reach {where} ({exc}): start a local broker with `patrol broker start`, "
            "or set PATROL_KAFKA_BOOTSTRAP to your cluster"
        )
    conn.close()
    return (
        f"{where} answered one connection but not the client's: check "
        "PATROL_KAFKA_SECURITY_PROTOCOL against the brokers' listener"
    )
