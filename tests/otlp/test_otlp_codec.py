"""The §4.1 wire contract: records → requests → records is exact, and the layout is the documented one."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from kubenetmon.flows import ConntrackRecord
from kubenetmon.otlp import _decode_records as decoder
from kubenetmon.otlp import decode_records, decode_records_bytes, encode_records, encode_records_bytes
from tests.otlp.otlp_testkit import SECOND, T0, by_identity, make_records


def nonzero(records: list[ConntrackRecord]) -> list[ConntrackRecord]:
    return [r for r in records if r.original_bytes or r.original_packets or r.reply_bytes or r.reply_packets]


def attrs(kvs: Any) -> dict[str, Any]:
    out = {}
    for kv in kvs:
        which = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, which)
    return out


def slow_decode(request: ExportMetricsServiceRequest) -> decoder.DecodeResult:
    return decoder._Decoder(fast=False).run(request)


def test_round_trip_is_exact_for_v4_v6_nat_and_mirrored_tuples() -> None:
    records = make_records(600)
    assert {r.network_type for r in records} == {"ipv4", "ipv6"}
    assert any(r.is_mirrored() for r in records) and any(not r.is_mirrored() for r in records)
    requests = encode_records(records, {"host.name": "h1"})
    assert len(requests) == 1
    result = decode_records(requests[0])
    assert result.rejected_points == 0 and result.errors == []
    assert by_identity(result.records) == by_identity(records)


def test_fast_and_slow_decoders_agree() -> None:
    request = encode_records(make_records(300), {})[0]
    fast, slow = decode_records(request), slow_decode(request)
    assert by_identity(fast.records) == by_identity(slow.records)
    assert fast.accepted_points == slow.accepted_points > 0


def test_canonical_request_takes_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(decoder._Decoder, "_points_slow", lambda *a: calls.append(a))
    result = decode_records(encode_records(make_records(50), {})[0])
    assert calls == [] and len(result.records) == 50


def test_resource_service_metrics_and_units_follow_the_contract() -> None:
    request = encode_records(make_records(10), {"host.name": "h1"})[0]
    (rm,) = request.resource_metrics
    assert attrs(rm.resource.attributes) == {
        "service.name": "kubenetmon-agent", "k8s.node.name": "node-a", "host.name": "h1",
    }
    metrics = {m.name: m for sm in rm.scope_metrics for m in sm.metrics}
    assert set(metrics) == {"kubenetmon.conntrack.bytes", "kubenetmon.conntrack.packets"}
    assert metrics["kubenetmon.conntrack.bytes"].unit == "By"
    assert metrics["kubenetmon.conntrack.packets"].unit == "{packet}"
    for m in metrics.values():
        assert m.WhichOneof("data") == "sum"
        assert m.sum.is_monotonic and m.sum.aggregation_temporality == 1  # DELTA
        for dp in m.sum.data_points:
            assert dp.WhichOneof("value") == "as_int"
            assert (dp.start_time_unix_nano, dp.time_unix_nano) == (T0, T0 + 5 * SECOND)


def test_reply_tuple_attributes_only_when_nat() -> None:
    mirrored, nat = make_records(2, nat_every=2)[1], make_records(1, nat_every=1)[0]
    assert mirrored.is_mirrored() and not nat.is_mirrored()
    request = encode_records([mirrored, nat], {})[0]
    points = request.resource_metrics[0].scope_metrics[0].metrics[0].sum.data_points
    by_src = {attrs(dp.attributes)["source.address"]: attrs(dp.attributes) for dp in points}
    m, n = by_src[mirrored.src], by_src[nat.src]
    assert not any(k.startswith("kubenetmon.reply.") for k in m)
    assert n["kubenetmon.reply.source.address"] == nat.reply_src
    assert n["kubenetmon.reply.source.port"] == nat.reply_sport
    assert n["kubenetmon.reply.destination.address"] == nat.reply_dst
    assert n["kubenetmon.reply.destination.port"] == nat.reply_dport
    assert m["network.transport"] in ("tcp", "udp") and m["network.type"] == mirrored.network_type
    assert (m["destination.address"], m["destination.port"]) == (mirrored.dst, mirrored.dport)


def test_zero_points_are_not_sent() -> None:
    base = make_records(1, nat_every=0)[0]
    only_original = replace(base, reply_bytes=0, reply_packets=0)
    silent = replace(base, sport=base.sport + 1, reply_dport=base.sport + 1, original_bytes=0,
                     original_packets=0, reply_bytes=0, reply_packets=0)
    request = encode_records([only_original, silent], {})[0]
    directions = [attrs(dp.attributes)["kubenetmon.conntrack.direction"]
                  for m in request.resource_metrics[0].scope_metrics[0].metrics for dp in m.sum.data_points]
    assert directions == ["original", "original"]
    assert decode_records(request).records == [only_original]
    assert encode_records([silent], {}) == []


def test_records_of_several_nodes_get_one_resource_each() -> None:
    records = make_records(20, node="node-a") + make_records(30, node="node-b", seed=1)
    request = encode_records(records, {})[0]
    nodes = [attrs(rm.resource.attributes)["k8s.node.name"] for rm in request.resource_metrics]
    assert nodes == ["node-a", "node-b"]
    result = decode_records(request)
    assert result.nodes == ["node-a", "node-b"]
    assert by_identity(result.records) == by_identity(records)


def test_resource_node_name_fills_records_without_a_node() -> None:
    record = replace(make_records(1)[0], node="")
    request = encode_records([record], {"k8s.node.name": "from-config"})[0]
    assert decode_records(request).records == [replace(record, node="from-config")]
    with pytest.raises(ValueError, match=r"k8s\.node\.name"):
        encode_records([record], {})


@pytest.mark.parametrize("max_points", [4, 7, 50, 1000])
def test_split_requests_respect_max_points_and_keep_records_whole(max_points: int) -> None:
    records = make_records(120, node="node-a") + make_records(80, node="node-b", seed=2)
    requests = encode_records(records, {}, max_points=max_points)
    total_points = 0
    decoded: list[ConntrackRecord] = []
    for request in requests:
        points = sum(len(m.sum.data_points) for rm in request.resource_metrics
                     for sm in rm.scope_metrics for m in sm.metrics)
        assert 0 < points <= max_points
        total_points += points
        decoded += decode_records(request).records
    expected_points = sum((r.original_bytes > 0) + (r.original_packets > 0) + (r.reply_bytes > 0)
                          + (r.reply_packets > 0) for r in records)
    assert total_points == expected_points
    # Each record comes back whole from exactly one request: nothing split, nothing doubled.
    assert by_identity(decoded) == by_identity(records)
    if max_points < expected_points:
        assert len(requests) > 1


def test_max_points_below_one_record_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 4"):
        encode_records(make_records(1), {}, max_points=3)


def test_bytes_and_messages_encodings_are_the_same_request() -> None:
    records = make_records(40)
    (data,) = encode_records_bytes(records, {})
    (message,) = encode_records(records, {})
    assert message.SerializeToString() == data
    assert by_identity(decode_records_bytes(data).records) == by_identity(records)


def test_attributes_in_another_order_decode_the_same() -> None:
    """Other senders are not bound to our attribute order: the slow path reads them."""
    records = make_records(12)
    request = encode_records(records, {})[0]
    for m in request.resource_metrics[0].scope_metrics[0].metrics:
        for dp in m.sum.data_points:
            kvs = list(reversed([(kv.key, kv.value.SerializeToString()) for kv in dp.attributes]))
            del dp.attributes[:]
            for key, value in kvs:
                kv = dp.attributes.add()
                kv.key = key
                kv.value.ParseFromString(value)
            extra = dp.attributes.add()  # unknown attributes are ignored
            extra.key = "k8s.pod.uid"
            extra.value.string_value = "abc"
    result = decode_records(request)
    assert result.rejected_points == 0
    assert by_identity(result.records) == by_identity(records)


def test_non_canonical_address_text_is_canonicalised() -> None:
    record = make_records(2)[1]
    assert record.network_type == "ipv6"
    request = encode_records([replace(record, src=record.src.upper().replace("FD00::", "FD00:0::"))], {})[0]
    assert decode_records(request).records == [record]


def test_bytes_of_our_encoder_are_decoded_without_parsing_the_request(monkeypatch: pytest.MonkeyPatch) -> None:
    records = make_records(80, node="node-a") + make_records(20, node="node-b", seed=4)
    data = encode_records_bytes(records, {})[0]
    expected = decode_records(ExportMetricsServiceRequest.FromString(data))

    def no_parse(*_: Any) -> None:
        raise AssertionError("the canonical request was parsed")

    monkeypatch.setattr(decoder, "ExportMetricsServiceRequest", no_parse)
    result = decode_records_bytes(data)
    assert by_identity(result.records) == by_identity(expected.records) == by_identity(records)
    assert result.nodes == ["node-a", "node-b"] and result.accepted_points == expected.accepted_points


def test_bytes_of_other_layouts_are_parsed_and_checked() -> None:
    request = encode_records(make_records(10), {})[0]
    request.resource_metrics[0].scope_metrics[0].metrics[0].sum.aggregation_temporality = 2
    result = decode_records_bytes(request.SerializeToString())
    assert result.rejected_by_reason == {"not_delta": len(request.resource_metrics[0].scope_metrics[0]
                                                        .metrics[0].sum.data_points)}


@pytest.mark.parametrize("garbage", [b"\xff\xff\xff", b"\x0a\x05abc", b"\x0a\x80"])
def test_garbage_bytes_raise_decode_error(garbage: bytes) -> None:
    from google.protobuf.message import DecodeError

    with pytest.raises(DecodeError):
        decode_records_bytes(garbage)


def test_truncated_request_raises_decode_error() -> None:
    from google.protobuf.message import DecodeError

    data = encode_records_bytes(make_records(10), {})[0]
    with pytest.raises(DecodeError):
        decode_records_bytes(data[:-7])


def test_attribute_block_with_a_wrong_length_byte_is_not_read_by_the_fast_path() -> None:
    request = encode_records(make_records(1, nat_every=0), {})[0]
    data = request.resource_metrics[0].scope_metrics[0].metrics[0].sum.SerializeToString()
    attrs_start = data.index(b"\x3a", 30)  # first attribute after the point's fixed header
    block_end = data.index(b"\x3a", data.index(b"destination.port"))  # the direction attribute
    block = bytearray(data[attrs_start:block_end])
    assert decoder._parse_attrs(bytes(block))[0] == "tcp"
    address_at = block.index(b"source.address") + len("source.address") + 3  # the value's own length byte
    block[address_at] += 1
    with pytest.raises(decoder._NotCanonical):
        decoder._parse_attrs(bytes(block))


def test_points_with_extra_fields_are_read_by_the_slow_path_with_the_same_result() -> None:
    records = make_records(10)
    request = encode_records(records, {})[0]
    for m in request.resource_metrics[0].scope_metrics[0].metrics:
        for dp in m.sum.data_points:
            dp.flags = 1
    result = decode_records_bytes(request.SerializeToString())
    assert result.rejected_points == 0
    assert by_identity(result.records) == by_identity(records)
