"""OTLP metrics requests → conntrack records (DESIGN §4.1), the gateway's hot path.

Two ways to read data points, with the same result (``tests/otlp`` checks it):

* **fast path** (``_canonical``) — for requests in the exact layout our
  encoder writes: walked straight from the bytes (``decode_records_bytes``,
  the receiver) or from each ``Sum`` re-serialized in one C call
  (``decode_records``). Per point: one slice pair, one dict hit, one add;
  attributes are parsed once per tuple and cached across requests.
* **slow path** (``_checks``) — anything else (other senders, other
  attribute order, extra fields, bad values) is read field by field through
  the message API with every check of the contract.

Both reject single data points, never a whole request.
"""

from __future__ import annotations

import time
from typing import Any

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from kubenetmon.flows import ConntrackRecord
from kubenetmon.otlp import _contract as c
from kubenetmon.otlp._canonical import (
    _AS_INT,
    _DIR_ORIGINAL,
    _DIR_REPLY,
    _SUM_TRAILER,
    _TIMES,
    _TUPLES,
    _fields,
    _parse_attrs,
)
from kubenetmon.otlp._checks import (
    _ADDRESSES,  # noqa: F401 (benchmarks clear it)
    _ENTRY_OVERHEAD,
    DecodeResult,
    _NotCanonical,
    _read_point_slow,
    _Reject,
    _Rejections,
    _show,
)
from kubenetmon.otlp._limits import MAX_NODE_NAME_BYTES, DecodeLimits

__all__ = ["DecodeLimits", "DecodeResult", "decode_records", "decode_records_bytes"]

_DEFAULT_LIMITS = DecodeLimits()

_COUNTERS = {c.METRIC_BYTES: 11, c.METRIC_PACKETS: 12}  # index of the original-direction counter
_REPLY_OFFSET = 2  # reply_bytes = original_bytes + 2, in ConntrackRecord's field order


def _points_of(metric: Any) -> int:
    which = metric.WhichOneof("data")
    return len(getattr(metric, which).data_points) if which else 0


def _node_of(resource: Any) -> str:
    for kv in resource.attributes:
        if kv.key == c.RESOURCE_NODE_NAME:
            if kv.value.WhichOneof("value") != "string_value":
                raise _Reject("missing_node", "resource attribute k8s.node.name must be a string")
            name = str(kv.value.string_value)
            if not name:
                break
            if len(name) > MAX_NODE_NAME_BYTES:
                raise _Reject("bad_node", f"k8s.node.name {_show(name)} is longer than {MAX_NODE_NAME_BYTES} "
                              "characters, the limit of a Kubernetes node name")
            return name
    raise _Reject("missing_node", "resource has no k8s.node.name attribute (the observing node)")


_COUNTERS_RAW = {name.encode(): index for name, index in _COUNTERS.items()}


