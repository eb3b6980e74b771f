"""The Grafana dashboard: the report's questions in bytes and dollars, for ``grafana-clickhouse-datasource``.

Built with ``grafana-foundation-sdk`` (a dev dependency: only generating the
file needs it). Every panel's SQL is a documented report query
(:mod:`kubenetmon.report.queries`, :mod:`kubenetmon.report.cost`) with its
query parameters replaced by the ClickHouse datasource plugin's macros and the
dashboard's variables, so the dashboard and ``kubenetmon report`` give the same
numbers (a test runs each panel's SQL on chDB with the macros expanded as the
plugin does):

* the window → ``$__timeFilter(intervalStartTime)`` (the dashboard's time
  range) plus ``date`` between ``toDate($__fromTime)`` and ``toDate($__toTime)``;
* ``${cluster}``, ``${namespace}`` → filters on ``localCluster``,
  ``localNamespace`` (``__all`` = any);
* ``{step:UInt32}`` → ``${window}``, the time step of the over-time panels;
* the price table → the default table's rates, inlined when the file is
  generated (its date is in the dashboard's description; regenerate after
  changing prices).

Regenerate the shipped files with ``python -m kubenetmon.report.dashboard``
(writes ``dashboards/kubenetmon.json`` and the server chart's ConfigMap template).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self, cast

from kubenetmon.report.cost import COST_QUERIES, cost_parameters
from kubenetmon.report.prices import PriceTable, load_prices
from kubenetmon.report.queries import _TABLE, _WINDOW, QUERIES

__all__ = [
    "DATASOURCE_TYPE", "PANELS", "SERIES_COLUMNS", "ClickHouseQuery", "build_dashboard", "dashboard_json",
    "grafana_sql", "register_clickhouse_queries",
]

DATASOURCE_TYPE = "grafana-clickhouse-datasource"
UID = "kubenetmon-cost"
TABLE = "default.network_flows_0"
ALL = "__all"
_ROOT = Path(__file__).resolve().parents[2]
JSON_PATH = _ROOT / "dashboards" / "kubenetmon.json"
CONFIGMAP_PATH = _ROOT / "charts" / "kubenetmon-server" / "templates" / "grafana-dashboard-configmap.yaml"

_GRAFANA_WINDOW = f"""date >= toDate($__fromTime) AND date <= toDate($__toTime)
  AND $__timeFilter(intervalStartTime)
  AND ('${{cluster}}' = '{ALL}' OR localCluster = '${{cluster}}')
  AND ('${{namespace}}' = '{ALL}' OR localNamespace = '${{namespace}}')"""

# (query name, panel kind, title). Kinds: stat, table, timeseries (stacked bars), lines.
PANELS: tuple[tuple[str, str, str], ...] = (
    ("cost-total", "stat", "Total cost in the time range"),
    ("cost-by-class", "table", "Cost by billed class"),
    ("cost-over-time", "timeseries", "Cost by billed class over time"),
    ("cost-by-pair", "table", "Cross-zone cost by workload pair (sender → receiver)"),
    ("cost-by-namespace", "table", "Cost by namespace"),
    ("cost-namespace-over-time", "timeseries", "Cost by namespace over time"),
    ("cost-by-service", "table", "Cost of traffic to cloud services"),
    ("by-class", "table", "Bytes by connection class"),
    ("top-talkers", "table", "Top cross-zone talkers"),
    ("cloud-services", "table", "Bytes to cloud services"),
    ("throughput-node", "lines", "Throughput per node"),
)

_TOTAL_SQL = "SELECT sum(cost_usd) AS cost_usd FROM (\n" + COST_QUERIES["cost-by-class"].sql + "\n)"


def _sql_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def grafana_sql(sql: str, prices: PriceTable) -> str:
    """A report query with its parameters replaced by the plugin's macros, variables and inlined prices."""
    if _WINDOW not in sql:
        raise ValueError("the query does not use the report's window filter; it cannot follow the time picker")
    out = sql.replace(_WINDOW, _GRAFANA_WINDOW).replace(_TABLE, TABLE)
    out = out.replace("{step:UInt32}", "${window}").replace("{limit:UInt32}", "20")
    for name, value in cost_parameters(prices).items():
        out = out.replace("{" + name + ":String}", _sql_string(str(value)))
    if "{{" in out or any(f"{{{p}:" in out for p in ("since", "until", "namespace", "app", "rates")):
        raise ValueError(f"a query parameter was left in the Grafana SQL:\n{out}")
    return out


# Time-series panels draw one series per numeric column and label: keep only the value they plot.
SERIES_COLUMNS = {
    "cost-over-time": ("time", "billed_class", "cost_usd"),
    "cost-namespace-over-time": ("time", "namespace", "cost_usd"),
}


