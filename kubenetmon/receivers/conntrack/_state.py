"""The receiver's memory as arrays: last counters per entry, and records not yet delivered.

Both tables are sorted by a 64-bit hash of the entry key
(:func:`._entries.hash_keys`), so joining a dump of 300k entries against the
previous one is one ``searchsorted`` plus a comparison of the full keys of
the hits, with no Python object per entry. Equal hashes of different keys
(never seen in practice, but possible) are resolved exactly by scanning the
run of equal hashes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from kubenetmon.flows import RECORD_SCHEMA
from kubenetmon.receivers.conntrack._entries import I64, KEY_WORDS, U8, U32, U64, Entries

__all__ = ["GRAVE", "LIVE", "VANISHED", "EntryState", "PendingRecords", "lookup", "unique_keys"]

#: ``EntryState.status``: seen by the latest dump; left the table, DESTROY event awaited; destroyed (tombstone).
LIVE, VANISHED, GRAVE = 0, 1, 2


def lookup(table_h: U64, table_key: U32, h: U64, key: U32) -> I64:
    """Row of each (h, key) in a table sorted by ``table_h``, or -1."""
    n = len(table_h)
    if n == 0 or len(h) == 0:
        return np.full(len(h), -1, np.int64)
    pos = np.minimum(np.searchsorted(table_h, h), n - 1).astype(np.int64)
    hit = table_h[pos] == h
    rows = np.flatnonzero(hit)
    same = (table_key[pos[rows]] == key[rows]).all(axis=1)
    found = np.zeros(len(h), np.bool_)
    found[rows[same]] = True
    for i in rows[~same].tolist():  # equal hashes, other key: look along the run of equal hashes
        j = int(pos[i]) + 1
        while j < n and table_h[j] == h[i]:
            if (table_key[j] == key[i]).all():
                pos[i], found[i] = j, True
                break
            j += 1
    return np.where(found, pos, -1)


def unique_keys(h: U64, key: U32, counters: U64, *, add: bool) -> tuple[I64, U64]:
    """Rows in hash order with each key once, and their counters: the largest of repeated rows
    (an entry listed twice by one dump), or their sum with ``add`` (deltas)."""
    order = np.argsort(h, kind="stable")
    hs = h[order]
    counters = counters[order]
    if len(hs) < 2 or not (hs[1:] == hs[:-1]).any():
        return order, counters
    keep = np.ones(len(order), np.bool_)
    sorted_key = key[order]
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
        return lookup(self.h, self.key, h, key)

    def take(self, rows: I64 | npt.NDArray[np.bool_]) -> EntryState:
        return EntryState(self.h[rows], self.key[rows], self.counters[rows], self.status[rows], self.expires[rows])

    @staticmethod
    def merge(parts: Sequence[EntryState]) -> EntryState:
        """One table of the rows of several sorted ones (keys distinct), sorted again."""
        parts = [p for p in parts if len(p)]
        if not parts:
            return EntryState.empty()
        if len(parts) == 1:
            return parts[0]
        joined = EntryState(*(np.concatenate([getattr(p, f) for p in parts]) for f in EntryState.__slots__))
        # Sorted runs: the stable sort (timsort) merges them in linear time.
        return joined.take(np.argsort(joined.h, kind="stable"))

    def to_arrays(self) -> dict[str, npt.NDArray[np.generic]]:
        return {name: getattr(self, name) for name in EntryState.__slots__}

    @staticmethod
    def from_arrays(arrays: dict[str, npt.NDArray[np.generic]]) -> EntryState:
        state = EntryState(**{name: arrays[name] for name in EntryState.__slots__})  # type: ignore[arg-type]
        n = len(state.h)
        if state.key.shape != (n, KEY_WORDS) or state.counters.shape != (n, 4) or len(state.status) != n:
            raise ValueError("entry state arrays of inconsistent shapes")
        return state


_TRANSPORTS = pa.array(["tcp", "udp"])
_FAMILIES = pa.array(["ipv4", "ipv6"])


def _addresses(words: U32) -> pa.FixedSizeBinaryArray:
    data = np.ascontiguousarray(words)
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), len(data), [None, pa.py_buffer(data)])


@dataclass(slots=True)
class PendingRecords:
    """Deltas not yet delivered, one row per connection (sorted by ``h``), merged until taken."""

    h: U64
    key: U32
    entries: Entries  # counters are the deltas
    start_ns: I64
    end_ns: I64

    def __len__(self) -> int:
        return len(self.h)

    @staticmethod
    def empty() -> PendingRecords:
        return PendingRecords(
            np.zeros(0, np.uint64), np.zeros((0, KEY_WORDS), np.uint32), Entries.empty(),
            np.zeros(0, np.int64), np.zeros(0, np.int64),
        )

    def add(self, h: U64, key: U32, entries: Entries, start_ns: int, end_ns: int) -> None:
        """Add deltas (keys distinct): a connection already pending sums into its row and its interval grows."""
        if not len(h):
            return
        n = len(h)
        starts, ends = np.full(n, start_ns, np.int64), np.full(n, end_ns, np.int64)
        if not len(self):
            order = np.argsort(h, kind="stable")
            self.h, self.key, self.entries = h[order], key[order], entries.take(order)
            self.start_ns, self.end_ns = starts, ends
            return
        pos = lookup(self.h, self.key, h, key)
        hit = pos >= 0
        if hit.any():
            rows = pos[hit]
            self.entries.counters[rows] += entries.counters[hit]
            self.start_ns[rows] = np.minimum(self.start_ns[rows], start_ns)
            self.end_ns[rows] = np.maximum(self.end_ns[rows], end_ns)
        new = ~hit
        if new.any():
            h2 = np.concatenate([self.h, h[new]])
            order = np.argsort(h2, kind="stable")
            self.h = h2[order]
            self.key = np.concatenate([self.key, key[new]])[order]
            self.entries = Entries.concat([self.entries, entries.take(new)]).take(order)
            self.start_ns = np.concatenate([self.start_ns, starts[new]])[order]
            self.end_ns = np.concatenate([self.end_ns, ends[new]])[order]

    def table(self, node: str) -> pa.RecordBatch:
        """The pending records as a batch in ``flows.RECORD_SCHEMA``."""
        e, n = self.entries, len(self)
        columns = [
            pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([node])),
            pa.DictionaryArray.from_arrays(pa.array((e.proto == 17).astype(np.int32)), _TRANSPORTS),
            pa.DictionaryArray.from_arrays(pa.array(e.v6.astype(np.int32)), _FAMILIES),
            _addresses(e.osrc), pa.array(e.osport), _addresses(e.odst), pa.array(e.odport),
            _addresses(e.rsrc), pa.array(e.rsport), _addresses(e.rdst), pa.array(e.rdport),
            pa.array(e.counters[:, 1]), pa.array(e.counters[:, 0]),
            pa.array(e.counters[:, 3]), pa.array(e.counters[:, 2]),
            pa.array(self.start_ns), pa.array(self.end_ns),
        ]
        return pa.RecordBatch.from_arrays(columns, schema=RECORD_SCHEMA)
