"""Integration fixtures: the real broker (started by `make test`), worker and gateway processes."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from patrol.devtools.broker import answers_metadata

from .stack import stack  # noqa: F401  (the module-scoped running patrol)


@pytest.fixture(scope="session")
def bootstrap() -> str:
    address = os.environ.get("PATROL_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    if not answers_metadata(address):
        message = (
            f"no Kafka broker answers at {address}: run the tests with `make test`, or start one "
            "with `patrol broker start` and set PATROL_KAFKA_BOOTSTRAP"
        )
        if os.environ.get("PATROL_TEST_RUN"):
            pytest.fail(message)  # inside `make test` a missing broker is a failure, not a skip
        pytest.skip(message)
    return address


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    yield tmp_path_factory.mktemp("logs")
