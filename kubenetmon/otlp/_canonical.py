"""The encoder's exact byte layout, read without protobuf objects (the decoder's fast path).

A request our encoder wrote (or anything byte-for-byte like it) is walked by
its own length prefixes; the attribute block of a point is checked against
the canonical layout once per tuple and its parse cached across requests.
Anything else raises ``_NotCanonical`` and the decoder reads the request
through the message API instead.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Iterator
from typing import Any

from kubenetmon.otlp import _contract as c
from kubenetmon.otlp._checks import (
    _ADDRESSES,
    _NETWORK_TYPES,
    _TRANSPORTS,
    ByteBoundedCache,
    _NotCanonical,
    _Reject,
    _tuple_key,
)
from kubenetmon.otlp._wire import kv_int, kv_string, varint


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
# most of the parsing in steady state. Bounded by bytes: a block is at most
# ~400 bytes (the pattern caps addresses at 45 characters) and its key
# tuple shares its strings with _ADDRESSES, so 64 MiB hold ~100k tuples.
TUPLE_CACHE_BYTES = 64 * 1024 * 1024
_TUPLES = ByteBoundedCache(TUPLE_CACHE_BYTES)


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


