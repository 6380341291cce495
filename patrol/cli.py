"""The `patrol` command."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from patrol import __version__
from patrol.settings import Settings


def settings_help() -> str:
    """Every PATROL_* variable with its default, for --help epilogs."""
    lines = ["Configuration (environment variables):", ""]
    for name, field in Settings.model_fields.items():
        default = field.default if field.default_factory is None else "(see below)"
        if name in ("data_dir", "state_dir"):
            default = "under ~/.cache/patrol"
        desc = f" — {field.description}" if field.description else ""
        lines.append(f"  PATROL_{name.upper()} [default: {default}]{desc}")
    return "\b\n" + "\n".join(lines)


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
    epilog=settings_help(),
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

    The broker's jars are fetched once with Maven (deploy/kafka/pom.xml) and cached under
    ~/.cache/patrol/kafka. Data, log and pid file live in PATROL_STATE_DIR.
    """


def _local_broker(port: int, state_dir: Path | None) -> object:
    from patrol.broker import LocalBroker

    settings = Settings()
    return LocalBroker(state_dir or settings.state_dir, port=port)


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
def broker_start(port: int, state_dir: Path | None) -> None:
    """Start the broker (if not running) and wait until it answers; print its bootstrap address."""
    from patrol.broker import BrokerError, LocalBroker

    local = _local_broker(port, state_dir)
    assert isinstance(local, LocalBroker)
    try:
        status, started = local.start()
    except BrokerError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(("started\n" if started else "already running\n") + status.describe())


@broker.command("stop")
@_port_option
@_state_option
def broker_stop(port: int, state_dir: Path | None) -> None:
    """Stop the broker cleanly and wait until it has exited."""
    from patrol.broker import LocalBroker

    local = _local_broker(port, state_dir)
    assert isinstance(local, LocalBroker)
    click.echo("stopped" if local.stop() else "not running")


@broker.command("status")
@_port_option
@_state_option
def broker_status(port: int, state_dir: Path | None) -> None:
    """Say whether the broker runs, its bootstrap address, version and state directory."""
    from patrol.broker import LocalBroker

    local = _local_broker(port, state_dir)
    assert isinstance(local, LocalBroker)
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
    from patrol.schemas import write_schemas

    for path in write_schemas(out):
        click.echo(f"wrote {path}")


if __name__ == "__main__":
    main()
