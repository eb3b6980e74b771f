"""``kubenetmon report``: answer the questions of DESIGN §0 from the network_flows_0 table."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from kubenetmon.report.cost import COST_QUERIES, COST_SUMMARY, cost_parameters
from kubenetmon.report.prices import PriceTable, load_prices
from kubenetmon.report.queries import QUERIES, Query
from kubenetmon.report.render import Result, render_csv, render_json, render_table

__all__ = ["ReportWindow", "add_report_command", "parse_time", "run_query", "run_report"]

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
_ENDPOINT_ENV = "KUBENETMON_CLICKHOUSE_ENDPOINT"
_RELATIVE = re.compile(r"^(\d+)\s*([smhdw])$")
_UNIT = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_time(text: str, now: datetime) -> datetime:
    """``30m``/``2h``/``7d`` ago, ``now``, or an ISO date/datetime (UTC unless it says otherwise)."""
    text = text.strip()
    if text == "now":
        return now
    m = _RELATIVE.match(text)
    if m:
        return now - timedelta(**{_UNIT[m.group(2)]: int(m.group(1))})
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: use a duration back from now (30m, 2h, 7d), 'now', "
            "or an ISO date/time such as 2025-03-31 or 2025-03-31T12:00:00Z (UTC unless a zone is given)"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


@dataclass(frozen=True)
class ReportWindow:
    """Parameters every query takes."""

    since: datetime
    until: datetime
    database: str = "default"
    table: str = "network_flows_0"
    namespace: str = ""
    app: str = ""
    limit: int = 20
    step: int = 60

    def parameters(self) -> dict[str, Any]:
        fmt = "%Y-%m-%d %H:%M:%S"
        return {
            "database": self.database,
            "table": self.table,
            "since": self.since.astimezone(UTC).strftime(fmt),
            "until": self.until.astimezone(UTC).strftime(fmt),
            "namespace": self.namespace,
            "app": self.app,
            "limit": self.limit,
            "step": self.step,
        }


def run_query(client: Any, query: Query, window: ReportWindow, extra: dict[str, Any] | None = None) -> Result:
    """Run one documented query with ``window``'s parameters (server-side binding, no formatting).

    ``extra`` adds parameters of its own (the cost queries' price table).
    """
    names = set(re.findall(r"\{(\w+):", query.sql))
    params = {k: v for k, v in {**window.parameters(), **(extra or {})}.items() if k in names}
    answer = client.query(query.sql, parameters=params)
    return Result(query.name, query.title, answer.column_names, answer.result_rows)


def _endpoint(value: str) -> str:
    if "://" in value:
        return value
    # A bare path is a chDB data directory.
    return "chdb://" + str(Path(value).resolve())


def run_report(args: argparse.Namespace) -> int:
    from kubenetmon.errors import KubenetmonError
    from kubenetmon.exporters.clickhouse.config import ClickHouseConfig
    from kubenetmon.exporters.clickhouse.connection import connect

    endpoint = args.endpoint or os.environ.get(_ENDPOINT_ENV, "")
    if not endpoint:
        print(f"error: give --endpoint (https://host:8443/db, or a chDB path) or set ${_ENDPOINT_ENV}",
              file=sys.stderr)
        return EXIT_USAGE
    now = datetime.now(UTC)
    try:
        since, until = parse_time(args.since, now), parse_time(args.until, now)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if since >= until:
        print(f"error: --since ({since:%Y-%m-%d %H:%M:%S}Z) must be before --until ({until:%Y-%m-%d %H:%M:%S}Z)",
              file=sys.stderr)
        return EXIT_USAGE
    if args.format == "html":
        if args.question != "all" or not args.out:
            print("error: --format html writes the whole picture to a file: give --out FILE and no question",
                  file=sys.stderr)
            return EXIT_USAGE
        if importlib.util.find_spec("plotly") is None:
            print("error: --format html draws with plotly, which is not installed: "
                  "pip install 'kubenetmon[report]'", file=sys.stderr)
            return EXIT_ERROR
        names = []
    elif args.question == "all":
        names = [n for n in QUERIES if args.app or not QUERIES[n].needs_app]
    elif args.question == "cost":
        names = list(COST_SUMMARY)
    else:
        names = [args.question]
    try:
        prices = load_prices(Path(args.prices) if args.prices else None)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    missing_app = [n for n in names if n in QUERIES and QUERIES[n].needs_app and not args.app]
    if missing_app:
        print(f"error: {', '.join(missing_app)} needs --app (the server app whose replicas to compare)",
              file=sys.stderr)
        return EXIT_USAGE
    if args.format == "csv" and len(names) > 1:
        print("error: --format csv prints one question; name it instead of 'all'", file=sys.stderr)
        return EXIT_USAGE
    target = _endpoint(endpoint)
    if target.startswith("chdb://") and not Path(target[len("chdb://"):]).is_dir():
        print(f"error: no chDB data at {target[len('chdb://'):]}: give the data path the gateway writes "
              "(its clickhouse exporter's chdb:// endpoint)", file=sys.stderr)
        return EXIT_ERROR
    try:
        config = ClickHouseConfig(
            endpoint=target, database=args.database, table=args.table, create_schema=False,
            timeout=args.timeout,
        )
        conn = connect(config)
    except (ValueError, KubenetmonError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    try:
        window = ReportWindow(
            since, until, conn.database, args.table, args.namespace, args.app, args.limit, args.step
        )
        priced = cost_parameters(prices)
        page = ""
        if args.format == "html":
            from kubenetmon.report.html import collect, render_html

            page = render_html(collect(conn.client, window, prices), window, prices)
        results = [
            run_query(conn.client, COST_QUERIES[n], window, priced) if n in COST_QUERIES
            else run_query(conn.client, QUERIES[n], window)
            for n in names
        ]
    except Exception as exc:
        print(f"error: query against {config.endpoint} failed: {exc}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        conn.close()
    out = sys.stdout
    costs = any(r.name in COST_QUERIES for r in results)
    if args.format == "html":
        try:
            Path(args.out).write_text(page, encoding="utf-8")
        except OSError as exc:
            print(f"error: cannot write {args.out}: {exc.strerror}", file=sys.stderr)
            return EXIT_ERROR
        print(f"wrote {args.out} ({len(page.encode()) // 1024} KiB, opens offline in any browser)")
    elif args.format == "json" and costs:
        out.write(json.dumps({"prices": _price_summary(prices), **{r.name: r.records() for r in results}},
                             indent=2, ensure_ascii=False) + "\n")
    elif args.format == "json":
        out.write(render_json(results))
    elif args.format == "csv":
        out.write(render_csv(results[0]))
    else:
        out.write(f"window: {since:%Y-%m-%d %H:%M:%S}Z .. {until:%Y-%m-%d %H:%M:%S}Z"
                  + (f"  namespace={args.namespace}" if args.namespace else "")
                  + (f"  app={args.app}" if args.app else "") + "\n"
                  + (prices.caption() + "\n" if costs else "") + "\n")
        out.write("\n".join(render_table(r) for r in results))
    return EXIT_OK


def _price_summary(prices: PriceTable) -> dict[str, Any]:
    return {"currency": prices.currency, "read": prices.read.isoformat(), "caption": prices.caption(),
            "sources": {name: cloud.source for name, cloud in prices.clouds.items()}}


def add_report_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``kubenetmon report`` on the CLI's subparsers."""
    questions = "\n".join(f"  {q.name:<24} {q.title}" for q in (*QUERIES.values(), *COST_QUERIES.values()))
    p = subparsers.add_parser(
        "report",
        help="answer the metering questions (cross-AZ, cloud services, initiators, balance, throughput)",
        description="Query the network_flows_0 table of a ClickHouse server or chDB path. Questions:\n"
        + questions + "\n  cost                     the four cost-by-* answers, with the price table's date"
        "\n  all                      every byte question (replica-balance only with --app); the default\n"
        "Costs use kubenetmon/report/prices/default.yaml unless --prices overrides it. The SQL is in "
        "docs/queries.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("question", nargs="?", default="all", choices=[*QUERIES, *COST_QUERIES, "cost", "all"],
                   metavar="QUESTION", help="which question (see above; default all)")
    p.add_argument("--endpoint", default="", help=f"server DSN (https://user@host:8443/db) or chDB path; "
                   f"default ${_ENDPOINT_ENV}. Credentials: $CLICKHOUSE_USERNAME, $CLICKHOUSE_PASSWORD")
    p.add_argument("--database", default="", help="database of the table (default: from the DSN, else default)")
    p.add_argument("--table", default="network_flows_0")
    p.add_argument("--since", default="1h", help="start of the window: 30m, 2h, 7d ago, or ISO time (UTC)")
    p.add_argument("--until", default="now", help="end of the window (exclusive); default now")
    p.add_argument("--namespace", default="", help="only local workloads in this namespace")
    p.add_argument("--app", default="", help="only this local app (required by replica-balance)")
    p.add_argument("--limit", type=int, default=20, help="rows per question (where it applies)")
    p.add_argument("--step", type=int, default=60, help="time step of the throughput questions, seconds")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds a query may take")
    p.add_argument("--format", choices=["table", "json", "csv", "html"], default="table",
                   help="html: one offline page with every chart (needs --out)")
    p.add_argument("--out", default="", help="file the html format writes")
    p.add_argument("--prices", default="", help="YAML price overrides (a price table, or a config with a "
                   "prices: section; e.g. 'discount: 0.2' or 'cross_zone_per_gb: 0.015')")
    p.set_defaults(func=run_report)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the report alone (``python -m kubenetmon.report.cli``), for tests and scripts."""
    parser = argparse.ArgumentParser(prog="kubenetmon")
    add_report_command(parser.add_subparsers())
    args = parser.parse_args(["report", *(argv or sys.argv[1:])])
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
