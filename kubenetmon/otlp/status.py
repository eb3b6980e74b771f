"""gRPC error details for OTLP: ``RetryInfo`` in ``grpc-status-details-bin``.

OTLP servers say when to come back with a ``google.rpc.RetryInfo`` inside the
``google.rpc.Status`` carried in the trailing metadata key
``grpc-status-details-bin``. Written here once for the receiver (which sends
it) and the exporter (which honours it), without the grpcio-status package.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]

__all__ = ["STATUS_DETAILS_KEY", "retry_after_of", "retry_info_status"]

STATUS_DETAILS_KEY = "grpc-status-details-bin"


def retry_info_status(code: int, message: str, retry_after: float) -> bytes:
    """A serialized ``google.rpc.Status`` holding ``RetryInfo(retry_delay=retry_after)``.

    ``code`` is the numeric gRPC status code (``grpc.StatusCode.X.value[0]``).
    """
    info = error_details_pb2.RetryInfo()
    seconds = max(0.0, retry_after)
    info.retry_delay.seconds = int(seconds)
    info.retry_delay.nanos = round((seconds - math.floor(seconds)) * 1e9) % 1_000_000_000
    status = status_pb2.Status(code=code, message=message)
    status.details.add().Pack(info)
    return bytes(status.SerializeToString())


def retry_after_of(trailing_metadata: Iterable[Any] | None) -> float | None:
    """Seconds of the ``RetryInfo`` in trailing metadata, or None when there is none."""
    for item in trailing_metadata or ():
        key, value = item[0], item[1]
        if key != STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        status = status_pb2.Status()
        try:
            status.ParseFromString(value)
        except DecodeError:
            return None
        for detail in status.details:
            if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                info = error_details_pb2.RetryInfo()
                detail.Unpack(info)
                return float(info.retry_delay.seconds + info.retry_delay.nanos / 1e9)
    return None
