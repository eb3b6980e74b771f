"""The ``otlp`` receiver: an OTLP/gRPC metrics server for the agent → gateway contract.

Why a sync gRPC server (thread pool) rather than grpc.aio: the next consumer
is synchronous and may block (a queue waiting for room), and decoding is CPU
work; an asyncio server would have to hop every request to a thread anyway.
Each request runs in one pool thread from bytes to ``consume``; the GIL makes
more parallelism moot, and ``max_concurrent_requests`` bounds memory.

Requests are read as raw bytes (no generated servicer), so a request that is
not protobuf is answered INVALID_ARGUMENT and counted, instead of failing
inside gRPC.

Admission (issue 16 item 3: four calls that opened an Export and never sent
their message took every worker). gRPC looks up a call's handler on its
polling thread, before any pool thread or the body is involved; there this
receiver checks the bearer token from the metadata and its own bound of
requests in progress, and answers a refusal without reading the body. The
Export method is served as stream→unary (the same bytes on the wire as a
unary call) so that the handler reads the one message itself, under a
deadline (``grpc.read_timeout``) and a per-client-address bound
(``grpc.max_requests_per_peer``); only a request whose message arrived takes
one of the ``grpc.workers`` decode slots.

OTAP (``ArrowMetricsService/ArrowMetrics``, ``arrow.enabled``) is served by
the same server, admission and delivery: a stream is admitted like a
request (token, ``arrow.max_streams``), each BAR takes a decode slot and goes
through the same dedup and backpressure as an Export request
(:meth:`OtlpReceiver._deliver`); the format lives in ``kubenetmon/otap``.
"""

from __future__ import annotations

import hmac
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import grpc
import pyarrow as pa
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceResponse

from kubenetmon.component import BaseComponent, Consumer, CreateSettings, Host
from kubenetmon.compute import compute_slot
from kubenetmon.errors import BackpressureError
from kubenetmon.flows import BATCH_ID_SEPARATOR, FlowBatch
from kubenetmon.otap import ARROW_METRICS_METHOD, BarError, BatchArrowRecords, BatchStatus, RecordsConsumer, StatusCode
from kubenetmon.otlp import DecodeLimits, DecodeResult, contract, decode_records_bytes
from kubenetmon.otlp._decode_records import decoder_caches
from kubenetmon.otlp._limits import MAX_BATCH_ID_BYTES
from kubenetmon.otlp.status import STATUS_DETAILS_KEY, retry_info_status
from kubenetmon.receivers.otlp.config import OtlpReceiverConfig
from kubenetmon.receivers.otlp.dedup import BatchIdWindow
from kubenetmon.receivers.otlp.merge import Merger
from kubenetmon.receivers.otlp.watchdog import Watchdog

__all__ = ["OtlpReceiver"]

_SERVICE = "opentelemetry.proto.collector.metrics.v1.MetricsService"
_EXPORT = f"/{_SERVICE}/Export"
_SECOND_NS = 1_000_000_000
# Refusals and rejections are logged at WARNING at most this often per kind
# (a misbehaving client repeats itself every interval); the rest at DEBUG.
_LOG_EVERY = 10.0


def _batch_id_problem(batch_id: str | None) -> str | None:
    """Why a request's ``kubenetmon-batch-id`` is refused (Export metadata and OTAP headers alike), or None."""
    if batch_id is None:
        return None
    if len(batch_id) > MAX_BATCH_ID_BYTES:
        return f"{contract.BATCH_ID_METADATA} is {len(batch_id)} characters; at most {MAX_BATCH_ID_BYTES}"
    if BATCH_ID_SEPARATOR in batch_id:  # it separates the names of a merged batch (merge.py)
        return f"{contract.BATCH_ID_METADATA} holds a line break: send one line"
    return None


def _peer_host(peer: str) -> str:
    """``ipv4:10.0.0.1:5555`` / ``ipv6:[fd00::1]:5555`` → the address without the port."""
    host = peer.rpartition(":")[0] if peer.count(":") >= 2 else peer
    return host.split(":", 1)[-1].strip("[]")


