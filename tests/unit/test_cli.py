"""What a person sees from the `patrol` command when something is wrong, or asks for help."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from patrol.cli import main
from patrol.settings import Settings


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


def _settings_entries(output: str) -> dict[str, str]:
    """The help's configuration section as {variable: its text}, one entry per starting line."""
    section = output.split("Configuration (environment variables):", 1)[1]
    entries: dict[str, str] = {}
    current = None
    for line in section.splitlines():
        first = line.split(maxsplit=1)[0] if line.strip() else ""
        if first.startswith("PATROL_"):
            current = first
            entries[current] = line.strip()[len(first) :]
        elif current is not None:
            entries[current] += " " + line.strip()
    return entries


@pytest.mark.parametrize("args", [["--help"], ["worker", "--help"]], ids=["patrol", "worker"])
def test_help_lists_every_variable_on_its_own_line_with_description_and_default(
    runner: CliRunner, args: list[str]
) -> None:
    result = runner.invoke(main, args)
    assert result.exit_code == 0
    variable_lines = [line for line in result.output.splitlines() if "PATROL_" in line]
    for line in variable_lines:
        # no line holds a second variable, as the rewrapped paragraph did
        assert len(re.findall(r"PATROL_[A-Z_]+", line)) == 1, line
    entries = _settings_entries(result.output)
    assert list(entries) == [f"PATROL_{name.upper()}" for name in Settings.model_fields]

    def squeezed(text: str) -> str:
        return "".join(text.split())  # wrapping may break at a space or after a hyphen

    for name, field in Settings.model_fields.items():
        text = squeezed(entries[f"PATROL_{name.upper()}"])
        assert squeezed(field.description or "") in text, name
    assert "[default:127.0.0.1:9092]" in squeezed(entries["PATROL_KAFKA_BOOTSTRAP"])
    assert "[default:5]" in squeezed(entries["PATROL_RECHECK_MINUTES"])
    assert "[default:Asia/Shanghai]" in squeezed(entries["PATROL_TIMEZONE"])
    assert "[default:unset]" in squeezed(entries["PATROL_INSTANCE_ID"])


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
