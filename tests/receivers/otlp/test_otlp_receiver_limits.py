"""Points with times or deltas the store cannot take are rejected alone at the receiver (issue 16 items 1, 5)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import grpc
import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)

from kubenetmon.otlp import decode_records, encode_records
from kubenetmon.receivers.otlp import OtlpReceiver
from kubenetmon.testing import SinkConsumer
from tests.otlp.otlp_testkit import HOUR, SECOND, T0, make_records

EXPORT = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"
Start = Callable[..., OtlpReceiver]


def export(port: int, request: ExportMetricsServiceRequest, **metadata: str) -> ExportMetricsServiceResponse:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(EXPORT, response_deserializer=ExportMetricsServiceResponse.FromString)
        return call(request.SerializeToString(), timeout=5,  # type: ignore[no-any-return]
                    metadata=list(metadata.items()))


@pytest.mark.parametrize(("field", "value", "reason"), [
    ("time_unix_nano", 2**64 - 1, "time_out_of_range"),
    ("start_time_unix_nano", 0, "bad_interval"),
    ("time_unix_nano", T0 + 2 * HOUR + 3600 * SECOND, "time_in_future"),
    ("as_int", 2**62, "impossible_delta"),
])
def test_one_bad_point_is_rejected_and_the_rest_of_the_request_is_consumed(
    receivers: Start, caplog: pytest.LogCaptureFixture, field: str, value: int, reason: str
) -> None:
    sink = SinkConsumer()
    r = receivers(sink)
    request = encode_records(make_records(6), {})[0]
    points = decode_records(request).accepted_points
    setattr(request.resource_metrics[0].scope_metrics[0].metrics[0].sum.data_points[0], field, value)
    with caplog.at_level(logging.WARNING):
        response = export(r.port, request)
    assert response.partial_success.rejected_data_points == 1
    assert reason in response.partial_success.error_message
    assert r.m_rejected.value(reason=reason) == 1
    assert r.m_accepted.value() == points - 1
    assert reason in caplog.text


def test_the_time_window_is_configurable(receivers: Start) -> None:
    sink = SinkConsumer()
    r = receivers(sink, limits={"max_age": 60})  # T0 is an hour or more ago
    response = export(r.port, encode_records(make_records(2), {})[0])
    assert response.partial_success.rejected_data_points > 0
    assert "time_too_old" in response.partial_success.error_message
    assert sink.batches == []


def test_an_over_long_batch_id_is_invalid_argument(receivers: Start) -> None:
    sink = SinkConsumer()
    r = receivers(sink)
    with pytest.raises(grpc.RpcError) as info:
        export(r.port, encode_records(make_records(2), {})[0], **{"kubenetmon-batch-id": "x" * 200})
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert r.m_requests.value(outcome="bad_batch_id") == 1
    assert sink.batches == []


def test_the_decoder_caches_are_reported_in_bytes(receivers: Start) -> None:
    r = receivers(SinkConsumer())
    export(r.port, encode_records(make_records(20), {})[0])
    assert r.m_cache_bytes.value(cache="tuples") > 0
    assert r.m_cache_bytes.value(cache="addresses") > 0
    assert r.m_cache_clears.value(cache="tuples") >= 0


def test_the_batch_id_goes_on_with_the_batch_node_qualified(receivers: Start) -> None:
    sink = SinkConsumer()
    r = receivers(sink)
    export(r.port, encode_records(make_records(3), {})[0], **{"kubenetmon-batch-id": "00ab"})
    export(r.port, encode_records(make_records(3), {})[0])  # without an id: none
    assert [b.batch_id for b in sink.batches] == ["otlp/node-a/00ab", ""]
