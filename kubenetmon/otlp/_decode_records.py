"""OTLP metrics requests → conntrack records as Arrow columns (DESIGN §4.1, §4.2), the gateway's hot path.

Two ways to read data points, with the same result (``tests/otlp`` checks it):

* **fast path** (``_canonical``) — for requests in the exact layout our
  encoder writes: walked straight from the bytes (``decode_records_bytes``,
  the receiver) or from each ``Sum`` re-serialized in one C call
  (``decode_records``). Per point: one slice pair, one dict hit, one add;
  attributes are parsed once per tuple and cached across requests.
* **slow path** (``_checks``) — anything else (other senders, other
  attribute order, extra fields, bad values) is read field by field through
  the message API with every check of the contract.

Both reject single data points, never a whole request, and write the same
columns: a request's records accumulate in flat per-request lists (four
counters per row, indexed ``row * 4 + counter``) and become one
``pa.RecordBatch`` in :data:`~kubenetmon.flows.RECORD_SCHEMA`; the only
Python objects kept are per distinct connection (the cached, validated key
tuple with its packed addresses), never per record.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import numpy as np
import pyarrow as pa
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from kubenetmon.flows import ADDRESS, COUNTER, PORT, RECORD_SCHEMA, TIME, _strings
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
    _ADDRESSES,
    _ENTRY_OVERHEAD,
    ByteBoundedCache,
    DecodeResult,
    _NotCanonical,
    _read_point_slow,
    _Reject,
    _Rejections,
    _show,
)
from kubenetmon.otlp._limits import MAX_NODE_NAME_BYTES, DecodeLimits

__all__ = ["DecodeLimits", "DecodeResult", "decode_records", "decode_records_bytes", "decoder_caches"]

_DEFAULT_LIMITS = DecodeLimits()

# A row's four counters, in RECORD_FIELDS order: original bytes, original
# packets, reply bytes, reply packets; the reply one is the original's + 2.
_COUNTERS = {c.METRIC_BYTES: 0, c.METRIC_PACKETS: 1}
_REPLY_OFFSET = 2

# Dictionaries of the string columns a key carries as small ints.
_TRANSPORT_INDEX = {"tcp": 0, "udp": 1}
_TYPE_INDEX = {"ipv4": 0, "ipv6": 1}
# From buffers: pa.array imports pandas, and the agent imports this package too (flows._zeros).
_TRANSPORT_DICT = _strings(["tcp", "udp"])
_TYPE_DICT = _strings(["ipv4", "ipv6"])
_V4_MAPPED = bytes(10) + b"\xff\xff"


class _Packed(ByteBoundedCache):
    """Canonical address text → the 16 bytes of the address column (IPv4 as IPv4-mapped IPv6)."""

    def __missing__(self, text: str) -> bytes:
        if ":" in text:
            packed = socket.inet_pton(socket.AF_INET6, text)
        else:
            packed = _V4_MAPPED + socket.inet_pton(socket.AF_INET, text)
        self.put(text, packed, len(text) + 16 + _ENTRY_OVERHEAD)
        return packed


_PACKED = _Packed(16 * 1024 * 1024)


def _columnar(key: tuple[Any, ...]) -> tuple[Any, ...]:
    """A validated tuple key (10 text/int fields) with what its columns need appended.

    ``key[10:16]``: transport and network type as dictionary indices, then
    src, dst, reply src, reply dst packed. Computed once per distinct
    connection (the fast path caches it with the attribute block).
    """
    p = _PACKED
    return (*key, _TRANSPORT_INDEX[key[0]], _TYPE_INDEX[key[1]], p[key[2]], p[key[4]], p[key[6]], p[key[8]])


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
        self.rows: dict[tuple[Any, ...], int] = {}  # (node, key, start, end) → row * 4
        self.row_keys: list[tuple[Any, ...]] = []
        self.row_nodes: list[int] = []
        self.row_starts: list[int] = []
        self.row_ends: list[int] = []
        self.values: list[int] = []  # four counters per row
        self.caps: list[int] = []  # the largest each counter may reach
        self.accepted = 0
        self.nodes: dict[str, int] = {}  # node → its index in the node column's dictionary

    def run(self, request: Any) -> DecodeResult:
        for rm in request.resource_metrics:
            try:
                node = _node_of(rm.resource)
            except _Reject as exc:
                n = sum(_points_of(m) for sm in rm.scope_metrics for m in sm.metrics)
                self.rejections.add(exc.reason, exc.message, n)
                continue
            self.nodes.setdefault(node, len(self.nodes))
            fast_keys: dict[tuple[bytes, bytes], Any] = {}
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    self._metric(metric, node, fast_keys)
        return self._result()

    def _table(self) -> pa.RecordBatch:
        n = len(self.row_keys)
        if not n:
            return pa.RecordBatch.from_pylist([], schema=RECORD_SCHEMA)
        counters = np.array(self.values, dtype=np.uint64).reshape(n, 4)
        k = list(zip(*self.row_keys, strict=True))
        nodes = pa.array(list(self.nodes))
        arrays = [
            pa.DictionaryArray.from_arrays(pa.array(self.row_nodes, pa.int32()), nodes),
            pa.DictionaryArray.from_arrays(pa.array(k[10], pa.int32()), _TRANSPORT_DICT),
            pa.DictionaryArray.from_arrays(pa.array(k[11], pa.int32()), _TYPE_DICT),
            pa.array(k[12], ADDRESS), pa.array(k[3], PORT),
            pa.array(k[13], ADDRESS), pa.array(k[5], PORT),
            pa.array(k[14], ADDRESS), pa.array(k[7], PORT),
            pa.array(k[15], ADDRESS), pa.array(k[9], PORT),
            *(pa.array(counters[:, i], COUNTER) for i in range(4)),
            pa.array(self.row_starts, TIME), pa.array(self.row_ends, TIME),
        ]
        table = pa.RecordBatch.from_arrays(arrays, schema=RECORD_SCHEMA)
        # Rows whose every point was rejected (or zero) are not records.
        nonzero = counters.any(axis=1)
        return table if nonzero.all() else table.filter(pa.array(nonzero))

    def _result(self) -> DecodeResult:
        rej = self.rejections
        return DecodeResult(
            table=self._table(),
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
                        self.nodes.setdefault(node, len(self.nodes))
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

    def _row(self, node: str, key: tuple[Any, ...], start: int, end: int) -> int:
        """``row * 4`` of the record of ``(node, key, start, end)`` (added when new)."""
        vkey = (node, key, start, end)
        row = self.rows.get(vkey)
        if row is None:
            row = self.rows[vkey] = len(self.values)
            self.row_keys.append(key)
            self.row_nodes.append(self.nodes[node])
            self.row_starts.append(start)
            self.row_ends.append(end)
            self.values.extend((0, 0, 0, 0))
            bytes_cap, packets_cap = self.limits.caps(start, end)
            self.caps.extend((bytes_cap, packets_cap, bytes_cap, packets_cap))
        return row

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
            i = self._row(node, _columnar(key), start, end) + (base + _REPLY_OFFSET if is_reply else base)
            total = self.values[i] + value
            if total > self.caps[i]:
                rej.add("impossible_delta", _impossible(value, self.caps[i], start, end))
                continue
            self.values[i] = total
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
        values, caps = self.values, self.caps
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
            # The key holds the three header tags; _fast_row checks them once per key.
            if data.endswith(dir_reply, p, q):
                k = (data[p : p + 19], data[p + 27 : q - len_reply])
                index = reply_index
            elif data.endswith(dir_original, p, q):
                k = (data[p : p + 19], data[p + 27 : q - len_original])
                index = base
            else:
                raise _NotCanonical
            pos = q
            row = fast_keys.get(k)
            if row is None:
                row = fast_keys[k] = self._fast_row(node, k)
            if type(row) is not int:
                rej.add(row.reason, row.message)
                continue
            value = as_int(data, p + 19)[0]
            if value < 0:
                rej.add("negative_value", f"data point value {value} is negative; a monotonic delta cannot be")
                continue
            # The running total, not the point: duplicates of one tuple must not sum past the cap either.
            i = row + index
            total = values[i] + value
            if total > caps[i]:
                r = row // 4
                rej.add("impossible_delta", _impossible(value, caps[i], self.row_starts[r], self.row_ends[r]))
                continue
            values[i] = total
            accepted += 1
        if pos != end:
            raise _NotCanonical
        self.accepted += accepted

    def _fast_row(self, node: str, k: tuple[bytes, bytes]) -> Any:
        head, attrs = k
        if len(head) != 19 or head[0] != 0x11 or head[9] != 0x19 or head[18] != 0x31:
            raise _NotCanonical
        times = head[:18]
        key = _TUPLES.get(attrs)
        if key is None:
            key = _parse_attrs(attrs)
            if type(key) is tuple:
                key = _columnar(key)
            _TUPLES.put(attrs, key, len(attrs) + 2 * _ENTRY_OVERHEAD)
        if type(key) is _Reject:
            return key
        start, end = _TIMES.unpack(times)
        problem = self.limits.time_problem(start, end, self.now_ns)
        if problem is not None:
            return _Reject(*problem)
        return self._row(node, key, start, end)


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


def decoder_caches() -> dict[str, ByteBoundedCache]:
    """The decoder's process-wide caches by name (for the receiver's metrics)."""
    return {"addresses": _ADDRESSES, "tuples": _TUPLES, "packed_addresses": _PACKED}


def decode_records_slow(request: Any, limits: DecodeLimits | None = None, now_ns: int | None = None) -> DecodeResult:
    """:func:`decode_records` through the message API only: the reference the fast path must match."""
    now = time.time_ns() if now_ns is None else now_ns
    return _Decoder(False, limits or _DEFAULT_LIMITS, now).run(request)


def _impossible(value: int, cap: int, start: int, end: int) -> str:
    return (f"data point value {value} brings its tuple's delta over {cap}, more than a link could carry in "
            f"{max(end - start, 10**9) / 1e9:.3f} s")


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
