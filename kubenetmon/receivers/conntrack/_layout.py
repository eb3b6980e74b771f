"""Parsing conntrack netlink messages at the speed of ``conntrack -L``.

Decoding each entry attribute by attribute in Python (what pyroute2 does)
runs at ~3-4k entries/s; a 300k table would take 100 s. But the kernel lays
out every entry of one kind (IPv4 TCP with accounting, IPv6 UDP, …) the same
way, byte for byte, except for the values. So the first message of each kind
is walked generically and *compiled* into a :class:`Layout`: the offsets of
everything we need plus a precompiled ``struct`` that reads every attribute
header at its expected place. Each following message of the same length is
checked against that layout with one ``unpack_from`` and one tuple
comparison (headers are the proof that the offsets hold) and then read by
slicing. A message no known layout fits is walked generically again, and its
layout learned (up to :data:`MAX_LAYOUTS`); past that, unusual messages are
still parsed correctly, just slowly.

What the accounting needs from an entry:

* ``key``: the raw bytes of the original-tuple attribute, the raw
  ``CTA_ID`` attribute and the entry's start time (the value of
  ``CTA_TIMESTAMP_START``, present when ``nf_conntrack_timestamp=1``).
  Equal bytes mean the same connection, so the key is never decoded. Tuple
  and id alone do not identify an entry: when a client reuses a source port
  while the old entry is in TIME_WAIT or CLOSE, the kernel replaces it by
  a new one that very often gets the same id (derived from the entry's
  address, which the freed slot gives to the new one). The start time
  differs. In DESTROY events ``CTA_TIMESTAMP`` also carries the stop time,
  so only the start value is part of the key.
* ``counters``: the raw bytes of the two counter attributes. Unchanged
  bytes mean an idle entry, again without decoding.
* ``fields``: the decoded tuples, only for entries whose counters changed.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

__all__ = ["MAX_LAYOUTS", "Columns", "Layout", "LayoutCache", "MalformedMessage", "decode_counters"]

# linux/netfilter/nfnetlink_conntrack.h
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_COUNTERS_ORIG, CTA_COUNTERS_REPLY, CTA_ID = 1, 2, 9, 10, 12
CTA_TIMESTAMP, CTA_TIMESTAMP_START = 20, 1
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
CTA_COUNTERS_PACKETS, CTA_COUNTERS_BYTES, CTA_COUNTERS32_PACKETS, CTA_COUNTERS32_BYTES = 1, 2, 3, 4
NLA_TYPE_MASK = 0x3FFF  # drops NLA_F_NESTED and NLA_F_NET_BYTEORDER

NLMSG_HEADER_BYTES = 20  # nlmsghdr (16) + nfgenmsg (4)
MAX_LAYOUTS = 256

_NLA = struct.Struct("<HH")
_NLA_WORD = struct.Struct("<I")
_TRANSPORTS = {socket.IPPROTO_TCP: "tcp", socket.IPPROTO_UDP: "udp"}


class MalformedMessage(ValueError):
    """A message that is not a well-formed conntrack entry."""


def _attrs(buf: bytes, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(type, offset, length) of each attribute in ``buf[start:end]``."""
    while start + 4 <= end:
        length, type_ = _NLA.unpack_from(buf, start)
        if length < 4 or start + length > end:
            raise MalformedMessage(f"attribute at {start} has length {length} past {end}")
        yield type_ & NLA_TYPE_MASK, start, length
        start += (length + 3) & ~3


@dataclass
class _Tuple:
    span: tuple[int, int]
    src: int = -1  # offset of the address value
    dst: int = -1
    addr_len: int = 0
    proto: int = -1
    proto_at: int = -1
    sport: int = -1
    dport: int = -1


@dataclass(frozen=True, slots=True, eq=False)
class Columns:
    """Where a layout's fields are, for reading many messages of it at once with numpy (see ``_columns``).

    Every offset is from the message start. Attributes are 4-byte aligned in
    a netlink message, and messages in a buffer too, so each header and each
    value is read as whole little-endian ``uint32`` words of the buffer.
    ``header_words`` are the word offsets of **every** attribute header the
    generic walk visited (top level, inside the tuples, the counters and the
    start time) and ``header_values`` their values: a message whose words
    there are equal (and whose protocol bytes are) has every field below at
    the same place.
    """

    header_words: npt.NDArray[np.int64]
    header_values: npt.NDArray[np.uint32]
    proto_at: tuple[int, int]  # byte offsets of the original and reply protocol numbers
    proto: int
    v6: bool = False
    osrc: int = 0
    odst: int = 0
    rsrc: int = 0
    rdst: int = 0
    osport: int = 0
    odport: int = 0
    rsport: int = 0
    rdport: int = 0
    ct_id: int = -1  # CTA_ID value, -1 when absent
    start: int = -1  # CTA_TIMESTAMP_START value, -1 when absent
    # (offset, bytes) of original packets, original bytes, reply packets, reply bytes
    counters: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True, slots=True, eq=False)
