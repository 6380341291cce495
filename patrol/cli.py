"""The `patrol` command."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from patrol import __version__
from patrol.settings import Settings


def _shown_default(name: str) -> str | None:
    """A setting's default as --help shows it; None when its description already says it."""
    field = Settings.model_fields[name]
    default = field.get_default(call_default_factory=True)
    if isinstance(default, Path):
        home = str(Path.home())
        text = str(default)
        return "~" + text[len(home) :] if text.startswith(home + "/") else text
    if default is None:
        return None if "default:" in (field.description or "") else "unset"
    if default == "":
        return "empty"
    return str(default)


def settings_rows() -> list[tuple[str, str]]:
    """(variable, description [default]) for every PATROL_* setting, in Settings' order."""
    rows = []
    for name, field in Settings.model_fields.items():
        default = _shown_default(name)
        text = " ".join(
            part for part in (field.description, default and f"[default: {default}]") if part
        )
        rows.append((f"PATROL_{name.upper()}", text))
    return rows


def write_settings_help(formatter: click.HelpFormatter) -> None:
    # A definition list, laid out as click lays out options: one variable per line, its
    # description wrapped beside it (a plain epilog paragraph is rewrapped into one block).
    with formatter.section("Configuration (environment variables)"):
        formatter.write_dl(settings_rows())


class PatrolGroup(click.Group):
    """The `patrol` group: its --help ends with every PATROL_* variable."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        write_settings_help(formatter)
        super().format_epilog(ctx, formatter)


class SettingsCommand(click.Command):
    """A command configured by the PATROL_* variables: its --help ends with all of them."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        write_settings_help(formatter)
        super().format_epilog(ctx, formatter)


@click.group(
    cls=PatrolGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
)
@click.version_option(__version__, prog_name="patrol")
def main() -> None:
    """patrol: the streaming smart-patrol event processor of the county command center.

    It reads camera and drone detections from Kafka, applies the 10-minute parking grace rule
    (SMS warning, then an enforcement task if the vehicle is still there), groups roadside
    vending and open burning into incidents routed to the right department, and sends
    enforcement tasks to the dispatch topic.
    """


# --- broker -------------------------------------------------------------------------------


@main.group()
def broker() -> None:
    """A local single-node Apache Kafka (KRaft) for development, the demo and tests.

    The broker's jars are fetched once with Maven (patrol/data/kafka/pom.xml) and cached under
    ~/.cache/patrol/kafka. Data, log and pid file live in PATROL_STATE_DIR.
    """


def _local_broker(port: int, state_dir: Path | None, nodes: int | None = None) -> object:
    from patrol.devtools.broker import local_kafka

    settings = Settings()
    return local_kafka(state_dir or settings.state_dir, port=port, nodes=nodes)


_port_option = click.option(
    "--port", default=9092, show_default=True, help="Port the broker listens on (127.0.0.1)."
)
_state_option = click.option(
    "--state-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Where data, log and pid file live [default: PATROL_STATE_DIR or ~/.cache/patrol/broker].",
)


@broker.command("start")
@_port_option
@_state_option
@click.option(
    "--nodes",
    type=click.IntRange(1, 9),
    default=None,
    help="Brokers of a local cluster, on PORT, PORT+1, ... (each also a KRaft controller); with "
    "3 the worker's topics get three replicas and min.insync.replicas=2 [default: 1, or the "
    "cluster started before in the state dir].",
)
@click.option(
    "--sasl-ssl-port",
    type=int,
    default=None,
    help="Also listen with SASL_SSL on this port (one broker only); its CA, for "
    "PATROL_KAFKA_SSL_CAFILE, is <state dir>/tls/ca.pem.",
)
@click.option(
    "--sasl-user",
    "sasl_users",
    multiple=True,
    metavar="NAME:PASSWORD",
    help="A SCRAM-SHA-512 and PLAIN user of the SASL_SSL listener (repeatable).",
)
def broker_start(
    port: int,
    state_dir: Path | None,
    nodes: int | None,
    sasl_ssl_port: int | None,
    sasl_users: tuple[str, ...],
) -> None:
    """Start the broker (if not running) and wait until it answers; print its bootstrap address."""
    from patrol.devtools.broker import BrokerError, LocalBroker, LocalCluster, SecureListener

    local: object
    if sasl_ssl_port is not None:
        if nodes not in (None, 1):
            raise click.UsageError("--sasl-ssl-port is for a single broker (--nodes 1)")
        users = tuple(
            (name, password) for name, _, password in (u.partition(":") for u in sasl_users)
        )
        if not users or any(not name or not password for name, password in users):
            raise click.UsageError("--sasl-ssl-port needs --sasl-user NAME:PASSWORD")
        local = LocalBroker(
            state_dir or Settings().state_dir,
            port=port,
            secure=SecureListener(sasl_ssl_port, users),
        )
    else:
        local = _local_broker(port, state_dir, nodes)
    assert isinstance(local, LocalBroker | LocalCluster)
    try:
        status, started = local.start()
    except BrokerError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(("started\n" if started else "already running\n") + status.describe())


