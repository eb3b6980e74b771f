"""The ``otlp`` exporter: sends queue blocks as OTLP/gRPC metrics requests.

Built on :class:`~kubenetmon.exporterhelper.QueuedExporter`, which owns the
queue and the retries; this module encodes a block, sends its requests, and
turns gRPC outcomes into retryable or permanent errors. The sync gRPC stub
runs in the helper's worker threads.
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from pathlib import Path

import grpc
import numpy as np
import pyarrow as pa
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceResponse

from kubenetmon._memory import LARGE_ROWS, release_free_memory
from kubenetmon.component import CreateSettings
from kubenetmon.errors import PermanentError, RetryableError
from kubenetmon.exporterhelper import Block, QueuedExporter
from kubenetmon.exporters.otlp.config import OtlpExporterConfig
from kubenetmon.flows import _numpy
from kubenetmon.otap import ArrowBusyError, ArrowStreams, ArrowUnavailableError, StatusCode
from kubenetmon.otlp import contract, encode_flow_table_bytes, encode_record_table_bytes
from kubenetmon.otlp.status import retry_after_of

__all__ = ["EXPORT_METHOD", "OtlpExporter"]

EXPORT_METHOD = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"

# OTLP/gRPC spec: these are retryable; everything else is permanent, except
# RESOURCE_EXHAUSTED (see _classify).
_RETRYABLE = {
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DATA_LOSS,
}
_ENCODED_BLOCKS_KEPT = 8


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise PermanentError(f"cannot read tls {what} {path!r}: {exc}") from exc


class _EncodedBlock:
    """A block's requests, encoded once and reused by retries; parts already acknowledged."""

    def __init__(self, parts: list[bytes]) -> None:
        self.parts = parts
        self.done: set[int] = set()


