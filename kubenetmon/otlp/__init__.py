"""The OTLP wire contract: conntrack records and flows ↔ OTLP metrics (DESIGN §4.1, §4.4).

Shared by the ``otlp`` exporter (agent → gateway, gateway → any OTLP
backend), the ``otlp`` receiver (gateway) and benchmarks.

* :func:`encode_records` / :func:`encode_records_bytes` — §4.1, what the agent sends.
* :func:`decode_records` / :func:`decode_records_bytes` — §4.1, what the gateway reads
  (:class:`DecodeLimits`: times and deltas it accepts; :func:`decode_records_slow`
  is the message-API reference the fast path must agree with).
* :func:`encode_flows` / :func:`encode_flows_bytes` — §4.4, attributed flows for any backend.
* :func:`encode_record_table_bytes` / :func:`encode_flow_table_bytes` — the same bytes from
  Arrow record batches (``FlowBatch.record_table()`` / ``flow_table()``), without per-record
  objects: what the exporter uses.

The ``*_bytes`` variants skip building protobuf objects: the exporter sends
their output as it is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from kubenetmon.flows import ConntrackRecord, Flow
from kubenetmon.otlp import _contract as contract
from kubenetmon.otlp._decode_records import DecodeResult, decode_records, decode_records_bytes, decode_records_slow
from kubenetmon.otlp._encode_flows import FLOW_ATTRIBUTES, encode_flows_bytes
from kubenetmon.otlp._encode_records import encode_records_bytes
from kubenetmon.otlp._encode_table import encode_flow_table_bytes, encode_record_table_bytes
from kubenetmon.otlp._limits import DecodeLimits

__all__ = [
    "FLOW_ATTRIBUTES",
    "DecodeLimits",
    "DecodeResult",
    "ExportMetricsServiceRequest",
    "contract",
    "decode_records",
    "decode_records_bytes",
    "decode_records_slow",
    "encode_flow_table_bytes",
    "encode_flows",
    "encode_flows_bytes",
    "encode_record_table_bytes",
    "encode_records",
    "encode_records_bytes",
]


def encode_records(
    records: Sequence[ConntrackRecord], resource: Mapping[str, str], *, max_points: int | None = None
) -> list[ExportMetricsServiceRequest]:
    """Conntrack records as OTLP requests (DESIGN §4.1).

    One ``ResourceMetrics`` per observing node (``record.node``, else
    ``resource["k8s.node.name"]``); ``resource`` gives the other resource
    attributes (``service.name`` defaults to ``kubenetmon-agent``,
    ``host.name`` to the node). Zero counters are not sent. With
    ``max_points``, no request holds more data points than that; the points of
    one record always stay in one request.
    """
    return [_parse(data) for data in encode_records_bytes(records, resource, max_points=max_points)]


def encode_flows(
    flows: Sequence[Flow], resource: Mapping[str, str], *, max_points: int | None = None
) -> list[ExportMetricsServiceRequest]:
    """Attributed flows as OTLP requests (DESIGN §4.4); the mapping is ``FLOW_ATTRIBUTES``."""
    return [_parse(data) for data in encode_flows_bytes(flows, resource, max_points=max_points)]


def _parse(data: bytes) -> ExportMetricsServiceRequest:
    request = ExportMetricsServiceRequest()
    request.ParseFromString(data)
    return request
