"""The image as an operator runs it: the containerised worker joins a real broker, turns a
detection into a task, and stops cleanly on SIGTERM; with no broker to reach it fails."""

from __future__ import annotations

import pytest

from .checks import Transcript, check_image
from .tools import BROKER_PORTS, PATROL_IMAGE, CheckFailed, free_port, podman, require_image


@pytest.fixture(scope="module")
def image() -> str:
    require_image(PATROL_IMAGE)
    return PATROL_IMAGE


def test_the_image_runs_a_worker_that_turns_a_detection_into_a_task(
    image: str, bootstrap: str, transcript: Transcript
) -> None:
    seen = check_image(image, bootstrap, transcript)
    assert seen["task"]["task_type"] == "roadside_vending"
    # dumb-init is PID 1 and the worker its child, running as the image's user
    lines = str(seen["processes"]).splitlines()[1:]
    assert lines[0].split()[:2] == ["patrol", "1"] and "dumb-init" in lines[0]
    assert any("patrol worker" in line and line.split()[2] == "1" for line in lines[1:])


def test_the_check_fails_when_the_worker_cannot_reach_the_broker(
    image: str, transcript: Transcript
) -> None:
    nobody = f"127.0.0.1:{free_port(BROKER_PORTS)}"  # nothing listens there
    with pytest.raises(CheckFailed, match="readyz"):
        check_image(image, nobody, transcript, ready_timeout=30)


def test_the_image_runs_as_a_non_root_user_with_the_settings_it_documents(image: str) -> None:
    config = podman("image", "inspect", "-f", "{{.Config.User}} {{.Config.Env}}", image)
    user, env = config.split(" ", 1)
    assert user == "10001:10001"
    assert "PATROL_WEB_HOST=0.0.0.0" in env and "PATROL_DATA_DIR=/var/lib/patrol/worker" in env
    helped = podman("run", "--rm", "--network", "none", image, "worker", "--help")
    assert "PATROL_KAFKA_BOOTSTRAP" in helped and "PATROL_INSTANCE_ID" in helped
