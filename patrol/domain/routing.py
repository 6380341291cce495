"""Which department handles a task, how urgently, and by when (CONTRACT §6, §8).

The table is data (patrol/data/routing.json, or PATROL_ROUTING): per task type a default route
and per-scene overrides. A scene override may give only the fields it changes; the rest come from
the task type's default. Loading checks every entry so a bad file fails at start, not mid-stream.
Open burning in a `water_source` zone is `urgent` under any table (CONTRACT §6).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import timedelta
from importlib import resources
from pathlib import Path

from patrol.domain.models import Priority, TaskType
from patrol.domain.zones import Scene

DEPARTMENTS = (
    "comprehensive_enforcement",
    "market_supervision",
    "ecology_environment",
    "transport",
    "culture_tourism",
    "emergency_management",
    "agriculture_rural",
)
"""The county's "1+6" enforcement departments."""

_ROUTE_FIELDS = ("department", "priority", "due_within_minutes")
_ENTRY_KEYS = ("default", "scenes")


class RoutingError(ValueError):
    """The routing table is unusable; the message names the entry and what is wrong with it."""


@dataclass(frozen=True, slots=True)
class Route:
    department: str
    priority: Priority
    due_within: timedelta


@dataclass(frozen=True, slots=True)
class RoutingTable:
    defaults: Mapping[TaskType, Route]
    overrides: Mapping[tuple[TaskType, Scene], Route]

    def route(self, task_type: TaskType, scene: Scene | None) -> Route:
        """The route of a task of this type in a zone of this scene (None: outside every zone)."""
        if scene is not None:
            override = self.overrides.get((task_type, scene))
            if override is not None:
                return override
        return self.defaults[task_type]

    def all_routes(self) -> list[tuple[TaskType, Route]]:
        """Every (task type, route) a task can take, defaults first."""
        overrides = [(task_type, route) for (task_type, _), route in self.overrides.items()]
        return [*self.defaults.items(), *overrides]


def _one_of(value: object, allowed: tuple[str, ...]) -> str | None:
    return value if isinstance(value, str) and value in allowed else None


def _parse_route(entry: str, raw: object, base: Route | None) -> Route:
    if not isinstance(raw, dict):
        raise RoutingError(f"routing entry {entry}: expected an object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(_ROUTE_FIELDS))
    if unknown:
        raise RoutingError(
            f"routing entry {entry}: unknown field {unknown[0]!r}; "
            f"expected only {', '.join(_ROUTE_FIELDS)}"
        )
    missing = [name for name in _ROUTE_FIELDS if name not in raw]
    if base is None and missing:
        raise RoutingError(f"routing entry {entry}: missing field {missing[0]!r}")

    department = base.department if base and "department" not in raw else raw["department"]
    if _one_of(department, DEPARTMENTS) is None:
        raise RoutingError(
            f"routing entry {entry}: unknown department {department!r}; "
            f"expected one of {', '.join(DEPARTMENTS)}"
        )
    priority = base.priority.value if base and "priority" not in raw else raw["priority"]
    priorities = tuple(p.value for p in Priority)
    if _one_of(priority, priorities) is None:
        raise RoutingError(
            f"routing entry {entry}: unknown priority {priority!r}; "
            f"expected one of {', '.join(priorities)}"
        )
    if base is not None and "due_within_minutes" not in raw:
        due_within = base.due_within
    else:
        minutes = raw["due_within_minutes"]
        if isinstance(minutes, bool) or not isinstance(minutes, int | float) or not minutes > 0:
            raise RoutingError(
                f"routing entry {entry}: due_within_minutes must be a positive number of "
                f"minutes, got {minutes!r}"
            )
        due_within = timedelta(minutes=minutes)
    return Route(department=str(department), priority=Priority(priority), due_within=due_within)


def parse_routing(raw: object, origin: str = "routing table") -> RoutingTable:
    """Check and build a routing table from its decoded JSON."""
    if not isinstance(raw, dict):
        raise RoutingError(f"{origin}: expected an object keyed by task type")
    task_types = tuple(t.value for t in TaskType)
    scenes = tuple(s.value for s in Scene)
    for name in raw:
        if name not in task_types:
            raise RoutingError(
                f"routing entry {name}: unknown task type {name!r}; "
                f"expected one of {', '.join(task_types)}"
            )
    defaults: dict[TaskType, Route] = {}
    overrides: dict[tuple[TaskType, Scene], Route] = {}
    for task_type in TaskType:
        entry = raw.get(task_type.value)
        if entry is None:
            raise RoutingError(
                f"routing entry {task_type.value}: missing; every task type needs one"
            )
        if not isinstance(entry, dict):
            raise RoutingError(f"routing entry {task_type.value}: expected an object")
        unknown = sorted(set(entry) - set(_ENTRY_KEYS))
        if unknown:
            raise RoutingError(
                f"routing entry {task_type.value}: unknown field {unknown[0]!r}; "
                f"expected {' and '.join(_ENTRY_KEYS)}"
            )
        if "default" not in entry:
            raise RoutingError(f"routing entry {task_type.value}: missing 'default' route")
        default = _parse_route(f"{task_type.value}/default", entry["default"], None)
        defaults[task_type] = default
        scene_entries = entry.get("scenes", {})
        if not isinstance(scene_entries, dict):
            raise RoutingError(f"routing entry {task_type.value}/scenes: expected an object")
        for scene_name, scene_raw in scene_entries.items():
            where = f"{task_type.value}/{scene_name}"
            if scene_name not in scenes:
                raise RoutingError(
                    f"routing entry {where}: unknown scene {scene_name!r}; "
                    f"expected one of {', '.join(scenes)}"
                )
            overrides[(task_type, Scene(scene_name))] = _parse_route(where, scene_raw, default)
    # CONTRACT §6 fixes this one priority whatever the table says; its department and due time
    # stay the table's (the water_source override, or the default where there is none).
    burning_water = (TaskType.open_burning, Scene.water_source)
    route = overrides.get(burning_water, defaults[TaskType.open_burning])
    if route.priority is not Priority.urgent:
        overrides[burning_water] = replace(route, priority=Priority.urgent)
    return RoutingTable(defaults=defaults, overrides=overrides)


def load_routing(path: Path | None = None) -> RoutingTable:
    """The routing table in `path`, or the one shipped with patrol when `path` is None."""
    if path is None:
        origin = "shipped routing table patrol/data/routing.json"
        text = resources.files("patrol").joinpath("data/routing.json").read_text("utf-8")
    else:
        origin = f"routing table {path}"
        try:
            text = path.read_text("utf-8")
        except OSError as error:
            raise RoutingError(f"{origin}: cannot read it ({error.strerror or error})") from error
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        raise RoutingError(
            f"{origin}: not valid JSON at line {error.lineno} column {error.colno}: {error.msg}"
        ) from error
    try:
        return parse_routing(raw, origin)
    except RoutingError as error:
        if str(error).startswith(origin):
            raise
        raise RoutingError(f"{origin}: {error}") from None
