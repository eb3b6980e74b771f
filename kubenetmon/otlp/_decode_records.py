"""OTLP metrics requests → conntrack records (DESIGN §4.1), the gateway's hot path.

The request is parsed by the protobuf runtime (upb, in C). Data points are
then read in one of two ways:

* **fast path** — each ``Sum`` is re-serialized (one C call) and its data
  points are matched by one compiled regular expression that spells out the
  canonical layout our encoder writes (attribute keys in contract order). No
  per-field Python calls: one match per point, and attributes are parsed once
  per record, not once per point.
* **slow path** — any metric whose bytes do not match that layout exactly
  (other senders, other attribute order, extra fields, bad values) is read
  field by field through the message API, with every check of the contract.

Both paths produce identical results (``tests/otlp`` checks that), and both
reject single data points, never a whole request.
"""

from __future__ import annotations

import re
import socket
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from kubenetmon.flows import ConntrackRecord
from kubenetmon.otlp import _contract as c
from kubenetmon.otlp._wire import kv_int, kv_string, varint

__all__ = ["DecodeResult", "decode_records", "decode_records_bytes"]


@dataclass
class DecodeResult:
    """What :func:`decode_records` made of one request.

    ``errors`` holds one human-readable message per distinct reason;
    ``rejected_by_reason`` counts rejected points by a short reason code
    (fit for a metric label).
    """

    records: list[ConntrackRecord] = field(default_factory=list)
    rejected_points: int = 0
    errors: list[str] = field(default_factory=list)
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    accepted_points: int = 0
    nodes: list[str] = field(default_factory=list)

    def error_message(self) -> str:
        """One line for OTLP partial success ``error_message``."""
        return "; ".join(self.errors)


class _Rejections:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.messages: dict[str, str] = {}

    def add(self, reason: str, message: str, points: int = 1) -> None:
        if points <= 0:
            return
        self.counts[reason] = self.counts.get(reason, 0) + points
        if reason not in self.messages:  # values come from the sender: keep the answer short
            self.messages[reason] = message if len(message) <= 300 else message[:297] + "..."


