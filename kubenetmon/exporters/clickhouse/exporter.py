"""The ``clickhouse`` exporter: typed, columnar, deduplicated inserts into ``network_flows_0``.

Queueing, batching, retry and shutdown flushing come from
:class:`~kubenetmon.exporterhelper.QueuedExporter`; this class only turns a
block into columns and inserts them with ``insert_deduplication_token`` set
to the block's idempotency key (:attr:`~kubenetmon.exporterhelper.Block.key`),
which stays the same across retries, restarts and a producer's re-delivery of
a named batch. So a block is counted once even when an insert succeeded but
its acknowledgement was lost.

A block that ClickHouse (or the driver) refuses because of its *data* is never
retried as a whole and never dropped as a whole: it is bisected, each part
inserted with a token derived from the key and the part's row range (stable,
because the mapping is deterministic), until the rows that cannot be written
are isolated; only those are dropped, counted and logged.
"""

from __future__ import annotations

import struct
import threading
import time
from collections import OrderedDict
from typing import Any

from kubenetmon.component import CreateSettings
from kubenetmon.compute import compute_slot
from kubenetmon.errors import KubenetmonError, PermanentError, RetryableError
from kubenetmon.exporterhelper import Block, QueuedExporter, backoff_intervals
from kubenetmon.exporters.clickhouse.config import ClickHouseConfig
from kubenetmon.exporters.clickhouse.connection import Connection, connect
from kubenetmon.exporters.clickhouse.rows import PreparedRows, RowMapper
from kubenetmon.exporters.clickhouse.schema import SchemaError, check_table, create_table

__all__ = ["ClickHouseExporter", "classify_error", "is_data_error"]

# ClickHouse error codes that retrying the same block cannot fix: the data or
# the schema is wrong. Everything else (network, timeouts, TOO_MANY_PARTS,
# MEMORY_LIMIT_EXCEEDED, a read-only replica, auth being rotated…) is retried.
# Of those, the codes that name a problem with some rows' values: the block is
# bisected to isolate them. The others (schema, settings) fail every row alike.
_DATA_CODES = frozenset(
    {
        6,  # CANNOT_PARSE_TEXT
        27,  # CANNOT_PARSE_INPUT_ASSERTION_FAILED
        38,  # CANNOT_PARSE_DATE
        41,  # CANNOT_PARSE_DATETIME
        53,  # TYPE_MISMATCH
        69,  # ARGUMENT_OUT_OF_BOUND
        70,  # CANNOT_CONVERT_TYPE
        117,  # INCORRECT_DATA
        131,  # TOO_LARGE_STRING_SIZE
        321,  # VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
    }
)
_PERMANENT_CODES = _DATA_CODES | frozenset(
    {
        8,  # THERE_IS_NO_COLUMN
        16,  # NO_SUCH_COLUMN_IN_TABLE
        43,  # ILLEGAL_TYPE_OF_ARGUMENT
        44,  # ILLEGAL_COLUMN
        47,  # UNKNOWN_IDENTIFIER
        60,  # UNKNOWN_TABLE
        62,  # SYNTAX_ERROR
        81,  # UNKNOWN_DATABASE
        115,  # UNKNOWN_SETTING
    }
)
# Inserts one block may use to isolate bad rows: k bad rows among n take about
# 2·k·log2(n/k); past this, the parts still failing are dropped (and counted).
_SPLIT_BUDGET = 256


def is_data_error(exc: BaseException) -> bool:
    """True when ``exc`` says that some rows' values cannot be written (so bisecting can isolate them).

    Besides the driver's DataError and ClickHouse's data codes, any exception
    that is not a transport or server error counts: an unexpected exception while
    serialising (e.g. ``AttributeError`` for an int in a String column) is a
    property of the data, and retrying it for the whole retry window would only
    delay the drop of every row of the block.
    """
    from clickhouse_connect.driver.exceptions import DatabaseError, DataError, OperationalError

    if isinstance(exc, DataError):
        return True
    if isinstance(exc, OperationalError | OSError | TimeoutError | RetryableError | SchemaError):
        return False
    if isinstance(exc, DatabaseError):
        return getattr(exc, "code", None) in _DATA_CODES
    if isinstance(exc, PermanentError | KubenetmonError):
        return False
    return isinstance(exc, Exception)