@broker.command("stop")
@_port_option
@_state_option
def broker_stop(port: int, state_dir: Path | None) -> None:
    """Stop the broker (or the local cluster) cleanly and wait until it has exited."""
    from patrol.devtools.broker import LocalBroker, LocalCluster

    local = _local_broker(port, state_dir)
    assert isinstance(local, LocalBroker | LocalCluster)
    click.echo("stopped" if local.stop() else "not running")


@broker.command("status")
@_port_option
@_state_option
def broker_status(port: int, state_dir: Path | None) -> None:
    """Say whether the broker runs, its bootstrap address, version and state directory."""
    from patrol.devtools.broker import LocalBroker, LocalCluster

    local = _local_broker(port, state_dir)
    assert isinstance(local, LocalBroker | LocalCluster)
    status = local.status()
    click.echo(status.describe())
    sys.exit(0 if status.running else 3)


# --- schemas ------------------------------------------------------------------------------


@main.command("schemas")
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("schemas"),
    show_default=True,
    help="Directory to write the JSON Schemas into.",
)
def schemas(out: Path) -> None:
    """Write the JSON Schemas of every message (Detection, EnforcementTask, ...) from the models."""
    from patrol.devtools.schemas import write_schemas

    for path in write_schemas(out):
        click.echo(f"wrote {path}")


# --- worker -------------------------------------------------------------------------------


@main.command("worker", cls=SettingsCommand)
@click.option("--bootstrap", help="Kafka bootstrap servers [PATROL_KAFKA_BOOTSTRAP].")
@click.option("--web-port", type=int, help="Port of /metrics, /healthz, /readyz [PATROL_WEB_PORT].")
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Local state directory [PATROL_DATA_DIR].",
)
@click.option("--app-id", help="Consumer group and internal topic prefix [PATROL_APP_ID].")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    help="Log level [PATROL_LOG_LEVEL].",
)
def worker(
    bootstrap: str | None,
    web_port: int | None,
    data_dir: Path | None,
    app_id: str | None,
    log_level: str | None,
) -> None:
    """Run the stream-processing service.

    Reads camera and drone detections, dead-letters what it cannot use, applies the parking grace
    rule (SMS warning through PATROL_SMS_URL, then an enforcement task) and groups hazards into
    incidents; tasks go to the dispatch topic. SMS are sent from a child process the worker starts
    and stops itself. Creates missing topics. Serves /metrics, /healthz
    and /readyz on the web port. Several workers with the same app id (and their own data dirs
    and web ports) share the partitions. Stop it with Ctrl-C or SIGTERM.
    """
    import asyncio

    from pydantic import ValidationError

    from patrol.settings import load_settings

    try:
        settings = load_settings(
            kafka_bootstrap=bootstrap,
            web_port=web_port,
            data_dir=data_dir,
            app_id=app_id,
            log_level=log_level,
        )
    except ValidationError as exc:
        raise click.ClickException(f"invalid configuration:\n{exc}") from exc
    from patrol.domain.routing import RoutingError, load_routing
    from patrol.domain.zones import ZoneFileError, load_zones
    from patrol.kafka.topics import ClusterUnreachable, PartitionMismatch, ensure_topics

    try:
        # Bad zone or routing files are reported before anything touches Kafka.
        zones = load_zones(settings.zones)
        routing = load_routing(settings.routing)
        replication = asyncio.run(ensure_topics(settings))
    except (ClusterUnreachable, PartitionMismatch, ZoneFileError, RoutingError) as exc:
        raise click.ClickException(str(exc)) from exc
    from patrol.worker.app import PatrolWorker
    from patrol.worker.children import tune_allocator, tune_gc

    tune_allocator()  # before faust and its buffers exist

    patrol_worker = PatrolWorker(
        settings, replication_factor=replication, zones=zones, routing=routing
    )
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    import logging

    import faust

    service = faust.Worker(patrol_worker.app, loglevel=settings.log_level.upper(), quiet=True)
    # faust's terminal spinner sets the root logger to DEBUG whenever the level is WARNING or
    # above, so every library's debug records get built on the hot path; a service needs none.
    service.spinner = None
    # httpx logs every request at INFO; the notifier already logs each SMS outcome once.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    tune_gc()
    service.execute_from_commandline()


def _add_component_commands() -> None:
    from patrol.audit.replay import replay_command
    from patrol.devtools.demo import demo_command
    from patrol.devtools.gateway import sms_gateway_command
    from patrol.devtools.simulate.cli import simulate_group

    main.add_command(sms_gateway_command)
    main.add_command(simulate_group)
    main.add_command(demo_command)
    main.add_command(replay_command)


_add_component_commands()

if __name__ == "__main__":
    main()
