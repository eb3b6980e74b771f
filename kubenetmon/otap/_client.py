"""The agent's side of ArrowMetrics: a few long-lived streams, one BAR in flight on each.

Why one BAR in flight per stream: the exporter helper pushes a queue block
and waits for its acknowledgement (the BatchStatus) before it acks the
block, so the persistent queue and retries stay exactly as with Export;
``num_streams`` streams let that many workers send at once.

A stream's producer state (IPC writers, string dictionary) matches the
server's readers only while the stream lives: a broken stream, a timeout or
a refused BAR ends the stream, and the next BAR opens a new one with fresh
state. A stream is also renewed after ``max_lifetime`` seconds, so agents
spread again over gateway replicas that were added or restarted.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
import pyarrow as pa

from kubenetmon.otap._producer import RecordsProducer
from kubenetmon.otap._proto import ARROW_METRICS_METHOD, BatchStatus, StatusCode

__all__ = ["ArrowBusyError", "ArrowStreams", "ArrowUnavailableError"]


class ArrowUnavailableError(Exception):
    """The server has no ArrowMetricsService (UNIMPLEMENTED): use Export."""


class ArrowBusyError(Exception):
    """A new stream was refused with RESOURCE_EXHAUSTED (the server's stream bound): use Export this time."""


class _Stream:
    def __init__(self, channel: grpc.Channel, metadata: Sequence[tuple[str, str]], compression: str | None) -> None:
        self.producer = RecordsProducer(compression)
        self.opened = time.monotonic()
        self._requests: queue.Queue[bytes | None] = queue.Queue()
        call = channel.stream_stream(ARROW_METRICS_METHOD, request_serializer=None,
                                     response_deserializer=BatchStatus.FromString)
        self.call: Any = call(iter(self._requests.get, None), metadata=list(metadata))
        self.answered = 0

    def send(self, table: pa.RecordBatch, resource: Mapping[str, str], headers: dict[str, str],
             timeout: float) -> tuple[Any, int]:
        """The BatchStatus of one BAR and the BAR's size; raises ``grpc.RpcError`` when the stream fails."""
        data = self.producer.encode(table, resource, headers)
        self._requests.put(data)
        # A stream has no per-message deadline: a timer cancels the call instead (the stream is then dropped).
        timer = threading.Timer(timeout, self.call.cancel)
        timer.daemon = True
        timer.start()
        try:
            status = next(self.call)
        finally:
            timer.cancel()
        self.answered += 1
        return status, len(data)

    def close(self) -> None:
        self._requests.put(None)
        self.call.cancel()


class ArrowStreams:
    """Up to ``num_streams`` ArrowMetrics streams on one channel, each used by one sender at a time."""

    def __init__(self, channel: grpc.Channel, *, num_streams: int, metadata: Sequence[tuple[str, str]],
                 compression: str | None, max_lifetime: float) -> None:
        self._channel = channel
        self._metadata = list(metadata)
        self._compression = compression
        self._max_lifetime = max_lifetime
        self._idle: queue.Queue[_Stream | None] = queue.Queue()
        for _ in range(num_streams):
            self._idle.put(None)  # a slot: a stream is opened on first use
        self._lock = threading.Lock()
        self._open: set[_Stream] = set()
        self.opened = 0

    def send(self, table: pa.RecordBatch, resource: Mapping[str, str], headers: dict[str, str],
             timeout: float) -> tuple[Any, int]:
        """Send one BAR on an idle stream; its BatchStatus and size in bytes.

        Raises :class:`ArrowUnavailableError` when the server does not offer
        ArrowMetrics, :class:`ArrowBusyError` when it refused a new stream,
        ``grpc.RpcError`` or ``ConnectionError`` when the stream failed (it is
        closed; the next call opens another), ``TimeoutError`` when no stream
        became idle in time. A non-OK status that is not retryable also closes
        the stream: the server may have dropped its readers.
        """
        try:
            stream = self._idle.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no idle Arrow stream within {timeout:g} s") from None
        keep = False
        try:
            if stream is not None and time.monotonic() - stream.opened > self._max_lifetime:
                self._close(stream)
                stream = None
            if stream is None:
                stream = _Stream(self._channel, self._metadata, self._compression)
                with self._lock:
                    self._open.add(stream)
                    self.opened += 1
            try:
                status, size = stream.send(table, resource, headers, timeout)
            except grpc.RpcError as exc:
                code = exc.code() if isinstance(exc, grpc.Call) else None
                if code is grpc.StatusCode.UNIMPLEMENTED:
                    raise ArrowUnavailableError(exc.details() or "UNIMPLEMENTED") from None
                if code is grpc.StatusCode.RESOURCE_EXHAUSTED and not stream.answered:
                    raise ArrowBusyError(exc.details() or "RESOURCE_EXHAUSTED") from None
                raise
            except StopIteration:
                raise ConnectionError("the server ended the Arrow stream without a BatchStatus") from None
            keep = status.status_code == 0 or _retryable(status.status_code)
            return status, size
        finally:
            if not keep and stream is not None:
                self._close(stream)
                stream = None
            self._idle.put(stream)

    def _close(self, stream: _Stream) -> None:
        stream.close()
        with self._lock:
            self._open.discard(stream)

    def close(self) -> None:
        with self._lock:
            streams = list(self._open)
            self._open.clear()
        for stream in streams:
            stream.close()


def _retryable(code: int) -> bool:
    return code in StatusCode.RETRYABLE
