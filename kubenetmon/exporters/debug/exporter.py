"""The debug exporter: logs what reaches it. For wiring pipelines and for demos.

It reads the batch's Arrow views (``record_table()`` / ``flow_table()``): the
one-line summary is a few vector sums, so ``basic`` costs nothing per record.
``normal`` and ``detailed`` log a line per row, made from the columns.
"""

from __future__ import annotations

import threading
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from kubenetmon.component import BaseComponent, CreateSettings
from kubenetmon.exporters.debug.config import DebugConfig
from kubenetmon.flows import FlowBatch, unpack_addresses

__all__ = ["DebugExporter"]


def _total(table: pa.RecordBatch, *columns: str) -> int:
    return sum(int(pc.sum(table.column(c)).as_py() or 0) for c in columns)


def _rows(table: pa.RecordBatch) -> list[dict[str, Any]]:
    """The table's rows as dicts, addresses as text (only for the per-row verbosities)."""
    columns: dict[str, list[Any]] = {}
    for name in table.schema.names:
        column = table.column(name)
        columns[name] = unpack_addresses(column) if column.type == pa.binary(16) else column.to_pylist()
    return [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]


class DebugExporter(BaseComponent):
    """Logs batches at INFO; never refuses, never fails."""

    def __init__(self, settings: CreateSettings, config: DebugConfig) -> None:
        self._log = settings.logger
        self._verbosity = config.verbosity
        self._lock = threading.Lock()
        self.batches = 0
        self._m_flows = settings.metrics.counter("exporter_sent_flows_total", "Flows delivered by an exporter.")

    def consume(self, batch: FlowBatch) -> None:
        with self._lock:
            self.batches += 1
        self._m_flows.inc(len(batch))
        try:
            records, flows = batch.record_table(), batch.flow_table()
        except (ValueError, TypeError, OverflowError, pa.ArrowException) as exc:
            # Rows from the row-wise helper that do not fit the contract: say so, never fail.
            self._log.warning("batch: %d records, %d flows that do not fit the batch contract: %s",
                              batch.num_records, batch.num_flows, exc)
            return
        self._log.info(
            "batch: %d conntrack records, %d flows, %d bytes",
            records.num_rows,
            flows.num_rows,
            _total(records, "original_bytes", "reply_bytes") + _total(flows, "bytes"),
        )
        if self._verbosity == "basic":
            return
        for r in _rows(records):
            if self._verbosity == "detailed":
                self._log.info("record %s", r)
            else:
                self._log.info(
                    "record %s %s:%d -> %s:%d orig %dB/%dp reply %dB/%dp",
                    r["transport"], r["src"], r["sport"], r["dst"], r["dport"],
                    r["original_bytes"], r["original_packets"], r["reply_bytes"], r["reply_packets"],
                )
        for f in _rows(flows):
            if self._verbosity == "detailed":
                self._log.info("flow %s", f)
            else:
                self._log.info(
                    "flow %s %s %s/%s %s:%d -> %s/%s %s:%d %s %dB",
                    f["direction"], f["transport"], f["local_namespace"], f["local_pod"], f["local_address"],
                    f["local_port"], f["remote_namespace"], f["remote_pod"], f["remote_address"],
                    f["remote_port"], f["connection_class"], f["bytes"],
                )