class _Admission(grpc.GenericRpcHandler):  # type: ignore[misc]
    """Runs on gRPC's polling thread for every call: auth and the global bound, before the body is read."""

    def __init__(self, receiver: OtlpReceiver) -> None:
        self.receiver = receiver
        self.export = grpc.stream_unary_rpc_method_handler(receiver._export_stream)
        self.arrow = grpc.stream_stream_rpc_method_handler(receiver._arrow_stream)

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        r = self.receiver
        arrow = method == ARROW_METRICS_METHOD and r.config.arrow.enabled
        if method != _EXPORT and not arrow:
            return None  # UNIMPLEMENTED: what an agent's exporter takes as "no OTAP here, use Export"
        metadata = handler_call_details.invocation_metadata or ()
        if r._expected_auth is not None:
            given = next((v for k, v in metadata if k == "authorization"), "")
            given_bytes = given.encode() if isinstance(given, str) else bytes(given)
            if not hmac.compare_digest(given_bytes, r._expected_auth):
                r._refused("unauthenticated", "missing or wrong bearer token")
                return _refusal(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token", arrow)
        if arrow:
            if r._admit_stream():
                return self.arrow
            message = f"{r.config.arrow.max_streams} Arrow streams open (arrow.max_streams); use Export"
            r._refused("too_many_streams", message)
            return _refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, message, arrow)
        if not r._admit():
            limit = r.config.grpc.max_concurrent_requests
            message = f"{limit} requests in progress (grpc.max_concurrent_requests); retry later"
            r._refused("too_many_requests", message)
            return _refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, message)
        return self.export


