"""Fixtures for the clickhouse exporter: a chDB data path per test, exporters that clean up.

Everything runs against the real embedded engine (chDB) through
clickhouse-connect's Client, as production does against a server. chDB hosts
one data path per process, so every client a test opens is closed at its end
(the next test uses another path).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kubenetmon.component import Kind
from kubenetmon.exporters.clickhouse import ClickHouseConfig, ClickHouseExporter
from kubenetmon.exporters.clickhouse.connection import Connection, connect
from kubenetmon.identity import Identity
from kubenetmon.testing import StaticHost, create_settings
from tests.exporters.clickhouse.clickhouse_testkit import (
    IDENTITY,
    no_chdb_session_leaks,  # noqa: F401 (autouse fixture)
)


@pytest.fixture
def chdb_dsn(tmp_path: Path) -> str:
    return f"chdb://{tmp_path / 'chdb'}"


@pytest.fixture
def db(chdb_dsn: str) -> Iterator[Connection]:
    """A client on the test's chDB path (shares the engine with exporters in this process)."""
    conn = connect(ClickHouseConfig(endpoint=chdb_dsn))
    yield conn
    conn.close()


ExporterMaker = Callable[..., ClickHouseExporter]


@pytest.fixture
def make_exporter(chdb_dsn: str) -> Iterator[ExporterMaker]:
    """Create and start exporters; every one is shut down at the end of the test."""
    made: list[ClickHouseExporter] = []

    def make(
        cls: type[ClickHouseExporter] = ClickHouseExporter,
        identity: Identity = IDENTITY,
        start: bool = True,
        **overrides: Any,
    ) -> ClickHouseExporter:
        fields: dict[str, Any] = {
            "endpoint": chdb_dsn,
            "batch": {"max_wait": 0},
            "retry_on_failure": {"initial_interval": 0.02, "max_interval": 0.1, "randomization_factor": 0},
        }
        fields.update(overrides)
        config = ClickHouseConfig.model_validate(fields)
        exporter = cls(create_settings(Kind.EXPORTER, "clickhouse", identity=identity), config)
        made.append(exporter)
        if start:
            exporter.start(StaticHost())
        return exporter

    yield make
    for exporter in made:
        exporter.shutdown(10)
