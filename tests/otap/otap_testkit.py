"""A reference OTLP → OTAP converter (Python objects per point: tests only) and BAR helpers.

It writes any ``ExportMetricsServiceRequest`` (hostile ones included) as the
four OTAP metrics tables, in plain encoding with the metadata set — another
producer than ours, so the consumer is tested against the spec's shape and
not only against our producer's habits.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from kubenetmon.otap import BatchArrowRecords, encode_headers
from kubenetmon.otap._proto import ArrowPayloadType as T
from kubenetmon.otap._tables import schema_id

_PLAIN = {b"encoding": b"plain"}
_KINDS = {"sum": 2, "gauge": 1, "histogram": 3, "exponential_histogram": 4, "summary": 5, None: 0}


def ipc(batch: pa.RecordBatch) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    data: bytes = sink.getvalue().to_pybytes()
    return data[:-8]  # without the end-of-stream marker: the stream goes on


def _attr_rows(parent: int, attributes: Any, rows: dict[str, list[Any]]) -> None:
    for kv in attributes:
        which = kv.value.WhichOneof("value")
        rows["parent_id"].append(parent)
        rows["key"].append(kv.key)
        rows["type"].append({"string_value": 1, "bool_value": 2, "int_value": 3, "double_value": 4,
                             "bytes_value": 5}.get(which or "", 0))
        rows["str"].append(kv.value.string_value if which == "string_value" else None)
        rows["int"].append(kv.value.int_value if which == "int_value" else None)
        rows["double"].append(kv.value.double_value if which == "double_value" else None)


def _attr_table(rows: dict[str, list[Any]], parent_type: pa.DataType) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays(
        [pa.array(rows["parent_id"], parent_type), pa.array(rows["key"], pa.utf8()), pa.array(rows["type"], pa.uint8()),
         pa.array(rows["str"], pa.utf8()), pa.array(rows["int"], pa.int64()), pa.array(rows["double"], pa.float64())],
        schema=pa.schema([pa.field("parent_id", parent_type, metadata=_PLAIN), ("key", pa.utf8()),
                          ("type", pa.uint8()), ("str", pa.utf8()), ("int", pa.int64()), ("double", pa.float64())]),
    )


def tables_from_request(request: ExportMetricsServiceRequest) -> dict[int, pa.RecordBatch]:
    """The request as OTAP metrics tables (plain ids)."""
    metrics: dict[str, list[Any]] = {k: [] for k in ("id", "rid", "type", "name", "temp", "mono")}
    res_rows: dict[str, list[Any]] = {k: [] for k in ("parent_id", "key", "type", "str", "int", "double")}
    dp_rows: dict[str, list[Any]] = {k: [] for k in ("parent_id", "key", "type", "str", "int", "double")}
    points: dict[str, list[Any]] = {k: [] for k in ("id", "parent_id", "start", "end", "int", "double")}
    for rid, rm in enumerate(request.resource_metrics):
        _attr_rows(rid, rm.resource.attributes, res_rows)
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                mid = len(metrics["id"])
                which = metric.WhichOneof("data")
                data = getattr(metric, which) if which else None
                metrics["id"].append(mid)
                metrics["rid"].append(rid)
                metrics["type"].append(_KINDS.get(which, 0))
                metrics["name"].append(metric.name)
                metrics["temp"].append(getattr(data, "aggregation_temporality", 0) if data is not None else 0)
                metrics["mono"].append(bool(getattr(data, "is_monotonic", False)) if data is not None else False)
                for dp in (data.data_points if data is not None else ()):
                    pid = len(points["id"])
                    points["id"].append(pid)
                    points["parent_id"].append(mid)
                    points["start"].append(dp.start_time_unix_nano)
                    points["end"].append(dp.time_unix_nano)
                    value = dp.WhichOneof("value")
                    points["int"].append(dp.as_int if value == "as_int" else None)
                    points["double"].append(dp.as_double if value == "as_double" else None)
                    _attr_rows(pid, dp.attributes, dp_rows)
    root = pa.RecordBatch.from_arrays(
        [pa.array(metrics["id"], pa.uint16()),
         pa.StructArray.from_arrays([pa.array(metrics["rid"], pa.uint16())], names=["id"]),
         pa.array(metrics["type"], pa.uint8()), pa.array(metrics["name"], pa.utf8()),
         pa.array(metrics["temp"], pa.int32()), pa.array(metrics["mono"], pa.bool_())],
        schema=pa.schema([pa.field("id", pa.uint16(), metadata=_PLAIN), ("resource", pa.struct([("id", pa.uint16())])),
                          ("metric_type", pa.uint8()), ("name", pa.utf8()), ("aggregation_temporality", pa.int32()),
                          ("is_monotonic", pa.bool_())]),
    )
    tables = {T.UNIVARIATE_METRICS: root, T.RESOURCE_ATTRS: _attr_table(res_rows, pa.uint16())}
    if points["id"]:
        tables[T.NUMBER_DATA_POINTS] = pa.RecordBatch.from_arrays(
            [pa.array(points["id"], pa.uint32()), pa.array(points["parent_id"], pa.uint16()),
             pa.array(points["start"], pa.uint64()).cast(pa.int64()).cast(pa.timestamp("ns")),
             pa.array(points["end"], pa.uint64()).cast(pa.int64()).cast(pa.timestamp("ns")),
             pa.array(points["int"], pa.int64()), pa.array(points["double"], pa.float64())],
            schema=pa.schema([pa.field("id", pa.uint32(), metadata=_PLAIN),
                              pa.field("parent_id", pa.uint16(), metadata=_PLAIN),
                              ("start_time_unix_nano", pa.timestamp("ns")), ("time_unix_nano", pa.timestamp("ns")),
                              ("int_value", pa.int64()), ("double_value", pa.float64())]),
        )
        tables[T.NUMBER_DP_ATTRS] = _attr_table(dp_rows, pa.uint32())
    return tables


def bar_of(tables: dict[int, pa.RecordBatch], batch_id: int = 0, headers: dict[str, str] | None = None,
           order: tuple[int, ...] | None = None) -> Any:
    """A BAR with each table as a new IPC stream (schema first)."""
    bar = BatchArrowRecords(batch_id=batch_id, headers=encode_headers(headers or {}))
    for kind in order or tuple(tables):
        table = tables[kind]
        bar.arrow_payloads.add(schema_id=schema_id(table.schema), type=kind, record=ipc(table))
    return bar
