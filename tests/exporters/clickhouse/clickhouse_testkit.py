"""Builders and helpers shared by the clickhouse exporter tests (and the report tests)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kubenetmon.exporters.clickhouse.connection import _SESSIONS, Connection
from kubenetmon.flows import Endpoint, Flow
from kubenetmon.identity import Identity

IDENTITY = Identity(cloud="aws", region="us-west-2", cluster="prod-1", environment="production", cell="c7")
# Noon (UTC) yesterday: the start of a minute, a whole day in the past, and well
# inside the table's 90-day TTL (older rows are dropped by the table itself).
T0_NS = ((int(time.time()) // 86400 - 1) * 86400 + 12 * 3600) * 1_000_000_000
SECOND = 1_000_000_000


def make_flow(
    direction: str = "out",
    *,
    nbytes: int = 100,
    packets: int = 1,
    end_ns: int = T0_NS + 30 * SECOND,
    interval_s: int = 5,
    local: Endpoint | None = None,
    remote: Endpoint | None = None,
    **kw: Any,
) -> Flow:
    return Flow(
        direction=direction,
        transport=kw.pop("transport", "tcp"),
        network_type=kw.pop("network_type", "ipv4"),
        local=local or Endpoint(address="10.0.0.1", port=8080, pod="api-1", namespace="shop", app="api"),
        remote=remote or Endpoint(address="10.0.1.2", port=41000, pod="web-1", namespace="shop", app="web"),
        bytes=nbytes,
        packets=packets,
        connection_class=kw.pop("connection_class", "INTRA_VPC"),
        connection_flags=kw.pop("connection_flags", {}),
        observer=kw.pop("observer", "node-a"),
        start_ns=end_ns - interval_s * SECOND,
        end_ns=end_ns,
    )


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def table_rows(conn: Connection, where: str = "1", final: bool = False) -> list[dict[str, Any]]:
    sql = f"SELECT * FROM default.network_flows_0 {'FINAL' if final else ''} WHERE {where} ORDER BY direction"
    return list(conn.client.query(sql).named_results())


@pytest.fixture(autouse=True)
def no_chdb_session_leaks() -> Iterator[None]:
    """Fail a test that leaves chDB sessions open (chDB holds one data path per process)."""
    yield
    leaked = list(_SESSIONS._clients)
    for path in leaked:
        while path in _SESSIONS._clients:
            _SESSIONS.release(path)
    assert not leaked, f"a test left chDB sessions open: {leaked}"


_HOLDER = """
import sys, time, clickhouse_connect
c = clickhouse_connect.get_client(interface="chdb", path=sys.argv[1])
c.command("SELECT 1")
print("holding", flush=True)
time.sleep(300)
"""


@contextlib.contextmanager
def chdb_path_held_by_another_process(path: Path) -> Iterator[subprocess.Popen[str]]:
    """A child process holding the chDB data path ``path`` (and its lock) until the block ends."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "holding"
        yield holder
    finally:
        holder.kill()
        holder.wait(30)
