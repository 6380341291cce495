"""`patrol simulate cameras|drones|feedback`: realistic producers for development, demos and
load, and a simulated dispatch system answering the worker's tasks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import signal
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any, TypeVar

import click

from patrol.devtools.simulate.cameras import CameraSimConfig, camera_events
from patrol.devtools.simulate.dispatcher import FeedbackSummary, answer_tasks
from patrol.devtools.simulate.drones import DroneSimConfig, drone_events
from patrol.devtools.simulate.events import CHINA_STANDARD_TIME, SimEvent, as_event_time
from patrol.devtools.simulate.feedback import FeedbackMix, FeedbackSchedule
from patrol.devtools.simulate.hazards import HazardWorld
from patrol.devtools.simulate.producer import BrokerUnreachable, SimSummary, StderrProgress, produce
from patrol.devtools.simulate.resolutions import ResolutionFeed, learn_resolutions
from patrol.domain.models import RFC3339_PATTERN
from patrol.settings import Settings, load_settings

F = TypeVar("F", bound=Callable[..., Any])


def parse_start(value: str | None) -> datetime:
    """--start as an aware datetime; default now in China Standard Time."""
    if value is None:
        return datetime.now(CHINA_STANDARD_TIME)
    if not RFC3339_PATTERN.match(value):
        raise click.BadParameter(
            f"{value!r} is not an RFC 3339 time with an offset, e.g. 2026-11-27T10:00:00+08:00",
            param_hint="--start",
        )
    return datetime.fromisoformat(value.replace("z", "Z"))


def common_options(rate_help: str, rate_default: float) -> Callable[[F], F]:
    def decorate(command: F) -> F:
        options = [
            click.option(
                "--rate",
                type=click.FloatRange(min=0),
                default=rate_default,
                show_default=True,
                help=rate_help,
            ),
            click.option(
                "--duration",
                type=click.FloatRange(min=0, min_open=True),
                default=None,
                help="Stop after this many wall-clock seconds (default: run until Ctrl-C).",
            ),
            click.option(
                "--seed",
                type=int,
                default=None,
                help="Random seed; the same seed, --start and options give the same messages "
                "(default: a new seed, printed so the run can be repeated).",
            ),
            click.option(
                "--time-scale",
                type=click.FloatRange(min=0, min_open=True),
                default=1.0,
                show_default=True,
                help="Event time runs N× faster than the wall clock (e.g. 20: a 10-minute grace "
                "period passes in 30 s). 'inf' sends as fast as the broker takes them. Event "
                "time then runs ahead of the wall clock: give the worker a "
                "PATROL_MAX_FUTURE_MINUTES that covers it, or it dead-letters the detections as "
                "clock_skew (patrol demo does this itself).",
            ),
            click.option(
                "--start",
                default=None,
                help="Event time of the first message, RFC 3339 with an offset "
                "(default: now, +08:00).",
            ),
            click.option(
                "--bootstrap",
                default=None,
                help="Kafka bootstrap servers (default: PATROL_KAFKA_BOOTSTRAP or 127.0.0.1:9092).",
            ),
            click.option(
                "--malformed-fraction",
                type=click.FloatRange(0, 1),
                default=0.0,
                show_default=True,
                help="Share of messages broken the way devices break them (cut-off JSON, time "
                "without offset, invalid plate, swapped lat/lon, missing event_id); the worker "
                "must dead-letter each.",
            ),
            click.option("--quiet", is_flag=True, help="No live progress; only the summary."),
        ]
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


@click.group("simulate")
def simulate_group() -> None:
    """Simulated cameras and drones producing detections to Kafka, and a simulated dispatch
    system answering the worker's tasks.

    Topics come from PATROL_TOPIC_CAMERA and PATROL_TOPIC_DRONE; each message is keyed by its
    source id. Event time (observed_at) advances --time-scale times faster than the wall clock.
    Cameras and drones see one world: the same seed and --start give the same vendors and fires
    at the same places to both, and a hazard a team resolves (read from PATROL_TOPIC_FEEDBACK)
    is gone for both (docs/simulators.md).
    """


def world_options(command: F) -> F:
    """The hazards of the one world cameras and drones share: give both the same values."""
    options = [
        click.option(
            "--vending-per-hour",
            type=click.FloatRange(min=0),
            default=2.0,
            show_default=True,
            help="New roadside vendors per hour of event time in front of the cameras (and so "
            "often also under a drone route); each stays a while and is seen many times. Give "
            "cameras and drones the same value: they share one world.",
        ),
        click.option(
            "--burning-per-hour",
            type=click.FloatRange(min=0),
            default=1.0,
            show_default=True,
            help="New open fires per hour of event time in front of the cameras; same for both.",
        ),
        click.option(
            "--route-hazards-per-hour",
            type=click.FloatRange(min=0),
            default=0.9,
            show_default=True,
            help="New vendors and fires per hour (a third vendors) along the drone routes out of "
            "every camera's view: only a passing drone sees them; same for both.",
        ),
        click.option(
            "--demo-script/--no-demo-script",
            default=True,
            show_default=True,
            help="Begin with a scripted scene: for cameras, one car overstays on 文溪路 (ticket "
            "~11 min in), one leaves after 4 min (self-corrected), a police car (exempt); in the "
            "world, a market vendor who stays until a team comes (and is back 15 min after) and "
            "a fire at a reservoir. Same for both.",
        ),
        click.option(
            "--learn-resolutions/--no-learn-resolutions",
            default=True,
            show_default=True,
            help="Follow PATROL_TOPIC_DISPATCH and PATROL_TOPIC_FEEDBACK: a hazard whose task a "
            "team resolved (e.g. `patrol simulate feedback`) is gone from then on, and some come "
            "back later. Off: the world is the seed's alone.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@simulate_group.command("cameras")
@common_options(
    rate_help="Average plate reads per second of event time, all cameras together (= per wall "
    "second at --time-scale 1; at --time-scale N the wall rate is N times this). Heartbeats "
    "(one per camera every 30 s), vendors and fires come on top.",
    rate_default=0.2,
)
@world_options
def cameras_command(
    rate: float,
    duration: float | None,
    seed: int | None,
    time_scale: float,
    start: str | None,
    bootstrap: str | None,
    malformed_fraction: float,
    quiet: bool,
    vending_per_hour: float,
    burning_per_hour: float,
    route_hazards_per_hour: float,
    demo_script: bool,
    learn_resolutions: bool,
) -> None:
    """Fixed roadside cameras: parked vehicles read every 1–2 minutes while they stay (most
    leave within the grace period, some overstay, a few park for hours), and the world's
    vendors and fires each camera faces, while they are there."""
    config = CameraSimConfig(
        plate_reads_per_second=rate,
        vending_per_hour=vending_per_hour,
        burning_per_hour=burning_per_hour,
        route_vending_per_hour=route_hazards_per_hour / 3,
        route_burning_per_hour=route_hazards_per_hour * 2 / 3,
        malformed_fraction=malformed_fraction,
        demo_script=demo_script,
    )
    _run_in_world(
        config,
        camera_events,
        seed,
        start,
        bootstrap,
        time_scale=time_scale,
        duration=duration,
        quiet=quiet,
        learn_resolutions=learn_resolutions,
    )


def _run_in_world(
    config: Any,
    make_events: Callable[..., Iterator[SimEvent]],
    seed: int | None,
    start: str | None,
    bootstrap: str | None,
    *,
    time_scale: float,
    duration: float | None,
    quiet: bool,
    learn_resolutions: bool,
) -> None:
    """A simulator's events drawn in the run's world (from the seed), then produced."""
    seed = _seed(seed)
    begin = parse_start(start)
    world = HazardWorld(config.world(), seed=seed)
    events = make_events(config, seed=seed, start=begin, world=world)
    _run(
        events,
        seed,
        bootstrap,
        time_scale=time_scale,
        duration=duration,
        quiet=quiet,
        world=(world, as_event_time(begin)) if learn_resolutions else None,
    )


@simulate_group.command("drones")
@common_options(
    rate_help="Average plate reads per second of flight, in event time (the rate of the former "
    "sighting mix: vendors and fires are the world's, seen where a sortie passes them). Drones "
    "fly only during sorties; heartbeats every 15 s come on top.",
    rate_default=0.03,
)
@click.option(
    "--mission-interval",
    type=click.FloatRange(min=1),
    default=30.0,
    show_default=True,
    help="Minutes of event time between take-offs at each dock.",
)
@world_options
def drones_command(
    rate: float,
    duration: float | None,
    seed: int | None,
    time_scale: float,
    start: str | None,
    bootstrap: str | None,
    malformed_fraction: float,
    quiet: bool,
    mission_interval: float,
    vending_per_hour: float,
    burning_per_hour: float,
    route_hazards_per_hour: float,
    demo_script: bool,
    learn_resolutions: bool,
) -> None:
    """The two drone docks (安文, 尖山) flying scheduled sorties along their preset routes;
    heartbeats and plate reads carry the drone's position on the route, a vendor or fire the
    sortie passes is seen where it is; every detection carries the route id."""
    config = DroneSimConfig(
        sightings_per_flight_second=rate,
        mission_interval_minutes=mission_interval,
        malformed_fraction=malformed_fraction,
        vending_per_hour=vending_per_hour,
        burning_per_hour=burning_per_hour,
        route_vending_per_hour=route_hazards_per_hour / 3,
        route_burning_per_hour=route_hazards_per_hour * 2 / 3,
        demo_script=demo_script,
    )
    _run_in_world(
        config,
        drone_events,
        seed,
        start,
        bootstrap,
        time_scale=time_scale,
        duration=duration,
        quiet=quiet,
        learn_resolutions=learn_resolutions,
    )


def _share(name: str, default: float, what: str) -> Callable[[F], F]:
    return click.option(
        f"--{name}-share",
        type=click.FloatRange(0, 1),
        default=default,
        show_default=True,
        help=what,
    )


@simulate_group.command("feedback")
@click.option(
    "--duration",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Stop after this many wall-clock seconds (default: run until Ctrl-C).",
)
@click.option(
    "--seed",
    type=int,
    default=None,
    help="Random seed; the same seed and the same tasks give the same feedback, whatever order "
    "or timing the tasks are read in (default: a new seed, printed so the run can be repeated).",
)
@click.option(
    "--time-scale",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="Event time runs N× faster than the wall clock; give the cameras' and drones' value. "
    "'inf' answers every task at once.",
)
@click.option(
    "--start",
    default=None,
    help="Event time at which the simulation's clock starts, RFC 3339 with an offset; give the "
    "cameras' and drones' value (default: now, +08:00).",
)
@click.option(
    "--bootstrap",
    default=None,
    help="Kafka bootstrap servers (default: PATROL_KAFKA_BOOTSTRAP or 127.0.0.1:9092).",
)
@_share("late", 0.12, "Share of tasks resolved after their due time (the lamp goes red first).")
@_share("extended", 0.07, "Share extended once (延期) to a later due time, then resolved.")
@_share(
    "returned",
    0.05,
    "Share returned (回退, not ours); the command center then gives them to another team.",
)
@_share("unresolvable", 0.03, "Share put on the books as unresolvable (挂账).")
@_share("silent", 0.03, "Share nobody answers (yellow, then red, and open).")
@click.option("--quiet", is_flag=True, help="No live progress; only the summary.")
def feedback_command(
    duration: float | None,
    seed: int | None,
    time_scale: float,
    start: str | None,
    bootstrap: str | None,
    late_share: float,
    extended_share: float,
    returned_share: float,
    unresolvable_share: float,
    silent_share: float,
    quiet: bool,
) -> None:
    """A simulated dispatch system: reads the tasks on PATROL_TOPIC_DISPATCH and answers each on
    PATROL_TOPIC_FEEDBACK (key task_id) the way field teams do.

    \b
    Most tasks are accepted within minutes, reached and resolved before their due time; some
    are resolved late, a few extended once (延期, extend_until later than due_by), returned
    (回退) or put on the books (挂账), and a few get no answer. A task the worker reopens
    (a status record `reopened` on PATROL_TOPIC_STATUS: the hazard is back) is answered again.
    Resolved hazards are removed from the simulated world, and some come back: see
    docs/simulators.md.

    \b
    Each answer's `at` is event time; it is produced when the simulation's clock (--start plus
    wall time × --time-scale) reaches it. The script of a task comes from the seed and the task
    id alone, and feedback ids are stable per (task, step): running it again, or reading the
    topics from the beginning after a restart, sends the same records, which change nothing.
    """
    others = late_share + extended_share + returned_share + unresolvable_share + silent_share
    if others > 1:
        raise click.BadParameter(
            f"the shares add up to {others:g}; together they must be at most 1 (the rest is on "
            "time)",
            param_hint="--*-share",
        )
    mix = FeedbackMix(
        on_time=1 - others,
        late=late_share,
        extended=extended_share,
        returned=returned_share,
        unresolvable=unresolvable_share,
        silent=silent_share,
    )
    seed = _seed(seed)
    settings = load_settings(kafka_bootstrap=bootstrap)
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    scale = "all at once" if math.isinf(time_scale) else f"×{time_scale:g}"
    begin = parse_start(start)
    click.echo(
        f"seed {seed}, event time {scale} from {begin.isoformat(timespec='seconds')}, "
        f"Kafka {settings.kafka_bootstrap}: answering {settings.topic_dispatch} on "
        f"{settings.topic_feedback}",
        err=True,
    )
    schedule = FeedbackSchedule(seed=seed, mix=mix)
    try:
        summary = asyncio.run(
            _answer_until_interrupted(schedule, settings, begin, time_scale, duration, quiet)
        )
    except BrokerUnreachable as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(summary.report(), err=True)
    click.echo(f"  repeat with --seed {seed}", err=True)
    if summary.failed:
        raise click.ClickException(f"{summary.failed} feedback records were not delivered")


async def _answer_until_interrupted(
    schedule: FeedbackSchedule,
    settings: Settings,
    start: datetime,
    time_scale: float,
    duration: float | None,
    quiet: bool,
) -> FeedbackSummary:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        return await answer_tasks(
            schedule,
            settings,
            start=start,
            time_scale=time_scale,
            duration=duration,
            progress=None if quiet else StderrProgress(duration=duration),
            stop=stop,
        )
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def _seed(seed: int | None) -> int:
    return seed if seed is not None else random.SystemRandom().randrange(1, 1_000_000)


def _run(
    events: Iterator[SimEvent],
    seed: int,
    bootstrap: str | None,
    *,
    time_scale: float,
    duration: float | None,
    quiet: bool,
    world: tuple[HazardWorld, datetime] | None = None,
) -> None:
    settings = load_settings(kafka_bootstrap=bootstrap)
    # aiokafka logs each failed connection attempt; our own message says what to do instead.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    scale = "as fast as possible" if math.isinf(time_scale) else f"×{time_scale:g}"
    click.echo(f"seed {seed}, event time {scale}, Kafka {settings.kafka_bootstrap}", err=True)
    feed = None
    if world is not None:
        feed = ResolutionFeed(world[0], world[1], settings.incident_radius_m)
    try:
        summary = asyncio.run(
            _produce_until_interrupted(events, settings, time_scale, duration, quiet, feed)
        )
    except BrokerUnreachable as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(summary.report(), err=True)
    if feed is not None:
        click.echo(
            f"  hazards removed by teams' resolutions: {feed.removed} "
            f"(of {len(feed.applied)} resolved answers read)",
            err=True,
        )
    click.echo(f"  repeat with --seed {seed}", err=True)
    if summary.failed:
        raise click.ClickException(f"{summary.failed} messages were not delivered")


async def _produce_until_interrupted(
    events: Iterator[SimEvent],
    settings: Settings,
    time_scale: float,
    duration: float | None,
    quiet: bool,
    feed: ResolutionFeed | None = None,
) -> SimSummary:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    learning: asyncio.Task[None] | None = None
    done = asyncio.Event()
    if feed is not None:
        learning = asyncio.create_task(
            learn_resolutions(feed, settings, done, client_id="patrol-simulate-world")
        )
    try:
        return await produce(
            events,
            settings,
            time_scale=time_scale,
            duration=duration,
            progress=None if quiet else StderrProgress(duration=duration),
            stop=stop,
        )
    finally:
        done.set()
        if learning is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(learning, 5)
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
