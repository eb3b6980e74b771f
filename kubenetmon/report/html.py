"""``kubenetmon report --format html``: one self-contained page of charts, readable offline.

The page is built from the same documented queries as the text report (byte
questions of :mod:`kubenetmon.report.queries`, cost questions of
:mod:`kubenetmon.report.cost`), so every number in it is one the SQL
returned. Plotly's JavaScript is inlined once (no CDN: the page opens on an
air-gapped laptop); each chart is a ``<div class="chart" id="chart-...">``
and each table cell with a number carries the exact value in ``data-value``
(tests compare those with the SQL results).
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from typing import Any

from kubenetmon.report.cost import COST_QUERIES, cost_parameters
from kubenetmon.report.prices import PriceTable
from kubenetmon.report.queries import QUERIES
from kubenetmon.report.render import Result, dollars, human_bytes

__all__ = ["CHARTS", "PAGE_QUERIES", "collect", "render_html"]

# The queries the page runs, in the order its sections use them.
PAGE_QUERIES = (
    "cost-by-class", "cost-by-pair", "cost-by-namespace", "cost-by-service", "cost-over-time",
    "cost-namespace-over-time", "top-talkers", "cloud-services", "throughput-node",
)
# Chart ids (``chart-<id>``) and titles, in page order.
CHARTS = {
    "sankey-bytes": "Bytes between workloads across zones (sender → receiver)",
    "sankey-cost": "Dollars between workloads across zones (sender → receiver)",
    "cost-class-time": "Cost by billed class over time",
    "cost-namespace-time": "Cost by namespace over time",
    "top-talkers": "Top cross-zone talkers",
    "cloud-services": "Traffic to cloud services",
    "throughput-node": "Throughput per node",
}
_HEIGHT = 420


def collect(client: Any, window: Any, prices: PriceTable) -> dict[str, Result]:
    """Run every query the page needs; ``window`` is a :class:`~kubenetmon.report.cli.ReportWindow`."""
    from kubenetmon.report.cli import run_query

    priced = cost_parameters(prices)
    return {
        name: run_query(client, COST_QUERIES[name], window, priced) if name in COST_QUERIES
        else run_query(client, QUERIES[name], window)
        for name in PAGE_QUERIES
    }


def _zoned(workload: str, zone: str) -> str:
    return f"{workload} ({zone})"


def _sankey(pairs: Result, value: str, unit: str) -> Any:
    import plotly.graph_objects as go

    rows = pairs.records()
    # Senders on the left and receivers on the right (distinct nodes), so traffic both ways
    # between two workloads is two links, not a cycle.
    senders = sorted({_zoned(r["workload"], r["zone"]) for r in rows})
    receivers = sorted({"→ " + _zoned(r["remote_workload"], r["remote_zone"]) for r in rows})
    index = {name: i for i, name in enumerate([*senders, *receivers])}
    return go.Figure(go.Sankey(
        arrangement="snap",
        node={"label": [*senders, *receivers], "pad": 18},
        link={
            "source": [index[_zoned(r["workload"], r["zone"])] for r in rows],
            "target": [index["→ " + _zoned(r["remote_workload"], r["remote_zone"])] for r in rows],
            "value": [r[value] for r in rows],
            "hovertemplate": f"%{{source.label}} → %{{target.label}}: %{{value}} {unit}<extra></extra>",
        },
    ))


def _stacked(series: Result, key: str, value: str, ytitle: str) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure()
    rows = series.records()
    for name in sorted({r[key] for r in rows}):
        mine = [r for r in rows if r[key] == name]
        fig.add_trace(go.Bar(name=name or "(none)", x=[r["time"] for r in mine], y=[r[value] for r in mine]))
    fig.update_layout(barmode="stack", yaxis_title=ytitle)
    return fig


def _bars(result: Result, label: Sequence[str], values: Sequence[str], ytitle: str) -> Any:
    import plotly.graph_objects as go

    rows = result.records()
    names = [" / ".join(str(r[c]) or "-" for c in label) for r in rows]
    fig = go.Figure([go.Bar(name=v.replace("_", " "), x=names, y=[r[v] for r in rows]) for v in values])
    fig.update_layout(barmode="group", yaxis_title=ytitle)
    return fig


def _lines(result: Result) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure()
    rows = result.records()
    for node in sorted({r["node"] for r in rows}):
        mine = [r for r in rows if r["node"] == node]
        for column in ("sent_mbps", "received_mbps"):
            fig.add_trace(go.Scatter(name=f"{node or '-'} {column.split('_')[0]}", mode="lines+markers",
                                     x=[r["time"] for r in mine], y=[r[column] for r in mine]))
    fig.update_layout(yaxis_title="Mbit/s")
    return fig


def _empty() -> Any:
    """A blank chart saying so (plotly's Sankey throws on zero nodes or all-zero flows)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.add_annotation(text="nothing to draw in this window", showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper",
                       font={"size": 16})
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return fig


