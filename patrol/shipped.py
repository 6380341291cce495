"""Files that ship inside the package (`patrol/data/`), found the same way from a checkout and
from an installed wheel: the default zones and routing table, the local broker's Maven pom, the
Prometheus configuration and alert rules, the Grafana dashboard."""

from __future__ import annotations

import importlib.resources
from pathlib import Path


def shipped_file(*parts: str) -> Path:
    """The path of `patrol/data/<parts...>` (a regular file in every supported install)."""
    return Path(str(importlib.resources.files("patrol").joinpath("data", *parts)))


KAFKA_POM = shipped_file("kafka", "pom.xml")
PROMETHEUS_DIR = shipped_file("prometheus")
ALERT_RULES = PROMETHEUS_DIR / "alerts.yml"
DASHBOARD = shipped_file("grafana", "patrol.json")
