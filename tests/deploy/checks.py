"""The image and compose checks, as functions that raise CheckFailed: the tests run each
against what ships and against a broken variant that must fail it."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .tools import (
    BROKER_PORTS,
    LABEL,
    REPO,
    WEB_PORTS,
    CheckFailed,
    free_port,
    podman,
    run,
    run_id,
    send,
    task_for,
    tool_env,
    vending_detection,
    wait_ready,
)

COMPOSE_FILE = REPO / "deploy/compose/compose.yaml"


@dataclass
class Transcript:
    """The commands a check ran and what they printed, for the person reading a failure."""

    lines: list[str] = field(default_factory=list)

    def add(self, command: str, output: str) -> None:
        self.lines.append(f"$ {command}\n{output.rstrip()}")

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(self.lines) + "\n")


def check_image(
    image: str, bootstrap: str, transcript: Transcript, ready_timeout: float = 120.0
) -> dict[str, object]:
    """The containerised worker joins the broker at `bootstrap`, is healthy, turns a detection
    into a task on the dispatch topic, and exits 0 on SIGTERM well before it would be killed."""
    suffix = uuid.uuid4().hex[:8]
    name = f"patrol-check-{suffix}"
    port = free_port(WEB_PORTS)
    topics = {
        "PATROL_TOPIC_CAMERA": f"d{suffix}.detections.camera",
        "PATROL_TOPIC_DRONE": f"d{suffix}.detections.drone",
        "PATROL_TOPIC_DISPATCH": f"d{suffix}.dispatch.tasks",
        "PATROL_TOPIC_SMS": f"d{suffix}.notifications.sms",
        "PATROL_TOPIC_DEADLETTER": f"d{suffix}.deadletter",
        "PATROL_TOPIC_FEEDBACK": f"d{suffix}.dispatch.feedback",
        "PATROL_TOPIC_STATUS": f"d{suffix}.dispatch.status",
    }
    env = {
        "PATROL_KAFKA_BOOTSTRAP": bootstrap,
        "PATROL_APP_ID": f"deploy-{suffix}",
        "PATROL_INSTANCE_ID": "worker-0",
        "PATROL_WEB_PORT": str(port),
        "PATROL_PARTITIONS": "2",
        **topics,
    }
    command = [
        "run", "-d", "--name", name, "--network", "host", "--label", f"{LABEL}={run_id()}",
        *(arg for k, v in env.items() for arg in ("-e", f"{k}={v}")),
        image,
    ]  # fmt: skip
    try:
        transcript.add(f"podman {' '.join(command)}", podman(*command))

        def alive() -> bool:
            return podman("inspect", "-f", "{{.State.Running}}", name).strip() == "true"

        try:
            wait_ready(f"http://127.0.0.1:{port}/readyz", ready_timeout, alive)
        except CheckFailed as failed:
            logs = _logs(name)
            transcript.add("(the check failed)", f"{failed}\nthe worker's last lines:\n{logs}")
            raise CheckFailed(f"{failed}\nthe worker's last lines:\n{logs}") from None
        transcript.add(f"curl -s http://127.0.0.1:{port}/readyz", '{"status":"ready"}')
        health = run(["podman", "healthcheck", "run", name], check=False)
        transcript.add(f"podman healthcheck run {name}", f"exit {health.returncode}")
        if health.returncode != 0:
            raise CheckFailed(f"the image's HEALTHCHECK failed: {health.stdout}{health.stderr}")
        processes = podman("top", name, "user", "pid", "ppid", "args")
        transcript.add(f"podman top {name} user pid ppid args", processes)

        event_id = f"deploy-{suffix}"
        send(bootstrap, topics["PATROL_TOPIC_CAMERA"], "cam-0104", vending_detection(event_id))
        transcript.add(
            f"(a roadside_vending detection {event_id} to {topics['PATROL_TOPIC_CAMERA']})", ""
        )
        task = task_for(bootstrap, topics["PATROL_TOPIC_DISPATCH"], event_id, timeout=60)
        transcript.add(
            f"(read {topics['PATROL_TOPIC_DISPATCH']})",
            json.dumps({k: task[k] for k in ("task_type", "department") if k in task}),
        )
        memory = podman("stats", "--no-stream", "--format", "{{.MemUsage}}", name).strip()
        transcript.add(f"podman stats --no-stream --format '{{{{.MemUsage}}}}' {name}", memory)

        started = time.monotonic()
        transcript.add(f"podman stop -t 30 {name}", podman("stop", "-t", "30", name, timeout=60))
        stopped_in = time.monotonic() - started
        transcript.add("(SIGTERM to exit)", f"{stopped_in:.1f} s")
        code = podman("inspect", "-f", "{{.State.ExitCode}}", name).strip()
        transcript.add(f"podman inspect -f '{{{{.State.ExitCode}}}}' {name}", code)
        if code != "0":
            logs = _logs(name)
            raise CheckFailed(f"the worker exited {code} on SIGTERM, not 0:\n{logs}")
        return {"task": task, "memory": memory, "stopped_in": stopped_in, "processes": processes}
    finally:
        podman("rm", "-f", "-t", "5", name, check=False)


@dataclass(frozen=True)
class ComposeStack:
    """The compose file's stack under a project name of its own, on this suite's ports."""

    project: str
    kafka_port: int
    worker_ports: tuple[int, int]
    prometheus_port: int
    env: dict[str, str]

    @classmethod
    def create(cls, patrol_image: str, kafka_image: str, prometheus_image: str) -> ComposeStack:
        kafka_port = free_port(BROKER_PORTS)
        controller = free_port(BROKER_PORTS, taken=[kafka_port])
        web: list[int] = []
        for _ in range(4):
            web.append(free_port(WEB_PORTS, taken=web))
        env = tool_env() | {
            "PATROL_IMAGE": patrol_image,
            "PATROL_KAFKA_IMAGE": kafka_image,
            "PATROL_PROMETHEUS_IMAGE": prometheus_image,
            "PATROL_KAFKA_PORT": str(kafka_port),
            "PATROL_KAFKA_CONTROLLER_PORT": str(controller),
            "PATROL_KAFKA_BOOTSTRAP": f"127.0.0.1:{kafka_port}",
            "PATROL_WORKER_0_PORT": str(web[0]),
            "PATROL_WORKER_1_PORT": str(web[1]),
            "PATROL_SMS_PORT": str(web[2]),
            "PATROL_SMS_URL": f"http://127.0.0.1:{web[2]}",
            "PATROL_PROMETHEUS_PORT": str(web[3]),
            "PATROL_PARTITIONS": "2",
        }
        return cls(
            f"patrol-check-{uuid.uuid4().hex[:6]}", kafka_port, (web[0], web[1]), web[3], env
        )

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    def compose(self, *args: str, timeout: float = 240.0, check: bool = True) -> str:
        cmd = ["podman-compose", "-p", self.project, "-f", str(COMPOSE_FILE), *args]
        done = run(cmd, env=self.env, timeout=timeout, check=check)
        return done.stdout + done.stderr

    def leftovers(self) -> list[str]:
        """Containers, volumes and pods of the project that still exist."""
        label = f"label=io.podman.compose.project={self.project}"
        found = podman("ps", "-a", "--filter", label, "--format", "container {{.Names}}").split(
            "\n"
        )
        found += podman("volume", "ls", "--filter", label, "--format", "volume {{.Name}}").split(
            "\n"
        )
        found += podman(
            "pod", "ps", "--filter", f"name={self.project}", "--format", "pod {{.Name}}"
        ).split("\n")
        return [line for line in found if line.strip()]


def check_compose(
    stack: ComposeStack, transcript: Transcript, ready_timeout: float = 240.0
) -> dict[str, object]:
    """`up -d` of the compose file: both workers ready, Prometheus scraping both, a detection
    through to a task; then `down -v` leaves no container, volume or pod of the project."""
    try:
        up = stack.compose("up", "-d")
        transcript.add(
            f"podman-compose -p {stack.project} -f deploy/compose/compose.yaml up -d", _quiet(up)
        )
        for port in stack.worker_ports:
            wait_ready(f"http://127.0.0.1:{port}/readyz", ready_timeout)
        transcript.add(
            f"curl -s http://127.0.0.1:{{{stack.worker_ports[0]},{stack.worker_ports[1]}}}/readyz",
            '{"status":"ready"} ×2',
        )
        ps = podman(
            "ps",
            "--filter",
            f"label=io.podman.compose.project={stack.project}",
            "--format",
            "{{.Names}}\t{{.Status}}",
        )
        transcript.add(f"podman ps --filter label=io.podman.compose.project={stack.project}", ps)
        event_id = f"compose-{uuid.uuid4().hex[:8]}"
        send(stack.bootstrap, "patrol.detections.camera", "cam-0104", vending_detection(event_id))
        transcript.add(f"(a roadside_vending detection {event_id} to patrol.detections.camera)", "")
        task = task_for(stack.bootstrap, "patrol.dispatch.tasks", event_id, timeout=90)
        transcript.add(
            "(read patrol.dispatch.tasks)",
            json.dumps({k: task[k] for k in ("task_type", "department") if k in task}),
        )
        up_series = _scraped(stack, timeout=60)
        transcript.add(
            f"curl -s 'http://127.0.0.1:{stack.prometheus_port}/api/v1/query?query=up'",
            json.dumps(up_series),
        )
        # Workers first, while their broker still runs: each must stop on SIGTERM and exit 0.
        stop = stack.compose("stop", "-t", "30", "worker-0", "worker-1")
        transcript.add(
            f"podman-compose -p {stack.project} -f deploy/compose/compose.yaml stop -t 30 "
            "worker-0 worker-1",
            _quiet(stop),
        )
        codes = {
            worker: podman(
                "inspect", "-f", "{{.State.ExitCode}}", f"{stack.project}_{worker}_1"
            ).strip()
            for worker in ("worker-0", "worker-1")
        }
        transcript.add("(the workers' exit codes)", json.dumps(codes))
        if set(codes.values()) != {"0"}:
            raise CheckFailed(f"workers stopped with exit codes {codes}, not 0")
        return {"task": task, "up": up_series, "exit_codes": codes}
    finally:
        down = stack.compose("down", "-v", "-t", "20", check=False)
        transcript.add(
            f"podman-compose -p {stack.project} -f deploy/compose/compose.yaml down -v -t 20",
            _quiet(down),
        )
        left = stack.leftovers()
        transcript.add(
            f"(containers, volumes, pods of {stack.project} left)", "\n".join(left) or "none"
        )
        if left:
            raise CheckFailed(f"`down -v` left {left}")


def _scraped(stack: ComposeStack, timeout: float) -> dict[str, str]:
    """Prometheus' `up` per worker, once both are 1 (its scrape interval is 5 s)."""
    import httpx

    deadline = time.monotonic() + timeout
    seen: dict[str, str] = {}
    while time.monotonic() < deadline:
        try:
            answer = httpx.get(
                f"http://127.0.0.1:{stack.prometheus_port}/api/v1/query",
                params={"query": "up"},
                timeout=3,
            ).json()
            seen = {r["metric"]["instance"]: r["value"][1] for r in answer["data"]["result"]}
        except (httpx.HTTPError, KeyError, ValueError):
            pass
        if len(seen) == 2 and set(seen.values()) == {"1"}:
            return seen
        time.sleep(1)
    raise CheckFailed(f"Prometheus did not scrape both workers within {timeout:.0f} s: {seen}")


def _quiet(output: str) -> str:
    """podman-compose's output without podman's complaints that systemd timers are missing."""
    return "\n".join(line for line in output.splitlines() if "systemd" not in line)


def _logs(container: str) -> str:
    """The container's last lines, its stdout and stderr both (podman logs splits them)."""
    done = run(["podman", "logs", "--tail", "15", container], check=False)
    return done.stdout + done.stderr
