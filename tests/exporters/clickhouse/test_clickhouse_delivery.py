"""Delivery: lost acknowledgements, outages, kill -9 with a persistent queue, a held chDB path.

Faults come from a wrapper around the real client (tests/.../faults.py); the
rows always really go through chDB.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from kubenetmon.exporters.clickhouse.connection import ChdbPathInUseError, Connection
from kubenetmon.flows import FlowBatch
from tests.exporters.clickhouse.clickhouse_testkit import (
    SECOND,
    T0_NS,
    chdb_path_held_by_another_process,
    make_flow,
    wait_until,
)
from tests.exporters.clickhouse.faults import FaultyExporter
from tests.exporters.clickhouse.queue_child import BATCH_BYTES

REPO = Path(__file__).resolve().parents[3]


def exporter_class(plan: Any) -> type[FaultyExporter]:
    return type("PlannedFaults", (FaultyExporter,), {"plan": staticmethod(plan)})


def totals(db: Connection) -> tuple[int, int]:
    (row,) = db.client.query("SELECT sum(bytes), count() FROM default.network_flows_0 FINAL").result_rows
    return int(row[0]), int(row[1])


def minute_batch(minute: int, *sizes: int) -> FlowBatch:
    return FlowBatch(flows=[
        make_flow("out", nbytes=n, end_ns=T0_NS + (minute * 60 + i + 1) * SECOND) for i, n in enumerate(sizes)
    ])


def test_retry_after_a_lost_acknowledgement_is_counted_once(db: Connection, make_exporter) -> None:  # type: ignore[no-untyped-def]
    exporter = make_exporter(cls=exporter_class(lambda n: "after" if n == 0 else "ok"))
    exporter.consume(minute_batch(0, 100, 20, 3))
    assert wait_until(lambda: exporter.m_blocks.value() == 1)
    assert exporter.faulty is not None
    (first, token1), (second, token2) = exporter.faulty.calls
    assert (first, second) == ("after", "ok")
    assert token1 == token2  # the retry carries the same insert_deduplication_token
    assert totals(db) == (123, 1)
    assert exporter.m_failures.value(kind="retryable") == 1
    assert exporter.m_retries.value() == 1


def test_without_the_deduplication_window_the_same_fault_double_counts(db: Connection, make_exporter) -> None:  # type: ignore[no-untyped-def]
    # The control for the test above: it is the table setting that makes the token count.
    exporter = make_exporter(cls=exporter_class(lambda n: "after" if n == 0 else "ok"), deduplication_window=0)
    exporter.consume(minute_batch(0, 100, 20, 3))
    assert wait_until(lambda: exporter.m_blocks.value() == 1)
    assert totals(db) == (246, 1)


def test_outage_of_several_flushes_then_recovery_delivers_everything_once(db: Connection, make_exporter) -> None:  # type: ignore[no-untyped-def]
    outage = 4
    # Refused before the engine for a while, then one lost acknowledgement, then healthy.
    exporter = make_exporter(
        cls=exporter_class(lambda n: "before" if n < outage else ("after" if n == outage + 1 else "ok"))
    )
    batches = [minute_batch(m, *(10**m + k for k in range(5))) for m in range(4)]
    for b in batches:
        exporter.consume(b)
    assert wait_until(lambda: exporter.m_blocks.value() == len(batches))
    expected = sum(f.bytes for b in batches for f in b.flows)
    assert totals(db) == (expected, len(batches))
    assert exporter.m_failures.value(kind="retryable") == outage + 1
    assert exporter.m_dropped.labels(reason="retries_exhausted")._value.get() == 0


def test_permanent_error_drops_the_block_and_counts_it(db: Connection, make_exporter) -> None:  # type: ignore[no-untyped-def]
    exporter = make_exporter()
    # The table went away under us (every column is in the sorting key, so none can be dropped).
    db.client.command("RENAME TABLE default.network_flows_0 TO default.network_flows_old")
    exporter.consume(minute_batch(0, 1, 2))
    assert wait_until(lambda: exporter.m_failures.value(kind="permanent") == 1)
    assert wait_until(lambda: exporter.m_dropped.labels(reason="permanent_error")._value.get() == 2)
    assert exporter.m_retries.value() == 0


def _start_child(dsn: str, queue_dir: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.exporters.clickhouse.queue_child", dsn, str(queue_dir), str(T0_NS)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _read_until_ready(child: subprocess.Popen[str], timeout: float = 120) -> list[str]:
    assert child.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = child.stdout.readline()
        if not line:
            break
        lines.append(line.strip())
        if line.strip() == "ready":
            return lines
    child.kill()
    raise AssertionError(f"child did not get ready: {lines}; stderr: {child.stderr.read() if child.stderr else ''}")


def test_kill_9_with_rows_in_the_persistent_queue_then_restart_delivers_them_once(
    tmp_path: Path, chdb_dsn: str, make_exporter: Any
) -> None:
    queue_dir = tmp_path / "queue"
    child = _start_child(chdb_dsn, queue_dir)
    try:
        lines = _read_until_ready(child)
        token = next(line.split()[1] for line in lines if line.startswith("token "))
        assert len(list((queue_dir / "items").glob("*.batch"))) == 3  # 1 in flight + 2 queued
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(30)
    assert child.returncode == -signal.SIGKILL

    exporter = make_exporter(
        cls=exporter_class(lambda n: "ok"),
        sending_queue={"storage": "persistent", "directory": str(queue_dir)},
    )
    exporter.shutdown(30)  # flushes what the dead process left on disk
    assert exporter.faulty is not None
    tokens = [t for _, t in exporter.faulty.calls]
    assert tokens[0] == token  # the committed-but-unacknowledged block is re-sent with its id
    assert len(tokens) == 3
    assert not list((queue_dir / "items").glob("*.batch"))
    from kubenetmon.exporters.clickhouse import ClickHouseConfig
    from kubenetmon.exporters.clickhouse.connection import connect

    db = connect(ClickHouseConfig(endpoint=chdb_dsn))
    try:
        assert totals(db) == (sum(sum(b) for b in BATCH_BYTES), 3)
    finally:
        db.close()


def test_a_chdb_path_held_by_another_process_gives_a_clear_error(tmp_path: Path, make_exporter: Any) -> None:
    path = tmp_path / "chdb"
    with chdb_path_held_by_another_process(path) as holder:
        with pytest.raises(ChdbPathInUseError) as err:
            make_exporter(endpoint=f"chdb://{path}")
        message = str(err.value)
        assert f"{os.path.realpath(path)}/status" in message
        assert "lock" in message
        assert f"PID {holder.pid}" in message
        assert "BAD_ARGUMENTS" not in message
    # Once the holder is gone the path opens in this process.
    exporter = make_exporter(endpoint=f"chdb://{path}")
    exporter.consume(minute_batch(0, 5))
    assert wait_until(lambda: exporter.m_blocks.value() == 1)


def test_a_second_chdb_path_in_one_process_is_refused_clearly(
    tmp_path: Path, db: Connection, make_exporter: Any
) -> None:
    with pytest.raises(ChdbPathInUseError, match="one data path per process"):
        make_exporter(endpoint=f"chdb://{tmp_path / 'other'}")


def test_a_path_opened_outside_the_shared_sessions_is_also_explained(tmp_path: Path, make_exporter: Any) -> None:
    import clickhouse_connect

    direct = clickhouse_connect.get_client(interface="chdb", path=str(tmp_path / "direct"))
    try:
        with pytest.raises(ChdbPathInUseError, match="one data path per process"):
            make_exporter(endpoint=f"chdb://{tmp_path / 'mine'}")
    finally:
        direct.close()
