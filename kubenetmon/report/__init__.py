"""``kubenetmon report``: the metering questions of DESIGN §0, answered from ``network_flows_0``.

The command is registered by the ``clickhouse`` plugin; the queries are in
:mod:`kubenetmon.report.queries` and documented in ``docs/queries.md``.
"""

from kubenetmon.report.cli import ReportWindow, add_report_command, parse_time, run_query, run_report
from kubenetmon.report.queries import QUERIES, Query
from kubenetmon.report.render import Result

__all__ = ["QUERIES", "Query", "ReportWindow", "Result", "add_report_command", "parse_time", "run_query", "run_report"]
