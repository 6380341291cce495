"""The Grafana dashboard: one data source variable, real metrics, units, Grafana's rate interval."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from prometheus_client.utils import floatToGoString

from patrol import metrics
from patrol.devtools.prometheus import DASHBOARD, dashboard_queries, metric_names_in

ROWS = [
    "Intake",
    "Grace rule",
    "SMS",
    "Dispatch",
    "Closed loop (发现—派单—处置—反馈)",
    "Health & lag",
]
RANGE_FUNCTION = re.compile(r"\b(?:rate|irate|increase|deriv|\w+_over_time)\s*\(")
RANGE_SELECTOR = re.compile(
    r"\b(?:rate|irate|increase|deriv|\w+_over_time)\s*\(\s*[a-zA-Z_:][\w:]*\s*(?:\{[^}]*\})?\s*"
    r"\[([^\]]*)\]"
)


def load() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return dashboard


def data_panels() -> list[dict[str, Any]]:
    return [panel for panel in load()["panels"] if panel["type"] != "row"]


def panel_id(panel: dict[str, Any]) -> str:
    return str(panel["title"])


def test_rows_come_in_operator_order() -> None:
    assert [p["title"] for p in load()["panels"] if p["type"] == "row"] == ROWS


def test_each_row_holds_panels() -> None:
    counts: dict[str, int] = {}
    row = ""
    for panel in load()["panels"]:
        if panel["type"] == "row":
            row = panel["title"]
        else:
            counts[row] = counts.get(row, 0) + 1

    assert set(counts) == set(ROWS)
    assert min(counts.values()) >= 2


def test_datasource_is_a_variable_of_prometheus_sources() -> None:
    dashboard = load()
    [variable] = [v for v in dashboard["templating"]["list"] if v["name"] == "datasource"]

    assert variable["type"] == "datasource"
    assert variable["query"] == "prometheus"
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["uid"]


@pytest.mark.parametrize("panel", data_panels(), ids=panel_id)
def test_panel_and_its_queries_use_the_datasource_variable(panel: dict[str, Any]) -> None:
    assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    assert panel["targets"], "a panel without queries shows nothing"
    for target in panel["targets"]:
        assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


@pytest.mark.parametrize("panel", data_panels(), ids=panel_id)
def test_panel_has_a_unit_and_a_description(panel: dict[str, Any]) -> None:
    assert panel["fieldConfig"]["defaults"]["unit"]
    assert panel["description"]


@pytest.mark.parametrize("panel", data_panels(), ids=panel_id)
def test_every_range_in_a_panel_is_the_grafana_rate_interval(panel: dict[str, Any]) -> None:
    for target in panel["targets"]:
        expr = target["expr"]
        ranges = RANGE_SELECTOR.findall(expr)
        assert len(ranges) == len(RANGE_FUNCTION.findall(expr)), f"unrecognised range in {expr}"
        assert all(r == "$__rate_interval" for r in ranges), expr
        assert re.findall(r"\[([^\]]*)\]", expr) == ranges, f"a stray range in {expr}"


@pytest.mark.parametrize("query", dashboard_queries(), ids=lambda q: f"{q.panel}/{q.ref_id}")
def test_every_query_selects_only_metrics_patrol_defines(query: Any) -> None:
    names = metric_names_in(query.expr)

    assert names, f"no metric found in {query.expr}"
    assert names <= metrics.exposed_series_names() | {"up"}, query.expr


def test_every_patrol_metric_has_a_panel() -> None:
    shown = {name for q in dashboard_queries() for name in metric_names_in(q.expr)}
    families = {re.sub(r"_(total|bucket|count|sum|info)$", "", name) for name in shown}

    defined = {
        re.sub(r"_(total|bucket|count|sum|info|created)$", "", name)
        for name in metrics.exposed_series_names()
    }
    assert defined - families == set()


def test_the_slo_panel_uses_the_slo_bucket_of_patrol_metrics() -> None:
    slo_bucket = f'le="{floatToGoString(metrics.DISPATCH_SLO_SECONDS)}"'

    assert any(slo_bucket in q.expr for q in dashboard_queries())


def test_panels_have_unique_ids_and_fit_the_grid() -> None:
    panels = load()["panels"]

    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (le) (rate(patrol_a_bucket{le="1.0"}[5m]))', {"patrol_a_bucket"}),
        ("histogram_quantile(0.99, sum by (le) (rate(patrol_a_bucket[1m])))", {"patrol_a_bucket"}),
        ('up{job="patrol"} == 0 or absent(up{job="patrol"})', {"up"}),
        ("sum(patrol_a) / sum(patrol_b_total) * 60 > 1e3", {"patrol_a", "patrol_b_total"}),
        (
            "max by (instance) (patrol_lag_seconds offset 5m) and on() patrol_c",
            {"patrol_lag_seconds", "patrol_c"},
        ),
        ("count by (version) (patrl_typo_info)", {"patrl_typo_info"}),
    ],
)
def test_metric_names_are_read_from_promql(expr: str, names: set[str]) -> None:
    assert metric_names_in(expr) == names
