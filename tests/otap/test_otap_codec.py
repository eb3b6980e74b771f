"""OTAP carries exactly what OTLP carries: records in, the same records (and rejections) out."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from kubenetmon.flows import ADDRESS, RECORD_SCHEMA, FlowBatch
from kubenetmon.otap import BarError, BatchArrowRecords, RecordsConsumer, RecordsProducer
from kubenetmon.otap._proto import ArrowPayloadType as T
from kubenetmon.otlp import DecodeLimits, decode_records, decode_records_bytes, encode_record_table_bytes
from kubenetmon.otlp._limits import MAX_TIME_NS
from tests.otap.otap_testkit import bar_of, ipc, tables_from_request
from tests.otlp.otlp_testkit import SECOND, T0, by_identity, make_records
from tests.otlp.test_otlp_decode_rejects import BAD_POINTS, first_points, set_attr, valid_request

NOW = T0 + 60 * SECOND


def table_of(records: list[Any]) -> pa.RecordBatch:
    return FlowBatch(records=records).record_table()


def via_otlp(table: pa.RecordBatch, limits: DecodeLimits | None = None) -> tuple[list[Any], dict[str, int], list[str]]:
    results = [decode_records_bytes(d, limits, NOW) for d in encode_record_table_bytes(table, {})]
    records = [r for res in results for r in res.records]
    reasons: dict[str, int] = {}
    for res in results:
        for k, v in res.rejected_by_reason.items():
            reasons[k] = reasons.get(k, 0) + v
    return by_identity(records), reasons, sorted(e for res in results for e in res.errors)


def via_otap(table: pa.RecordBatch, producer: RecordsProducer | None = None, consumer: RecordsConsumer | None = None,
             limits: DecodeLimits | None = None) -> Any:
    producer = producer or RecordsProducer()
    consumer = consumer or RecordsConsumer(limits)
    bar = BatchArrowRecords.FromString(producer.encode(table, {}, {"kubenetmon-batch-id": "b"}))
    assert consumer.headers(bar) == {"kubenetmon-batch-id": "b"}
    return consumer.decode(bar, NOW)


def test_records_arrive_as_they_were_sent_and_as_otlp_delivers_them() -> None:
    records = make_records(3000, nat_every=3, v6_every=2)
    records[5].reply_bytes = records[5].reply_packets = 0  # zero counters are not points
    table = table_of(records)
    result = via_otap(table)
    assert result.rejected_points == 0
    expected, reasons, _ = via_otlp(table)
    assert reasons == {}
    assert by_identity(result.records) == expected == by_identity(records)
    assert result.table.schema.equals(RECORD_SCHEMA)
    assert result.accepted_points == sum(
        (r.original_bytes != 0) + (r.reply_bytes != 0) + (r.original_packets != 0) + (r.reply_packets != 0)
        for r in records)


def test_a_stream_sends_its_schemas_once_and_new_strings_as_dictionary_deltas() -> None:
    producer, consumer = RecordsProducer(), RecordsConsumer()
    first = table_of(make_records(500, seed=1))
    sizes = []
    for table in (first, first, table_of(make_records(500, seed=2)), first):
        data = producer.encode(table, {}, {})
        sizes.append(len(data))
        result = consumer.decode(BatchArrowRecords.FromString(data), NOW)
        assert by_identity(result.records) == by_identity(FlowBatch(records=table).records)
    # The second BAR repeats the first's connections: no schema, no address text again.
    assert sizes[1] < 0.8 * sizes[0]
    assert sizes[3] < 0.8 * sizes[0]


def test_points_and_their_attributes_are_compressed_and_the_few_rows_of_the_root_are_not() -> None:
    """Each compressed buffer costs the reader a codec call (~12 µs, whatever its size): the root and the
    resource attributes, a few rows per BAR, travel as they are; they decode the same either way."""
    table = table_of(make_records(2000, seed=3))
    payloads = {}
    for compression in ("zstd", None):
        bar = BatchArrowRecords.FromString(RecordsProducer(compression).encode(table, {}, {}))
        payloads[compression] = {int(p.type): bytes(p.record) for p in bar.arrow_payloads}
        assert by_identity(RecordsConsumer().decode(bar, NOW).records) == by_identity(FlowBatch(records=table).records)
    for kind in (T.UNIVARIATE_METRICS, T.RESOURCE_ATTRS):
        assert payloads["zstd"][kind] == payloads[None][kind]
    for kind in (T.NUMBER_DATA_POINTS, T.NUMBER_DP_ATTRS):
        assert len(payloads["zstd"][kind]) < 0.5 * len(payloads[None][kind])


def test_a_full_string_dictionary_restarts_and_an_oversized_one_goes_plain() -> None:
    rng = np.random.default_rng(7)
    n = 20_000  # 80,000 distinct addresses: more than UInt16 dictionary keys reach
    raw = rng.integers(0, 256, size=(4, n, 16), dtype=np.uint8)
    raw[:, :, 0] = 0xFD
    columns = {name: pa.FixedSizeBinaryArray.from_buffers(ADDRESS, n, [None, pa.py_buffer(raw[i].copy())])
               for i, name in enumerate(("src", "dst", "reply_src", "reply_dst"))}
    rows = [{"node": "n", "transport": "tcp", "network_type": "ipv6", "sport": 1, "dport": 2, "reply_sport": 3,
             "reply_dport": 4, "original_bytes": 10, "original_packets": 1, "reply_bytes": 0, "reply_packets": 0,
             "start_ns": T0, "end_ns": T0 + SECOND}] * n
    base = pa.RecordBatch.from_pylist(
        [{**r, "src": None, "dst": None, "reply_src": None, "reply_dst": None} for r in rows], schema=RECORD_SCHEMA)
    table = pa.RecordBatch.from_arrays(
        [columns.get(f.name, base.column(f.name)) for f in RECORD_SCHEMA], schema=RECORD_SCHEMA)
    producer, consumer = RecordsProducer(), RecordsConsumer()
    small = table.slice(0, 10_000)
    for t in (small, table, small):
        result = via_otap(t, producer, consumer)
        assert result.rejected_points == 0
        assert result.table.sort_by("src").to_pylist() == t.sort_by("src").to_pylist()


def test_an_ipv4_mapped_address_of_an_ipv6_record_and_unusual_values_decode_as_over_otlp() -> None:
    records = make_records(40, v6_every=2)
    records[1].src = "::ffff:10.1.2.3"  # an ipv6 row
    records[2].transport = "sctp"  # outside the contract: sent as is, rejected alone
    records[3].network_type = "ipv5"
    table = table_of(records)
    result = via_otap(table)
    expected, reasons, errors = via_otlp(table)
    assert by_identity(result.records) == expected
    assert result.rejected_by_reason == reasons and reasons
    assert sorted(result.errors) == errors


def test_time_and_delta_limits_reject_the_same_points_with_the_same_messages() -> None:
    records = make_records(30)
    records[0].end_ns = MAX_TIME_NS + SECOND
    records[1].start_ns = records[1].end_ns + 1
    records[2].original_bytes = 10**15  # more than 400 Gbit/s over 5 s
    records[3].start_ns, records[3].end_ns = T0 - 48 * 3600 * SECOND, T0 - 47 * 3600 * SECOND
    table = table_of(records)
    limits = DecodeLimits(max_age_ns=24 * 3600 * SECOND, max_future_ns=3600 * SECOND)
    result = via_otap(table, limits=limits)
    expected, reasons, errors = via_otlp(table, limits)
    assert set(reasons) == {"time_out_of_range", "bad_interval", "impossible_delta", "time_too_old"}
    assert result.rejected_by_reason == reasons
    assert sorted(result.errors) == errors
    assert by_identity(result.records) == expected


def otap_of_request(request: Any) -> Any:
    return RecordsConsumer().decode(bar_of(tables_from_request(request)), time.time_ns())


@pytest.mark.parametrize("reason", sorted(BAD_POINTS))
def test_a_bad_point_from_another_producer_gets_the_otlp_decoders_reason_and_message(reason: str) -> None:
    request = valid_request(n=8)
    BAD_POINTS[reason](first_points(request)[1])
    otlp, otap = decode_records(request), otap_of_request(request)
    assert otap.rejected_by_reason == otlp.rejected_by_reason == {reason: 1}
    assert otap.errors == otlp.errors
    assert by_identity(otap.records) == by_identity(otlp.records)


# Address texts at the edges of what inet_pton takes; the OTAP decoder parses dotted quads as columns and
# must accept, reject and equate exactly the same addresses as the OTLP decoder.
ADDRESS_TEXTS = [
    "0.0.0.0", "255.255.255.255", "10.1.2.3", "01.2.3.4", "1.2.3.04", "1.2.3.00", "256.1.1.1", "1.2.3",
    "1.2.3.4.5", " 1.2.3.4", "1.2.3.4 ", "1..2.3", "1.2.3.-4", "0x1.2.3.4", "\u0661.2.3.4", "1.2.3.4\n",
    "::ffff:10.1.2.3", "::FFFF:10.1.2.3", "2001:db8::1", "2001:DB8:0:0:0:0:0:1", "::", "1.2.3.4:80",
    "9" * 65, "1." * 32 + "1", "",
]


def test_address_texts_are_accepted_refused_and_equated_as_over_otlp() -> None:
    from kubenetmon.otlp import _contract as c

    request = valid_request(n=len(ADDRESS_TEXTS))
    for dp in request.resource_metrics[0].scope_metrics[0].metrics:
        for i, point in enumerate(dp.sum.data_points):
            set_attr(point, c.ATTR_SRC_ADDRESS, string=ADDRESS_TEXTS[i % len(ADDRESS_TEXTS)])
            # Equal addresses in other texts make one record of two points, in both decoders.
            set_attr(point, c.ATTR_DST_ADDRESS, string="10.1.2.3" if i % 2 else "::ffff:10.1.2.3")
    otlp, otap = decode_records(request), otap_of_request(request)
    assert otlp.rejected_by_reason and otlp.records  # the edge cases do both
    assert otap.rejected_by_reason == otlp.rejected_by_reason
    assert sorted(otap.errors) == sorted(otlp.errors)
    assert by_identity(otap.records) == by_identity(otlp.records)


@pytest.mark.parametrize(("reason", "change"), [
    ("unknown_metric", lambda m: setattr(m, "name", "kubenetmon.conntrack.bits")),
    ("not_delta", lambda m: setattr(m.sum, "aggregation_temporality", 2)),
    ("not_monotonic", lambda m: setattr(m.sum, "is_monotonic", False)),
])
def test_metric_level_violations_reject_that_metric_only(reason: str, change: Any) -> None:
    request = valid_request()
    change(request.resource_metrics[0].scope_metrics[0].metrics[0])
    otlp, otap = decode_records(request), otap_of_request(request)
    assert otap.rejected_by_reason == otlp.rejected_by_reason
    assert otap.errors == otlp.errors
    assert by_identity(otap.records) == by_identity(otlp.records)


def test_a_resource_without_node_rejects_its_points_only() -> None:
    request = valid_request(node="node-a")
    request.resource_metrics.add().CopyFrom(valid_request(node="node-b", seed=3).resource_metrics[0])
    attrs = request.resource_metrics[0].resource.attributes
    keep = [(kv.key, kv.value.string_value) for kv in attrs if kv.key != "k8s.node.name"]
    del attrs[:]
    for k, v in keep:
        kv = attrs.add()
        kv.key, kv.value.string_value = k, v
    otlp, otap = decode_records(request), otap_of_request(request)
    assert otap.rejected_by_reason == otlp.rejected_by_reason and "missing_node" in otap.rejected_by_reason
    assert otap.nodes == otlp.nodes == ["node-b"]
    assert by_identity(otap.records) == by_identity(otlp.records)


def test_duplicate_points_of_one_tuple_sum_as_over_otlp() -> None:
    request = valid_request(n=4)
    points = first_points(request)
    points.add().CopyFrom(points[0])
    otlp, otap = decode_records(request), otap_of_request(request)
    assert by_identity(otap.records) == by_identity(otlp.records)
    assert otap.accepted_points == otlp.accepted_points


# --- BARs refused whole ------------------------------------------------------------------


def good_tables() -> dict[int, pa.RecordBatch]:
    return tables_from_request(valid_request(n=4))


def test_garbage_ipc_is_refused_with_a_clear_reason_and_the_stream_goes_on() -> None:
    producer, consumer = RecordsProducer(), RecordsConsumer()
    table = table_of(make_records(50))
    assert consumer.decode(BatchArrowRecords.FromString(producer.encode(table, {}, {})), NOW).accepted_points
    bad = BatchArrowRecords.FromString(producer.encode(table, {}, {}))
    del bad.arrow_payloads[:]
    bad.arrow_payloads.add(schema_id="made:Up", type=T.UNIVARIATE_METRICS,
                           record=b"\xff\xff\xff\xff\x10\x00\x00\x00garbage-garbage!")
    with pytest.raises(BarError) as info:
        consumer.decode(bad, NOW)
    assert info.value.reason == "invalid_ipc" and "Arrow IPC" in info.value.message
    # The stream's own IPC streams are untouched: its next BAR is read normally.
    result = consumer.decode(BatchArrowRecords.FromString(producer.encode(table, {}, {})), NOW)
    assert by_identity(result.records) == by_identity(FlowBatch(records=table).records)


@pytest.mark.parametrize(("reason", "change"), [
    ("unknown_payload_type", lambda bar: setattr(bar.arrow_payloads[0], "type", 40)),
    ("missing_root", lambda bar: bar.arrow_payloads.pop(0)),
    ("invalid_ipc", lambda bar: setattr(bar.arrow_payloads[1], "record", bar.arrow_payloads[1].record[:20])),
    ("duplicate_payload", lambda bar: bar.arrow_payloads.add().CopyFrom(bar.arrow_payloads[1])),
])
def test_a_broken_bar_is_refused_whole(reason: str, change: Any) -> None:
    bar = bar_of(good_tables())
    change(bar)
    with pytest.raises(BarError) as info:
        RecordsConsumer().decode(bar, time.time_ns())
    assert info.value.reason == reason
    assert info.value.message


def test_a_table_with_the_wrong_schema_is_refused_whole() -> None:
    tables = good_tables()
    points = tables[T.NUMBER_DATA_POINTS]
    tables[T.NUMBER_DATA_POINTS] = points.set_column(
        points.schema.get_field_index("id"), "id", pa.array([str(i) for i in range(points.num_rows)]))
    with pytest.raises(BarError) as info:
        RecordsConsumer().decode(bar_of(tables), time.time_ns())
    assert info.value.reason == "wrong_schema" and "'id'" in info.value.message


def test_an_attribute_of_a_point_that_does_not_exist_refuses_the_bar() -> None:
    tables = good_tables()
    attrs = tables[T.NUMBER_DP_ATTRS]
    parents = attrs.column("parent_id").to_pylist()
    parents[0] = 10_000
    tables[T.NUMBER_DP_ATTRS] = attrs.set_column(0, attrs.schema.field("parent_id"), pa.array(parents, pa.uint32()))
    with pytest.raises(BarError) as info:
        RecordsConsumer().decode(bar_of(tables), time.time_ns())
    assert info.value.reason == "bad_ids"


def test_bad_headers_are_refused() -> None:
    bar = bar_of(good_tables())
    bar.headers = b"\xff\xff\xff"
    with pytest.raises(BarError) as info:
        RecordsConsumer().headers(bar)
    assert info.value.reason == "bad_headers"


def test_quasi_delta_parent_ids_from_another_producer_decode() -> None:
    tables = good_tables()
    attrs = tables[T.NUMBER_DP_ATTRS]
    # Sort by key and value, then encode parent ids as the spec's quasi-delta, without the metadata
    # (absent metadata means the attribute tables' default, quasi-delta).
    order = sorted(range(attrs.num_rows), key=lambda i: (attrs.column("key")[i].as_py(),
                                                         str(attrs.column("str")[i].as_py()),
                                                         attrs.column("int")[i].as_py() or 0,
                                                         attrs.column("parent_id")[i].as_py()))
    attrs = attrs.take(pa.array(order))
    rows = attrs.to_pylist()
    encoded = []
    for i, row in enumerate(rows):
        prev = rows[i - 1] if i else None
        same = prev is not None and all(prev[k] == row[k] for k in ("key", "type", "str", "int", "double"))
        encoded.append(row["parent_id"] - prev["parent_id"] if same else row["parent_id"])
    tables[T.NUMBER_DP_ATTRS] = attrs.set_column(0, pa.field("parent_id", pa.uint32()), pa.array(encoded, pa.uint32()))
    request = valid_request(n=4)
    assert by_identity(RecordsConsumer().decode(bar_of(tables), time.time_ns()).records) == by_identity(
        decode_records(request).records)


def test_ipc_helper_leaves_the_stream_open() -> None:
    table = good_tables()[T.UNIVARIATE_METRICS]
    assert not ipc(table).endswith(b"\xff\xff\xff\xff\x00\x00\x00\x00")


@pytest.mark.parametrize("compression", ["zstd", None])
def test_the_decompressed_size_is_known_from_the_metadata_before_decompressing(compression: str | None) -> None:
    from kubenetmon.otap._stream import declared_bytes

    batch = pa.record_batch([pa.array(np.zeros(200_000, dtype=np.int64)),
                             pa.array(["x"] * 200_000).dictionary_encode()], names=["zeros", "s"])
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema, options=pa.ipc.IpcWriteOptions(compression=compression)) as w:
        w.write_batch(batch)
    data = sink.getvalue().to_pybytes()
    assert declared_bytes(data) >= 200_000 * (8 + 4)  # the zeros and the int32 indices, whatever the wire size
    if compression:
        assert len(data) < 20_000


def test_a_bar_that_would_decompress_past_the_bound_is_refused_before_it_is_read() -> None:
    producer = RecordsProducer()
    table = table_of(make_records(2000))
    small = RecordsConsumer(max_bar_bytes=100_000)
    with pytest.raises(BarError) as info:
        small.decode(BatchArrowRecords.FromString(producer.encode(table, {}, {})), NOW)
    assert info.value.reason == "too_large" and "arrow.max_decompressed_mib" in info.value.message
    assert not small._readers  # nothing was read: the stream's readers are as they were


@pytest.mark.parametrize("string_type", [pa.string(), pa.large_string(), pa.string_view()])
def test_a_dictionary_of_any_string_type_means_the_same_and_a_delta_adds_to_it(string_type: pa.DataType) -> None:
    from kubenetmon.otap._stream import StreamStrings

    strings = StreamStrings()
    first = ["10.0.0.1", "tcp", None, "::1", "01.2.3.4", "x" * 70]
    strings.update(pa.array(first, string_type))
    strings.update(pa.array([*first, "::ffff:10.0.0.1", "udp"], string_type))  # a delta: two new strings
    assert strings.address.tolist() == [0, 3, 3, 1, 3, 2, 1, 3]  # IPv4, not, not, IPv6, not, too long, IPv6, not
    assert strings.transport.tolist() == [-1, 0, -1, -1, -1, -1, -1, 1]
    assert strings.address_id[6] == strings.address_id[0] != strings.address_id[3]  # one address, two texts
    assert strings.texts[2] == "" and strings.texts[6] == "::ffff:10.0.0.1"
    with pytest.raises(TypeError, match="expected strings"):
        StreamStrings().update(pa.array([b"10.0.0.1"], pa.binary()))