class OtlpExporter(QueuedExporter):
    """Exports records (DESIGN §4.1) and flows (§4.4) over OTLP/gRPC."""

    def __init__(self, settings: CreateSettings, config: OtlpExporterConfig) -> None:
        super().__init__(settings, config)
        self.config = config
        self._channel: grpc.Channel | None = None
        self._export: grpc.UnaryUnaryMultiCallable | None = None
        self._encoded: OrderedDict[str, _EncodedBlock] = OrderedDict()
        self._encoded_lock = threading.Lock()
        m = settings.metrics
        self.m_requests = m.counter(
            "exporter_otlp_requests_total", "OTLP export requests by outcome (ok, retryable, permanent).",
            ["outcome"],
        )
        self.m_rejected = m.counter(
            "exporter_otlp_rejected_points_total",
            "Data points the server rejected through OTLP partial success (permanent, not retried).",
        )
        self.m_bytes = m.counter("exporter_otlp_request_bytes_total", "Uncompressed bytes of requests sent.")
        self._arrow: ArrowStreams | None = None
        self._arrow_done: OrderedDict[str, set[int]] = OrderedDict()  # block id → BARs acknowledged
        self.m_bars = m.counter(
            "exporter_otap_bars_total", "OTAP BatchArrowRecords by outcome (ok, retryable, permanent, fallback, busy).",
            ["outcome"],
        )
        self.m_bar_bytes = m.counter("exporter_otap_bar_bytes_total", "Bytes of BatchArrowRecords sent.")

    # --- client ----------------------------------------------------------------------

    def _credentials(self) -> grpc.ChannelCredentials | None:
        tls = self.config.tls
        if tls.insecure:
            return None
        root = _read(tls.ca_file, "ca_file") if tls.ca_file else None
        key = _read(tls.key_file, "key_file") if tls.key_file else None
        cert = _read(tls.cert_file, "cert_file") if tls.cert_file else None
        return grpc.ssl_channel_credentials(root_certificates=root, private_key=key, certificate_chain=cert)

    def open(self) -> None:
        cfg = self.config
        size = cfg.max_message_size_mib * 1024 * 1024
        options: list[tuple[str, str | int]] = [
            ("grpc.max_send_message_length", size),
            ("grpc.max_receive_message_length", size),
            ("grpc.keepalive_time_ms", int(cfg.keepalive_time * 1000)),
            ("grpc.keepalive_timeout_ms", int(cfg.keepalive_timeout * 1000)),
            ("grpc.max_reconnect_backoff_ms", int(cfg.reconnect_backoff_max * 1000)),
            ("grpc.initial_reconnect_backoff_ms", int(min(1.0, cfg.reconnect_backoff_max) * 1000)),
            ("grpc.min_reconnect_backoff_ms", int(min(1.0, cfg.reconnect_backoff_max) * 1000)),
            ("grpc.lb_policy_name", cfg.balancer_name),
            ("grpc.enable_retries", 0),  # the exporter helper retries, with the queue behind it
        ]
        if cfg.tls.server_name_override:
            options.append(("grpc.ssl_target_name_override", cfg.tls.server_name_override))
        creds = self._credentials()
        if creds is None:
            self._channel = grpc.insecure_channel(cfg.endpoint, options=options)
        else:
            self._channel = grpc.secure_channel(cfg.endpoint, creds, options=options)
        self._export = self._channel.unary_unary(
            EXPORT_METHOD, request_serializer=None, response_deserializer=ExportMetricsServiceResponse.FromString
        )
        arrow = cfg.arrow
        if arrow.enabled:
            self._arrow = ArrowStreams(
                self._channel, num_streams=arrow.num_streams, metadata=list(cfg.headers.items()),
                compression=None if arrow.payload_compression == "none" else arrow.payload_compression,
                max_lifetime=arrow.max_stream_lifetime,
            )

    def close(self) -> None:
        if self._arrow is not None:
            self._arrow.close()
            self._arrow = None
        if self._channel is not None:
            self._channel.close()
            self._channel = None
            self._export = None

    # --- sending ---------------------------------------------------------------------

    def encode(self, block: Block) -> list[bytes]:
        """The block's serialized requests: records (§4.1) first, then flows (§4.4)."""
        batch = block.merged()
        cfg = self.config
        parts: list[bytes] = []
        # Columns only (issues 11, 12): never the row-wise views on this path.
        if batch.num_records:
            try:
                parts += encode_record_table_bytes(
                    batch.record_table(), cfg.resource, max_points=cfg.max_points_per_request
                )
            except (ValueError, TypeError) as exc:
                raise PermanentError(f"cannot encode conntrack records: {exc}") from exc
        if batch.num_flows:
            try:
                parts += encode_flow_table_bytes(batch.flow_table(), cfg.resource,
                                                 max_points=cfg.max_points_per_request)
            except (ValueError, TypeError) as exc:
                raise PermanentError(f"cannot encode flows: {exc}") from exc
        return parts

    def _encoded_block(self, block: Block) -> _EncodedBlock:
        with self._encoded_lock:
            enc = self._encoded.get(block.id)
        if enc is None:
            enc = _EncodedBlock(self.encode(block))
            with self._encoded_lock:
                self._encoded[block.id] = enc
                while len(self._encoded) > _ENCODED_BLOCKS_KEPT:
                    self._encoded.popitem(last=False)
        return enc

    def push(self, block: Block, timeout: float) -> None:
        try:
            self._push(block, timeout)
        finally:
            if len(block) >= LARGE_ROWS:
                release_free_memory()  # the encoders' temporary arrays (kubenetmon/_memory.py)

    def _push(self, block: Block, timeout: float) -> None:
        export = self._export
        if export is None:
            raise RetryableError("the OTLP channel is closed")
        arrow = self._arrow
        batch = block.merged() if arrow is not None else None
        if arrow is not None and batch is not None and batch.num_flows == 0:
            try:
                self._push_arrow(arrow, block, batch.record_table(), timeout)
                return
            except ArrowUnavailableError as exc:
                # As the Collector's otelarrow exporter: no ArrowMetricsService → Export from now on.
                self._arrow = None
                arrow.close()
                self.m_bars.labels(outcome="fallback").inc()
                self.log.warning("%s does not offer OTAP (%s): sending OTLP Export from now on",
                                 self.config.endpoint, exc)
            except ArrowBusyError as exc:
                # The gateway's stream bound is reached: this block goes by Export, the next tries OTAP again.
                self.m_bars.labels(outcome="busy").inc()
                self.log.info("%s refused an OTAP stream (%s): this block goes by Export", self.config.endpoint, exc)
        enc = self._encoded_block(block)
        compression = grpc.Compression.Gzip if self.config.compression == "gzip" else grpc.Compression.NoCompression
        headers = list(self.config.headers.items())
        for i, data in enumerate(enc.parts):
            if i in enc.done:
                continue  # acknowledged in an earlier attempt; the receiver would only dedup it
            # The id is the queue block's (stable across retries and restarts);
            # a split block numbers its parts, deterministically.
            batch_id = block.key if len(enc.parts) == 1 else f"{block.key}:{i}"
            metadata = [(contract.BATCH_ID_METADATA, batch_id), *headers]
            try:
                response = export(data, timeout=timeout, metadata=metadata, compression=compression)
            except grpc.RpcError as exc:
                raise self._classify(exc, batch_id) from None
            enc.done.add(i)
            self.m_requests.labels(outcome="ok").inc()
            self.m_bytes.inc(len(data))
            self._partial_success(response, batch_id)
        with self._encoded_lock:
            self._encoded.pop(block.id, None)

    def _bar_parts(self, table: pa.RecordBatch) -> list[pa.RecordBatch]:
        """The block's records cut into BARs of about ``arrow.max_points_per_bar`` points (deterministic)."""
        if not table.num_rows:
            return []
        # Not pc.not_equal(column, 0) nor to_numpy(): both import pandas where installed (+40 MB RSS).
        points = sum((_numpy(table.column(name)) != 0).astype(np.int64)
                     for name in ("original_bytes", "original_packets", "reply_bytes", "reply_packets"))
        part = np.maximum(np.cumsum(points) - 1, 0) // self.config.arrow.max_points_per_bar
        bounds = np.flatnonzero(np.diff(part)) + 1
        edges = [0, *bounds.tolist(), table.num_rows]
        return [table.slice(a, b - a) for a, b in itertools.pairwise(edges)]

    def _push_arrow(self, arrow: ArrowStreams, block: Block, table: pa.RecordBatch, timeout: float) -> None:
        """The block as BARs on an Arrow stream; each BatchStatus acknowledges one, as an Export response does."""
        parts = self._bar_parts(table)
        with self._encoded_lock:
            done = self._arrow_done.setdefault(block.id, set())
            while len(self._arrow_done) > _ENCODED_BLOCKS_KEPT:
                self._arrow_done.popitem(last=False)
        for i, part in enumerate(parts):
            if i in done:
                continue
            batch_id = block.key if len(parts) == 1 else f"{block.key}:{i}"
            try:
                status, size = arrow.send(part, self.config.resource, {contract.BATCH_ID_METADATA: batch_id},
                                          timeout)
            except ArrowBusyError:
                if done:  # parts of this block went by OTAP: Export's split would renumber the rest
                    self.m_bars.labels(outcome="retryable").inc()
                    raise RetryableError(f"OTAP stream refused by {self.config.endpoint} (busy)") from None
                raise
            except grpc.RpcError as exc:
                self.m_bars.labels(outcome="retryable").inc()
                raise self._classify(exc, batch_id) from None
            except (ConnectionError, TimeoutError) as exc:
                self.m_bars.labels(outcome="retryable").inc()
                raise RetryableError(f"OTAP batch {batch_id} to {self.config.endpoint}: {exc}") from None
            except (ValueError, TypeError) as exc:
                self.m_bars.labels(outcome="permanent").inc()
                raise PermanentError(f"cannot encode conntrack records as OTAP: {exc}") from exc
            code, message = int(status.status_code), str(status.status_message)
            if code in StatusCode.RETRYABLE:
                self.m_bars.labels(outcome="retryable").inc()
                raise RetryableError(f"OTAP batch {batch_id} to {self.config.endpoint}: status {code}: {message}")
            if code != StatusCode.OK:
                self.m_bars.labels(outcome="permanent").inc()
                raise PermanentError(f"OTAP batch {batch_id} refused by {self.config.endpoint}: status {code}: "
                                     f"{message}")
            done.add(i)
            self.m_bars.labels(outcome="ok").inc()
            self.m_bar_bytes.inc(size)
            if message:  # OK with rejected points: never retried, as OTLP partial success
                self.log.warning("server rejected data points of OTAP batch %s (not retried): %s", batch_id, message)
        with self._encoded_lock:
            self._arrow_done.pop(block.id, None)

    def _partial_success(self, response: ExportMetricsServiceResponse, batch_id: str) -> None:
        ps = response.partial_success
        if ps.rejected_data_points:
            self.m_rejected.inc(ps.rejected_data_points)
            self.log.warning(
                "server rejected %d data points of request %s (not retried): %s",
                ps.rejected_data_points, batch_id, ps.error_message or "no reason given",
            )
        elif ps.error_message:
            self.log.warning("server warning for request %s: %s", batch_id, ps.error_message)

    def _classify(self, exc: grpc.RpcError, batch_id: str) -> Exception:
        code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
        details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
        trailing = exc.trailing_metadata() if isinstance(exc, grpc.Call) else None
        retry_after = retry_after_of(trailing)
        message = f"export of request {batch_id} to {self.config.endpoint} failed: {code.name}: {details}"
        # The spec retries RESOURCE_EXHAUSTED only with a RetryInfo, but gRPC's own
        # concurrency limit on a busy server answers it without one: dropping data
        # for that would be wrong. Only a message-size error is permanent.
        exhausted = code is grpc.StatusCode.RESOURCE_EXHAUSTED and (
            retry_after is not None or "larger than max" not in (details or "")
        )
        if code in _RETRYABLE or exhausted:
            self.m_requests.labels(outcome="retryable").inc()
            return RetryableError(message, retry_after=retry_after)
        self.m_requests.labels(outcome="permanent").inc()
        return PermanentError(message)
