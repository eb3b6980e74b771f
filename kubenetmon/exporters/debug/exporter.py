"""The debug exporter: logs what reaches it. For wiring pipelines and for demos."""

from __future__ import annotations

import dataclasses
import threading

from kubenetmon.component import BaseComponent, CreateSettings
from kubenetmon.exporters.debug.config import DebugConfig
from kubenetmon.flows import FlowBatch


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
        self._log.info(
            "batch: %d conntrack records, %d flows, %d bytes",
            len(batch.records),
            len(batch.flows),
            sum(r.original_bytes + r.reply_bytes for r in batch.records) + sum(f.bytes for f in batch.flows),
        )
        if self._verbosity == "basic":
            return
        for r in batch.records:
            if self._verbosity == "detailed":
                self._log.info("record %s", dataclasses.asdict(r))
            else:
                self._log.info(
                    "record %s %s:%d -> %s:%d orig %dB/%dp reply %dB/%dp",
                    r.transport, r.src, r.sport, r.dst, r.dport,
                    r.original_bytes, r.original_packets, r.reply_bytes, r.reply_packets,
                )
        for f in batch.flows:
            if self._verbosity == "detailed":
                self._log.info("flow %s", dataclasses.asdict(f))
            else:
                self._log.info(
                    "flow %s %s %s/%s %s:%d -> %s/%s %s:%d %s %dB",
                    f.direction, f.transport, f.local.namespace, f.local.pod, f.local.address, f.local.port,
                    f.remote.namespace, f.remote.pod, f.remote.address, f.remote.port,
                    f.connection_class, f.bytes,
                )
