"""OTAP — the OpenTelemetry Protocol with Apache Arrow — for the agent → gateway contract (DESIGN §4.1).

The same metrics as the OTLP contract, as Arrow tables on a gRPC stream
(otel-arrow's ``ArrowMetricsService``): several times fewer bytes on the
wire and no per-point work in Python on either side. Plain OTLP stays the
default and the interoperable path; the ``otlp`` exporter negotiates OTAP
(``arrow.enabled``) and falls back to OTLP when the server does not offer it.

* :class:`RecordsProducer` — per gRPC stream: a records batch → one ``BatchArrowRecords``.
* :class:`ArrowStreams` — the exporter's streams (one BAR in flight on each; UNIMPLEMENTED →
  :class:`ArrowUnavailableError`, the signal to fall back to Export).
* :class:`RecordsConsumer` — per gRPC stream: a ``BatchArrowRecords`` → a :class:`~kubenetmon.otlp.DecodeResult`
  with the OTLP decoder's checks, or :class:`BarError` when the BAR is refused whole.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kubenetmon.otap._client import ArrowBusyError, ArrowStreams, ArrowUnavailableError
from kubenetmon.otap._headers import HeaderDecoder, encode_headers
from kubenetmon.otap._producer import RecordsProducer
from kubenetmon.otap._proto import ARROW_METRICS_METHOD, ArrowPayloadType, BatchArrowRecords, BatchStatus, StatusCode

__all__ = [
    "ARROW_METRICS_METHOD",
    "ArrowBusyError",
    "ArrowPayloadType",
    "ArrowStreams",
    "ArrowUnavailableError",
    "BarError",
    "BatchArrowRecords",
    "BatchStatus",
    "HeaderDecoder",
    "RecordsConsumer",
    "RecordsProducer",
    "StatusCode",
    "encode_headers",
]

if TYPE_CHECKING:
    from kubenetmon.otap._consumer import BarError, RecordsConsumer


def __getattr__(name: str) -> Any:
    # The gateway's side is imported when first used: the agent never needs it (nor the libraries it
    # loads; its module-level Arrow arrays import pandas where installed, +40 MB RSS in every agent).
    if name in ("BarError", "RecordsConsumer"):
        from kubenetmon.otap import _consumer

        return getattr(_consumer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
