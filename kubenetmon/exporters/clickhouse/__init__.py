"""``clickhouse`` exporter: flows into the original ``network_flows_0`` table; and ``kubenetmon report``."""

from __future__ import annotations

import argparse
from typing import Any

from kubenetmon.component import ExporterFactory, Stability
from kubenetmon.exporters.clickhouse.config import ClickHouseConfig, TLSConfig
from kubenetmon.exporters.clickhouse.exporter import ClickHouseExporter, classify_error
from kubenetmon.hookspecs import hookimpl

__all__ = ["ClickHouseConfig", "ClickHouseExporter", "TLSConfig", "classify_error", "factory"]

factory: ExporterFactory[ClickHouseConfig] = ExporterFactory(
    type="clickhouse",
    config_model=ClickHouseConfig,
    description="Writes flows into ClickHouse's network_flows_0 table (server over HTTP(S), or embedded "
    "chDB): typed columnar inserts, pre-aggregated per minute, deduplicated retries.",
    stability=Stability.BETA,
    create=ClickHouseExporter,
)


@hookimpl
def kubenetmon_register_exporters() -> list[ExporterFactory[Any]]:
    return [factory]


@hookimpl
def kubenetmon_register_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from kubenetmon.report.cli import add_report_command

    add_report_command(subparsers)
