"""A fault-injecting wrapper around the real clickhouse-connect client (for delivery tests).

It does not replace the engine: every insert that is let through really runs
in chDB. Faults are injected *before* the engine (an outage: the insert never
arrived) or *after* it (a lost acknowledgement: the rows are committed but
the caller sees an error), the two cases a retry must survive.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from clickhouse_connect.driver.exceptions import OperationalError

from kubenetmon.exporters.clickhouse import ClickHouseExporter
from kubenetmon.exporters.clickhouse.connection import Connection


class FaultyClient:
    """Delegates to ``real``; ``plan`` decides, per insert call, what goes wrong.

    ``plan(n)`` for the n-th insert (0-based) returns ``"ok"``, ``"before"``
    (refuse without touching the engine), ``"after"`` (commit, then raise)
    or ``"hang"`` (commit, then block forever: the process is about to die).
    """

    def __init__(self, real: Any, plan: Callable[[int], str]) -> None:
        self._real = real
        self._plan = plan
        self.calls: list[tuple[str, str]] = []  # (fault, dedup token) per insert
        self.committed = threading.Event()
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def insert(self, *args: Any, **kwargs: Any) -> Any:
        return self._faulty("insert", *args, **kwargs)

    def insert_arrow(self, *args: Any, **kwargs: Any) -> Any:
        return self._faulty("insert_arrow", *args, **kwargs)

    def _faulty(self, method: str, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            n = len(self.calls)
            fault = self._plan(n)
            self.calls.append((fault, str((kwargs.get("settings") or {}).get("insert_deduplication_token"))))
        if fault == "before":
            raise OperationalError("Error HTTPConnectionPool: Connection refused (injected outage)")
        result = getattr(self._real, method)(*args, **kwargs)
        if fault == "after":
            raise OperationalError("Error ('Connection aborted.', RemoteDisconnected()) (injected lost ack)")
        if fault == "hang":
            self.committed.set()
            threading.Event().wait()
        return result


class FaultyExporter(ClickHouseExporter):
    """The real exporter whose client is wrapped in a :class:`FaultyClient`."""

    plan: Callable[[int], str] = staticmethod(lambda n: "ok")  # type: ignore[assignment]
    faulty: FaultyClient | None = None

    def make_connection(self) -> Connection:
        conn = super().make_connection()
        if self.faulty is None:
            self.faulty = FaultyClient(conn.client, type(self).plan)
        else:
            self.faulty._real = conn.client
        return Connection(self.faulty, conn.target, conn.database)
