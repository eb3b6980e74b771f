"""The fast-path OTLP decoder accepts exactly what the protobuf slow path accepts (issue 16 item 9).

Differential: every input goes through ``decode_records_bytes`` (fast path
when the bytes are canonical) and through protobuf + the field-by-field
reference (``decode_records_slow``); both must refuse it (DecodeError) or
agree on the records, the accepted count and the rejections by reason.
Inputs: hypothesis-generated records with structured mutations, and byte
mutations of a canonical request. Bounded for CI; set
``KUBENETMON_FUZZ_EXAMPLES`` for a longer run.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.message import DecodeError
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from kubenetmon.flows import ConntrackRecord
from kubenetmon.otlp import DecodeLimits, decode_records_bytes, decode_records_slow, encode_records_bytes
from tests.fuzz.fuzzkit import fuzz_settings
from tests.otlp.otlp_testkit import SECOND, by_identity, make_records

NOW = 1_800_000_000 * SECOND
LIMITS = DecodeLimits(max_age_ns=24 * 3600 * SECOND, max_future_ns=300 * SECOND)
EXAMPLES = 300  # per test; KUBENETMON_FUZZ_EXAMPLES overrides (tests/fuzz/fuzzkit.py)
FUZZ = fuzz_settings(EXAMPLES)


def check_same(data: bytes) -> None:
    try:
        parsed = ExportMetricsServiceRequest()
        parsed.ParseFromString(data)
        expected = decode_records_slow(parsed, LIMITS, NOW)
    except DecodeError:
        try:
            decode_records_bytes(data, LIMITS, NOW)
        except DecodeError:
            return
        raise AssertionError("the fast path accepted bytes protobuf refuses") from None
    got = decode_records_bytes(data, LIMITS, NOW)
    assert got.rejected_by_reason == expected.rejected_by_reason
    assert got.accepted_points == expected.accepted_points
    assert by_identity(got.records) == by_identity(expected.records)
    assert got.nodes == expected.nodes


# --- structured -----------------------------------------------------------------------

v4 = st.ip_addresses(v=4).map(str)
v6 = st.ip_addresses(v=6).map(str)
ports = st.integers(0, 65535)
counters = st.one_of(st.integers(1, 10**6), st.integers(0, 2**63 - 1), st.just(0))


def times_around(now: int) -> st.SearchStrategy[int]:
    """Times inside and outside a 24 h / 5 min window around ``now``, never within a second of its edges."""
    hour = 3600 * SECOND
    return st.one_of(
        st.integers(now - 23 * hour, now + 60 * SECOND),
        st.sampled_from([0, 1, 2**63 - 1, 2**64 - 1, now - 25 * hour, now + 600 * SECOND, now]),
    )


@st.composite
def records(draw: Any, now: int = NOW) -> ConntrackRecord:
    times = times_around(now)
    six = draw(st.booleans())
    addr = v6 if six else v4
    src, dst = draw(addr), draw(addr)
    sport, dport = draw(ports), draw(ports)
    nat = draw(st.booleans())
    start = draw(times)
    end = draw(st.one_of(st.just(start + 5 * SECOND), times))
    return ConntrackRecord(
        node=draw(st.sampled_from(["node-a", "node-b"])),
        transport=draw(st.sampled_from(["tcp", "udp"])), network_type="ipv6" if six else "ipv4",
        src=src, sport=sport, dst=dst, dport=dport,
        reply_src=draw(addr) if nat else dst, reply_sport=draw(ports) if nat else dport,
        reply_dst=src, reply_dport=sport,
        original_bytes=draw(counters), original_packets=draw(counters),
        reply_bytes=draw(counters), reply_packets=draw(counters),
        start_ns=start % 2**64, end_ns=end % 2**64,
    )


ATTR_KEYS = ["network.transport", "network.type", "source.address", "source.port", "destination.address",
             "destination.port", "kubenetmon.reply.source.address", "kubenetmon.conntrack.direction", "x.other"]


def mutate(request: ExportMetricsServiceRequest, draw: Any, now: int = NOW) -> None:
    """One structured change that the contract may or may not allow."""
    times = times_around(now)
    rm = request.resource_metrics[draw(st.integers(0, len(request.resource_metrics) - 1))]
    sm = rm.scope_metrics[0]
    metric = sm.metrics[draw(st.integers(0, len(sm.metrics) - 1))]
    dps = metric.sum.data_points
    dp = dps[draw(st.integers(0, len(dps) - 1))] if len(dps) else None
    kind = draw(st.sampled_from([
        "string_attr", "int_attr", "drop_attr", "dup_point", "value", "times", "temporality", "name", "node",
        "double", "scope", "description",
    ]))
    if kind == "string_attr" and dp is not None:
        kv = dp.attributes.add(key=draw(st.sampled_from(ATTR_KEYS)))
        kv.value.string_value = draw(st.one_of(st.text(max_size=50), v4, v6, st.sampled_from(["tcp", "reply"])))
    elif kind == "int_attr" and dp is not None:
        kv = dp.attributes.add(key=draw(st.sampled_from(ATTR_KEYS)))
        kv.value.int_value = draw(st.integers(-(2**63), 2**63 - 1))
    elif kind == "drop_attr" and dp is not None and len(dp.attributes):
        del dp.attributes[draw(st.integers(0, len(dp.attributes) - 1))]
    elif kind == "dup_point" and dp is not None:
        dps.add().CopyFrom(dp)
    elif kind == "value" and dp is not None:
        dp.as_int = draw(st.integers(-(2**63), 2**63 - 1))
    elif kind == "times" and dp is not None:
        dp.start_time_unix_nano = draw(times) % 2**64
        dp.time_unix_nano = draw(times) % 2**64
    elif kind == "temporality":
        metric.sum.aggregation_temporality = draw(st.integers(0, 2))
        metric.sum.is_monotonic = draw(st.booleans())
    elif kind == "name":
        metric.name = draw(st.sampled_from(["kubenetmon.conntrack.bytes", "kubenetmon.conntrack.packets", "x"]))
    elif kind == "node":
        for kv in rm.resource.attributes:
            if kv.key == "k8s.node.name":
                kv.value.string_value = draw(st.text(max_size=300))
    elif kind == "double" and dp is not None:
        dp.as_double = 1.5
    elif kind == "scope":
        sm.scope.version = draw(st.text(max_size=20))
    elif kind == "description":
        metric.description = draw(st.text(max_size=20))


@FUZZ
@given(st.data())
def test_structured_requests_decode_the_same_on_both_paths(data: Any) -> None:
    recs = data.draw(st.lists(records(), min_size=1, max_size=12))
    requests = encode_records_bytes(recs, {})
    if not requests:
        return  # all counters zero: nothing is sent
    check_same(requests[0])  # canonical: the fast path reads it
    request = ExportMetricsServiceRequest.FromString(requests[0])
    for _ in range(data.draw(st.integers(1, 3))):
        mutate(request, data.draw)
    check_same(request.SerializeToString())


# --- byte level -----------------------------------------------------------------------

CANONICAL = encode_records_bytes(make_records(6, start=NOW - 10 * SECOND, nat_every=2), {})[0]


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]),
                          st.integers(0, len(CANONICAL) - 1), st.integers(0, 255)), min_size=1, max_size=4))
def test_byte_mutations_of_a_canonical_request_decode_the_same_on_both_paths(edits: list[Any]) -> None:
    data = bytearray(CANONICAL)
    for op, where, byte in edits:
        if not data:
            break
        at = where % len(data)
        if op == "flip":
            data[at] ^= 1 << (byte % 8)
        elif op == "set":
            data[at] = byte
        elif op == "insert":
            data.insert(at, byte)
        elif op == "delete":
            del data[at]
        elif op == "truncate":
            del data[at:]
    check_same(bytes(data))
