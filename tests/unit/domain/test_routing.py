"""The routing table: shipped defaults, scene overrides, and errors that name the bad entry."""

from __future__ import annotations

import copy
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from patrol.domain.models import Priority, TaskType
from patrol.domain.routing import DEPARTMENTS, Route, RoutingError, load_routing, parse_routing
from patrol.domain.zones import Scene

SHIPPED = load_routing(None)


@pytest.mark.parametrize("scene", [None, *Scene])
def test_illegal_parking_goes_to_comprehensive_enforcement(scene: Scene | None) -> None:
    route = SHIPPED.route(TaskType.illegal_parking, scene)
    assert route == Route("comprehensive_enforcement", Priority.normal, timedelta(hours=2))


def test_roadside_vending_goes_to_comprehensive_enforcement() -> None:
    route = SHIPPED.route(TaskType.roadside_vending, Scene.urban_road)
    assert (route.department, route.priority) == ("comprehensive_enforcement", Priority.normal)


def test_open_burning_is_high_for_ecology_environment() -> None:
    route = SHIPPED.route(TaskType.open_burning, Scene.residential)
    assert (route.department, route.priority) == ("ecology_environment", Priority.high)
    assert SHIPPED.route(TaskType.open_burning, None) == route


def test_open_burning_at_a_water_source_is_urgent() -> None:
    route = SHIPPED.route(TaskType.open_burning, Scene.water_source)
    assert route == Route("ecology_environment", Priority.urgent, timedelta(minutes=30))


@pytest.mark.parametrize(
    "scenes",
    [{}, {"water_source": {"priority": "normal", "due_within_minutes": 90}}],
    ids=["no water_source row", "a water_source row at normal"],
)
def test_open_burning_at_a_water_source_is_urgent_under_any_table(
    scenes: dict[str, Any],
) -> None:
    raw = copy.deepcopy(_shipped_raw())
    raw["open_burning"] = {
        "default": {
            "department": "emergency_management",
            "priority": "high",
            "due_within_minutes": 120,
        },
        "scenes": scenes,
    }
    table = parse_routing(raw)
    due = timedelta(minutes=scenes["water_source"]["due_within_minutes"] if scenes else 120)
    assert table.route(TaskType.open_burning, Scene.water_source) == Route(
        "emergency_management", Priority.urgent, due
    )
    assert table.route(TaskType.open_burning, Scene.urban_road).priority is Priority.high


def test_open_burning_in_the_countryside_goes_to_agriculture_rural() -> None:
    assert SHIPPED.route(TaskType.open_burning, Scene.rural).department == "agriculture_rural"


def _shipped_raw() -> dict[str, Any]:
    text = (Path(__file__).parents[3] / "patrol" / "data" / "routing.json").read_text("utf-8")
    raw: dict[str, Any] = json.loads(text)
    return raw


def test_scene_override_inherits_what_it_does_not_say() -> None:
    raw = _shipped_raw()
    raw["roadside_vending"]["scenes"]["market"] = {"department": "market_supervision"}
    route = parse_routing(raw).route(TaskType.roadside_vending, Scene.market)
    assert route == Route("market_supervision", Priority.normal, timedelta(hours=2))


def _broken(path: list[str], value: object) -> dict[str, Any]:
    raw = copy.deepcopy(_shipped_raw())
    target = raw
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return raw


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (
            ["open_burning", "scenes", "rural", "department"],
            "fire_brigade",
            "routing entry open_burning/rural: unknown department 'fire_brigade'; expected one of "
            + ", ".join(DEPARTMENTS),
        ),
        (
            ["open_burning", "default", "priority"],
            "asap",
            "routing entry open_burning/default: unknown priority 'asap'",
        ),
        (
            ["open_burning", "scenes", "forest"],
            {"priority": "urgent"},
            "routing entry open_burning/forest: unknown scene 'forest'",
        ),
        (
            ["littering"],
            {"default": {}},
            "routing entry littering: unknown task type 'littering'",
        ),
        (
            ["illegal_parking", "default", "due_within_minutes"],
            0,
            "routing entry illegal_parking/default: due_within_minutes must be a positive",
        ),
        (
            ["roadside_vending", "scenes", "water_source", "due_within_minutes"],
            -5,
            "routing entry roadside_vending/water_source: due_within_minutes must be a positive",
        ),
        (
            ["open_burning", "default", "due_within"],
            30,
            "routing entry open_burning/default: unknown field 'due_within'",
        ),
    ],
)
def test_bad_entry_is_named(path: list[str], value: object, message: str) -> None:
    with pytest.raises(RoutingError) as caught:
        parse_routing(_broken(path, value))
    assert message in str(caught.value)


def test_missing_task_type_is_named() -> None:
    raw = _shipped_raw()
    del raw["open_burning"]
    with pytest.raises(RoutingError, match="routing entry open_burning: missing"):
        parse_routing(raw)


def test_default_needs_every_field() -> None:
    raw = _shipped_raw()
    del raw["illegal_parking"]["default"]["priority"]
    with pytest.raises(RoutingError, match="illegal_parking/default: missing field 'priority'"):
        parse_routing(raw)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "routing.json"
    bad.write_text('{"illegal_parking": ', "utf-8")
    with pytest.raises(RoutingError, match=r"routing\.json: not valid JSON at line 1"):
        load_routing(bad)

    bad.write_text(json.dumps(_broken(["open_burning", "default", "department"], "x")), "utf-8")
    with pytest.raises(RoutingError) as caught:
        load_routing(bad)
    assert str(bad) in str(caught.value)
    assert "routing entry open_burning/default: unknown department 'x'" in str(caught.value)

    with pytest.raises(RoutingError, match="cannot read it"):
        load_routing(tmp_path / "missing.json")


def test_a_custom_file_replaces_the_shipped_table(tmp_path: Path) -> None:
    raw = _broken(["illegal_parking", "default", "due_within_minutes"], 45)
    custom = tmp_path / "routing.json"
    custom.write_text(json.dumps(raw), "utf-8")
    route = load_routing(custom).route(TaskType.illegal_parking, Scene.urban_road)
    assert route.due_within == timedelta(minutes=45)
