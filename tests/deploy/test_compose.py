"""The compose file's stack, with the broker image made from patrol's Kafka jars: up, one
detection through, Prometheus scraping both workers, and `down` leaves nothing behind."""

from __future__ import annotations

import subprocess
from pathlib import Path

from .checks import COMPOSE_FILE, ComposeStack, Transcript, check_compose
from .tools import KAFKA_IMAGE, PATROL_IMAGE, REPO, SERVICES_IMAGE, require_image, run


def test_the_compose_stack_takes_a_detection_to_a_task_and_down_leaves_nothing(
    transcript: Transcript,
) -> None:
    for image in (PATROL_IMAGE, KAFKA_IMAGE, SERVICES_IMAGE):
        require_image(image)
    stack = ComposeStack.create(PATROL_IMAGE, KAFKA_IMAGE, SERVICES_IMAGE)
    seen = check_compose(stack, transcript)
    assert seen["task"]["task_type"] == "roadside_vending"
    assert set(seen["up"]) == {f"127.0.0.1:{port}" for port in stack.worker_ports}
    assert stack.leftovers() == []


def test_the_compose_prometheus_config_and_its_rules_pass_promtool(tmp_path: Path) -> None:
    config = (REPO / "deploy/compose/prometheus.yml").read_text()
    config = config.replace("@WORKER_0@", "127.0.0.1:6066").replace("@WORKER_1@", "127.0.0.1:6067")
    config = config.replace(
        "/etc/patrol/alerts.yml", str(REPO / "patrol/data/prometheus/alerts.yml")
    )
    (tmp_path / "prometheus.yml").write_text(config)
    done = subprocess.run(
        ["promtool", "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_compose_file_names_every_service_the_issue_lists() -> None:
    listed = run(
        ["podman-compose", "-f", COMPOSE_FILE, "--profile", "grafana", "config", "--services"]
    ).stdout.split()
    assert set(listed) == {"kafka", "worker-0", "worker-1", "sms-gateway", "cameras", "drones"} | {
        "prometheus",
        "grafana",
    }