class _Decoder:
    def __init__(self, fast: bool, limits: DecodeLimits | None = None, now_ns: int | None = None) -> None:
        self.fast = fast
        self.limits = limits or _DEFAULT_LIMITS
        self.now_ns = time.time_ns() if now_ns is None else now_ns
        self.rejections = _Rejections()
        self.accs: dict[tuple[Any, ...], list[Any]] = {}
        self.accepted = 0
        self.nodes: dict[str, None] = {}

    def run(self, request: Any) -> DecodeResult:
        for rm in request.resource_metrics:
            try:
                node = _node_of(rm.resource)
            except _Reject as exc:
                n = sum(_points_of(m) for sm in rm.scope_metrics for m in sm.metrics)
                self.rejections.add(exc.reason, exc.message, n)
                continue
            self.nodes[node] = None
            fast_keys: dict[tuple[bytes, bytes], Any] = {}
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    self._metric(metric, node, fast_keys)
        return self._result()

    def _result(self) -> DecodeResult:
        records = [
            ConntrackRecord(*acc[:17]) for acc in self.accs.values() if acc[11] or acc[12] or acc[13] or acc[14]
        ]
        rej = self.rejections
        return DecodeResult(
            records=records,
            rejected_points=sum(rej.counts.values()),
            errors=[f"{reason}: {msg}" for reason, msg in rej.messages.items()],
            rejected_by_reason=dict(rej.counts),
            accepted_points=self.accepted,
            nodes=list(self.nodes),
        )

    def run_raw(self, data: bytes) -> DecodeResult:
        """The fast path straight on the request's bytes (no protobuf objects for the points).

        Only for requests in the encoder's exact layout; anything else raises
        _NotCanonical and the caller parses the request instead.
        """
        try:
            for _, rm_start, rm_end in _fields(data, 0, len(data), (0x0A,)):
                node = ""
                fast_keys: dict[tuple[bytes, bytes], Any] = {}
                # Only what the encoder writes (no schema_url); a repeated
                # resource would be merged by protobuf: the slow path does that.
                for tag, start, end in _fields(data, rm_start, rm_end, (0x0A, 0x12)):
                    if tag == 0x0A:
                        if node:
                            raise _NotCanonical
                        try:
                            node = _node_of(Resource.FromString(data[start:end]))
                        except (_Reject, DecodeError):
                            raise _NotCanonical from None
                        self.nodes[node] = None
                    elif tag == 0x12:
                        if not node:
                            raise _NotCanonical
                        self._scope_raw(data, start, end, node, fast_keys)
        except IndexError:
            raise _NotCanonical from None
        return self._result()

    def _scope_raw(
        self, data: bytes, start: int, end: int, node: str, fast_keys: dict[tuple[bytes, bytes], Any]
    ) -> None:
        for tag, m_start, m_end in _fields(data, start, end, (0x0A, 0x12)):
            if tag == 0x0A:
                # The scope is not used, but protobuf would refuse the request
                # for a bad one (invalid UTF-8): so must the fast path.
                try:
                    InstrumentationScope.FromString(data[m_start:m_end])
                except DecodeError:
                    raise _NotCanonical from None
                continue
            base = None
            sum_bytes = b""
            seen = 0
            for ftag, f_start, f_end in _fields(data, m_start, m_end, (0x0A, 0x12, 0x1A, 0x3A)):
                bit = 1 << (ftag >> 3)
                if seen & bit:
                    raise _NotCanonical  # repeated: protobuf merges (a second Sum adds points)
                seen |= bit
                if ftag == 0x0A:
                    base = _COUNTERS_RAW.get(data[f_start:f_end])
                elif ftag == 0x3A:
                    sum_bytes = data[f_start:f_end]
                else:
                    try:  # description, unit: protobuf refuses invalid UTF-8
                        data[f_start:f_end].decode()
                    except UnicodeDecodeError:
                        raise _NotCanonical from None
            if base is None or not sum_bytes:
                raise _NotCanonical  # unknown metric, not a Sum: the slow path says which
            self._points_fast(sum_bytes, base, node, fast_keys)

    def _metric(self, metric: Any, node: str, fast_keys: dict[tuple[bytes, bytes], Any]) -> None:
        name = metric.name
        base = _COUNTERS.get(name)
        rej = self.rejections
        if base is None:
            rej.add("unknown_metric", f"unknown metric {name!r}: the contract has {c.METRIC_BYTES} and "
                    f"{c.METRIC_PACKETS}", _points_of(metric))
            return
        which = metric.WhichOneof("data")
        if which != "sum":
            rej.add("not_sum", f"metric {name} is a {which or 'metric without data'}, not a Sum",
                    _points_of(metric))
            return
        s = metric.sum
        if s.aggregation_temporality != c.TEMPORALITY_DELTA:
            rej.add("not_delta", f"metric {name} must have DELTA temporality", len(s.data_points))
            return
        if not s.is_monotonic:
            rej.add("not_monotonic", f"metric {name} must be monotonic", len(s.data_points))
            return
        if self.fast:
            self._points_fast(s.SerializeToString(), base, node, fast_keys)
        else:
            self._points_slow(s.data_points, base, node)

    def _acc(self, node: str, key: tuple[Any, ...], start: int, end: int) -> list[Any]:
        """The accumulator of one record: its 17 fields, then the cap of each of its four counters."""
        vkey = (node, *key, start, end)
        acc = self.accs.get(vkey)
        if acc is None:
            bytes_cap, packets_cap = self.limits.caps(start, end)
            acc = self.accs[vkey] = [node, *key, 0, 0, 0, 0, start, end, bytes_cap, packets_cap, bytes_cap,
                                     packets_cap]
        return acc

    def _points_slow(self, points: Any, base: int, node: str) -> None:
        rej = self.rejections
        limits, now = self.limits, self.now_ns
        for dp in points:
            try:
                key, is_reply, start, end, value = _read_point_slow(dp)
                problem = limits.time_problem(start, end, now)
                if problem is not None:
                    raise _Reject(*problem)
                if value < 0:
                    raise _Reject("negative_value", f"data point value {value} is negative; a monotonic delta "
                                  "cannot be")
            except _Reject as exc:
                rej.add(exc.reason, exc.message)
                continue
            acc = self._acc(node, key, start, end)
            index = base + _REPLY_OFFSET if is_reply else base
            total = acc[index] + value
            if total > acc[index + _CAP_OFFSET]:
                rej.add("impossible_delta", _impossible(value, acc[index + _CAP_OFFSET], start, end))
                continue
            acc[index] = total
            self.accepted += 1

    def _points_fast(self, data: bytes, base: int, node: str, fast_keys: dict[tuple[bytes, bytes], Any]) -> None:
        # Walks the re-serialized Sum by the data points' own length prefixes;
        # anything not in the encoder's exact layout raises _NotCanonical and
        # the caller starts over on the slow path (so nothing here needs undoing;
        # a walk past the end is caught by the final position check).
        end = len(data) - len(_SUM_TRAILER)
        if not data.endswith(_SUM_TRAILER):
            raise _NotCanonical
        rej = self.rejections
        as_int = _AS_INT.unpack_from
        dir_reply, dir_original = _DIR_REPLY, _DIR_ORIGINAL
        len_reply, len_original = len(dir_reply), len(dir_original)
        reply_index = base + _REPLY_OFFSET
        pos = accepted = 0
        while pos < end:
            n = data[pos + 1]
            if n & 0x80:
                if data[pos + 2] & 0x80:
                    raise _NotCanonical
                n = (n & 0x7F) | (data[pos + 2] << 7)
                p = pos + 3
            else:
                p = pos + 2
            q = p + n
            if data[pos] != 0x0A:
                raise _NotCanonical
            # The key holds the three header tags; _fast_acc checks them once per key.
            if data.endswith(dir_reply, p, q):
                k = (data[p : p + 19], data[p + 27 : q - len_reply])
                index = reply_index
            elif data.endswith(dir_original, p, q):
                k = (data[p : p + 19], data[p + 27 : q - len_original])
                index = base
            else:
                raise _NotCanonical
            pos = q
            acc = fast_keys.get(k)
            if acc is None:
                acc = fast_keys[k] = self._fast_acc(node, k)
            if type(acc) is not list:
                rej.add(acc.reason, acc.message)
                continue
            value = as_int(data, p + 19)[0]
            if value < 0:
                rej.add("negative_value", f"data point value {value} is negative; a monotonic delta cannot be")
                continue
            # The running total, not the point: duplicates of one tuple must not sum past the cap either.
            total = acc[index] + value
            if total > acc[index + _CAP_OFFSET]:
                rej.add("impossible_delta", _impossible(value, acc[index + _CAP_OFFSET], acc[15], acc[16]))
                continue
            acc[index] = total
            accepted += 1
        if pos != end:
            raise _NotCanonical
        self.accepted += accepted

    def _fast_acc(self, node: str, k: tuple[bytes, bytes]) -> Any:
        head, attrs = k
        if len(head) != 19 or head[0] != 0x11 or head[9] != 0x19 or head[18] != 0x31:
            raise _NotCanonical
        times = head[:18]
        key = _TUPLES.get(attrs)
        if key is None:
            key = _parse_attrs(attrs)
            _TUPLES.put(attrs, key, len(attrs) + _ENTRY_OVERHEAD)
        if type(key) is _Reject:
            return key
        start, end = _TIMES.unpack(times)
        problem = self.limits.time_problem(start, end, self.now_ns)
        if problem is not None:
            return _Reject(*problem)
        return self._acc(node, key, start, end)


