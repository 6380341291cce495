"""What a person sees from the `patrol` command when something is wrong, or asks for help."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from patrol.cli import main


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_help_lists_every_command_and_the_settings(runner: CliRunner) -> None:
    result = runner.invoke(main, ["--help"])
    assert result.exit_code == 0
    for command in ("broker", "worker", "sms-gateway", "simulate", "schemas"):
        assert command in result.output
    assert "PATROL_KAFKA_BOOTSTRAP" in result.output


def test_worker_help_explains_configuration(runner: CliRunner) -> None:
    result = runner.invoke(main, ["worker", "--help"])
    assert result.exit_code == 0
    for variable in ("PATROL_RECHECK_MINUTES", "PATROL_SMS_URL", "PATROL_ZONES", "PATROL_APP_ID"):
        assert variable in result.output


def test_bad_zones_file_stops_the_worker_naming_the_feature(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    zones = tmp_path / "zones.json"
    feature = {
        "type": "Feature",
        "properties": {
            "zone_id": "bad-scene",
            "name": "x",
            "township": "y",
            "scene": "moon",
            "no_parking": True,
        },
        "geometry": {
            "type": "Polygon",
            "coordinates": [[[120.0, 29.0], [120.1, 29.0], [120.1, 29.1], [120.0, 29.0]]],
        },
    }
    zones.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    monkeypatch.setenv("PATROL_ZONES", str(zones))
    monkeypatch.setenv("PATROL_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    result = runner.invoke(main, ["worker"])
    assert result.exit_code == 1
    assert "bad-scene" in result.output and "unknown scene 'moon'" in result.output


def test_unreachable_kafka_says_how_to_get_one(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATROL_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    result = runner.invoke(main, ["worker"])
    assert result.exit_code == 1
    assert "cannot reach Kafka at 127.0.0.1:1" in result.output
    assert "patrol broker start" in result.output


def test_invalid_setting_is_reported_by_name(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATROL_RECHECK_MINUTES", "soon")
    result = runner.invoke(main, ["worker"])
    assert result.exit_code == 1
    assert "recheck_minutes" in result.output