def classify_error(exc: BaseException) -> KubenetmonError:
    """Map a clickhouse-connect (or serialization) failure to Retryable/PermanentError."""
    from clickhouse_connect.driver.exceptions import DatabaseError, DataError, OperationalError

    if isinstance(exc, RetryableError | PermanentError):
        return exc
    if isinstance(exc, SchemaError):
        return PermanentError(str(exc))
    if isinstance(exc, OperationalError):  # connection refused/reset, timeouts, 5xx after retries
        return RetryableError(f"ClickHouse unreachable: {exc}")
    if isinstance(exc, DataError):  # the driver could not encode a value
        return PermanentError(f"rows could not be encoded: {exc}")
    if isinstance(exc, DatabaseError):
        code = getattr(exc, "code", None)
        if code in _PERMANENT_CODES:
            return PermanentError(f"ClickHouse rejected the block (code {code}): {exc}")
        return RetryableError(f"ClickHouse error (code {code}): {exc}")
    if isinstance(exc, TypeError | ValueError | struct.error | OverflowError):
        return PermanentError(f"rows could not be encoded: {exc!r}")
    if isinstance(exc, OSError | TimeoutError):
        return RetryableError(f"ClickHouse unreachable: {exc!r}")
    # Unexpected (a serialisation bug, a value of the wrong type): retrying cannot fix it.
    return PermanentError(f"rows could not be written: {exc!r}")


