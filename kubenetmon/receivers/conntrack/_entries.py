"""Conntrack messages into numpy columns, many at once, per learned layout.

A dump is thousands of netlink messages, and the kernel lays out every
entry of one kind (IPv4 TCP with accounting, IPv6 UDP, …) the same way byte
for byte, except for the values (see :mod:`._layout`). So a buffer is read
in three vectorized steps instead of per-entry Python:

1. the message offsets (one short Python loop over the 16-byte headers:
   lengths decide where the next message starts);
2. per message length, each known layout of that length is proven for all
   those messages at once: every attribute header word and both protocol
   bytes equal the layout's (a numpy gather and compare). Messages no known
   layout fits are walked generically (:func:`._layout.compile_layout`) and
   their layout learned, then matched the same way; malformed ones are
   counted and skipped;
3. each field is one gather of little-endian ``uint32`` words at a constant
   offset from every message start (attributes and messages are 4-byte
   aligned), byte-swapped where the kernel writes big-endian.

The result, :class:`Entries`, has one row per accounted entry and no Python
object per entry. Addresses are kept as four raw ``uint32`` words (the
bytes as on the wire; IPv4 as IPv4-mapped IPv6 ``::ffff:a.b.c.d``), which
view as the 16-byte addresses of ``flows.RECORD_SCHEMA`` without a copy.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from kubenetmon.receivers.conntrack._layout import Columns, Layout, LayoutCache, MalformedMessage

__all__ = ["KEY_WORDS", "Entries", "parse_messages"]

U8 = npt.NDArray[np.uint8]
U16 = npt.NDArray[np.uint16]
U32 = npt.NDArray[np.uint32]
U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]

_HDR = struct.Struct("<IH")
_V4_MAPPED_WORD = 0xFFFF0000  # bytes 00 00 ff ff read as a little-endian word
#: Words of an entry's identity: original source and destination (4 + 4),
#: ports, conntrack id, start time (2), protocol and family.
KEY_WORDS = 13


@dataclass(slots=True)
class Entries:
    """Parsed conntrack entries, one row each (dump entries or DESTROY events)."""

    proto: U8
    v6: npt.NDArray[np.bool_]
    osrc: U32  # (n, 4) raw address words
    odst: U32
    rsrc: U32
    rdst: U32
    osport: U16
    odport: U16
    rsport: U16
    rdport: U16
    ct_id: U32
    start: U64  # CTA_TIMESTAMP_START (0 when the entry has none)
    counters: U64  # (n, 4): original packets, original bytes, reply packets, reply bytes

    def __len__(self) -> int:
        return len(self.proto)

    @staticmethod
    def empty() -> Entries:
        address, port = np.zeros((0, 4), np.uint32), np.zeros(0, np.uint16)
        return Entries(
            np.zeros(0, np.uint8), np.zeros(0, np.bool_), address, address, address, address,
            port, port, port, port, np.zeros(0, np.uint32), np.zeros(0, np.uint64), np.zeros((0, 4), np.uint64),
        )

    def take(self, rows: I64 | npt.NDArray[np.bool_]) -> Entries:
        return Entries(
            self.proto[rows], self.v6[rows], self.osrc[rows], self.odst[rows], self.rsrc[rows], self.rdst[rows],
            self.osport[rows], self.odport[rows], self.rsport[rows], self.rdport[rows], self.ct_id[rows],
            self.start[rows], self.counters[rows],
        )

    @staticmethod
    def concat(parts: Sequence[Entries], *, release: bool = False) -> Entries:
        """The rows of all parts; with ``release`` each part's column is dropped as soon as it is copied,
        so that joining a whole dump never holds it twice."""
        parts = [p for p in parts if len(p)]
        if not parts:
            return Entries.empty()
        if len(parts) == 1:
            return parts[0]
        empty = Entries.empty()
        columns = []
        for name in Entries.__slots__:
            columns.append(np.concatenate([getattr(p, name) for p in parts]))
            if release:
                for p in parts:
                    setattr(p, name, getattr(empty, name))
        return Entries(*columns)

    def key(self, rows: I64 | None = None) -> U32:
        """(n, :data:`KEY_WORDS`) words identifying each entry (of ``rows``, in that order: a gather and the
        key in one pass): original tuple, id, start time, protocol."""

        def col(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
            return array if rows is None else array[rows]

        start = col(self.start)
        key = np.empty((len(start), KEY_WORDS), np.uint32)
        key[:, 0:4] = col(self.osrc)
        key[:, 4:8] = col(self.odst)
        key[:, 8] = (col(self.osport).astype(np.uint32) << 16) | col(self.odport)
        key[:, 9] = col(self.ct_id)
        key[:, 10] = (start >> np.uint64(32)).astype(np.uint32)
        key[:, 11] = start.astype(np.uint32)
        key[:, 12] = col(self.proto).astype(np.uint32) | (col(self.v6).astype(np.uint32) << 8)
        return key

    def hash(self) -> U64:
        """:func:`hash_keys` of :meth:`key`, computed from the columns without building the keys."""
        proto = self.proto.astype(np.uint64) | (self.v6.astype(np.uint64) << np.uint64(8))
        return _mix((
            self.start,
            (self.ct_id.astype(np.uint64) << np.uint64(32)) | (self.osport.astype(np.uint64) << np.uint64(16))
            | self.odport,
            (self.osrc[:, 3].astype(np.uint64) << np.uint64(32)) | self.odst[:, 3],
            (proto << np.uint64(32)) | self.osrc[:, 2],
        ), len(self))


def _mix(words: tuple[U64, ...], n: int) -> U64:
    h = np.full(n, 0x9E3779B97F4A7C15, np.uint64)
    mult = np.uint64(0xBF58476D1CE4E5B9)
    shift = np.uint64(31)
    for word in words:
        h ^= word
        h *= mult
        h ^= h >> shift
    return h


def hash_keys(key: U32) -> U64:
    """A 64-bit hash of each key row, for sorting and joining; matches are always verified on the full key.

    Mixes the start time, id + ports, the low words of both addresses and the
    protocol (+ the address's third word): distinct for distinct live entries
    in practice. Column by column: no wide temporary.
    """

    def pair(a: int, b: int) -> U64:
        return (key[:, a].astype(np.uint64) << np.uint64(32)) | key[:, b]

    return _mix((pair(10, 11), pair(9, 8), pair(3, 7), pair(12, 2)), len(key))


def _offsets(buf: bytes, msg_type: int, strict: bool, ignore: Callable[[str, int], None]) -> tuple[list[int], int]:
    """Offsets of the messages of ``msg_type`` in ``buf`` (and their number)."""
    unpack = _HDR.unpack_from
    offsets: list[int] = []
    append = offsets.append
    off, n = 0, len(buf)
    while off + 16 <= n:
        length, mtype = unpack(buf, off)
        if length < 16 or off + length > n:
            if strict:
                raise MalformedMessage(f"netlink message of length {length} at {off} of a {n}-byte buffer")
            ignore("malformed", 1)
            break
        if mtype == msg_type:
            append(off)
        off += (length + 3) & ~3
    return offsets, len(offsets)


def _uniform_offsets(buf: bytes, words: U32, msg_type: int) -> I64 | None:
    """The message offsets when every message of ``buf`` has the first one's length and ``msg_type`` (a
    table of one kind of entry: the common case, read without a Python loop); None otherwise."""
    n = len(buf)
    if n < 16:
        return None
    length, mtype = _HDR.unpack_from(buf, 0)
    if length < 16 or length % 4 or n % length or mtype != msg_type:
        return None
    starts = np.arange(0, n, length, dtype=np.int64)
    first = starts >> 2
    if not ((words[first] == length).all() and ((words[first + 1] & 0xFFFF) == msg_type).all()):
        return None
    return starts


@dataclass(slots=True)
class _Messages:
    """Messages of one length in a buffer: their byte offsets and, when they are evenly spaced (a
    buffer of one kind of entry), a 2-D view of their words, one row per message, without a copy."""

    words: U32
    octets: U8
    at: I64
    grid: U32 | None = None

    def __len__(self) -> int:
        return len(self.at)

    def column(self, word: int) -> U32:
        """The ``word``-th uint32 of every message."""
        found: U32 = self.grid[:, word] if self.grid is not None else self.words[(self.at >> 2) + word]
        return found

    def matrix(self, words: I64) -> U32:
        """(n, len(words)): the given words of every message."""
        found: U32 = self.grid[:, words] if self.grid is not None else self.words[(self.at >> 2)[:, None] + words]
        return found

    def octet(self, offset: int) -> U8:
        found: U8 = self.octets[self.at + offset]
        return found

    def subset(self, rows: npt.NDArray[np.bool_]) -> _Messages:
        return _Messages(self.words, self.octets, self.at[rows], None if self.grid is None else self.grid[rows])


def _matching(cols: Columns, msgs: _Messages) -> npt.NDArray[np.bool_]:
    """Which messages have this layout (every header word and both protocol numbers equal)."""
    ok: npt.NDArray[np.bool_] = (msgs.matrix(cols.header_words) == cols.header_values).all(axis=1)
    ok &= msgs.octet(cols.proto_at[0]) == cols.proto
    ok &= msgs.octet(cols.proto_at[1]) == cols.proto
    return ok


def _extract(cols: Columns, msgs: _Messages) -> Entries:
    """The fields of messages of one (proven) layout."""
    n = len(msgs)

    def word(offset: int) -> U32:
        return msgs.column(offset >> 2)

    def be32(offset: int) -> U32:
        return word(offset).byteswap()

    def be64(offset: int) -> U64:
        return (be32(offset).astype(np.uint64) << np.uint64(32)) | be32(offset + 4)

    def port(offset: int) -> U16:
        w = word(offset)
        return (((w & 0xFF) << 8) | ((w >> 8) & 0xFF)).astype(np.uint16)

    def address(offset: int) -> U32:
        out = np.empty((n, 4), np.uint32)
        if cols.v6:
            for k in range(4):
                out[:, k] = word(offset + 4 * k)
        else:
            out[:, :2] = 0
            out[:, 2] = _V4_MAPPED_WORD
            out[:, 3] = word(offset)
        return out

    counters = np.empty((n, 4), np.uint64)
    for i, (offset, size) in enumerate(cols.counters):
        counters[:, i] = be64(offset) if size == 8 else be32(offset)
    return Entries(
        proto=np.full(n, cols.proto, np.uint8),
        v6=np.full(n, cols.v6, np.bool_),
        osrc=address(cols.osrc), odst=address(cols.odst), rsrc=address(cols.rsrc), rdst=address(cols.rdst),
        osport=port(cols.osport), odport=port(cols.odport), rsport=port(cols.rsport), rdport=port(cols.rdport),
        ct_id=be32(cols.ct_id) if cols.ct_id >= 0 else np.zeros(n, np.uint32),
        start=be64(cols.start) if cols.start >= 0 else np.zeros(n, np.uint64),
        counters=counters,
    )


def parse_messages(
    buf: bytes, msg_type: int, layouts: LayoutCache, ignore: Callable[[str, int], None], *, strict: bool = True
) -> tuple[Entries, int]:
    """The accounted entries among the messages of ``msg_type`` in ``buf``, and how many such messages there were.

    Entries of ignored kinds (not TCP/UDP, no counters) and malformed
    messages are counted through ``ignore(reason, n)``. ``strict``: a message
    header that does not fit the buffer raises :class:`MalformedMessage`
    (dumps), else it is counted and the rest of the buffer dropped (events).
    """
    usable = len(buf) & ~3
    words = np.frombuffer(buf, np.uint32, count=usable // 4)
    octets = np.frombuffer(buf, np.uint8)
    starts = _uniform_offsets(buf, words, msg_type)
    grid = None
    if starts is None:
        offsets, _ = _offsets(buf, msg_type, strict, ignore)
        starts = np.array(offsets, dtype=np.int64)
    else:
        stride = int(words[0]) // 4
        grid = words[: len(starts) * stride].reshape(len(starts), stride)
    count = len(starts)
    if not count:
        return Entries.empty(), 0
    lengths = words[starts >> 2]
    parts: list[Entries] = []
    distinct = np.unique(lengths).tolist()
    for length in distinct:
        pending = _Messages(words, octets, starts, grid) if len(distinct) == 1 else (
            _Messages(words, octets, starts[lengths == length]))
        for layout in layouts.by_length.get(length, ()):
            pending = _take_layout(layout, pending, parts, ignore)
            if not len(pending):
                break
        while len(pending):
            try:
                layout = layouts.learn(buf, int(pending.at[0]), length)
            except MalformedMessage:
                ignore("malformed", 1)
                rest = np.ones(len(pending), np.bool_)
                rest[0] = False
                pending = pending.subset(rest)
                continue
            pending = _take_layout(layout, pending, parts, ignore)
    return Entries.concat(parts), count


def _take_layout(
    layout: Layout, pending: _Messages, parts: list[Entries], ignore: Callable[[str, int], None]
) -> _Messages:
    """Read the pending messages that have ``layout``; return the others."""
    cols = layout.columns
    if cols is None:  # pragma: no cover - every compiled layout has columns
        raise AssertionError("layout without columns")
    ok = _matching(cols, pending)
    hits = int(ok.sum())
    if not hits:
        return pending
    whole = hits == len(pending)
    if layout.ignore:
        ignore(layout.ignore, hits)
    else:
        parts.append(_extract(cols, pending if whole else pending.subset(ok)))
    return pending.subset(np.zeros(len(pending), np.bool_)) if whole else pending.subset(~ok)