class _Reject(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class _NotCanonical(Exception):
    """A metric's bytes are not in the layout the fast path reads: use the slow path."""


# --- addresses and ports ---------------------------------------------------------------


class _Addresses(dict[str, str | None]):
    """Address text → canonical ``inet_ntop`` form, or None when not an IP address."""

    def __missing__(self, text: str) -> str | None:
        canonical: str | None = None
        family = socket.AF_INET6 if ":" in text else socket.AF_INET
        try:
            canonical = socket.inet_ntop(family, socket.inet_pton(family, text))
        except (OSError, ValueError):
            canonical = None
        self[text] = canonical
        return canonical


_ADDRESSES = _Addresses()
_ADDRESS_CACHE_LIMIT = 200_000


def _address(text: str, network_type: str, key: str) -> str:
    canonical = _ADDRESSES[text]
    if canonical is None:
        raise _Reject("bad_address", f"attribute {key}={text!r} is not an IP address")
    if (":" in canonical) != (network_type == "ipv6"):
        raise _Reject("bad_address", f"attribute {key}={text!r} is not an {network_type} address")
    return canonical


# --- slow path: field by field ---------------------------------------------------------

_STRING_ATTRS = {
    c.ATTR_NETWORK_TRANSPORT: 0,
    c.ATTR_NETWORK_TYPE: 1,
    c.ATTR_SRC_ADDRESS: 2,
    c.ATTR_DST_ADDRESS: 4,
    c.ATTR_REPLY_SRC_ADDRESS: 6,
    c.ATTR_REPLY_DST_ADDRESS: 8,
    c.ATTR_DIRECTION: 10,
}
_INT_ATTRS = {
    c.ATTR_SRC_PORT: 3,
    c.ATTR_DST_PORT: 5,
    c.ATTR_REPLY_SRC_PORT: 7,
    c.ATTR_REPLY_DST_PORT: 9,
}
_SLOT_NAMES = [
    c.ATTR_NETWORK_TRANSPORT, c.ATTR_NETWORK_TYPE, c.ATTR_SRC_ADDRESS, c.ATTR_SRC_PORT,
    c.ATTR_DST_ADDRESS, c.ATTR_DST_PORT, c.ATTR_REPLY_SRC_ADDRESS, c.ATTR_REPLY_SRC_PORT,
    c.ATTR_REPLY_DST_ADDRESS, c.ATTR_REPLY_DST_PORT, c.ATTR_DIRECTION,
]
_TRANSPORTS = ("tcp", "udp")
_NETWORK_TYPES = ("ipv4", "ipv6")


def _tuple_key(slots: list[Any]) -> tuple[Any, ...]:
    """Validated (transport, type, src, sport, dst, dport, rsrc, rsport, rdst, rdport)."""
    transport, network_type = slots[0], slots[1]
    for i in (0, 1, 2, 3, 4, 5):
        if slots[i] is None:
            raise _Reject("missing_attribute", f"data point has no {_SLOT_NAMES[i]} attribute")
    if transport not in _TRANSPORTS:
        raise _Reject("bad_attribute_value", f"network.transport={transport!r} is not tcp or udp")
    if network_type not in _NETWORK_TYPES:
        raise _Reject("bad_attribute_value", f"network.type={network_type!r} is not ipv4 or ipv6")
    reply_present = [slots[i] is not None for i in (6, 7, 8, 9)]
    if any(reply_present) and not all(reply_present):
        raise _Reject(
            "incomplete_reply_tuple",
            "kubenetmon.reply.* attributes must be all four present (NAT) or all absent (mirror)",
        )
    for i in (3, 5, 7, 9):
        port = slots[i]
        if port is not None and not 0 <= port <= 65535:
            raise _Reject("bad_port", f"attribute {_SLOT_NAMES[i]}={port} is not a port (0..65535)")
    src = _address(slots[2], network_type, _SLOT_NAMES[2])
    dst = _address(slots[4], network_type, _SLOT_NAMES[4])
    if reply_present[0]:
        rsrc = _address(slots[6], network_type, _SLOT_NAMES[6])
        rdst = _address(slots[8], network_type, _SLOT_NAMES[8])
        return (transport, network_type, src, slots[3], dst, slots[5], rsrc, slots[7], rdst, slots[9])
    return (transport, network_type, src, slots[3], dst, slots[5], dst, slots[5], src, slots[3])


def _read_point_slow(dp: Any) -> tuple[tuple[Any, ...], bool, int, int, int]:
    """(tuple key, is_reply, start, end, value) of one data point, or _Reject."""
    which = dp.WhichOneof("value")
    if which != "as_int":
        raise _Reject("wrong_value_type", f"data point value is {which or 'missing'}; the contract sends as_int")
    value = dp.as_int
    if value < 0:
        raise _Reject("negative_value", f"data point value {value} is negative; a monotonic delta cannot be")
    start, end = dp.start_time_unix_nano, dp.time_unix_nano
    if not start or not end or start > end:
        raise _Reject(
            "bad_interval",
            f"start_time_unix_nano={start} time_unix_nano={end}: both are required and start <= time",
        )
    slots: list[Any] = [None] * 11
    for kv in dp.attributes:
        key = kv.key
        slot = _STRING_ATTRS.get(key)
        if slot is not None:
            v = kv.value
            if v.WhichOneof("value") != "string_value":
                raise _Reject("wrong_attribute_type", f"attribute {key} must be a string")
            slots[slot] = v.string_value
            continue
        slot = _INT_ATTRS.get(key)
        if slot is not None:
            v = kv.value
            if v.WhichOneof("value") != "int_value":
                raise _Reject("wrong_attribute_type", f"attribute {key} must be an int")
            slots[slot] = v.int_value
        # Unknown attributes are ignored: later versions of the contract may add some.
    direction = slots[10]
    if direction == c.DIRECTION_ORIGINAL:
        is_reply = False
    elif direction == c.DIRECTION_REPLY:
        is_reply = True
    else:
        raise _Reject(
            "bad_direction", f"kubenetmon.conntrack.direction={direction!r} is not original or reply"
        )
    return _tuple_key(slots), is_reply, start, end, value


# --- fast path: canonical bytes ------------------------------------------------------


def _kv_field(key: str, value: str) -> bytes:
    """A string attribute exactly as the encoder writes it (NumberDataPoint.attributes)."""
    body = kv_string(key, value)
    return b"\x3a" + bytes((len(body),)) + body


def _attr_prefix(key: str) -> bytes:
    """Pattern of an attribute up to its value's own bytes (lengths are checked by the parser)."""
    return b"\x3a.\x0a" + re.escape(bytes((len(key),)) + key.encode()) + b"\x12."


def _fixed(key: str, values: Iterable[str]) -> bytes:
    return b"(" + b"|".join(re.escape(_kv_field(key, v)) for v in values) + b")"


def _string_attr(key: str) -> bytes:
    """Two groups: the attribute's bytes up to its value (lengths included), and the value."""
    return b"(" + _attr_prefix(key) + b"\x0a.)([0-9A-Fa-f.:]{2,45})"


def _int_attr(key: str) -> bytes:
    return b"(" + _attr_prefix(key) + b"\x18)([\x00-\x7f]|[\x80-\xff][\x00-\x7f]|[\x80-\xff]{2}[\x00-\x07])"


# The attribute block (all but the direction) in contract order; groups:
# transport, type, then (head, value) for src, sport, dst, dport and the
# optional reply tuple.
_ATTRS_RE = re.compile(
    _fixed(c.ATTR_NETWORK_TRANSPORT, _TRANSPORTS)
    + _fixed(c.ATTR_NETWORK_TYPE, _NETWORK_TYPES)
    + _string_attr(c.ATTR_SRC_ADDRESS) + _int_attr(c.ATTR_SRC_PORT)
    + _string_attr(c.ATTR_DST_ADDRESS) + _int_attr(c.ATTR_DST_PORT)
    + b"(?:"
    + _string_attr(c.ATTR_REPLY_SRC_ADDRESS) + _int_attr(c.ATTR_REPLY_SRC_PORT)
    + _string_attr(c.ATTR_REPLY_DST_ADDRESS) + _int_attr(c.ATTR_REPLY_DST_PORT)
    + b")?",
    re.DOTALL,
)


def _heads() -> tuple[list[bytes], ...]:
    """Per attribute of the block: value length → the exact head (tag, lengths, key) it must have."""
    heads = []
    for key in (c.ATTR_SRC_ADDRESS, c.ATTR_DST_ADDRESS, c.ATTR_REPLY_SRC_ADDRESS, c.ATTR_REPLY_DST_ADDRESS):
        by_length = [b""] * 46
        for n in range(2, 46):
            by_length[n] = _kv_field(key, "0" * n)[:-n]
        heads.append(by_length)
    for key in (c.ATTR_SRC_PORT, c.ATTR_DST_PORT, c.ATTR_REPLY_SRC_PORT, c.ATTR_REPLY_DST_PORT):
        by_length = [b""] * 4
        for n, port in ((1, 1), (2, 300), (3, 40000)):
            by_length[n] = (b"\x3a" + bytes((len(kv_int(key, port)),)) + kv_int(key, port))[:-n]
        heads.append(by_length)
    src, dst, rsrc, rdst, sport, dport, rsport, rdport = heads
    return src, sport, dst, dport, rsrc, rsport, rdst, rdport


# The pattern leaves the length bytes free; checking each head against the
# value it precedes makes only a byte-for-byte canonical block pass.
_HEADS = _heads()
_TRANSPORT_OF = {_kv_field(c.ATTR_NETWORK_TRANSPORT, v): v for v in _TRANSPORTS}
_TYPE_OF = {_kv_field(c.ATTR_NETWORK_TYPE, v): v for v in _NETWORK_TYPES}
_DIR_ORIGINAL = _kv_field(c.ATTR_DIRECTION, c.DIRECTION_ORIGINAL)
_DIR_REPLY = _kv_field(c.ATTR_DIRECTION, c.DIRECTION_REPLY)
_SUM_TRAILER = b"\x10" + bytes((c.TEMPORALITY_DELTA,)) + b"\x18\x01"
_TIMES = struct.Struct("<xQxQ")  # \x11 start \x19 time
_AS_INT = struct.Struct("<q")


def _varint_value(data: bytes) -> int:
    n = 0
    for shift, b in enumerate(data):
        n |= (b & 0x7F) << (7 * shift)
    return n


# Attribute block → validated tuple key (or the rejection). Long-lived
# connections show up in every interval with the same bytes, so this saves
# most of the parsing in steady state. Bounded; dict operations are atomic
# under the GIL, which is all the receiver's threads need.
_TUPLES: dict[bytes, Any] = {}
_TUPLES_LIMIT = 200_000


_PORTS: dict[bytes, int] = {}


def _ports() -> dict[bytes, int]:
    """Minimal varint → port, for every port (built on first use: ~6 MB)."""
    if not _PORTS:
        _PORTS.update((varint(p), p) for p in range(65536))
    return _PORTS


def _parse_attrs(attrs: bytes) -> Any:
    m = _ATTRS_RE.fullmatch(attrs)
    if m is None:
        raise _NotCanonical
    g = m.groups()
    h = _HEADS
    n = 10 if g[10] is None else 18
    if h[0][len(g[3])] != g[2] or h[1][len(g[5])] != g[4] or h[2][len(g[7])] != g[6] or h[3][len(g[9])] != g[8]:
        raise _NotCanonical
    if n == 18 and (h[4][len(g[11])] != g[10] or h[5][len(g[13])] != g[12] or h[6][len(g[15])] != g[14]
                    or h[7][len(g[17])] != g[16]):
        raise _NotCanonical
    ports = _PORTS or _ports()
    transport, network_type = _TRANSPORT_OF[g[0]], _TYPE_OF[g[1]]
    addresses = _ADDRESSES
    src, dst = addresses[g[3].decode()], addresses[g[7].decode()]
    sport, dport = ports.get(g[5]), ports.get(g[9])
    v6 = network_type == "ipv6"
    if (src is not None and dst is not None and sport is not None and dport is not None
            and (":" in src) == v6 and (":" in dst) == v6):
        if n == 10:
            return (transport, network_type, src, sport, dst, dport, dst, dport, src, sport)
        rsrc, rdst = addresses[g[11].decode()], addresses[g[15].decode()]
        rsport, rdport = ports.get(g[13]), ports.get(g[17])
        if (rsrc is not None and rdst is not None and rsport is not None and rdport is not None
                and (":" in rsrc) == v6 and (":" in rdst) == v6):
            return (transport, network_type, src, sport, dst, dport, rsrc, rsport, rdst, rdport)
    # Something is wrong (or a port is a non-minimal varint): the generic checks say what.
    slots: list[Any] = [
        transport, network_type,
        g[3].decode(), _varint_value(g[5]), g[7].decode(), _varint_value(g[9]),
        None, None, None, None, None,
    ]
    if n == 18:
        slots[6:10] = [g[11].decode(), _varint_value(g[13]), g[15].decode(), _varint_value(g[17])]
    try:
        return _tuple_key(slots)
    except _Reject as exc:
        return exc


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
            if not kv.value.string_value:
                break
            return str(kv.value.string_value)
    raise _Reject("missing_node", "resource has no k8s.node.name attribute (the observing node)")


_COUNTERS_RAW = {name.encode(): index for name, index in _COUNTERS.items()}


def _fields(data: bytes, start: int, end: int, allowed: tuple[int, ...]) -> Iterator[tuple[int, int, int]]:
    """(tag, start, end) of the length-delimited fields in ``data[start:end]``; others are not canonical."""
    pos = start
    while pos < end:
        tag = data[pos]
        if tag not in allowed:
            raise _NotCanonical
        n = data[pos + 1]
        pos += 2
        if n & 0x80:
            n &= 0x7F
            shift = 7
            while True:
                b = data[pos]
                pos += 1
                n |= (b & 0x7F) << shift
                if not b & 0x80:
                    break
                shift += 7
                if shift > 35:
                    raise _NotCanonical
        if pos + n > end:
            raise _NotCanonical
        yield tag, pos, pos + n
        pos += n


class _Decoder:
    def __init__(self, fast: bool) -> None:
        self.fast = fast
        self.rejections = _Rejections()
        self.accs: dict[tuple[Any, ...], list[Any]] = {}
        self.accepted = 0
        self.nodes: dict[str, None] = {}

    def run(self, request: Any) -> DecodeResult:
        if len(_ADDRESSES) > _ADDRESS_CACHE_LIMIT:
            _ADDRESSES.clear()
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
        records = [ConntrackRecord(*acc) for acc in self.accs.values() if acc[11] or acc[12] or acc[13] or acc[14]]
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
        if len(_ADDRESSES) > _ADDRESS_CACHE_LIMIT:
            _ADDRESSES.clear()
        try:
            for _, rm_start, rm_end in _fields(data, 0, len(data), (0x0A,)):
                node = ""
                fast_keys: dict[tuple[bytes, bytes], Any] = {}
                for tag, start, end in _fields(data, rm_start, rm_end, (0x0A, 0x12, 0x1A)):
                    if tag == 0x0A:
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
        for tag, m_start, m_end in _fields(data, start, end, (0x0A, 0x12, 0x1A)):
            if tag != 0x12:
                continue  # scope, schema_url
            base = None
            sum_bytes = b""
            for ftag, f_start, f_end in _fields(data, m_start, m_end, (0x0A, 0x12, 0x1A, 0x3A, 0x62)):
                if ftag == 0x0A:
                    base = _COUNTERS_RAW.get(data[f_start:f_end])
                elif ftag == 0x3A:
                    sum_bytes = data[f_start:f_end]
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
        vkey = (node, *key, start, end)
        acc = self.accs.get(vkey)
        if acc is None:
            acc = self.accs[vkey] = [node, *key, 0, 0, 0, 0, start, end]
        return acc

    def _points_slow(self, points: Any, base: int, node: str) -> None:
        rej = self.rejections
        for dp in points:
            try:
                key, is_reply, start, end, value = _read_point_slow(dp)
            except _Reject as exc:
                rej.add(exc.reason, exc.message)
                continue
            acc = self._acc(node, key, start, end)
            acc[base + _REPLY_OFFSET if is_reply else base] += value
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
            acc[index] += value
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
            if len(_TUPLES) >= _TUPLES_LIMIT:
                _TUPLES.clear()
            _TUPLES[attrs] = key
        if type(key) is _Reject:
            return key
        start, end = _TIMES.unpack(times)
        if start > end:
            return _Reject(
                "bad_interval",
                f"start_time_unix_nano={start} time_unix_nano={end}: both are required and start <= time",
            )
        return self._acc(node, key, start, end)


def decode_records_bytes(data: bytes) -> DecodeResult:
    """:func:`decode_records` on a serialized request (what a server has).

    Requests in the encoder's exact layout are read straight from the bytes;
    others are parsed first. Raises ``google.protobuf.message.DecodeError``
    when ``data`` is not an ``ExportMetricsServiceRequest``.
    """
    try:
        return _Decoder(fast=True).run_raw(data)
    except _NotCanonical:
        pass
    request = ExportMetricsServiceRequest()
    request.ParseFromString(data)
    return decode_records(request)


def decode_records(request: Any) -> DecodeResult:
    """Read the conntrack records of one ``ExportMetricsServiceRequest`` (DESIGN §4.1).

    The original and reply points of one tuple and interval (of both metrics)
    become one :class:`ConntrackRecord` with four counters. A data point that
    breaks the contract is rejected and counted by reason; the rest of the
    request is still read.
    """
    try:
        return _Decoder(fast=True).run(request)
    except _NotCanonical:
        return _Decoder(fast=False).run(request)