class Layout:
    """Where everything is in one kind of conntrack message (offsets from the message start).

    ``ignore`` is empty for entries we account, else the reason they are
    skipped (``protocol`` for non-TCP/UDP, ``no_counters`` for entries
    created while ``nf_conntrack_acct`` was 0).
    """

    length: int
    check: struct.Struct
    expected: tuple[int, ...]
    ignore: str = ""
    transport: str = ""
    network_type: str = ""
    k0: int = 0  # original tuple attribute
    k1: int = 0
    i0: int = 0  # CTA_ID attribute (i0 == i1 when absent)
    i1: int = 0
    t0: int = 0  # value of CTA_TIMESTAMP_START (t0 == t1 when absent)
    t1: int = 0
    c0: int = 0  # counters: one span when the two attributes are adjacent,
    c1: int = 0
    c2: int = 0  # else a second span (c2 == c3 when unused)
    c3: int = 0
    fields: struct.Struct = field(default_factory=lambda: struct.Struct(""))
    order: tuple[int, ...] = ()  # permutation to (osrc, odst, osport, odport, rsrc, rdst, rsport, rdport)
    inner: struct.Struct = field(default_factory=lambda: struct.Struct(""))  # headers inside both tuples
    inner_expected: tuple[int, ...] = ()
    columns: Columns | None = None

    def matches(self, buf: bytes, off: int) -> bool:
        """Whether the message at ``off`` has this layout (the per-entry check)."""
        return self.check.unpack_from(buf, off) == self.expected

    def key(self, buf: bytes, off: int) -> bytes:
        return (
            buf[off + self.k0 : off + self.k1] + buf[off + self.i0 : off + self.i1] + buf[off + self.t0 : off + self.t1]
        )

    def counters(self, buf: bytes, off: int) -> bytes:
        return buf[off + self.c0 : off + self.c1] + buf[off + self.c2 : off + self.c3]

    def tuples(self, buf: bytes, off: int) -> tuple[bytes, bytes, int, int, bytes, bytes, int, int]:
        """(orig src, orig dst, orig sport, orig dport, reply src, reply dst, reply sport, reply dport).

        The per-entry check covers the top-level attributes only; the headers
        inside the tuples are checked here, for the (fewer) entries decoded.
        Raises :class:`MalformedMessage` when they do not fit and the message
        cannot be walked either.
        """
        if self.inner.unpack_from(buf, off) != self.inner_expected:
            return compile_layout(buf, off, self.length).tuples(buf, off)
        values = self.fields.unpack_from(buf, off)
        if self.order:
            values = tuple(values[i] for i in self.order)
        return values


def _probe_struct(probes: list[tuple[int, str]], byte_order: str) -> struct.Struct:
    """A struct reading each (offset, code) of ``probes`` and skipping what lies between."""
    fmt, at = [byte_order], 0
    for pos, code in sorted(probes):
        fmt.append(f"{pos - at}x{code}" if pos > at else code)
        at = pos + struct.calcsize(code)
    return struct.Struct("".join(fmt))


def _walk_tuple(buf: bytes, start: int, length: int, base: int, headers: list[int]) -> _Tuple:
    t = _Tuple(span=(start - base, start - base + length))
    for type_, pos, ln in _attrs(buf, start + 4, start + length):
        headers.append(pos - base)
        if type_ == CTA_TUPLE_IP:
            for ip_type, ip_pos, ip_len in _attrs(buf, pos + 4, pos + ln):
                headers.append(ip_pos - base)
                if ip_type in (CTA_IP_V4_SRC, CTA_IP_V6_SRC):
                    t.src, t.addr_len = ip_pos + 4 - base, ip_len - 4
                elif ip_type in (CTA_IP_V4_DST, CTA_IP_V6_DST):
                    t.dst = ip_pos + 4 - base
        elif type_ == CTA_TUPLE_PROTO:
            for p_type, p_pos, p_len in _attrs(buf, pos + 4, pos + ln):
                headers.append(p_pos - base)
                if p_type == CTA_PROTO_NUM and p_len >= 5:
                    t.proto, t.proto_at = buf[p_pos + 4], p_pos + 4 - base
                elif p_type == CTA_PROTO_SRC_PORT and p_len >= 6:
                    t.sport = p_pos + 4 - base
                elif p_type == CTA_PROTO_DST_PORT and p_len >= 6:
                    t.dport = p_pos + 4 - base
    return t


