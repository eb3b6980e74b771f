"""The receiver's memory as arrays: last counters per entry, and records not yet delivered.

Both tables are sorted by a 64-bit hash of the entry key
(:meth:`._entries.Entries.hash`), so joining a dump of 300k entries against the
previous one is one ``searchsorted`` plus a comparison of the full keys of
the hits, with no Python object per entry. Equal hashes of different keys
(never seen in practice, but possible) are resolved exactly by scanning the
run of equal hashes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from kubenetmon.flows import RECORD_SCHEMA
from kubenetmon.receivers.conntrack._entries import I64, KEY_WORDS, U8, U32, U64, Entries

__all__ = ["GRAVE", "LIVE", "VANISHED", "EntryState", "PendingRecords", "lookup", "unique_keys"]

#: ``EntryState.status``: seen by the latest dump; left the table, DESTROY event awaited; destroyed (tombstone).
LIVE, VANISHED, GRAVE = 0, 1, 2


KeyOf = Callable[[I64], U32]
_VERIFY_ROWS = 1 << 15


def lookup(table_h: U64, key_of: KeyOf, h: U64, key: U32) -> I64:
    """Row of each (h, key) in a table sorted by ``table_h`` whose keys ``key_of(rows)`` gives, or -1."""
    n = len(table_h)
    if n == 0 or len(h) == 0:
        return np.full(len(h), -1, np.int64)
    pos = np.minimum(np.searchsorted(table_h, h), n - 1).astype(np.int64)
    hit = table_h[pos] == h
    rows = np.flatnonzero(hit)
    same = np.empty(len(rows), np.bool_)
    for at in range(0, len(rows), _VERIFY_ROWS):  # in slices: the full keys of 300k rows are 16 MB
        part = rows[at : at + _VERIFY_ROWS]
        same[at : at + _VERIFY_ROWS] = (key_of(pos[part]) == key[part]).all(axis=1)
    found = np.zeros(len(h), np.bool_)
    found[rows[same]] = True
    for i in rows[~same].tolist():  # equal hashes, other key: look along the run of equal hashes
        j = int(pos[i]) + 1
        while j < n and table_h[j] == h[i]:
            if (key_of(np.array([j]))[0] == key[i]).all():
                pos[i], found[i] = j, True
                break
            j += 1
    return np.where(found, pos, -1)


def unique_keys(h: U64, key_of: KeyOf, counters: U64, *, add: bool) -> tuple[I64, U64]:
    """Rows in hash order with each key once, and their counters: the largest of repeated rows
    (an entry listed twice by one dump), or their sum with ``add`` (deltas). ``key_of(rows)``
    gives the keys of rows, needed only where hashes repeat."""
    order = np.argsort(h)  # repeated keys fold by max or sum: their order does not matter
    hs = h[order]
    counters = counters[order]
    if len(hs) < 2 or not (hs[1:] == hs[:-1]).any():
        return order, counters
    keep = np.ones(len(order), np.bool_)
    sorted_key = key_of(order)
    starts = np.flatnonzero(np.concatenate(([True], hs[1:] != hs[:-1])))
    ends = np.append(starts[1:], len(hs))
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        if b - a < 2:
            continue
        for i in range(a, b):  # a run of equal hashes: fold rows with the same key into the first
            if not keep[i]:
                continue
            for j in range(i + 1, b):
                if keep[j] and (sorted_key[j] == sorted_key[i]).all():
                    counters[i] = counters[i] + counters[j] if add else np.maximum(counters[i], counters[j])
                    keep[j] = False
    return order[keep], counters[keep]


@dataclass(slots=True)
class EntryState:
    """Per remembered entry, sorted by ``h``: key, last counters, status and (not LIVE) expiry time."""

    h: U64
    key: U32
    counters: U64
    status: U8
    expires: I64

    def __len__(self) -> int:
        return len(self.h)

    @staticmethod
    def empty() -> EntryState:
        return EntryState(
            np.zeros(0, np.uint64), np.zeros((0, KEY_WORDS), np.uint32), np.zeros((0, 4), np.uint64),
            np.zeros(0, np.uint8), np.zeros(0, np.int64),
        )

    def count(self, status: int) -> int:
        return int((self.status == status).sum())

    def lookup(self, h: U64, key: U32) -> I64:
        return lookup(self.h, lambda rows: self.key[rows], h, key)

    def take(self, rows: I64 | npt.NDArray[np.bool_]) -> EntryState:
        return EntryState(self.h[rows], self.key[rows], self.counters[rows], self.status[rows], self.expires[rows])

    def insert(self, other: EntryState) -> EntryState:
        """This table with the rows of ``other`` (sorted, keys distinct from ours) inserted in order.

        One copy per column (``np.insert``), column by column, so that a few
        vanished entries added to a large table do not double its memory."""
        if not len(other):
            return self
        if not len(self):
            return other
        at = np.searchsorted(self.h, other.h)
        merged = EntryState.empty()
        for name in EntryState.__slots__:
            setattr(merged, name, np.insert(getattr(self, name), at, getattr(other, name), axis=0))
            setattr(self, name, getattr(EntryState.empty(), name))  # release it now
        return merged

    def to_arrays(self) -> dict[str, npt.NDArray[np.generic]]:
        return {name: getattr(self, name) for name in EntryState.__slots__}

    @staticmethod
    def from_arrays(arrays: dict[str, npt.NDArray[np.generic]]) -> EntryState:
        state = EntryState(**{name: arrays[name] for name in EntryState.__slots__})  # type: ignore[arg-type]
        n = len(state.h)
        if state.key.shape != (n, KEY_WORDS) or state.counters.shape != (n, 4) or len(state.status) != n:
            raise ValueError("entry state arrays of inconsistent shapes")
        return state


def _strings(*values: str) -> pa.StringArray:
    # Built from buffers: pa.array() would import pandas (when installed) on its first
    # call, ~45 MB of RSS the agent never needs.
    data = "".join(values).encode()
    offsets = np.cumsum([0, *(len(v.encode()) for v in values)], dtype=np.int32)
    array: pa.StringArray = pa.Array.from_buffers(pa.utf8(), len(values), [None, pa.py_buffer(offsets),
                                                                          pa.py_buffer(data)])
    return array


def _numbers(values: npt.NDArray[np.generic], type_: pa.DataType) -> pa.Array:
    data = np.ascontiguousarray(values)
    return pa.Array.from_buffers(type_, len(data), [None, pa.py_buffer(data)])


def _dictionary(indices: npt.NDArray[np.int32], dictionary: pa.StringArray) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(_numbers(indices, pa.int32()), dictionary)


_TRANSPORTS = _strings("tcp", "udp")
_FAMILIES = _strings("ipv4", "ipv6")


def _addresses(words: U32) -> pa.FixedSizeBinaryArray:
    data = np.ascontiguousarray(words)
    array: pa.FixedSizeBinaryArray = pa.Array.from_buffers(pa.binary(16), len(data), [None, pa.py_buffer(data)])
    return array


@dataclass(slots=True)
class PendingRecords:
    """Deltas not yet delivered, one row per connection, merged until taken.

    Rows stay in the order they came (a dump's changed entries are added
    without a copy); a sort index by ``h`` is built only when rows are
    merged into (DESTROY events, deltas kept under backpressure)."""

    h: U64
    entries: Entries  # counters are the deltas
    start_ns: I64
    end_ns: I64
    _sorted: I64 | None = None

    def __len__(self) -> int:
        return len(self.h)

    @staticmethod
    def empty() -> PendingRecords:
        return PendingRecords(np.zeros(0, np.uint64), Entries.empty(), np.zeros(0, np.int64), np.zeros(0, np.int64))

    def add(self, h: U64, entries: Entries, start_ns: int, end_ns: int) -> None:
        """Add deltas (keys distinct): a connection already pending sums into its row and its interval grows."""
        if not len(h):
            return
        n = len(h)
        starts, ends = np.full(n, start_ns, np.int64), np.full(n, end_ns, np.int64)
        if not len(self):
            self.h, self.entries, self.start_ns, self.end_ns, self._sorted = h, entries, starts, ends, None
            return
        if self._sorted is None:
            self._sorted = np.argsort(self.h, kind="stable")
        index, mine = self._sorted, self.entries
        at = lookup(self.h[index], lambda rows: mine.take(index[rows]).key(), h, entries.key())
        hit = at >= 0
        if hit.any():
            rows = index[at[hit]]
            mine.counters[rows] += entries.counters[hit]
            self.start_ns[rows] = np.minimum(self.start_ns[rows], start_ns)
            self.end_ns[rows] = np.maximum(self.end_ns[rows], end_ns)
        new = ~hit
        if new.any():
            self.h = np.concatenate([self.h, h[new]])
            self.entries = Entries.concat([mine, entries.take(new)])
            self.start_ns = np.concatenate([self.start_ns, starts[new]])
            self.end_ns = np.concatenate([self.end_ns, ends[new]])
            self._sorted = None

    def table(self, node: str) -> pa.RecordBatch:
        """The pending records as a batch in ``flows.RECORD_SCHEMA``."""
        e, n = self.entries, len(self)
        columns = [
            _dictionary(np.zeros(n, np.int32), _strings(node)),
            _dictionary((e.proto == 17).astype(np.int32), _TRANSPORTS),
            _dictionary(e.v6.astype(np.int32), _FAMILIES),
            _addresses(e.osrc), _numbers(e.osport, pa.uint16()), _addresses(e.odst), _numbers(e.odport, pa.uint16()),
            _addresses(e.rsrc), _numbers(e.rsport, pa.uint16()), _addresses(e.rdst), _numbers(e.rdport, pa.uint16()),
            # Copies: counters and times change in place when deltas merge into a row,
            # possibly after a batch of them was handed out (and refused).
            _numbers(e.counters[:, 1].copy(), pa.uint64()), _numbers(e.counters[:, 0].copy(), pa.uint64()),
            _numbers(e.counters[:, 3].copy(), pa.uint64()), _numbers(e.counters[:, 2].copy(), pa.uint64()),
            _numbers(self.start_ns.copy(), pa.int64()), _numbers(self.end_ns.copy(), pa.int64()),
        ]
        return pa.RecordBatch.from_arrays(columns, schema=RECORD_SCHEMA)
