"""The OTAP gRPC messages (otel-arrow ``arrow_service.proto``), built from a descriptor at import.

Why not generated code: the project ships no protoc step, and these are three
small messages. Field numbers and names are the upstream ones, so the bytes
are the upstream wire format (package ``opentelemetry.proto.experimental.arrow.v1``).
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.message_factory import GetMessageClass

__all__ = [
    "ARROW_METRICS_METHOD",
    "ArrowPayloadType",
    "BatchArrowRecords",
    "BatchStatus",
    "StatusCode",
]

_PACKAGE = "opentelemetry.proto.experimental.arrow.v1"
ARROW_METRICS_METHOD = f"/{_PACKAGE}.ArrowMetricsService/ArrowMetrics"


class ArrowPayloadType:
    """``ArrowPayloadType`` values used for metrics (the rest are other signals: refused)."""

    UNKNOWN = 0
    RESOURCE_ATTRS = 1
    SCOPE_ATTRS = 2
    UNIVARIATE_METRICS = 10
    NUMBER_DATA_POINTS = 11
    NUMBER_DP_ATTRS = 15


class StatusCode:
    """``StatusCode`` of a ``BatchStatus``; the retryable ones are :data:`RETRYABLE`."""

    OK = 0
    CANCELED = 1
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    ABORTED = 10
    INTERNAL = 13
    UNAVAILABLE = 14
    UNAUTHENTICATED = 16
    RETRYABLE = frozenset({CANCELED, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED, UNAVAILABLE})


def _build() -> dict[str, Any]:
    f = descriptor_pb2.FieldDescriptorProto
    fd = descriptor_pb2.FileDescriptorProto(
        name="kubenetmon/otap/arrow_service.proto", package=_PACKAGE, syntax="proto3"
    )
    payload_type = fd.enum_type.add(name="ArrowPayloadType")
    for name, number in (("UNKNOWN", 0), ("RESOURCE_ATTRS", 1), ("SCOPE_ATTRS", 2), ("UNIVARIATE_METRICS", 10),
                         ("NUMBER_DATA_POINTS", 11), ("NUMBER_DP_ATTRS", 15)):
        payload_type.value.add(name=name, number=number)
    status = fd.enum_type.add(name="StatusCode")
    for name, number in (("OK", 0), ("CANCELED", 1), ("INVALID_ARGUMENT", 3), ("DEADLINE_EXCEEDED", 4),
                         ("PERMISSION_DENIED", 7), ("RESOURCE_EXHAUSTED", 8), ("ABORTED", 10), ("INTERNAL", 13),
                         ("UNAVAILABLE", 14), ("UNAUTHENTICATED", 16)):
        status.value.add(name=name, number=number)

    def message(name: str, fields: list[tuple[str, int, int, int, str]]) -> None:
        m = fd.message_type.add(name=name)
        for fname, number, ftype, label, type_name in fields:
            field = m.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                field.type_name = f".{_PACKAGE}.{type_name}"

    opt, rep = f.LABEL_OPTIONAL, f.LABEL_REPEATED
    message("ArrowPayload", [("schema_id", 1, f.TYPE_STRING, opt, ""), ("type", 2, f.TYPE_ENUM, opt,
                             "ArrowPayloadType"), ("record", 3, f.TYPE_BYTES, opt, "")])
    message("BatchArrowRecords", [("batch_id", 1, f.TYPE_INT64, opt, ""), ("arrow_payloads", 2, f.TYPE_MESSAGE, rep,
                                  "ArrowPayload"), ("headers", 3, f.TYPE_BYTES, opt, "")])
    message("BatchStatus", [("batch_id", 1, f.TYPE_INT64, opt, ""), ("status_code", 2, f.TYPE_ENUM, opt,
                            "StatusCode"), ("status_message", 3, f.TYPE_STRING, opt, "")])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    return {name: GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.{name}"))
            for name in ("ArrowPayload", "BatchArrowRecords", "BatchStatus")}


_CLASSES = _build()
BatchArrowRecords: Any = _CLASSES["BatchArrowRecords"]
BatchStatus: Any = _CLASSES["BatchStatus"]
