"""Contract violations reject single data points, with reasons; the rest of the request is read."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from kubenetmon.otlp import _decode_records as decoder
from kubenetmon.otlp import decode_records, encode_records
from tests.otlp.otlp_testkit import by_identity, make_records


def valid_request(n: int = 6, node: str = "node-a", seed: int = 0) -> ExportMetricsServiceRequest:
    return encode_records(make_records(n, node=node, seed=seed, nat_every=2), {})[0]


def first_points(request: ExportMetricsServiceRequest) -> Any:
    return request.resource_metrics[0].scope_metrics[0].metrics[0].sum.data_points


def set_attr(dp: Any, key: str, *, string: str | None = None, integer: int | None = None) -> None:
    for kv in dp.attributes:
        if kv.key == key:
            if string is not None:
                kv.value.string_value = string
            else:
                kv.value.int_value = integer  # type: ignore[assignment]
            return
    raise AssertionError(key)


def drop_attr(dp: Any, key: str) -> None:
    keep = [kv for kv in dp.attributes if kv.key != key]
    copies = [(kv.key, kv.value.SerializeToString()) for kv in keep]
    del dp.attributes[:]
    for k, v in copies:
        kv = dp.attributes.add()
        kv.key = k
        kv.value.ParseFromString(v)


Mutation = Callable[[Any], None]
BAD_POINTS: dict[str, Mutation] = {
    "wrong_attribute_type": lambda dp: set_attr(dp, "source.port", string="443"),
    "bad_address": lambda dp: set_attr(dp, "source.address", string="10.0.0.300"),
    "bad_port": lambda dp: set_attr(dp, "destination.port", integer=70000),
    "bad_attribute_value": lambda dp: set_attr(dp, "network.transport", string="sctp"),
    "missing_attribute": lambda dp: drop_attr(dp, "destination.address"),
    "bad_direction": lambda dp: set_attr(dp, "kubenetmon.conntrack.direction", string="sideways"),
    "negative_value": lambda dp: setattr(dp, "as_int", -5),
    "wrong_value_type": lambda dp: setattr(dp, "as_double", 1.5),
    "bad_interval": lambda dp: setattr(dp, "start_time_unix_nano", dp.time_unix_nano + 1),
}


@pytest.mark.parametrize("reason", sorted(BAD_POINTS))
def test_a_bad_point_is_rejected_with_its_reason_and_the_rest_is_read(reason: str) -> None:
    request = valid_request()
    good = decode_records(valid_request()).records
    BAD_POINTS[reason](first_points(request)[0])
    result = decode_records(request)
    assert result.rejected_points == 1
    assert result.rejected_by_reason == {reason: 1}
    assert len(result.errors) == 1 and result.errors[0].startswith(reason + ":")
    # Every other point arrived: only the rejected point's counter is missing.
    assert sum(r.original_bytes + r.reply_bytes for r in result.records) == sum(
        r.original_bytes + r.reply_bytes for r in good
    ) - first_points(valid_request())[0].as_int
    assert sum(r.original_packets + r.reply_packets for r in result.records) == sum(
        r.original_packets + r.reply_packets for r in good
    )


def test_negative_value_is_rejected_on_the_fast_path_too() -> None:
    request = valid_request()
    first_points(request)[0].as_int = -1
    assert decoder._Decoder(fast=True).run(request).rejected_by_reason == {"negative_value": 1}


def test_missing_node_rejects_that_resource_only() -> None:
    request = valid_request(node="node-a")
    other = valid_request(node="node-b", seed=3)
    request.resource_metrics.add().CopyFrom(other.resource_metrics[0])
    attrs = request.resource_metrics[0].resource.attributes
    keep = [(kv.key, kv.value.string_value) for kv in attrs if kv.key != "k8s.node.name"]
    del attrs[:]
    for k, v in keep:
        kv = attrs.add()
        kv.key, kv.value.string_value = k, v
    n_points = sum(len(m.sum.data_points) for m in request.resource_metrics[0].scope_metrics[0].metrics)
    result = decode_records(request)
    assert result.rejected_by_reason == {"missing_node": n_points}
    assert "k8s.node.name" in result.errors[0]
    assert result.nodes == ["node-b"]
    assert by_identity(result.records) == by_identity(decode_records(other).records)


def test_node_name_of_the_wrong_type_is_rejected() -> None:
    request = valid_request()
    for kv in request.resource_metrics[0].resource.attributes:
        if kv.key == "k8s.node.name":
            kv.value.int_value = 7
    result = decode_records(request)
    assert set(result.rejected_by_reason) == {"missing_node"} and result.records == []


@pytest.mark.parametrize(
    ("reason", "change"),
    [
        ("unknown_metric", lambda m: setattr(m, "name", "kubenetmon.conntrack.bits")),
        ("not_delta", lambda m: setattr(m.sum, "aggregation_temporality", 2)),
        ("not_monotonic", lambda m: setattr(m.sum, "is_monotonic", False)),
    ],
)
def test_metric_level_violations_reject_that_metric_only(reason: str, change: Mutation) -> None:
    request = valid_request()
    metrics = request.resource_metrics[0].scope_metrics[0].metrics
    n_bytes_points = len(metrics[0].sum.data_points)
    change(metrics[0])
    result = decode_records(request)
    assert result.rejected_by_reason == {reason: n_bytes_points}
    assert all(r.original_bytes == 0 and r.reply_bytes == 0 for r in result.records)
    assert sum(r.original_packets for r in result.records) > 0  # the packets metric still flowed


def test_gauge_is_not_a_sum() -> None:
    request = valid_request()
    metric = request.resource_metrics[0].scope_metrics[0].metrics[0]
    points = list(metric.sum.data_points)
    metric.gauge.data_points.extend(points)
    result = decode_records(request)
    assert result.rejected_by_reason == {"not_sum": len(points)}


def test_distinct_reasons_are_each_reported_once() -> None:
    request = valid_request(n=10)
    points = first_points(request)
    BAD_POINTS["bad_address"](points[0])
    BAD_POINTS["bad_address"](points[1])
    BAD_POINTS["bad_port"](points[2])
    result = decode_records(request)
    assert result.rejected_by_reason == {"bad_address": 2, "bad_port": 1}
    assert len(result.errors) == 2
    assert "bad_address" in result.error_message() and "bad_port" in result.error_message()


@pytest.mark.parametrize("reason", sorted(BAD_POINTS))
def test_fast_and_slow_paths_reject_the_same_way(reason: str) -> None:
    request = valid_request(n=8)
    BAD_POINTS[reason](first_points(request)[1])
    fast, slow = decode_records(request), decoder._Decoder(fast=False).run(request)
    assert fast.rejected_by_reason == slow.rejected_by_reason == {reason: 1}
    assert by_identity(fast.records) == by_identity(slow.records)