def _panel_sql(name: str) -> str:
    if name == "cost-total":
        return _TOTAL_SQL
    sql = (COST_QUERIES.get(name) or QUERIES[name]).sql
    if name in SERIES_COLUMNS:
        return f"SELECT {', '.join(SERIES_COLUMNS[name])} FROM (\n{sql}\n)"
    return sql


class ClickHouseQuery:
    """A target of the ClickHouse datasource plugin (v4): raw SQL in the SQL editor.

    A ``cogvariants.Dataquery`` (registered for the plugin's type by
    :func:`register_clickhouse_queries`), so dashboards holding it load into
    the SDK's model and serialize back unchanged.
    """

    def __init__(self, ref_id: str = "A", raw_sql: str = "", query_type: str = "table",
                 datasource: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> None:
        self.ref_id = ref_id
        self.raw_sql = raw_sql
        self.query_type = query_type
        self.datasource = datasource or {"type": DATASOURCE_TYPE, "uid": "${datasource}"}
        self.extra = extra or {}

    def to_json(self) -> dict[str, object]:
        return {
            **self.extra,
            "datasource": self.datasource,
            "editorType": "sql",
            # The plugin's Format: 0 time series, 1 table.
            "format": 0 if self.query_type == "timeseries" else 1,
            "queryType": self.query_type,
            "rawSql": self.raw_sql,
            "refId": self.ref_id,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        known = {"datasource", "editorType", "format", "queryType", "rawSql", "refId"}
        return cls(str(data.get("refId", "A")), str(data.get("rawSql", "")), str(data.get("queryType", "table")),
                   data.get("datasource"), {k: v for k, v in data.items() if k not in known})


def register_clickhouse_queries() -> None:
    """Teach the SDK's runtime to load this plugin's targets as :class:`ClickHouseQuery`."""
    from grafana_foundation_sdk.cog import runtime, variants

    variants.Dataquery.register(ClickHouseQuery)
    # Registered above as a virtual subclass of Dataquery (the SDK is a dev dependency, so not a base class).
    load = cast(Callable[[dict[str, Any]], variants.Dataquery], ClickHouseQuery.from_json)
    runtime.register_dataquery_variant(runtime.DataqueryConfig(DATASOURCE_TYPE, load))


class _QueryBuilder:
    """The SDK's builder protocol for a :class:`ClickHouseQuery`."""

    def __init__(self, sql: str, query_type: str) -> None:
        self._query = ClickHouseQuery("A", sql, query_type)

    def build(self) -> Any:
        return self._query


def build_dashboard(prices: PriceTable | None = None) -> Any:
    """The dashboard as the SDK's model (``grafana_foundation_sdk.models.dashboard.Dashboard``)."""
    from grafana_foundation_sdk.builders import common, stat, table, timeseries
    from grafana_foundation_sdk.builders import dashboard as db
    from grafana_foundation_sdk.models.common import (
        GraphDrawStyle,
        LegendDisplayMode,
        LegendPlacement,
        StackingMode,
        VisibilityMode,
    )
    from grafana_foundation_sdk.models.dashboard import (
        DataSourceRef,
        DynamicConfigValue,
        VariableHide,
        VariableOption,
        VariableRefresh,
        VariableSort,
    )

    register_clickhouse_queries()
    prices = prices or load_prices()
    source = DataSourceRef(type_val=DATASOURCE_TYPE, uid="${datasource}")
    filter_values = "SELECT DISTINCT {column} FROM " + TABLE + " WHERE $__timeFilter(intervalStartTime) ORDER BY 1"
    board = (
        db.Dashboard("kubenetmon: what the traffic costs")
        .uid(UID)
        .tags(["kubenetmon", "network", "cost"])
        .description(
            "Data transfer metered by kubenetmon (network_flows_0), in bytes and dollars. Each byte is billed "
            "once, on its sender's out row; NAT gateway processing both ways. "
            + prices.caption() + ". Regenerate with `python -m kubenetmon.report.dashboard` after changing prices."
        )
        .time("now-24h", "now")
        .timezone("utc")
        .refresh("5m")
        .with_variable(
            db.DatasourceVariable("datasource").label("ClickHouse").type(DATASOURCE_TYPE)
        )
        .with_variable(
            db.QueryVariable("cluster").label("cluster").datasource(source)
            .query(filter_values.format(column="localCluster"))
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).sort(VariableSort.ALPHABETICAL_ASC)
            .include_all(True).all_value(ALL)
            .current(VariableOption(selected=True, text="All", value="$__all"))
        )
        .with_variable(
            db.QueryVariable("namespace").label("namespace").datasource(source)
            .query(filter_values.format(column="localNamespace"))
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).sort(VariableSort.ALPHABETICAL_ASC)
            .include_all(True).all_value(ALL)
            .current(VariableOption(selected=True, text="All", value="$__all"))
        )
        .with_variable(
            db.CustomVariable("window").label("window (time step)")
            .values("1m : 60, 5m : 300, 15m : 900, 1h : 3600, 1d : 86400")
            .current(VariableOption(selected=True, text="5m", value="300"))
            .hide(VariableHide.DONT_HIDE)
        )
    )
    def panel(kind: str) -> Any:
        # Options set explicitly: Grafana then shows the panel as designed whatever its version's defaults.
        if kind == "stat":
            return stat.Panel().reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        if kind == "table":
            return table.Panel().show_header(True)
        if kind == "lines":
            return timeseries.Panel().draw_style(GraphDrawStyle.LINE).show_points(VisibilityMode.ALWAYS).legend(
                common.VizLegendOptions().show_legend(True).display_mode(LegendDisplayMode.TABLE)
                .placement(LegendPlacement.RIGHT).calcs(["max", "mean"]))
        return (
            timeseries.Panel().draw_style(GraphDrawStyle.BARS).fill_opacity(80)
            .stacking(common.StackingConfig().mode(StackingMode.NORMAL))
            .legend(common.VizLegendOptions().show_legend(True).display_mode(LegendDisplayMode.TABLE)
                    .placement(LegendPlacement.RIGHT).calcs(["sum"]))
        )

    row_of = {"cost-total": "Dollars", "by-class": "Bytes"}
    ids = iter(range(1, 100))
    for name, kind, title in PANELS:
        if name in row_of:
            board = board.with_row(db.Row(row_of[name]).id(next(ids)))
        query_type = "timeseries" if kind in ("timeseries", "lines") else "table"
        panel_builder = panel(kind)
        # Units by column name, as the report's columns are named: *_usd dollars, *bytes bytes, *_mbps Mbit/s.
        for pattern, unit in ((".*_usd$", "currencyUSD"), (".*bytes$", "bytes"), (".*_mbps$", "Mbits")):
            panel_builder = panel_builder.override_by_regexp(pattern, [DynamicConfigValue("unit", unit)])
        panel_builder = (
            panel_builder.id(next(ids)).title(title).datasource(source)
            .with_target(_QueryBuilder(grafana_sql(_panel_sql(name), prices), query_type))
            .height(4 if kind == "stat" else 9).span(24 if kind == "stat" else 12)
            .description(f"`kubenetmon report {name}` (docs/queries.md)" if name != "cost-total"
                         else "The sum of cost-by-class.")
        )
        board = board.with_panel(panel_builder)
    return board.build()