def _figures(results: dict[str, Result]) -> dict[str, Any]:
    """Each chart from its query's answer, or a blank one saying there is no data."""
    pairs = results["cost-by-pair"]
    # A Sankey draws positive flows only (plotly throws on an all-zero one: free inter-zone traffic).
    sent, paid = (
        Result(pairs.name, pairs.title, pairs.columns,
               [row for row in pairs.rows if row[pairs.columns.index(value)] > 0])
        for value in ("billed_bytes", "cost_usd")
    )
    makers: dict[str, tuple[Result, Callable[[], Any]]] = {
        "sankey-bytes": (sent, lambda: _sankey(sent, "billed_bytes", "bytes")),
        "sankey-cost": (paid, lambda: _sankey(paid, "cost_usd", "USD")),
        "cost-class-time": (results["cost-over-time"], lambda: _stacked(
            results["cost-over-time"], "billed_class", "cost_usd", "USD")),
        "cost-namespace-time": (results["cost-namespace-over-time"], lambda: _stacked(
            results["cost-namespace-over-time"], "namespace", "cost_usd", "USD")),
        "top-talkers": (results["top-talkers"], lambda: _bars(
            results["top-talkers"], ("namespace", "workload"), ("sent_bytes", "received_bytes"), "bytes")),
        "cloud-services": (results["cloud-services"], lambda: _bars(
            results["cloud-services"], ("cloud", "service", "region"), ("sent_bytes", "received_bytes"), "bytes")),
        "throughput-node": (results["throughput-node"], lambda: _lines(results["throughput-node"])),
    }
    return {chart: make() if source.rows else _empty() for chart, (source, make) in makers.items()}


def _value_cell(column: str, value: Any) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        shown = dollars(value) if column.endswith("_usd") else (
            human_bytes(value) if column.endswith("bytes") else f"{value:,}")
        return f'<td class="num" data-value="{value!r}">{html.escape(shown)}</td>'
    return f"<td>{html.escape(str(value)) or '-'}</td>"


def _table(result: Result) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in result.columns)
    body = "".join(
        "<tr>" + "".join(_value_cell(c, v) for c, v in zip(result.columns, row, strict=True)) + "</tr>"
        for row in result.rows
    ) or f'<tr><td colspan="{len(result.columns)}">no data in this window</td></tr>'
    return (f'<table id="table-{result.name}"><caption>{html.escape(result.title)}</caption>'
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }
h1 { margin-bottom: 0.2rem; } .meta { color: #555; margin: 0.2rem 0; }
.total { font-size: 1.4rem; margin: 1rem 0; }
section { margin: 1.5rem 0; } .chart { height: _HEIGHT_px; border: 1px solid #eee; }
table { border-collapse: collapse; margin: 1rem 0; } caption { text-align: left; font-weight: 600; }
th, td { padding: 0.2rem 0.6rem; border-bottom: 1px solid #eee; } td.num { text-align: right; }
""".replace("_HEIGHT_", str(_HEIGHT))


def render_html(results: dict[str, Result], window: Any, prices: PriceTable) -> str:
    """The whole page as one string (about 5 MB: plotly's JavaScript is inside)."""
    from plotly.offline import get_plotlyjs

    total = sum(r["cost_usd"] for r in results["cost-by-class"].records())
    sections = []
    for chart_id, fig in _figures(results).items():
        fig.update_layout(title=CHARTS[chart_id], height=_HEIGHT, margin={"t": 50, "l": 60, "r": 20, "b": 60})
        div = fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"chart-{chart_id}",
                          default_height=f"{_HEIGHT}px", config={"displaylogo": False})
        sections.append(f'<section class="chart" data-chart="{chart_id}">{div}</section>')
    sources = "".join(
        f"<li>{html.escape(name)}: {html.escape(cloud.source)}</li>" for name, cloud in prices.clouds.items()
    )
    since, until = (f"{w:%Y-%m-%d %H:%M:%S}Z" for w in (window.since, window.until))
    scope = f" · namespace {html.escape(window.namespace)}" if window.namespace else ""
    tables = "".join(_table(results[n]) for n in ("cost-by-class", "cost-by-namespace", "cost-by-pair",
                                                   "cost-by-service"))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>kubenetmon: what the traffic costs</title>
<style>{_STYLE}</style>
<script>{get_plotlyjs()}</script>
</head><body>
<h1>What the traffic costs</h1>
<p class="meta">window {since} .. {until}{scope}</p>
<p class="meta" id="price-caption">{html.escape(prices.caption())}</p>
<p class="total">total <span id="total-usd" data-value="{total!r}">{html.escape(dollars(total))}</span>
 ({html.escape(prices.currency)}; each byte billed once, on its sender's out row; NAT processing both ways)</p>
{"".join(sections)}
{tables}
<details><summary>price sources</summary><ul>{sources}</ul></details>
</body></html>
"""