def _refusal(code: grpc.StatusCode, message: str, stream: bool = False) -> grpc.RpcMethodHandler:
    """A handler that answers ``code`` without reading the request (stream handlers read on demand)."""

    def refuse(_requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        context.abort(code, message)
        raise AssertionError("unreachable: abort raises")

    if stream:
        return grpc.stream_stream_rpc_method_handler(refuse)
    return grpc.stream_unary_rpc_method_handler(refuse)


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str, outcome: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.outcome = outcome
        self.retry_after = retry_after


class OtlpReceiver(BaseComponent):
    """Serves ``MetricsService/Export``; hands decoded records to its consumer.

    ``interceptors`` are extra gRPC server interceptors (tests use one to
    lose acknowledgements on purpose).
    """

    def __init__(
        self,
        settings: CreateSettings,
        config: OtlpReceiverConfig,
        consumer: Consumer,
        *,
        interceptors: Sequence[grpc.ServerInterceptor] = (),
    ) -> None:
        self.settings = settings
        self.config = config
        self.consumer = consumer
        self.log = settings.logger
        self._interceptors = tuple(interceptors)
        self._server: grpc.Server | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._stopped = False
        self.port = 0
        self._last_log: dict[str, float] = {}
        self.dedup = BatchIdWindow(config.dedup.max_ids_per_node, config.dedup.ttl, config.dedup.path or None)
        token = config.auth.bearer_token
        self._expected_auth = f"Bearer {token}".encode() if token else None
        lim = config.limits
        self.limits = DecodeLimits(
            max_age_ns=int(lim.max_age * _SECOND_NS), max_future_ns=int(lim.max_future * _SECOND_NS),
            max_bytes_per_second=lim.max_bytes_per_second, max_packets_per_second=lim.max_packets_per_second,
        )
        self._admission_lock = threading.Lock()
        self._in_progress = 0
        self._streams = 0
        self._per_peer: dict[str, int] = {}
        # Decoding takes a worker slot; delivery goes through the merger (one pipeline pass at a time,
        # the requests that waited meanwhile together), so slots never wait for the pipeline.
        self._decode_slots = threading.BoundedSemaphore(config.grpc.workers)
        merge = config.merge
        self._merger = (
            Merger(self._deliver_table, merge.max_records, merge.max_requests, merge.linger) if merge.enabled
            else None
        )
        self._watchdog: Watchdog | None = None
        m = settings.metrics
        self.m_requests = m.counter(
            "receiver_otlp_requests_total",
            "Export requests by outcome (ok, partial, duplicate, refused, invalid, unauthenticated, error, "
            "too_many_requests, too_many_from_peer, read_timeout, too_large_or_cancelled, bad_batch_id; "
            "too_many_streams: an OTAP stream over arrow.max_streams).",
            ["outcome"],
        )
        self.m_accepted = m.counter("receiver_accepted_points_total", "Data points handed to the next consumer.")
        self.m_records = m.counter("receiver_accepted_records_total", "Conntrack records handed to the consumer.")
        self.m_refused = m.counter(
            "receiver_refused_points_total", "Data points refused because the consumer pushed back (retried by "
            "the client)."
        )
        self.m_rejected = m.counter(
            "receiver_rejected_points_total", "Data points rejected as breaking the contract, by reason.", ["reason"]
        )
        self.m_duplicates = m.counter(
            "receiver_duplicate_points_total", "Data points of re-sent requests acknowledged without consuming."
        )
        self.m_cache_bytes = m.gauge(
            "receiver_otlp_cache_bytes", "Estimated bytes held by the decoder's caches (process-wide; each "
            "bounded by bytes, see docs/limits.md).", ["cache"],
        )
        self.m_cache_clears = m.gauge(
            "receiver_otlp_cache_clears", "Times a decoder cache was emptied because it reached its byte bound "
            "(process-wide, since start; often means more live connections than the cache holds).", ["cache"],
        )
        self.m_bars = m.counter(
            "receiver_otap_bars_total", "OTAP BatchArrowRecords by outcome (ok, partial, duplicate, refused, error, "
            "or the reason a BAR was refused whole: invalid_ipc, unknown_payload_type, missing_root, wrong_schema, "
            "bad_ids, bad_headers, bad_batch_id, invalid, ...).", ["outcome"],
        )
        self.m_streams = m.gauge("receiver_otap_streams", "OTAP (ArrowMetrics) streams open.")
        if self._merger is not None:
            merger = self._merger
            m.gauge("receiver_merged_requests", "Requests (Export or BAR) that went through the pipeline merged "
                    "with others that waited at the same time, since start (merge.*).").labels().set_function(
                lambda: merger.merged_requests)
            m.gauge("receiver_merged_batches", "Merged batches handed to the pipeline, since start: "
                    "receiver_merged_requests / this is the mean requests per merge.").labels().set_function(
                lambda: merger.groups)
            m.gauge("receiver_merge_linger_seconds", "Seconds merge leaders waited for requests that were being "
                    "decoded, since start (merge.linger).").labels().set_function(lambda: merger.lingered)
        self.m_latency = m.histogram(
            "receiver_request_latency_seconds", "Time to handle one export request.",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )

    # --- lifecycle -------------------------------------------------------------------

    def _server_options(self) -> list[tuple[str, int]]:
        g = self.config.grpc
        k = g.keepalive
        size = g.max_recv_msg_size_mib * 1024 * 1024
        options = [
            ("grpc.max_receive_message_length", size),
            ("grpc.max_send_message_length", 4 * 1024 * 1024),
            ("grpc.keepalive_time_ms", int(k.time * 1000)),
            ("grpc.keepalive_timeout_ms", int(k.timeout * 1000)),
            ("grpc.http2.min_ping_interval_without_data_ms", int(k.min_client_ping_interval * 1000)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.so_reuseport", 0),  # a second server on the same port must fail, not share it
        ]
        if k.max_connection_idle:
            options.append(("grpc.max_connection_idle_ms", int(k.max_connection_idle * 1000)))
        if k.max_connection_age:
            options.append(("grpc.max_connection_age_ms", int(k.max_connection_age * 1000)))
            options.append(("grpc.max_connection_age_grace_ms", int(k.max_connection_age_grace * 1000)))
        return options

    def start(self, host: Host) -> None:
        g = self.config.grpc
        # One thread per request in progress (a request waiting for its
        # message holds one, but no decode slot), plus room for refusals,
        # which are answered on a pool thread too. gRPC's own bound is a
        # backstop only: its refusals cannot be counted.
        threads = g.max_concurrent_requests + 4 + (self.config.arrow.max_streams if self.config.arrow.enabled else 0)
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=f"{self.settings.id}-grpc")
        self._watchdog = Watchdog(f"{self.settings.id}-read-timeout")
        server = grpc.server(
            self._pool,
            options=self._server_options(),
            interceptors=self._interceptors,
            maximum_concurrent_rpcs=2 * threads,
        )
        server.add_generic_rpc_handlers((_Admission(self),))
        tls = g.tls
        try:
            if tls.cert_file:
                creds = grpc.ssl_server_credentials(
                    [(Path(tls.key_file).read_bytes(), Path(tls.cert_file).read_bytes())],
                    root_certificates=Path(tls.client_ca_file).read_bytes() if tls.client_ca_file else None,
                    require_client_auth=bool(tls.client_ca_file),
                )
                port = server.add_secure_port(g.endpoint, creds)
            else:
                port = server.add_insecure_port(g.endpoint)
        except (OSError, RuntimeError) as exc:
            self._pool.shutdown(wait=False)
            raise RuntimeError(f"cannot listen on {g.endpoint}: {exc}") from exc
        if not port:
            self._pool.shutdown(wait=False)
            raise RuntimeError(f"cannot listen on {g.endpoint}: the address is in use or not local")
        self.port = port
        server.start()
        self._server = server
        self.log.info("OTLP/gRPC receiver listening on %s (port %d, tls=%s)", g.endpoint, port, bool(tls.cert_file))

    def shutdown(self, timeout: float = 30.0) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._server is not None:
            # New requests are refused at once; requests in progress get the
            # grace period to finish handing their batch to the consumer.
            self._server.stop(grace=max(0.0, timeout)).wait(timeout + 1.0)
            self._server = None
        if self._pool is not None:
            self._pool.shutdown(wait=False)
        if self._watchdog is not None:
            self._watchdog.stop()
        self.dedup.close()

    def is_ready(self) -> bool:
        return self._server is not None and not self._stopped

    # --- admission -------------------------------------------------------------------

    def _log_rate_limited(self, kind: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last_log.get(kind, -1e9) >= _LOG_EVERY:
            self._last_log[kind] = now
            self.log.warning(message, *args)
        else:
            self.log.debug(message, *args)

    def _refused(self, outcome: str, message: str, peer: str = "") -> None:
        """Count and log a request refused before its message was read (or instead of reading it)."""
        self.m_requests.labels(outcome=outcome).inc()
        self._log_rate_limited(outcome, "refused a request%s (%s): %s", f" from {peer}" if peer else "",
                               outcome, message)

    def _admit(self) -> bool:
        with self._admission_lock:
            if self._in_progress >= self.config.grpc.max_concurrent_requests:
                return False
            self._in_progress += 1
            return True

    def _admit_stream(self) -> bool:
        with self._admission_lock:
            if self._streams >= self.config.arrow.max_streams:
                return False
            self._streams += 1
            return True

    def _admit_peer(self, host: str) -> bool:
        with self._admission_lock:
            n = self._per_peer.get(host, 0)
            if n >= self.config.grpc.max_requests_per_peer:
                return False
            self._per_peer[host] = n + 1
            return True

    def _release(self, host: str | None) -> None:
        with self._admission_lock:
            self._in_progress -= 1
            if host is not None:
                n = self._per_peer[host] - 1
                if n:
                    self._per_peer[host] = n
                else:
                    del self._per_peer[host]

    def _read_message(self, requests: Iterator[bytes], context: grpc.ServicerContext, peer: str) -> bytes | None:
        """The request's one message, or None (counted, logged) when it did not arrive in time or at all."""
        assert self._watchdog is not None
        timed_out = threading.Event()

        def expire() -> None:
            timed_out.set()
            context.cancel()

        token = self._watchdog.arm(self.config.grpc.read_timeout, expire)
        try:
            data = next(requests, None)
        except grpc.RpcError:
            data = None
        finally:
            self._watchdog.disarm(token)
        if data is not None:
            return data
        # The call was cancelled: by our deadline, by the client, or by gRPC
        # for a message over max_receive_message_length (gRPC answered
        # RESOURCE_EXHAUSTED; the two look alike from here, and the iterator
        # either raises or just ends). Only a call still open is a client
        # that closed its side without sending a message.
        if timed_out.is_set():
            self._refused("read_timeout", f"no complete message within grpc.read_timeout="
                          f"{self.config.grpc.read_timeout:g} s: cancelled", peer)
            return None
        # gRPC may end an oversize call a moment after the iterator ended:
        # wait for it briefly (an empty request is abnormal anyway).
        deadline = time.monotonic() + 0.2
        while context.is_active() and time.monotonic() < deadline:
            time.sleep(0.005)
        if not context.is_active():
            limit = self.config.grpc.max_recv_msg_size_mib
            self._refused("too_large_or_cancelled", f"the message did not arrive: larger than "
                          f"grpc.max_recv_msg_size_mib={limit} (answered RESOURCE_EXHAUSTED), or the "
                          "client cancelled", peer)
            return None
        self._refused("invalid", "the client closed the request without a message", peer)
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no request message: send one ExportMetricsServiceRequest")
        return None

    # --- the handler -----------------------------------------------------------------

    def _export_stream(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        """Admitted by :class:`_Admission`; releases its slot whatever happens."""
        peer = context.peer() or ""
        host: str | None = _peer_host(peer)
        try:
            if not self._admit_peer(host or ""):
                host = None
                limit = self.config.grpc.max_requests_per_peer
                message = f"{limit} requests in progress from this address (grpc.max_requests_per_peer)"
                self._refused("too_many_from_peer", message, peer)
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, message + "; retry later")
            data = self._read_message(requests, context, peer)
            if data is None:
                return b""  # the call is already over (cancelled or failed)
            return self._export(data, context)
        finally:
            self._release(host)

    def _arrow_stream(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        """ArrowMetrics (OTAP): a BatchStatus per BAR, in order; a bad BAR costs only itself.

        The stream's state (Arrow IPC readers, HPACK decoder) lives in its
        :class:`RecordsConsumer`. A stream holds a server thread while open
        (``arrow.max_streams``); dead peers are found by gRPC keepalive.
        """
        peer = context.peer() or ""
        consumer = RecordsConsumer(self.limits, self.config.arrow.max_decompressed_mib * 1024 * 1024)
        self.m_streams.inc()
        try:
            for data in requests:
                yield self._bar(consumer, data, peer).SerializeToString()
        except grpc.RpcError:
            pass  # the client went away or cancelled: nothing to answer
        finally:
            self.m_streams.dec()
            with self._admission_lock:
                self._streams -= 1

    def _bar(self, consumer: RecordsConsumer, data: bytes, peer: str) -> Any:
        started = time.monotonic()
        status = BatchStatus(status_code=StatusCode.OK)
        try:
            try:
                bar = BatchArrowRecords.FromString(data)
            except DecodeError as exc:
                raise BarError("invalid", f"message is not a BatchArrowRecords: {exc}") from None
            status.batch_id = bar.batch_id
            batch_id = consumer.headers(bar).get(contract.BATCH_ID_METADATA)
            problem = _batch_id_problem(batch_id)
            if problem is not None:
                raise BarError("bad_batch_id", problem)
            with self._announce():
                with self._decode_slots, compute_slot():
                    result = consumer.decode(bar, time.time_ns())
                self._rejections(result, peer)
                outcome = self._deliver(result, batch_id, "partial" if result.rejected_points else "ok")
            if result.rejected_points:  # OK all the same: those points are never retried (OTLP partial success)
                status.status_message = f"rejected {result.rejected_points} data points: {result.error_message()}"
        except BarError as exc:
            outcome = exc.reason
            status.status_code, status.status_message = exc.code, exc.message
            self._log_rate_limited(f"bar_{exc.reason}", "refused a BAR from %s (%s): %s", peer, exc.reason,
                                   exc.message)
        except _Abort as exc:  # backpressure, a copy in flight: the agent retries this BAR
            outcome = exc.outcome
            status.status_code = exc.code.value[0]
            status.status_message = exc.message
        except Exception as exc:  # a bug: tell the client to retry rather than lose data
            outcome = "error"
            self.log.exception("OTAP batch failed")
            status.status_code, status.status_message = StatusCode.UNAVAILABLE, f"internal error: {exc}"
        finally:
            self.m_latency.observe(time.monotonic() - started)
        self.m_bars.labels(outcome=outcome).inc()
        return status

    def _export(self, data: bytes, context: grpc.ServicerContext) -> bytes:
        started = time.monotonic()
        try:
            response, outcome = self._handle(data, context)
        except _Abort as exc:
            self.m_requests.labels(outcome=exc.outcome).inc()
            if exc.outcome != "refused":  # backpressure is the pipeline's own state, logged there
                self._log_rate_limited(exc.outcome, "%s request from %s: %s", exc.outcome, context.peer(),
                                       exc.message)
            if exc.retry_after is not None:
                details = retry_info_status(exc.code.value[0], exc.message, exc.retry_after)
                context.set_trailing_metadata(((STATUS_DETAILS_KEY, details),))
            context.abort(exc.code, exc.message)
        except Exception as exc:  # a bug: tell the client to retry rather than lose data
            self.m_requests.labels(outcome="error").inc()
            self.log.exception("export request failed")
            details = retry_info_status(
                grpc.StatusCode.UNAVAILABLE.value[0], "internal error", self.config.backpressure_retry_after
            )
            context.set_trailing_metadata(((STATUS_DETAILS_KEY, details),))
            context.abort(grpc.StatusCode.UNAVAILABLE, f"internal error: {exc}")
        finally:
            self.m_latency.observe(time.monotonic() - started)
        self.m_requests.labels(outcome=outcome).inc()
        return response

    def _metadata(self, context: grpc.ServicerContext) -> dict[str, Any]:
        return dict(context.invocation_metadata() or ())

    def _handle(self, data: bytes, context: grpc.ServicerContext) -> tuple[bytes, str]:
        metadata = self._metadata(context)  # the token was checked on admission
        batch_id = metadata.get(contract.BATCH_ID_METADATA)
        problem = _batch_id_problem(batch_id) if isinstance(batch_id, str) else None
        if problem is not None:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, problem, "bad_batch_id")
        with self._announce():
            try:
                with self._decode_slots, compute_slot():
                    result = decode_records_bytes(data, self.limits, time.time_ns())
            except DecodeError as exc:
                raise _Abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"request is not an ExportMetricsServiceRequest: {exc}",
                    "invalid",
                ) from None
            self._rejections(result, context.peer())
            response = ExportMetricsServiceResponse()
            if result.rejected_points:
                response.partial_success.rejected_data_points = result.rejected_points
                response.partial_success.error_message = result.error_message()
            payload = response.SerializeToString()
            outcome = "partial" if result.rejected_points else "ok"
            return payload, self._deliver(result, batch_id if isinstance(batch_id, str) else None, outcome)

    def _announce(self) -> AbstractContextManager[None]:
        """A request on its way to the merger: a leader may wait for it (merge.linger)."""
        return self._merger.announce() if self._merger is not None else nullcontext()

    def _rejections(self, result: DecodeResult, peer: str) -> None:
        """Count (by reason) and log the points a decoder rejected; refresh the cache gauges."""
        for reason, n in result.rejected_by_reason.items():
            self.m_rejected.labels(reason=reason).inc(n)
        for name, cache in decoder_caches().items():
            self.m_cache_bytes.labels(cache=name).set(cache.nbytes)
            self.m_cache_clears.labels(cache=name).set(cache.clears)
        if result.rejected_points:
            self._log_rate_limited(
                "rejected_points", "rejected %d data points from %s: %s",
                result.rejected_points, peer, result.error_message(),
            )

    def _deliver(self, result: DecodeResult, batch_id: str | None, outcome: str) -> str:
        """Hand the accepted records on, once per batch id (OTLP Export and OTAP BARs alike); the outcome."""
        table = result.table
        if not table.num_rows:
            return outcome
        if not self.config.dedup.enabled or not batch_id:
            self._consume(table, result.accepted_points)
            return outcome
        state = self.dedup.begin(result.nodes, batch_id)
        if state == "duplicate":
            self.m_duplicates.inc(result.accepted_points)
            self.log.info("request %s from %s was already delivered: acknowledged, not consumed",
                          batch_id, ",".join(result.nodes))
            return "duplicate"
        if state == "in_flight":
            self.m_refused.inc(result.accepted_points)
            raise _Abort(
                grpc.StatusCode.UNAVAILABLE, f"request {batch_id} is being handled; retry later",
                "refused", self.config.backpressure_retry_after,
            )
        delivered = False
        try:
            # The id goes on with the batch (node-qualified: agents pick their ids alone), so a
            # queue that remembers named batches also drops a copy this window missed (a kill -9
            # between the consumer taking the batch and the journal's fsync).
            self._consume(table, result.accepted_points, f"otlp/{','.join(result.nodes)}/{batch_id}")
            delivered = True
        finally:
            self.dedup.end(result.nodes, batch_id, delivered)
        return outcome

    def _deliver_table(self, records: pa.RecordBatch, batch_id: str) -> None:
        # No malloc_trim here: returning a merged batch's temporaries saved ~40 MB of peak RSS in the
        # gateway bench (50k pods) but cost ~1 µs CPU per record, the next batches faulting them in again.
        self.consumer.consume(FlowBatch(records=records, batch_id=batch_id))

    def _consume(self, records: pa.RecordBatch, points: int, batch_id: str = "") -> None:
        try:
            if self._merger is not None:
                self._merger.submit(records, batch_id)
            else:
                self._deliver_table(records, batch_id)
        except BackpressureError as exc:
            self.m_refused.inc(points)
            retry_after = exc.retry_after if exc.retry_after is not None else self.config.backpressure_retry_after
            code = (
                grpc.StatusCode.RESOURCE_EXHAUSTED
                if self.config.backpressure_status == "resource_exhausted"
                else grpc.StatusCode.UNAVAILABLE
            )
            raise _Abort(code, f"pipeline is full: {exc}", "refused", retry_after) from None
        self.m_accepted.inc(points)
        self.m_records.inc(records.num_rows)