def decode_records_bytes(data: bytes, limits: DecodeLimits | None = None, now_ns: int | None = None) -> DecodeResult:
    """:func:`decode_records` on a serialized request (what a server has).

    Requests in the encoder's exact layout are read straight from the bytes;
    others are parsed first. Raises ``google.protobuf.message.DecodeError``
    when ``data`` is not an ``ExportMetricsServiceRequest``.
    """
    limits = limits or _DEFAULT_LIMITS
    now = time.time_ns() if now_ns is None else now_ns
    try:
        return _Decoder(True, limits, now).run_raw(data)
    except _NotCanonical:
        pass
    request = ExportMetricsServiceRequest()
    request.ParseFromString(data)
    return decode_records(request, limits, now)


def decode_records_slow(request: Any, limits: DecodeLimits | None = None, now_ns: int | None = None) -> DecodeResult:
    """:func:`decode_records` through the message API only: the reference the fast path must match."""
    now = time.time_ns() if now_ns is None else now_ns
    return _Decoder(False, limits or _DEFAULT_LIMITS, now).run(request)


def _impossible(value: int, cap: int, start: int, end: int) -> str:
    return (f"data point value {value} brings its tuple's delta over {cap}, more than a link could carry in "
            f"{max(end - start, 10**9) / 1e9:.3f} s")


_CAP_OFFSET = 6  # acc[11..14] counters → acc[17..20] their caps


def decode_records(request: Any, limits: DecodeLimits | None = None, now_ns: int | None = None) -> DecodeResult:
    """Read the conntrack records of one ``ExportMetricsServiceRequest`` (DESIGN §4.1).

    The original and reply points of one tuple and interval (of both metrics)
    become one :class:`ConntrackRecord` with four counters. A data point that
    breaks the contract is rejected and counted by reason; the rest of the
    request is still read. ``limits`` bound times and deltas (default: no
    window around now, 400 Gbit/s); ``now_ns`` is the clock they are checked
    against (default: now).
    """
    limits = limits or _DEFAULT_LIMITS
    now = time.time_ns() if now_ns is None else now_ns
    try:
        return _Decoder(True, limits, now).run(request)
    except _NotCanonical:
        return _Decoder(False, limits, now).run(request)
