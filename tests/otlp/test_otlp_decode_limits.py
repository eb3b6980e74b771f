"""Issue 16 items 1, 5, 7, 9: times, impossible deltas, absurd sizes, fast path == protobuf.

Each bad point is rejected alone with its reason, on the fast path (the
encoder's bytes) and on the slow path (the same request re-laid out), and
the other points of the request are kept.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from kubenetmon.otlp import DecodeLimits, decode_records_bytes, decode_records_slow, encode_records
from kubenetmon.otlp import _checks as checks
from kubenetmon.otlp._limits import DEFAULT_MAX_BYTES_PER_SECOND, MAX_TIME_NS
from tests.otlp.otlp_testkit import SECOND, by_identity, make_records

NOW = 1_800_000_000 * SECOND
HOUR = 3600 * SECOND
WINDOW = DecodeLimits(max_age_ns=24 * HOUR, max_future_ns=300 * SECOND)


def request(n: int = 6, start: int = NOW - 10 * SECOND) -> ExportMetricsServiceRequest:
    return encode_records(make_records(n, start=start), {})[0]


def points(req: ExportMetricsServiceRequest, metric: int = 0) -> Any:
    return req.resource_metrics[0].scope_metrics[0].metrics[metric].sum.data_points


def slow_layout(req: ExportMetricsServiceRequest) -> bytes:
    """The same request with an unknown attribute on every point: the fast path cannot read it."""
    copy = ExportMetricsServiceRequest()
    copy.CopyFrom(req)
    for m in copy.resource_metrics[0].scope_metrics[0].metrics:
        for dp in m.sum.data_points:
            kv = dp.attributes.add()
            kv.key = "x.unknown"
            kv.value.string_value = "1"
    return copy.SerializeToString()


def both_paths(req: ExportMetricsServiceRequest, limits: DecodeLimits | None = None) -> list[Any]:
    return [decode_records_bytes(data, limits, NOW) for data in (req.SerializeToString(), slow_layout(req))]


Change = Callable[[Any], None]
TIME_CASES: dict[str, tuple[Change, str]] = {
    "uint64_max": (lambda dp: setattr(dp, "time_unix_nano", 2**64 - 1), "time_out_of_range"),
    "year_2150": (lambda dp: setattr(dp, "time_unix_nano", 5_680_000_000 * SECOND), "time_out_of_range"),
    "start_after_end": (lambda dp: setattr(dp, "start_time_unix_nano", dp.time_unix_nano + 1), "bad_interval"),
    "explicit_zero_start": (lambda dp: setattr(dp, "start_time_unix_nano", 0), "bad_interval"),
    "a_day_and_more_old": (
        lambda dp: (setattr(dp, "start_time_unix_nano", NOW - 25 * HOUR),
                    setattr(dp, "time_unix_nano", NOW - 25 * HOUR + 5 * SECOND)), "time_too_old"),
    "ten_minutes_ahead": (lambda dp: setattr(dp, "time_unix_nano", NOW + 600 * SECOND), "time_in_future"),
}


@pytest.mark.parametrize("case", sorted(TIME_CASES))
def test_a_point_with_an_unstorable_or_insane_time_is_rejected_alone(case: str) -> None:
    change, reason = TIME_CASES[case]
    req = request()
    good = both_paths(request(), WINDOW)[0]
    change(points(req)[0])
    for result in both_paths(req, WINDOW):
        assert result.rejected_by_reason == {reason: 1}, case
        assert result.accepted_points == good.accepted_points - 1
        assert reason in result.error_message()


def test_a_point_queued_for_the_retry_window_is_still_accepted() -> None:
    req = request(start=NOW - 23 * HOUR)
    for result in both_paths(req, WINDOW):
        assert result.rejected_points == 0 and result.records


def test_without_a_window_only_unstorable_times_are_rejected() -> None:
    old = request(start=1_000_000_000 * SECOND)  # 2001: recorded data, no window
    assert all(r.rejected_points == 0 for r in both_paths(old))
    req = request()
    points(req)[0].time_unix_nano = MAX_TIME_NS + 1
    assert [r.rejected_by_reason for r in both_paths(req)] == [{"time_out_of_range": 1}] * 2


def test_a_delta_no_link_could_carry_is_rejected_and_sums_stay_under_the_cap() -> None:
    req = request()
    dps = points(req)  # bytes; the records' intervals are 5 s
    cap = DEFAULT_MAX_BYTES_PER_SECOND * 5
    dps[0].as_int = cap + 1
    dps[1].as_int = 2**63 - 1
    dps[2].as_int = cap  # exactly what 400 Gbit/s carries in 5 s: accepted
    for result in both_paths(req):
        assert result.rejected_by_reason == {"impossible_delta": 2}
        assert max(max(r.original_bytes, r.reply_bytes) for r in result.records) == cap


def test_duplicate_points_of_one_tuple_cannot_sum_past_the_cap() -> None:
    req = request(1)
    metric = req.resource_metrics[0].scope_metrics[0].metrics[0]
    first = metric.sum.data_points[0]
    first.as_int = DEFAULT_MAX_BYTES_PER_SECOND * 5 // 2 + 1
    metric.sum.data_points.add().CopyFrom(first)  # the same tuple, direction and interval again
    for result in both_paths(req):
        assert result.rejected_by_reason == {"impossible_delta": 1}
        assert result.records[0].original_bytes == first.as_int


def test_an_absurdly_long_address_is_rejected_without_being_cached() -> None:
    req = request()
    for kv in points(req)[0].attributes:
        if kv.key == "source.address":
            kv.value.string_value = "1" * (1 << 20)
    checks._ADDRESSES.clear()
    for result in both_paths(req):
        assert result.rejected_by_reason == {"attribute_too_long": 1}
        assert len(result.error_message()) < 400
    assert max(map(len, checks._ADDRESSES), default=0) <= 64


def rss_bytes() -> int:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def with_long_address(i: int) -> bytes:
    """A request whose first point's source.address is 20 MiB (a distinct value per ``i``)."""
    req = request(2)
    for kv in points(req)[0].attributes:
        if kv.key == "source.address":
            kv.value.string_value = chr(ord("a") + i) * (20 << 20)
    return req.SerializeToString()


