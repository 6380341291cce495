"""Deploy checks: the real hadolint, podman, podman-compose, kustomize and kubeconform
(`make deploy-tools`, `make deploy-images`); containers this run left are removed at the end."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from patrol.devtools.broker import answers_metadata

from .checks import Transcript
from .tools import REPO, remove_labelled_containers

TRANSCRIPTS = REPO / ".state" / "deploy-checks"


@pytest.fixture(scope="session", autouse=True)
def _no_containers_left() -> Iterator[None]:
    yield
    remove_labelled_containers()


@pytest.fixture(scope="session")
def bootstrap() -> str:
    address = os.environ.get("PATROL_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    if not answers_metadata(address):
        pytest.fail(
            f"no Kafka broker answers at {address}: run these with `make deploy-check` or "
            "`make test`, which start one"
        )
    return address


@pytest.fixture
def transcript(request: pytest.FixtureRequest) -> Iterator[Transcript]:
    """What the check ran, kept under .state/deploy-checks/<test>.txt (and printed on failure)."""
    kept = Transcript()
    yield kept
    path: Path = TRANSCRIPTS / f"{request.node.name}.txt"
    kept.write(path)
    print("\n\n".join(kept.lines))
