"""The alert rules and the Prometheus config, checked by promtool and against patrol.metrics."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client.utils import floatToGoString

from patrol import metrics
from patrol.devtools.prometheus import write_config
from patrol.shipped import ALERT_RULES, PROMETHEUS_DIR

ALERT_TESTS = PROMETHEUS_DIR / "alerts_test.yml"
CONFIG = PROMETHEUS_DIR / "prometheus.yml"
ALERTS = (
    "PatrolWorkerDown",
    "PatrolConsumerLagGrowing",
    "PatrolNoCameraDetections",
    "PatrolNoDroneDetections",
    "PatrolSmsFailureRatio",
    "PatrolDeadLetterRate",
    "PatrolDeviceClockWrong",
    "PatrolOverdueTasksPilingUp",
    "PatrolDispatchLatencySLO",
)


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    executable = shutil.which("promtool")
    if executable is None:
        pytest.skip("promtool is not installed: `apt-get install prometheus` (see the Makefile)")
    return subprocess.run(
        [executable, *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )


def rule_blocks() -> dict[str, str]:
    """Each alert's YAML text, keyed by alert name."""
    text = ALERT_RULES.read_text(encoding="utf-8")
    parts = re.split(r"^\s*- alert:\s*", text, flags=re.MULTILINE)[1:]
    return {part.split(maxsplit=1)[0]: part for part in parts}


def test_alert_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", ALERT_RULES)

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout


def test_alert_rules_pass_their_promtool_unit_tests() -> None:
    result = promtool("test", "rules", ALERT_TESTS)

    assert result.returncode == 0, result.stdout + result.stderr


def test_shipped_prometheus_config_is_valid_and_loads_the_rules() -> None:
    result = promtool("check", "config", CONFIG)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout
    assert "job_name: patrol" in CONFIG.read_text(encoding="utf-8")
    assert "127.0.0.1:6066" in CONFIG.read_text(encoding="utf-8")


def test_a_generated_test_config_is_valid(tmp_path: Path) -> None:
    config = write_config(tmp_path, ["127.0.0.1:16066", "127.0.0.1:16067"], scrape_interval="1s")

    result = promtool("check", "config", config)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout


def test_write_config_refuses_no_targets(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one scrape target"):
        write_config(tmp_path, [])


def test_the_group_has_exactly_the_agreed_alerts() -> None:
    assert "- name: patrol\n" in ALERT_RULES.read_text(encoding="utf-8")
    assert tuple(rule_blocks()) == ALERTS


@pytest.mark.parametrize("alert", ALERTS)
def test_each_alert_tells_the_operator_how_bad_and_what_to_do(alert: str) -> None:
    block = rule_blocks()[alert]

    assert re.search(r"^\s+severity: (critical|warning)$", block, re.MULTILINE)
    assert re.search(r"^\s+summary: \S", block, re.MULTILINE)
    assert re.search(r"^\s+description: >-\n\s+\S", block, re.MULTILINE)


@pytest.mark.parametrize("alert", ALERTS)
def test_each_alert_has_a_firing_and_a_quiet_case(alert: str) -> None:
    cases = re.findall(
        rf"alertname: {alert}\n\s+exp_alerts:( \[\])?\n",
        ALERT_TESTS.read_text(encoding="utf-8"),
    )

    assert "" in cases, f"no case where {alert} fires"
    assert " []" in cases, f"no case where {alert} stays quiet"


def test_alerts_only_use_metrics_patrol_defines() -> None:
    used = set(re.findall(r"\bpatrol_[a-z_]+", ALERT_RULES.read_text(encoding="utf-8")))

    assert used, "alerts.yml names no patrol metric"
    assert used <= metrics.exposed_series_names()


def test_the_latency_alert_uses_the_slo_bucket_of_patrol_metrics() -> None:
    slo_bucket = f'le="{floatToGoString(metrics.DISPATCH_SLO_SECONDS)}"'

    assert slo_bucket in rule_blocks()["PatrolDispatchLatencySLO"]
    assert f"within {metrics.DISPATCH_SLO_SECONDS:g}s" in rule_blocks()["PatrolDispatchLatencySLO"]