def test_twenty_20_mib_invalid_addresses_do_not_grow_memory() -> None:
    decode_records_bytes(with_long_address(25), None, NOW)  # the first one sets up the allocator's arenas
    before = rss_bytes()
    for i in range(20):
        result = decode_records_bytes(with_long_address(i), None, NOW)
        assert result.rejected_by_reason == {"attribute_too_long": 1}
    # Before the fix the address cache kept every 20 MiB string: +400 MiB.
    assert rss_bytes() - before < 100 << 20


def test_caches_are_bounded_by_bytes_not_count() -> None:
    cache = checks.ByteBoundedCache(1000)
    for i in range(30):
        cache.put(i, None, 100)
        assert cache.nbytes <= 1000
    assert cache.clears == 2 and len(cache) == 10


def test_an_over_long_node_name_rejects_its_resource() -> None:
    req = request(3)
    for kv in req.resource_metrics[0].resource.attributes:
        if kv.key == "k8s.node.name":
            kv.value.string_value = "n" * 300
    n = sum(len(m.sum.data_points) for m in req.resource_metrics[0].scope_metrics[0].metrics)
    result = decode_records_bytes(req.SerializeToString(), None, NOW)
    assert result.rejected_by_reason == {"bad_node": n}


# --- fast path == protobuf (item 9) ---------------------------------------------------


def reference(data: bytes) -> Any:
    parsed = ExportMetricsServiceRequest()
    parsed.ParseFromString(data)
    return decode_records_slow(parsed, None, NOW)


def same(data: bytes) -> None:
    try:
        expected = reference(data)
    except DecodeError:
        with pytest.raises(DecodeError):
            decode_records_bytes(data, None, NOW)
        return
    got = decode_records_bytes(data, None, NOW)
    assert got.rejected_by_reason == expected.rejected_by_reason
    assert got.accepted_points == expected.accepted_points
    assert by_identity(got.records) == by_identity(expected.records)


def test_a_repeated_sum_field_is_merged_like_protobuf_does() -> None:
    data = request(4).SerializeToString()
    req = ExportMetricsServiceRequest.FromString(data)
    extra = req.resource_metrics[0].scope_metrics[0].metrics[0].sum.SerializeToString()
    mutated = _append_to_first_metric(data, b"\x3a" + _varint(len(extra)) + extra)
    assert reference(mutated).accepted_points > reference(data).accepted_points  # protobuf merged the points
    same(mutated)


def test_invalid_utf8_in_a_description_is_refused_like_protobuf_does() -> None:
    data = request(2).SerializeToString()
    req = ExportMetricsServiceRequest.FromString(data)
    desc = req.resource_metrics[0].scope_metrics[0].metrics[0].description.encode()
    i = data.index(desc)
    mutated = data[:i] + b"\xff" + data[i + 1:]
    with pytest.raises(DecodeError):
        reference(mutated)
    same(mutated)


def test_explicit_zero_start_is_rejected_by_both_paths() -> None:
    req = request(2)
    points(req)[0].start_time_unix_nano = 0
    same(req.SerializeToString())
    assert reference(req.SerializeToString()).rejected_by_reason == {"bad_interval": 1}


def _append_to_first_metric(data: bytes, extra: bytes) -> bytes:
    """``extra`` appended to the first Metric of a canonical request, the enclosing lengths grown.

    Going through protobuf would merge the fields again, so the frames of
    Metric, ScopeMetrics and ResourceMetrics are rebuilt by hand (the
    encoder's layout is protobuf's own, so the parsed parts serialize back
    to the same bytes).
    """
    rm = ExportMetricsServiceRequest.FromString(data).resource_metrics[0]
    sm = rm.scope_metrics[0]
    m = sm.metrics[0].SerializeToString()
    sm_old = sm.SerializeToString()
    sm_new = sm_old.replace(b"\x12" + _varint(len(m)) + m, b"\x12" + _varint(len(m) + len(extra)) + m + extra, 1)
    rm_old = rm.SerializeToString()
    rm_new = rm_old.replace(b"\x12" + _varint(len(sm_old)) + sm_old, b"\x12" + _varint(len(sm_new)) + sm_new, 1)
    assert data == b"\x0a" + _varint(len(rm_old)) + rm_old
    return b"\x0a" + _varint(len(rm_new)) + rm_new


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)

