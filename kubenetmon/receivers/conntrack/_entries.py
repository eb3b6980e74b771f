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
    def concat(parts: Sequence[Entries]) -> Entries:
        parts = [p for p in parts if len(p)]
        if not parts:
            return Entries.empty()
        if len(parts) == 1:
            return parts[0]
        return Entries(*(np.concatenate([getattr(p, name) for p in parts]) for name in Entries.__slots__))

    def key(self) -> U32:
        """(n, :data:`KEY_WORDS`) words identifying each entry: original tuple, id, start time, protocol."""
        n = len(self)
        key = np.empty((n, KEY_WORDS), np.uint32)
        key[:, 0:4] = self.osrc
        key[:, 4:8] = self.odst
        key[:, 8] = (self.osport.astype(np.uint32) << 16) | self.odport
        key[:, 9] = self.ct_id
        key[:, 10] = (self.start >> np.uint64(32)).astype(np.uint32)
        key[:, 11] = self.start.astype(np.uint32)
        key[:, 12] = self.proto.astype(np.uint32) | (self.v6.astype(np.uint32) << 8)
        return key


def hash_keys(key: U32) -> U64:
    """A 64-bit hash of each key row, for sorting and joining; matches are always verified on the full key."""
    words = key.astype(np.uint64)
    h = np.full(len(key), 0x9E3779B97F4A7C15, np.uint64)
    mult = np.uint64(0xBF58476D1CE4E5B9)
    shift = np.uint64(31)
    # start time, id + ports, low words of both addresses, protocol: distinct for distinct live entries
    # in practice; the rest of the key is compared on a match.
    for a, b in ((10, 11), (9, 8), (3, 7), (12, 2)):
        h ^= (words[:, a] << np.uint64(32)) | words[:, b]
        h *= mult
        h ^= h >> shift
    return h


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


def _matching(cols: Columns, words: U32, octets: U8, at: I64) -> npt.NDArray[np.bool_]:
    """Which messages starting at byte offsets ``at`` have this layout (headers and protocols equal)."""
    found = words[(at >> 2)[:, None] + cols.header_words]
    ok: npt.NDArray[np.bool_] = (found == cols.header_values).all(axis=1)
    ok &= octets[at + cols.proto_at[0]] == cols.proto
    ok &= octets[at + cols.proto_at[1]] == cols.proto
    return ok


def _extract(cols: Columns, words: U32, at: I64) -> Entries:
    """The fields of messages of one (proven) layout starting at byte offsets ``at``."""
    base = at >> 2
    n = len(at)

    def word(offset: int) -> U32:
        found: U32 = words[base + (offset >> 2)]
        return found

    def be32(offset: int) -> U32:
        return word(offset).byteswap()

    def be64(offset: int) -> U64:
        return (be32(offset).astype(np.uint64) << np.uint64(32)) | be32(offset + 4)

    def port(offset: int) -> U16:
        w = word(offset)
        return (((w & 0xFF) << 8) | ((w >> 8) & 0xFF)).astype(np.uint16)

    def address(offset: int) -> U32:
        out = np.zeros((n, 4), np.uint32)
        if cols.v6:
            for k in range(4):
                out[:, k] = word(offset + 4 * k)
        else:
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
    offsets, count = _offsets(buf, msg_type, strict, ignore)
    if not count:
        return Entries.empty(), 0
    usable = len(buf) & ~3
    words = np.frombuffer(buf, np.uint32, count=usable // 4)
    octets = np.frombuffer(buf, np.uint8)
    starts = np.array(offsets, dtype=np.int64)
    lengths = words[starts >> 2]
    parts: list[Entries] = []
    distinct = np.unique(lengths).tolist()
    for length in distinct:
        pending = starts if len(distinct) == 1 else starts[lengths == length]
        for layout in layouts.by_length.get(length, ()):
            pending = _take_layout(layout, words, octets, pending, parts, ignore)
            if not len(pending):
                break
        while len(pending):
            try:
                layout = layouts.learn(buf, int(pending[0]), length)
            except MalformedMessage:
                ignore("malformed", 1)
                pending = pending[1:]
                continue
            if layout.columns is None:  # pragma: no cover - every compiled layout has columns
                raise AssertionError("layout without columns")
            pending = _take_layout(layout, words, octets, pending, parts, ignore)
    return Entries.concat(parts), count


def _take_layout(  # noqa: PLR0917 - the parse loop's locals, once per layout and buffer
    layout: Layout, words: U32, octets: U8, pending: I64, parts: list[Entries], ignore: Callable[[str, int], None]
) -> I64:
    """Read the pending messages that have ``layout``; return the others."""
    cols = layout.columns
    assert cols is not None
    ok = _matching(cols, words, octets, pending)
    hits = int(ok.sum())
    if not hits:
        return pending
    if layout.ignore:
        ignore(layout.ignore, hits)
    else:
        parts.append(_extract(cols, words, pending[ok] if hits != len(pending) else pending))
    return pending[~ok] if hits != len(pending) else pending[:0]
