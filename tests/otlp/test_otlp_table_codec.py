"""The columnar codec (issues 11, 12): same bytes as the row encoders, records decoded into Arrow columns."""

from __future__ import annotations

import ipaddress
from typing import Any

import grpc
import pyarrow as pa
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from kubenetmon.flows import RECORD_SCHEMA, Endpoint, Flow, FlowBatch
from kubenetmon.otlp import _encode_table as table_codec
from kubenetmon.otlp import (
    decode_records_bytes,
    encode_flow_table_bytes,
    encode_flows_bytes,
    encode_record_table_bytes,
    encode_records_bytes,
)
from tests.fuzz.test_fuzz_otlp_decoder import records
from tests.otlp.otlp_testkit import T0, by_identity, make_records, receivers  # noqa: F401 (fixture)


@settings(max_examples=150, deadline=None)
@given(st.lists(records(T0), min_size=1, max_size=30), st.sampled_from([None, 4, 7, 50]))
def test_records_from_a_table_encode_to_the_row_encoders_bytes(recs: list[Any], max_points: int | None) -> None:
    for r in recs:  # the table's int64 time column holds what a real interval can
        r.start_ns, r.end_ns = min(r.start_ns, 2**63 - 1), min(r.end_ns, 2**63 - 1)
        # An IPv4-mapped address of an ipv6 record: the table encoder writes its IPv6 form (what the
        # receiver accepts for network.type=ipv6); rows from a table print it as IPv4 (kubenetmon.flows).
        assume(r.network_type == "ipv4" or not any(
            ipaddress.IPv6Address(a).ipv4_mapped for a in (r.src, r.dst, r.reply_src, r.reply_dst)))
    rows = FlowBatch(records=FlowBatch(records=recs).record_table()).records
    table = FlowBatch(records=rows).record_table()
    assert encode_record_table_bytes(table, {"k8s.cluster.name": "c"}, max_points=max_points) == \
        encode_records_bytes(rows, {"k8s.cluster.name": "c"}, max_points=max_points)


def test_a_connections_attribute_block_is_cached_across_intervals_and_bounded() -> None:
    table_codec._BLOCKS.clear()
    first = FlowBatch(records=make_records(50)).record_table()
    encode_record_table_bytes(first, {})
    assert len(table_codec._BLOCKS) == 50
    later = FlowBatch(records=make_records(50, start=T0 + 5_000_000_000)).record_table()
    encode_record_table_bytes(later, {})  # the same connections, the next interval: no new blocks
    assert len(table_codec._BLOCKS) == 50
    assert table_codec._BLOCKS.nbytes <= table_codec.BLOCK_CACHE_BYTES


def test_the_decoder_hands_on_columns_in_the_record_schema() -> None:
    recs = make_records(40)
    result = decode_records_bytes(encode_records_bytes(recs, {})[0])
    assert isinstance(result.table, pa.RecordBatch) and result.table.schema.equals(RECORD_SCHEMA)
    assert result.table.num_rows == 40
    assert by_identity(result.records) == by_identity(recs)


def test_flows_from_a_table_encode_to_the_row_encoders_bytes() -> None:
    flows = []
    for i in range(300):
        local = Endpoint(address=f"10.0.{i // 250}.{i % 250}", port=1000 + i % 7, pod=f"p{i % 50}",
                         namespace="ns" if i % 3 else "", node="n1")
        remote = Endpoint(address=f"fd00::{i:x}" if i % 2 else "8.8.8.8", port=0 if i % 5 == 0 else 443,
                          cloud="aws" if i % 4 else "")
        flows.append(Flow(direction="out" if i % 2 else "in", transport="tcp",
                          network_type="ipv6" if i % 2 else "ipv4", local=local, remote=remote, bytes=i,
                          packets=i % 3, connection_class="INTRA_VPC" if i % 2 else "",
                          connection_flags={"NAT": True, "B": False} if i % 6 == 0 else {}, observer="n1",
                          start_ns=T0, end_ns=T0 + 10))
    table = FlowBatch(flows=flows).flow_table()
    rows = FlowBatch(flows=table).flows
    for max_points in (None, 2, 33):
        assert encode_flow_table_bytes(table, {"a": "b"}, max_points=max_points) == \
            encode_flows_bytes(rows, {"a": "b"}, max_points=max_points)


def _no_rows(*_: Any) -> Any:
    raise AssertionError("the hot path converted a batch to rows")


def test_receiver_and_exporter_never_make_rows(monkeypatch: Any, receivers: Any) -> None:  # noqa: F811
    from kubenetmon import flows as flows_module
    from kubenetmon.exporterhelper.queue import Block
    from kubenetmon.testing import SinkConsumer
    from tests.otlp.otlp_testkit import exporter_config, make_exporter

    sink = SinkConsumer()
    r = receivers(sink)
    e = make_exporter(exporter_config(r.port))
    batch = FlowBatch(records=FlowBatch(records=make_records(30)).record_table())
    monkeypatch.setattr(flows_module, "_table_to_records", _no_rows)
    monkeypatch.setattr(flows_module, "_table_to_flows", _no_rows)
    requests = e.encode(Block("b", [batch]))
    assert requests


    with grpc.insecure_channel(f"127.0.0.1:{r.port}") as channel:
        channel.unary_unary("/opentelemetry.proto.collector.metrics.v1.MetricsService/Export")(requests[0], timeout=5)
    assert sink.batches and sink.batches[0].record_table().num_rows == 30
    monkeypatch.undo()
    assert by_identity(sink.records) == by_identity(make_records(30))


def test_an_ipv4_mapped_address_of_an_ipv6_record_survives_the_table_path() -> None:
    recs = make_records(2)
    recs[1].src = recs[1].reply_dst = "::ffff:10.1.2.3"  # record 1 is IPv6
    assert recs[1].network_type == "ipv6"
    data = encode_record_table_bytes(FlowBatch(records=recs).record_table(), {})
    assert decode_records_bytes(data[0]).rejected_points == 0