class ClickHouseExporter(QueuedExporter):
    """Writes attributed flows into the ``network_flows_0`` table (DESIGN §4.3)."""

    def __init__(self, settings: CreateSettings, config: ClickHouseConfig) -> None:
        super().__init__(settings, config)
        self.config = config
        self.mapper = RowMapper(settings.identity, config.interval_seconds, config.aggregate, config.ipv6)
        self._conn: Connection | None = None
        self._ready_schema = False
        self._conn_lock = threading.Lock()
        # Prepared rows of blocks being retried: a retry re-sends without re-mapping.
        self._prepared: OrderedDict[str, PreparedRows] = OrderedDict()
        self._prepared_lock = threading.Lock()
        # Why the embedded engine cannot be opened now (None: it can); /ready reports it.
        self._engine_problem: str | None = None
        self._reopener: threading.Thread | None = None
        self._stopping = threading.Event()
        m = settings.metrics
        self.m_rows = m.counter("clickhouse_rows_inserted_total", "Rows inserted into ClickHouse.")
        self.m_blocks = m.counter("clickhouse_blocks_inserted_total", "Insert statements (blocks) acknowledged.")
        self.m_aggregated = m.counter(
            "clickhouse_rows_aggregated_total", "Flows summed into another row of the same key before insert."
        )
        self.m_rejected = m.counter(
            "clickhouse_rows_rejected_total", "Flows not written, by reason (invalid_direction, ipv6, …).",
            ["reason"],
        )
        self.m_failures = m.counter(
            "clickhouse_insert_failures_total",
            "Failed insert attempts, by kind (retryable, permanent; data: a part refused for its values, bisected).",
            ["kind"],
        )
        self.m_overflow = m.counter(
            "clickhouse_aggregate_overflow_splits_total",
            "Keys whose byte or packet sum would pass 2^64-1: written as separate rows instead of wrapping.",
        )
        self.m_engine_open_failures = m.counter(
            "clickhouse_engine_open_failures_total",
            "Failed attempts to open the embedded engine (chDB); retried with backoff, /ready is false meanwhile.",
        )
        self.m_insert_latency = m.histogram(
            "clickhouse_insert_latency_seconds",
            "Duration of successful inserts.",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )

    # --- client ----------------------------------------------------------------------

    def make_connection(self) -> Connection:
        """Open the connection. A seam for tests that wrap the real client."""
        return connect(self.config)

    def _connection(self) -> Connection:
        with self._conn_lock:
            if self._conn is None:
                try:
                    self._conn = self.make_connection()
                except Exception as exc:
                    self._engine_failed(exc)
                    raise
                self._ready_schema = False
            if not self._ready_schema:
                conn = self._conn
                if self.config.creates_schema():
                    create_table(conn.client, conn.database, self.config.table, self.config.deduplication_window,
                                 self.config.cluster)
                for warning in check_table(conn.client, conn.database, self.config.table):
                    self.log.warning("%s", warning)
                self._ready_schema = True
            if self._engine_problem is not None:
                self.log.info("embedded ClickHouse (chDB) opened again; ready")
                self._engine_problem = None
            return self._conn

    def _engine_failed(self, exc: Exception) -> None:
        """An open of the embedded engine failed: count, log once per outage, re-open in the background."""
        if not self.config.is_embedded() or isinstance(exc, KubenetmonError):
            return
        self.m_engine_open_failures.inc()
        first = self._engine_problem is None
        self._engine_problem = f"embedded ClickHouse (chDB) cannot be opened: {exc}"
        if first:
            self.log.error("%s; retrying with backoff, not ready until it opens", self._engine_problem)
        if self._reopener is None or not self._reopener.is_alive():
            self._reopener = threading.Thread(
                target=self._reopen, name=f"{self.settings.id}-reopen", daemon=True
            )
            self._reopener.start()

    def _reopen(self) -> None:
        """Re-open the engine with the retry backoff (forever) until it opens or shutdown starts.

        Without this, /ready would stay false after the storage recovers
        until the next block happens to try an insert.
        """
        waits = backoff_intervals(self.helper_config.retry_on_failure.model_copy(update={"max_elapsed_time": 0}))
        while self._engine_problem is not None and not self._stopping.wait(next(waits)):
            try:
                self._connection()
            except Exception as exc:
                self.log.debug("embedded ClickHouse (chDB) still cannot be opened: %s", exc)

    def open(self) -> None:
        try:
            self._connection()
        except KubenetmonError:
            raise  # schema mismatch, chDB path in use, bad credentials file: refuse to start
        except Exception as exc:
            if self._engine_problem is not None:
                # A storage fault (e.g. a read-only table directory) is not a config
                # error: start not ready, queue batches, re-open in the background.
                return
            if self.config.is_embedded() or isinstance(classify_error(exc), PermanentError):
                raise
            # A server outage at start must not stop the gateway: batches queue
            # up and the first push connects (and checks the schema) again.
            self._drop_connection()
            self.log.warning("ClickHouse not reachable at start (%s); will retry on the first insert", exc)

    def close(self) -> None:
        self._stopping.set()
        if self._reopener is not None:
            self._reopener.join(5.0)
        self._drop_connection()

    def is_ready(self) -> bool:
        return super().is_ready() and self._engine_problem is None

    def _drop_connection(self) -> None:
        with self._conn_lock:
            conn, self._conn = self._conn, None
            self._ready_schema = False
        if conn is not None:
            try:
                conn.close()
            except Exception:
                self.log.debug("error closing the ClickHouse client", exc_info=True)

    # --- data path -------------------------------------------------------------------

    def insert_settings(self, block_id: str) -> dict[str, Any]:
        settings: dict[str, Any] = {"insert_deduplication_token": block_id}
        if self.config.async_insert:
            settings.update(async_insert=1, wait_for_async_insert=1, async_insert_deduplicate=1)
        return settings

    def _prepare(self, block: Block) -> PreparedRows:
        with self._prepared_lock:
            prepared = self._prepared.get(block.id)
        if prepared is not None:
            return prepared
        unattributed = sum(b.num_records for b in block.batches)
        with compute_slot():
            prepared = self.mapper.prepare_batches(block.batches)
        if unattributed:
            prepared.rejected["unattributed"] += unattributed
        for reason, n in prepared.rejected.items():
            self.m_rejected.labels(reason=reason).inc(n)
        if prepared.rejected:
            self.log.warning(
                "block %s: %d flows not written (%s)%s", block.id, sum(prepared.rejected.values()),
                ", ".join(f"{r}={n}" for r, n in sorted(prepared.rejected.items())),
                "; raw conntrack records need the k8s_attributes processor before this exporter"
                if unattributed else "",
            )
        self.m_aggregated.inc(prepared.aggregated_away)
        if prepared.overflow_splits:
            self.m_overflow.inc(prepared.overflow_splits)
            self.log.warning(
                "block %s: the byte or packet sum of %d keys would pass 2^64-1; their flows are written as "
                "separate rows instead of one sum (an agent is sending impossible counters?)",
                block.id, prepared.overflow_splits,
            )
        with self._prepared_lock:
            self._prepared[block.id] = prepared
            while len(self._prepared) > 8:
                self._prepared.popitem(last=False)
        return prepared

    def push(self, block: Block, timeout: float) -> None:
        # No malloc_trim after a block (as the agent's exporter does): the next block's mapping faulted
        # the pages in again, ~0.5 µs CPU per record in the gateway bench, for RSS that stays in use.
        prepared = self._prepare(block)
        if prepared.rows == 0:
            self._forget(block.id)
            return
        started = time.monotonic()
        try:
            conn = self._connection()
            self._insert_isolating(conn, prepared, block)
        except Exception as exc:
            err = classify_error(exc)
            kind = "permanent" if isinstance(err, PermanentError) else "retryable"
            self.m_failures.labels(kind=kind).inc()
            if kind == "permanent":
                self._forget(block.id)
            elif not self.config.is_embedded():
                # Reconnect (and re-check the schema) next time. Not the embedded
                # engine: it is not a connection, and re-opening it while its
                # storage is faulty fails where the open engine recovers by itself.
                self._drop_connection()
            raise err from exc
        self.m_insert_latency.observe(time.monotonic() - started)
        self.m_blocks.inc()
        self._forget(block.id)

    def _insert_isolating(self, conn: Connection, prepared: PreparedRows, block: Block) -> None:
        """Insert every row; on a data error bisect until the offending rows are isolated, and drop only those.

        Parts are tried left to right; each part's token is the block key plus its
        row range, so a retry of the block (after a retryable error mid-way, or
        after a restart) sends the same parts under the same tokens and
        ClickHouse counts each once. ``prepared`` remembers finished parts so that
        a retry in this process neither re-sends them nor counts drops twice.
        """
        key, rows = block.key, prepared.rows
        stack = [(0, rows)]
        attempts = 0
        while stack:
            lo, hi = stack.pop()
            if (lo, hi) in prepared.done_parts or (lo, hi) in prepared.dropped_parts:
                continue
            if (lo, hi) in prepared.refused_parts:  # refused before this retry: go straight to its halves
                mid = (lo + hi) // 2
                stack += [(mid, hi), (lo, mid)]
                continue
            attempts += 1
            try:
                self.insert(conn, prepared, key if (lo, hi) == (0, rows) else f"{key}:{lo}-{hi}", lo, hi)
            except Exception as exc:
                if not is_data_error(exc):
                    raise
                self.m_failures.labels(kind="data").inc()
                if hi - lo > 1 and attempts < _SPLIT_BUDGET:
                    prepared.refused_parts.add((lo, hi))
                    mid = (lo + hi) // 2
                    stack += [(mid, hi), (lo, mid)]
                    continue
                prepared.dropped_parts.add((lo, hi))
                self.m_rejected.labels(reason="insert_rejected").inc(hi - lo)
                shown = repr(prepared.to_rows(lo, min(hi, lo + 3)))
                self.log.error(
                    "block %s: %d rows that ClickHouse cannot take dropped (the rest of the block is written): "
                    "%s; rows: %s%s", block.id, hi - lo, exc,
                    shown[:2000], "…" if len(shown) > 2000 or hi - lo > 3 else "",
                )
                continue
            prepared.done_parts.add((lo, hi))
            self.m_rows.inc(hi - lo)

    def insert(self, conn: Connection, prepared: PreparedRows, token: str, lo: int = 0, hi: int | None = None) -> None:
        """One typed, columnar insert of rows ``[lo, hi)`` in Arrow format; never SQL text."""
        whole = lo == 0 and (hi is None or hi == prepared.rows)
        conn.client.insert_arrow(
            self.config.table,
            prepared.table if whole else prepared.part(lo, prepared.rows if hi is None else hi),
            database=conn.database,
            settings=self.insert_settings(token),
        )

    def _forget(self, block_id: str) -> None:
        with self._prepared_lock:
            self._prepared.pop(block_id, None)
