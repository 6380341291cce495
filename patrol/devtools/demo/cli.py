"""`patrol demo`: the command line of the demo; DemoRun does the work."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from pathlib import Path

import click

from patrol.devtools.demo.run import DemoOptions, run_demo

# Four minutes at ×45 are three hours of event time: long enough for the loop to show (tasks
# resolved and verified an hour later, a fire rekindled and its task reopened, tasks of the
# first hour overdue at their two-hour limit), short enough for an audience.
DEFAULT_DURATION_SECONDS = 240.0
DEFAULT_TIME_SCALE = 45.0


def _random_seed() -> int:
    return secrets.randbelow(999_999) + 1


@click.command(
    "demo",
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0),
    default=DEFAULT_DURATION_SECONDS,
    show_default=True,
    envvar="PATROL_DEMO_DURATION",
    show_envvar=True,
    help="Wall-clock seconds of simulated traffic, counted once the worker is ready; 0 runs "
    "until Ctrl-C.",
)
@click.option(
    "--time-scale",
    type=click.FloatRange(min=1),
    default=DEFAULT_TIME_SCALE,
    show_default=True,
    envvar="PATROL_DEMO_TIME_SCALE",
    show_envvar=True,
    help="Event time runs N× faster than the wall clock: at 45 a 10-minute grace period passes "
    "in 13 s, the scripted ticket comes ~15 s in and the self-corrected car closes ~21 s in; a "
    "task's two-hour limit ends 160 s after its dispatch, and a resolved hazard is verified "
    "(closed) 80 s after its resolution.",
)
@click.option(
    "--seed",
    type=int,
    default=None,
    envvar="PATROL_DEMO_SEED",
    show_envvar=True,
    help="Seed of the simulators; the same seed gives the same traffic and answers (default: a "
    "new one, printed at the end).",
)
@click.option(
    "--bootstrap",
    default=None,
    help="Kafka to use if it answers [default: PATROL_KAFKA_BOOTSTRAP, else 127.0.0.1:9092]. "
    "If nothing answers on this machine, the demo starts a local broker there.",
)
@click.option(
    "--broker-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Port of the local broker the demo starts when no Kafka answers [default: the "
    "bootstrap's port, 9092]. Its state lives in PATROL_STATE_DIR.",
)
@click.option(
    "--keep-broker",
    is_flag=True,
    help="Leave a local broker the demo started running afterwards (one already running is "
    "never stopped).",
)
@click.option(
    "--prometheus/--no-prometheus",
    default=True,
    show_default=True,
    help="Start Prometheus scraping the worker every 2 s, when the `prometheus` binary is "
    "installed, and print its URL.",
)
@click.option(
    "--run-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Where logs and the worker's state go [default: a new patrol-demo-<time> directory "
    "in the system temp dir].",
)
@click.option(
    "--report",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    envvar="PATROL_DEMO_REPORT",
    show_envvar=True,
    help="Also write the final report as JSON to this file.",
)
@click.option(
    "--refresh",
    type=click.FloatRange(min=0.2),
    default=1.0,
    show_default=True,
    help="Seconds between refreshes of the live summary.",
)
def demo_command(
    duration: float,
    time_scale: float,
    seed: int | None,
    bootstrap: str | None,
    broker_port: int | None,
    keep_broker: bool,
    prometheus: bool,
    run_dir: Path | None,
    report: Path | None,
    refresh: float,
) -> None:
    """The whole loop, live: Kafka, the SMS gateway, a worker, Prometheus, the camera and drone
    simulators and a simulated dispatch system answering the tasks (`patrol simulate feedback`).

    \b
    What the audience sees:
      - where everything runs: the run directory with every log, the SMS gateway, the worker's
        /metrics and the Prometheus URL;
      - a live summary (a table on a terminal, a line every 5 s otherwise): detections in by
        kind, dead letters, SMS warnings sent and failed, parking grace cases open / closed as
        violation / closed as self-corrected, enforcement tasks by type and department, and the
        lamps (红黄绿灯) of the open tasks from the status topic, with a line for each task that is
        overdue (red) or was reopened (its hazard came back), plates masked;
      - each enforcement task as it reaches the dispatch topic, with its Chinese summary, e.g.
        ▶ 10:11:20 派单 [normal] 【违停】安文街道文溪路车辆浙G12345违停超时未驶离,请县综合…
      - within the first minute or so the scripted scene: a car that overstays and gets a task,
        one that leaves within the grace period (self-corrected), a market vendor (占道经营)
        and a fire at the water-source reservoir (露天焚烧, urgent), which rekindles (复燃)
        after the team puts it out, so its task is reopened;
      - at the end, a report with the same numbers, the closed tasks' on-time share (never red)
        and rework share (reopened at least once), and where the logs are.

    \b
    Each run is isolated: its app id patrol-demo-<time>-<hex> is also the prefix of its own
    topics (e.g. patrol-demo-….dispatch.tasks), and the worker keeps its state in the run
    directory, so nothing from an earlier demo is counted. Ctrl-C or SIGTERM stops it cleanly:
    simulators, worker, gateway, Prometheus and a broker the demo started are all stopped.
    """
    options = DemoOptions(
        duration=duration,
        time_scale=time_scale,
        seed=seed if seed is not None else _random_seed(),
        bootstrap=bootstrap,
        broker_port=broker_port,
        keep_broker=keep_broker,
        run_dir=run_dir,
        report=report,
        prometheus=prometheus,
        refresh=refresh,
    )
    run_demo(options)


def main(argv: Sequence[str] | None = None) -> None:  # pragma: no cover - convenience entry
    demo_command.main(args=list(argv) if argv is not None else None, prog_name="patrol demo")


if __name__ == "__main__":  # pragma: no cover
    main()
