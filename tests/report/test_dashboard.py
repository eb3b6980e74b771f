"""The Grafana dashboard: it loads into grafana-foundation-sdk's model, and each panel's SQL, with the
ClickHouse plugin's macros expanded as the plugin does, returns on chDB the numbers the report shows."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import Dashboard

from kubenetmon.exporters.clickhouse.connection import Connection
from kubenetmon.report import QUERIES, ReportWindow, run_query
from kubenetmon.report.cost import COST_QUERIES, cost_parameters
from kubenetmon.report.dashboard import (
    ALL,
    CONFIGMAP_PATH,
    DATASOURCE_TYPE,
    JSON_PATH,
    PANELS,
    SERIES_COLUMNS,
    ClickHouseQuery,
    configmap_template,
    dashboard_json,
    main,
    register_clickhouse_queries,
)
from kubenetmon.report.prices import load_prices
from tests.exporters.clickhouse.clickhouse_testkit import SECOND, T0_NS

T0 = datetime.fromtimestamp(T0_NS // SECOND, UTC)
UNTIL = T0 + timedelta(minutes=2)


def expand(sql: str, since: datetime, until: datetime, variables: dict[str, str]) -> str:
    """What grafana-clickhouse-datasource (v4) sends: template variables replaced by Grafana, then its macros.

    The plugin's time range is inclusive at both ends (``<= toDateTime(to)``); the report's window is
    half-open, so ``to`` is the last second before ``until`` — the same minute buckets.
    """
    start, end = int(since.timestamp()), int(until.timestamp()) - 1
    for name, value in variables.items():
        sql = sql.replace("${" + name + "}", value)
    sql = re.sub(r"\$__timeFilter\(([^)]+)\)",
                 lambda m: f"{m.group(1)} >= toDateTime({start}) AND {m.group(1)} <= toDateTime({end})", sql)
    sql = sql.replace("$__fromTime", f"toDateTime({start})").replace("$__toTime", f"toDateTime({end})")
    sql = sql.replace("$__interval_s", variables.get("window", "60"))
    leftover = re.findall(r"\$\{?\w+", sql)
    assert not leftover, f"unexpanded macros or variables: {leftover}"
    return sql


def dashboard() -> dict[str, Any]:
    data = json.loads(JSON_PATH.read_text())
    assert isinstance(data, dict)
    return data


def panel_sql() -> dict[str, str]:
    panels = [p for p in dashboard()["panels"] if p["type"] != "row"]
    assert len(panels) == len(PANELS)
    return {name: p["targets"][0]["rawSql"] for (name, _, _), p in zip(PANELS, panels, strict=True)}


def same(got: list[list[Any]], want: list[list[Any]]) -> bool:
    """Equal rows; floats (sums of dollars) to 1e-12 relative, as the order of summation may differ."""
    return len(got) == len(want) and all(
        len(g) == len(w) and all(
            gv == pytest.approx(wv, rel=1e-12) if isinstance(wv, float) else gv == wv
            for gv, wv in zip(g, w, strict=True)
        )
        for g, w in zip(got, want, strict=True)
    )


# --- the file and the model --------------------------------------------------------------


def test_shipped_files_are_what_the_generator_writes() -> None:
    assert JSON_PATH.read_text() == dashboard_json(), "run: python -m kubenetmon.report.dashboard"
    assert CONFIGMAP_PATH.read_text() == configmap_template(JSON_PATH.read_text())
    assert main(["--check"]) == 0


def test_dashboard_loads_into_the_sdk_model_and_round_trips() -> None:
    register_clickhouse_queries()
    model = Dashboard.from_json(dashboard())
    panels = [p for p in model.panels or [] if getattr(p, "type_val", "") != "row"]
    assert len(panels) == len(PANELS)
    for panel in panels:
        (target,) = panel.targets
        assert isinstance(target, ClickHouseQuery)
        assert target.datasource["type"] == DATASOURCE_TYPE
        assert target.raw_sql.lstrip().upper().startswith("SELECT")
    assert json.loads(json.dumps(model, cls=JSONEncoder)) == dashboard()


def test_variables_are_cluster_namespace_and_window() -> None:
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert {"cluster", "namespace", "window"} <= set(variables)
    assert variables["datasource"]["query"] == DATASOURCE_TYPE
    for name in ("cluster", "namespace"):
        assert variables[name]["includeAll"] is True and variables[name]["allValue"] == ALL
    assert "60" in variables["window"]["query"]


def test_prices_date_is_on_the_dashboard() -> None:
    assert f"read {load_prices().read.isoformat()}" in dashboard()["description"]


# --- the SQL on chDB ---------------------------------------------------------------------


@pytest.mark.parametrize("namespace", ["", "shop"])
def test_every_panel_returns_the_numbers_the_report_shows(seeded: Connection, namespace: str) -> None:
    window = ReportWindow(since=T0, until=UNTIL, namespace=namespace, step=60)
    variables = {"cluster": ALL, "namespace": namespace or ALL, "window": "60"}
    priced = cost_parameters(load_prices())
    report_total = 0.0
    for name, sql in panel_sql().items():
        got = seeded.client.query(expand(sql, T0, UNTIL, variables)).result_rows
        if name == "cost-total":
            total = got[0][0]
            continue
        query = COST_QUERIES.get(name) or QUERIES[name]
        want = run_query(seeded.client, query, window, priced if name in COST_QUERIES else None)
        assert want.rows, f"{name}: the report has nothing to compare with"
        if name in SERIES_COLUMNS:  # the panel plots one value column of the report's answer
            keep = [want.columns.index(c) for c in SERIES_COLUMNS[name]]
            want.rows = [[row[i] for i in keep] for row in want.rows]
        assert same([[_plain(v) for v in row] for row in got], want.rows), name
        if name == "cost-by-class":
            report_total = sum(r["cost_usd"] for r in want.records())
    assert total == pytest.approx(report_total, rel=1e-12)


def test_cluster_variable_filters(seeded: Connection) -> None:
    sql = panel_sql()["by-class"]
    everything = seeded.client.query(expand(sql, T0, UNTIL, {"cluster": "prod-1", "namespace": ALL})).result_rows
    assert everything == seeded.client.query(expand(sql, T0, UNTIL, {"cluster": ALL, "namespace": ALL})).result_rows
    assert seeded.client.query(expand(sql, T0, UNTIL, {"cluster": "other", "namespace": ALL})).result_rows == []


def test_variable_queries_list_clusters_and_namespaces(seeded: Connection) -> None:
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    clusters = seeded.client.query(expand(variables["cluster"]["query"], T0, UNTIL, {})).result_rows
    namespaces = seeded.client.query(expand(variables["namespace"]["query"], T0, UNTIL, {})).result_rows
    assert clusters == [("prod-1",)]
    assert {n for (n,) in namespaces} == {"shop", "data"}


def _plain(value: Any) -> Any:
    from kubenetmon.report.render import Result

    return Result("", "", ["v"], [[value]]).rows[0][0]


def test_json_that_helm_would_template_is_refused() -> None:
    with pytest.raises(ValueError, match="Helm would read"):
        configmap_template('{"rawSql": "{{x}}"}')