def dashboard_json(prices: PriceTable | None = None) -> str:
    """The dashboard as Grafana's JSON (sorted keys, so regenerating it gives the same file)."""
    from grafana_foundation_sdk.cog.encoder import JSONEncoder

    return json.dumps(build_dashboard(prices), cls=JSONEncoder, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def configmap_template(text: str) -> str:
    """The server chart's optional ConfigMap holding ``text`` for Grafana's dashboard sidecar."""
    if "{{" in text or "}}" in text:
        raise ValueError("the dashboard JSON holds '{{' or '}}', which Helm would read as a template")
    body = "\n".join(("    " + line) if line else "" for line in text.rstrip("\n").split("\n"))
    return (
        "{{- /* Generated by `python -m kubenetmon.report.dashboard` from dashboards/kubenetmon.json: "
        "edit the generator, not this file. */ -}}\n"
        "{{- if .Values.grafanaDashboard.enabled }}\n"
        "apiVersion: v1\n"
        "kind: ConfigMap\n"
        "metadata:\n"
        "  name: {{ include \"kubenetmon-server.fullname\" . }}-grafana-dashboard\n"
        "  namespace: {{ .Values.grafanaDashboard.namespace | default .Release.Namespace }}\n"
        "  labels:\n"
        "    {{- include \"kubenetmon-server.labels\" . | nindent 4 }}\n"
        "    {{ .Values.grafanaDashboard.label }}: {{ .Values.grafanaDashboard.labelValue | quote }}\n"
        "  {{- with .Values.grafanaDashboard.annotations }}\n"
        "  annotations:\n"
        "    {{- toYaml . | nindent 4 }}\n"
        "  {{- end }}\n"
        "data:\n"
        "  kubenetmon.json: |-\n"
        f"{body}\n"
        "{{- end }}\n"
    )


def main(argv: list[str] | None = None) -> int:
    """Write dashboards/kubenetmon.json and the chart's ConfigMap template (``--check``: only compare)."""
    args = sys.argv[1:] if argv is None else argv
    text = dashboard_json()
    wanted = {JSON_PATH: text, CONFIGMAP_PATH: configmap_template(text)}
    stale = [p for p, t in wanted.items() if not p.exists() or p.read_text() != t]
    if "--check" in args:
        for path in stale:
            print(f"{path} is out of date: run python -m kubenetmon.report.dashboard", file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(wanted[path])
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
