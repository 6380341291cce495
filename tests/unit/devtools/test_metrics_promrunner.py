"""The Prometheus runner's behaviour that needs no Prometheus: errors a person reads, the config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from patrol.devtools.prometheus import (
    ALERT_RULES,
    PrometheusError,
    PrometheusServer,
    prometheus_available,
    write_config,
)


def test_a_missing_binary_is_reported_with_how_to_install_it(tmp_path: Path) -> None:
    server = PrometheusServer(["127.0.0.1:6066"], binary="no-such-prometheus", data_dir=tmp_path)

    assert not prometheus_available("no-such-prometheus")
    with pytest.raises(PrometheusError, match="apt-get install prometheus"):
        server.start()


def test_querying_before_start_says_so() -> None:
    server = PrometheusServer(["127.0.0.1:6066"])

    with pytest.raises(PrometheusError, match="not been started"):
        server.query("up")
    with pytest.raises(PrometheusError, match="not been started"):
        _ = server.url


def test_config_scrapes_job_patrol_at_the_given_targets_with_the_alert_rules(
    tmp_path: Path,
) -> None:
    path = write_config(tmp_path, ["127.0.0.1:16066", "10.0.0.6:6066"], scrape_interval="2s")

    config = json.loads(path.read_text(encoding="utf-8"))  # JSON is the YAML subset we write
    [job] = config["scrape_configs"]
    assert job["job_name"] == "patrol"
    assert job["metrics_path"] == "/metrics"
    assert job["scrape_interval"] == "2s"
    assert job["static_configs"] == [{"targets": ["127.0.0.1:16066", "10.0.0.6:6066"]}]
    assert config["rule_files"] == [str(ALERT_RULES.resolve())]


def test_rule_files_that_do_not_exist_are_left_out(tmp_path: Path) -> None:
    path = write_config(tmp_path, ["127.0.0.1:6066"], rule_files=[tmp_path / "missing.yml"])

    assert json.loads(path.read_text(encoding="utf-8"))["rule_files"] == []