def compile_layout(buf: bytes, off: int, length: int) -> Layout:
    """Walk one message generically and describe its layout (the slow path)."""
    headers: list[int] = []  # top-level attribute headers
    inner: list[int] = []  # headers inside the tuples and the counters
    tuples: dict[int, _Tuple] = {}
    counters: dict[int, tuple[int, int]] = {}
    counter_values: dict[int, tuple[int, int]] = {}  # 0..3 → (offset, size) of op, ob, rp, rb
    id_span = start_span = (0, 0)
    for type_, pos, ln in _attrs(buf, off + NLMSG_HEADER_BYTES, off + length):
        headers.append(pos - off)
        if type_ == CTA_TIMESTAMP:
            for ts_type, ts_pos, ts_len in _attrs(buf, pos + 4, pos + ln):
                if ts_type == CTA_TIMESTAMP_START and ts_len == 12:
                    # Its header joins the per-entry check: it proves where the start time is.
                    headers.append(ts_pos - off)
                    start_span = (ts_pos + 4 - off, ts_pos + 12 - off)
        elif type_ in (CTA_TUPLE_ORIG, CTA_TUPLE_REPLY):
            tuples[type_] = _walk_tuple(buf, pos, ln, off, inner)
        elif type_ in (CTA_COUNTERS_ORIG, CTA_COUNTERS_REPLY):
            counters[type_] = (pos - off, pos - off + ((ln + 3) & ~3))
            base = 0 if type_ == CTA_COUNTERS_ORIG else 2
            for c_type, c_pos, c_len in _attrs(buf, pos + 4, pos + ln):
                inner.append(c_pos - off)
                if c_type in (CTA_COUNTERS_PACKETS, CTA_COUNTERS32_PACKETS) and c_len in (8, 12):
                    counter_values[base] = (c_pos + 4 - off, c_len - 4)
                elif c_type in (CTA_COUNTERS_BYTES, CTA_COUNTERS32_BYTES) and c_len in (8, 12):
                    counter_values[base + 1] = (c_pos + 4 - off, c_len - 4)
        elif type_ == CTA_ID:
            id_span = (pos - off, pos - off + ln)
    orig, reply = tuples.get(CTA_TUPLE_ORIG), tuples.get(CTA_TUPLE_REPLY)
    if orig is None or reply is None or orig.proto_at < 0 or reply.proto_at < 0:
        raise MalformedMessage("conntrack entry without an original or reply tuple")
    # The per-entry check reads every top-level header (and the start
    # time's) plus both protocol numbers: a message of the same length with
    # equal values has its tuples, id, start time and counters at the same places. The raw key and counter
    # bytes need no more; the headers inside the tuples are checked when an
    # entry is decoded (``tuples``), those inside the counters by
    # ``decode_counters``.
    check = _probe_struct([(h, "I") for h in headers] + [(orig.proto_at, "B"), (reply.proto_at, "B")], "<")
    expected = check.unpack_from(buf, off)
    inner_check = _probe_struct([(h, "I") for h in inner], "<")
    every = sorted(headers + inner)
    matcher = Columns(
        header_words=np.array([h // 4 for h in every], dtype=np.int64),
        header_values=np.array([_NLA_WORD.unpack_from(buf, off + h)[0] for h in every], dtype=np.uint32),
        proto_at=(orig.proto_at, reply.proto_at),
        proto=orig.proto,
    )
    transport = _TRANSPORTS.get(orig.proto, "")
    if not transport:
        return Layout(length, check, expected, ignore="protocol", columns=matcher)
    if min(orig.src, orig.dst, orig.sport, orig.dport, reply.src, reply.dst, reply.sport, reply.dport) < 0:
        raise MalformedMessage(f"{transport} entry without addresses or ports")
    if orig.addr_len not in (4, 16) or reply.addr_len not in (4, 16):
        raise MalformedMessage(f"{transport} entry with {orig.addr_len}-byte addresses")
    if CTA_COUNTERS_ORIG not in counters or CTA_COUNTERS_REPLY not in counters or len(counter_values) < 4:
        return Layout(length, check, expected, ignore="no_counters", columns=matcher)
    (a0, a1), (b0, b1) = counters[CTA_COUNTERS_ORIG], counters[CTA_COUNTERS_REPLY]
    spans = (a0, b1, 0, 0) if a1 == b0 else (a0, a1, b0, b1)
    addr = f"{orig.addr_len}s"
    wanted = [
        (orig.src, addr), (orig.dst, addr), (orig.sport, "H"), (orig.dport, "H"),
        (reply.src, addr), (reply.dst, addr), (reply.sport, "H"), (reply.dport, "H"),
    ]
    ranked = sorted(range(len(wanted)), key=lambda i: wanted[i][0])
    order = tuple(ranked.index(i) for i in range(len(wanted)))
    return Layout(
        length, check, expected,
        transport=transport,
        network_type="ipv4" if orig.addr_len == 4 else "ipv6",
        k0=orig.span[0], k1=orig.span[1], i0=id_span[0], i1=id_span[1], t0=start_span[0], t1=start_span[1],
        c0=spans[0], c1=spans[1], c2=spans[2], c3=spans[3],
        fields=_probe_struct(wanted, ">"),
        order=() if order == tuple(range(len(wanted))) else order,
        inner=inner_check,
        inner_expected=inner_check.unpack_from(buf, off),
        columns=Columns(
            header_words=matcher.header_words, header_values=matcher.header_values,
            proto_at=matcher.proto_at, proto=matcher.proto, v6=orig.addr_len == 16,
            osrc=orig.src, odst=orig.dst, rsrc=reply.src, rdst=reply.dst,
            osport=orig.sport, odport=orig.dport, rsport=reply.sport, rdport=reply.dport,
            ct_id=id_span[0] + 4 if id_span[1] - id_span[0] == 8 else -1,
            start=start_span[0] if start_span[1] else -1,
            counters=tuple(counter_values[i] for i in range(4)),
        ),
    )


class LayoutCache:
    """Known layouts by message length; learns new ones on the slow path.

    Each entry of ``by_length`` is a list of candidates for that length.
    The hot loop reads ``by_length`` directly and calls :meth:`learn` only
    when no candidate matches.
    """

    def __init__(self, max_layouts: int = MAX_LAYOUTS) -> None:
        self.by_length: dict[int, list[Layout]] = {}
        self.max_layouts = max_layouts
        self.count = 0
        self.slow_path = 0  # messages parsed generically

    def learn(self, buf: bytes, off: int, length: int) -> Layout:
        """Compile the layout of this message, remember it if there is room, and return it."""
        self.slow_path += 1
        layout = compile_layout(buf, off, length)
        if self.count < self.max_layouts:
            self.by_length.setdefault(length, []).append(layout)
            self.count += 1
        return layout

    def find(self, buf: bytes, off: int, length: int) -> Layout:
        for layout in self.by_length.get(length, ()):
            if layout.matches(buf, off):
                return layout
        return self.learn(buf, off, length)


# Counters: CTA_COUNTERS_ORIG then CTA_COUNTERS_REPLY, each a nest of
# PACKETS then BYTES (be64). Headers are read big-endian here (the values
# are), so the expected header words are the byte-swapped nla headers.
_CTR_STD = struct.Struct(">IIQIQIIQIQ")


def _swap(length: int, type_: int) -> int:
    return int.from_bytes(_NLA.pack(length, type_), "big")


_NESTED = 0x8000
_CTR_STD_HEADERS = (
    _swap(28, CTA_COUNTERS_ORIG | _NESTED), _swap(12, CTA_COUNTERS_PACKETS), _swap(12, CTA_COUNTERS_BYTES),
    _swap(28, CTA_COUNTERS_REPLY | _NESTED), _swap(12, CTA_COUNTERS_PACKETS), _swap(12, CTA_COUNTERS_BYTES),
)


def decode_counters(raw: bytes) -> tuple[int, int, int, int]:
    """(original packets, original bytes, reply packets, reply bytes) from the raw counter attributes."""
    if len(raw) == 56:
        v = _CTR_STD.unpack(raw)
        if (v[0], v[1], v[3], v[5], v[6], v[8]) == _CTR_STD_HEADERS:
            return v[2], v[4], v[7], v[9]
    values = [0, 0, 0, 0]
    for type_, pos, ln in _attrs(raw, 0, len(raw)):
        base = 0 if type_ == CTA_COUNTERS_ORIG else 2 if type_ == CTA_COUNTERS_REPLY else -1
        if base < 0:
            continue
        for c_type, c_pos, c_len in _attrs(raw, pos + 4, pos + ln):
            value = int.from_bytes(raw[c_pos + 4 : c_pos + c_len], "big")
            if c_type in (CTA_COUNTERS_PACKETS, CTA_COUNTERS32_PACKETS):
                values[base] = value
            elif c_type in (CTA_COUNTERS_BYTES, CTA_COUNTERS32_BYTES):
                values[base + 1] = value
    return values[0], values[1], values[2], values[3]
