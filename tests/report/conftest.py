"""Report fixtures: a chDB path per test, seeded with the scenario through the real exporter."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kubenetmon.component import Kind
from kubenetmon.exporters.clickhouse import ClickHouseConfig, ClickHouseExporter
from kubenetmon.exporters.clickhouse.connection import Connection, connect
from kubenetmon.flows import FlowBatch
from kubenetmon.testing import StaticHost, create_settings
from tests.exporters.clickhouse.clickhouse_testkit import (
    IDENTITY,
    no_chdb_session_leaks,  # noqa: F401 (autouse fixture)
)
from tests.report.report_scenario import flows


@pytest.fixture
def chdb_path(tmp_path: Path) -> Path:
    return tmp_path / "chdb"


@pytest.fixture
def seeded(chdb_path: Path) -> Iterator[Connection]:
    """The scenario written by the exporter (one block per batch); a client on the same path."""
    dsn = f"chdb://{chdb_path}"
    exporter = ClickHouseExporter(
        create_settings(Kind.EXPORTER, "clickhouse", identity=IDENTITY),
        ClickHouseConfig.model_validate({"endpoint": dsn, "batch": {"max_wait": 0}}),
    )
    exporter.start(StaticHost())
    all_flows = flows()
    half = len(all_flows) // 2
    exporter.consume(FlowBatch(flows=all_flows[:half]))  # two inserts: rows of one key in two parts
    exporter.consume(FlowBatch(flows=all_flows[half:]))
    exporter.shutdown(30)
    conn = connect(ClickHouseConfig(endpoint=dsn))
    yield conn
    conn.close()
