"""The embedded engine (chDB) under storage faults: logged through logging, retried, reported in /ready.

Faults are real: the table's data directory becomes a read-only bind mount
(one of the e2e fault tests' two ways). With it, opening the engine fails
(``BAD_ARGUMENTS``, the cause only on fd 2: the table's deduplication log cannot
be opened for writing); ``chattr +i`` only makes inserts fail.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kubenetmon.exporters.clickhouse.connection import Connection
from kubenetmon.flows import FlowBatch
from tests.e2e.harness import chdb_table_dir
from tests.exporters.clickhouse.clickhouse_testkit import make_flow, wait_until

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="bind mounts need root")


@contextlib.contextmanager
def read_only(directory: Path) -> Iterator[None]:
    subprocess.run(["mount", "--bind", str(directory), str(directory)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(directory)], check=True)
        yield
    finally:
        subprocess.run(["umount", str(directory)], check=True)


def _table_dir(chdb_dsn: str) -> Path:
    return chdb_table_dir(Path(chdb_dsn.removeprefix("chdb://")))


def test_engine_that_cannot_open_is_retried_logged_and_not_ready_then_delivers(
    chdb_dsn: str, make_exporter: Any, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    make_exporter().shutdown(10)  # creates the table, then lets the engine go
    caplog.set_level(logging.WARNING)
    capfd.readouterr()
    with read_only(_table_dir(chdb_dsn)):
        exporter = make_exporter()  # starts although the engine cannot attach the table
        assert not exporter.is_ready()
        assert exporter.health() is None  # a storage fault is not a reason to restart the process
        exporter.consume(FlowBatch(flows=[make_flow("out", nbytes=123)]))
        assert wait_until(lambda: exporter.m_engine_open_failures.value() >= 3)
        raw = capfd.readouterr().err
    assert wait_until(exporter.is_ready)
    assert wait_until(lambda: exporter.m_blocks.value() == 1)
    # What the engine printed on fd 2 went through logging, not raw to stderr.
    assert "BAD_ARGUMENTS" not in raw and "DB::Exception" not in raw, raw
    engine_lines = [r.getMessage() for r in caplog.records if "embedded ClickHouse (chDB)" in r.getMessage()]
    assert any("Cannot attach table" in line or "cannot be opened" in line for line in engine_lines)
    rows = exporter._connection().client.query("SELECT sum(bytes) FROM default.network_flows_0").result_rows
    assert rows == [(123,)]


def test_open_engine_survives_an_unwritable_table_without_reopening(
    db: Connection, chdb_dsn: str, make_exporter: Any
) -> None:
    exporter = make_exporter()
    with read_only(_table_dir(chdb_dsn)):
        exporter.consume(FlowBatch(flows=[make_flow("out", nbytes=5)]))
        assert wait_until(lambda: exporter.m_failures.value(kind="retryable") >= 2)
        assert exporter.is_ready()  # the engine is open; only inserts fail (and are retried)
    assert wait_until(lambda: exporter.m_blocks.value() == 1)
    assert exporter.m_engine_open_failures.value() == 0
    assert db.client.query("SELECT sum(bytes) FROM default.network_flows_0").result_rows == [(5,)]
