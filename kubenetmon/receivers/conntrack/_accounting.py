"""Exact per-interval deltas from plain conntrack dumps and DESTROY events, as array operations.

The kernel's counters are never zeroed (unlike the original's
``IPCTNL_MSG_CT_GET_CTRZERO``, which loses ~0.2 % of deltas when a dump
buffer fills after zeroing, and breaks the counters for every other tool).
Instead we remember the last counters seen per entry and subtract:

* ``state`` (:class:`._state.EntryState`): per entry key, its last counters
  and a status. The key is the original tuple, ``CTA_ID`` and the entry's
  start time (see :mod:`._layout`), so a new connection reusing a tuple is a
  new key, even when the kernel gives it the id of the entry it replaced.
* An entry seen in the previous dump but not in this one has *vanished*
  (``VANISHED``): its last counters wait for its DESTROY event to supply
  the final remainder, or until ``vanished_ttl`` passes (then the remainder
  since the last dump is lost; counted in ``expired``).
* A DESTROY event is applied against the last counters known for the key:
  final − last. An event for an unknown key is a connection that started
  and ended between dumps: all of it counts. The key then stays a short
  while as a tombstone (``GRAVE``), so that a dump racing with the destroy
  can never count it again; since the key holds the start time, a tombstone
  never hides a new entry of the same tuple and id.

A dump is joined against the state in one go (:meth:`DeltaTracker.end_dump`):
the dump's rows are sorted by key hash, each is looked up in the previous
state (``searchsorted``), and the deltas, resets, filters and the new state
are computed on whole columns. Idle entries cost a few array operations,
not a Python statement.

Events received before a dump are applied before it (against the previous
dump's counters), so an entry's final counters are settled before a dump
can show its successor; events received during the dump are applied after
it. Both run in the dump thread, so dump and events never race on the
state; the DESTROY listener thread only queues raw buffers.

Counters that go down for the same key are not two connections mixed (the
key tells them apart): only someone zeroing them (``conntrack -L -z``) does
that. What accumulated since is counted, and the entry is counted in
``counter_resets`` (the receiver logs it).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from kubenetmon.receivers.conntrack._entries import I64, U32, U64, Entries, parse_messages
from kubenetmon.receivers.conntrack._layout import LayoutCache
from kubenetmon.receivers.conntrack._netlink import CT_DELETE, CT_NEW
from kubenetmon.receivers.conntrack._state import GRAVE, LIVE, VANISHED, EntryState, PendingRecords, unique_keys

__all__ = ["AddressFilter", "CycleStats", "DeltaTracker"]

Mask = npt.NDArray[np.bool_]

#: Dump buffers are parsed in batches of about this many bytes: numpy's
#: per-call cost spread over thousands of entries, memory bounded.
PARSE_BATCH_BYTES = 1 << 20
_LOOPBACK6 = np.array([0, 0, 0, 0x01000000], np.uint32)  # ::1 as raw little-endian words


def _network_words(cidr: str) -> tuple[bool, U32, U32]:
    """(IPv6?, network, mask) as four big-endian words; IPv4 as IPv4-mapped IPv6."""
    net = ipaddress.ip_network(cidr, strict=False)
    if net.version == 4:
        value = (0xFFFF << 32) | int(net.network_address)
        mask = (((1 << 96) - 1) << 32) | int(net.netmask)
    else:
        value, mask = int(net.network_address), int(net.netmask)
    words = [(value >> (96 - 32 * i)) & 0xFFFFFFFF for i in range(4)]
    masks = [(mask >> (96 - 32 * i)) & 0xFFFFFFFF for i in range(4)]
    return net.version == 6, np.array(words, np.uint32), np.array(masks, np.uint32)


class AddressFilter:
    """The configured include/exclude CIDRs (loopback is dropped before, always).

    A flow is excluded when any of its four addresses (original and reply,
    source and destination) is in an ``exclude`` network; with ``include``
    set, it is kept only when at least one of them is in an include network.
    """

    def __init__(self, include: list[str] | None = None, exclude: list[str] | None = None) -> None:
        self.include = [_network_words(c) for c in include or []]
        self.exclude = [_network_words(c) for c in exclude or []]
        self.active = bool(self.include or self.exclude)

    @staticmethod
    def _any_in(addresses: list[U32], v6: Mask, networks: list[tuple[bool, U32, U32]]) -> Mask:
        hit = np.zeros(len(v6), np.bool_)
        for address in addresses:
            big = address.byteswap()  # raw words → big-endian values
            for is_v6, net, mask in networks:
                hit |= ((big & mask) == net).all(axis=1) & (v6 == is_v6)
        return hit

    def drops(self, entries: Entries) -> Mask:
        """Which rows the CIDR rules drop."""
        addresses = [entries.osrc, entries.odst, entries.rsrc, entries.rdst]
        dropped = np.zeros(len(entries), np.bool_)
        if self.exclude:
            dropped |= self._any_in(addresses, entries.v6, self.exclude)
        if self.include:
            dropped |= ~self._any_in(addresses, entries.v6, self.include)
        return dropped


def _loopback(e: Entries) -> Mask:
    """Rows with any address in 127.0.0.0/8 or equal to ::1 (each family checked only when present)."""
    addresses = (e.osrc, e.odst, e.rsrc, e.rdst)
    hit = np.zeros(len(e), np.bool_)
    if not e.v6.all():
        v4 = np.zeros(len(e), np.bool_)
        for address in addresses:
            v4 |= (address[:, 3] & 0xFF) == 127  # the first byte of an IPv4 address
        hit |= v4 & ~e.v6
    if e.v6.any():
        v6 = np.zeros(len(e), np.bool_)
        for address in addresses:
            v6 |= (address == _LOOPBACK6).all(axis=1)
        hit |= v6 & e.v6
    return hit


@dataclass
class CycleStats:
    """What one dump (and the events applied around it) saw."""

    entries: int = 0
    changed: int = 0
    events: int = 0
    records: int = 0
    counter_resets: int = 0
    expired: int = 0
    ignored: dict[str, int] = field(default_factory=dict)

    def ignore(self, reason: str, n: int = 1) -> None:
        if n:
            self.ignored[reason] = self.ignored.get(reason, 0) + n


class DeltaTracker:
    """Turns successive dumps (and DESTROY events) into per-connection deltas, as columns.

    Use per cycle: :meth:`begin_dump`, optionally :meth:`apply_events` (events
    received before the dump), :meth:`feed` for every dump buffer,
    :meth:`end_dump`, then :meth:`apply_events` (events received during the
    dump). Deltas accumulate (merged per connection) until the caller
    delivers :meth:`unsent_table` and calls :meth:`clear_unsent`. With
    ``zero_on_dump`` the dump's counters are already deltas and no state is
    kept.
    """

    def __init__(
        self,
        node: str,
        address_filter: AddressFilter | None = None,
        *,
        vanished_ttl_ns: int = 120 * 10**9,
        tombstone_ttl_ns: int = 30 * 10**9,
        zero_on_dump: bool = False,
    ) -> None:
        self.node = node
        self.filter = address_filter or AddressFilter()
        self.vanished_ttl_ns = vanished_ttl_ns
        self.tombstone_ttl_ns = tombstone_ttl_ns
        self.zero_on_dump = zero_on_dump
        self.layouts = LayoutCache()
        self.state = EntryState.empty()
        self.unsent = PendingRecords.empty()
        self.has_baseline = False
        self.dump_ns = 0  # wall-clock time of the latest dump
        self.prev_dump_ns = 0
        self.stats = CycleStats()
        self._buffers: list[bytes] = []  # dump buffers not parsed yet
        self._buffered = 0
        self._parts: list[Entries] = []  # parsed rows of the dump so far
        self._counting = False  # whether this cycle's deltas are reported (False for a baseline)
        self._dumping = False  # between begin_dump and end_dump: events apply against the previous dump

    # --- what is remembered -------------------------------------------------------

    @property
    def num_live(self) -> int:
        """Entries seen by the latest dump."""
        return self.state.count(LIVE)

    @property
    def num_vanished(self) -> int:
        """Entries that left the table, waiting for their DESTROY event."""
        return self.state.count(VANISHED)

    @property
    def num_graves(self) -> int:
        """Tombstones of destroyed entries."""
        return self.state.count(GRAVE)

    # --- dumps ------------------------------------------------------------------

    def begin_dump(self, now_ns: int) -> None:
        self.prev_dump_ns, self.dump_ns = self.dump_ns or now_ns, now_ns
        self._counting = self.has_baseline or self.zero_on_dump
        self.stats = CycleStats()
        self._buffers, self._buffered, self._parts = [], 0, []
        self._dumping = True

    def feed(self, buf: bytes) -> None:
        """Take one dump buffer; buffers are parsed in batches (see :mod:`._entries`)."""
        self._buffers.append(buf)
        self._buffered += len(buf)
        if self._buffered >= PARSE_BATCH_BYTES:
            self._parse_buffered()

    def _parse_buffered(self) -> None:
        if not self._buffers:
            return
        data = self._buffers[0] if len(self._buffers) == 1 else b"".join(self._buffers)
        self._buffers, self._buffered = [], 0
        entries, count = parse_messages(data, CT_NEW, self.layouts, self.stats.ignore)
        self.stats.entries += count
        self._parts.append(entries)

    def abort_dump(self) -> None:
        """A dump failed midway: entries already read get their new counters (their deltas are
        in ``unsent``), the others keep the previous ones (nothing is taken as vanished)."""
        self._buffers, self._buffered = [], 0  # a partial batch may end inside a message
        self._join_or_forget(partial=True)

    def end_dump(self) -> None:
        """Finish the dump: deltas, vanished entries, expiry; this dump becomes the baseline."""
        self._parse_buffered()
        self._join_or_forget(partial=False)
        self.has_baseline = True

    def _join_or_forget(self, *, partial: bool) -> None:
        try:
            self._join(partial=partial)
        except BaseException:
            # The old state is freed during the join (memory): after a failure
            # (e.g. MemoryError) it cannot be trusted, and comparing the next dump
            # with nothing would count every entry's whole history again. The
            # next dump sets a new baseline instead (its interval is lost, logged).
            self.state, self.has_baseline, self._dumping = EntryState.empty(), False, False
            raise

    def _join(self, *, partial: bool) -> None:
        dump = Entries.concat(self._parts, release=True)
        self._parts = []
        self._dumping = False
        h = dump.hash()
        # The identity and counters are sorted by hash (``order``, the dump's rows
        # each key once); the other columns stay where they are and only the
        # changed rows are gathered, so an all-active dump is never copied whole.
        order, counters = unique_keys(h, dump.key, dump.counters, add=self.zero_on_dump)
        # ``counters`` (hash order) replaces the dump's own: release those (a zero-size stand-in, which
        # ``take`` can still gather from: the rows taken get their counters from ``counters`` below).
        dump.counters = np.broadcast_to(np.zeros((1, 4), np.uint64), dump.counters.shape)
        key = dump.key(order)
        h_dump, h = h, h[order]
        if self.zero_on_dump:
            self.stats.changed += len(order)
            entries = dump.take(order)
            entries.counters = counters
            self._emit(entries, h)
            return
        state = self.state
        pos = state.lookup(h, key)
        found = pos >= 0
        every = bool(found.all())  # a busy node: gathers need no mask
        dead = np.zeros(len(h), np.bool_)
        dead[found] = (state.status[pos] if every else state.status[pos[found]]) == GRAVE  # racing a destroy
        # What the dump did not show stays (vanished, tombstones); the rest of the
        # old table is not needed any more: free it (all but its counters, for the
        # deltas) before the deltas and records are built.
        seen = np.zeros(len(state), np.bool_)
        seen[pos[found & ~dead]] = True
        rest = state.take(~seen)
        old_counters = state.counters
        self.state = state = EntryState.empty()
        del seen
        if every:
            prev = old_counters[pos]
        else:
            prev = np.zeros_like(counters)
            prev[found] = old_counters[pos[found]]
        del pos, found, old_counters
        changed = (counters != prev).any(axis=1)
        n_changed = int(changed.sum())
        self.stats.changed += n_changed
        self.stats.ignore("idle", len(h) - n_changed)
        if self._counting and n_changed:
            # The deltas in hash order, handed on without a name here, so that they are freed as soon
            # as _emit_changed has put them in dump order (a busy node: one copy of the counters less).
            self._emit_changed(dump, h_dump, order, changed, self._deltas(counters, prev))
        del dump, h_dump, prev
        if not partial:
            vanished = rest.status == LIVE
            rest.status[vanished] = VANISHED
            rest.expires[vanished] = self.dump_ns + self.vanished_ttl_ns
            expired = (rest.status != LIVE) & (rest.expires <= self.dump_ns)
            # A vanished entry past its TTL: its remainder since the last dump is lost.
            self.stats.expired += int((expired & (rest.status == VANISHED)).sum())
            rest = rest.take(~expired)
        n = len(h)
        if dead.any():
            alive = ~dead
            h, key, counters, n = h[alive], key[alive], counters[alive], int(alive.sum())
        fresh = EntryState(h, key, counters, np.full(n, LIVE, np.uint8), np.zeros(n, np.int64))
        self.state = fresh.insert(rest)

    def _emit_changed(self, dump: Entries, h_dump: U64, order: I64, changed: Mask, deltas: U64) -> None:
        """Emit the deltas of the changed rows (``changed`` and ``deltas`` are in hash order, ``dump`` and
        ``h_dump`` in dump order)."""
        if len(order) == len(dump) and changed.all():
            # Every entry changed (a busy node): reuse the dump's columns, deltas put back in dump order.
            at = np.empty(len(order), np.int64)
            at[order] = np.arange(len(order))
            dump.counters = deltas[at]
            del deltas, at
            self._emit(dump, h_dump)
            return
        rows = np.flatnonzero(changed)
        entries = dump.take(order[rows])
        entries.counters = deltas[rows]
        self._emit(entries, h_dump[order[rows]])

    # --- events -----------------------------------------------------------------

    def apply_events(self, buffers: list[bytes]) -> None:
        """Apply queued DESTROY events: each adds its connection's final remainder.

        Call after :meth:`begin_dump` and before the first :meth:`feed` (events received
        before the dump: against the previous dump's counters), or after :meth:`end_dump`
        (events received during it: against this dump's).
        """
        if self._dumping and (self._parts or self._buffers):
            raise RuntimeError("apply_events between feed() calls: apply them before or after the dump")
        if not buffers:
            return
        data = buffers[0] if len(buffers) == 1 else b"".join(buffers)
        events, count = parse_messages(data, CT_DELETE, self.layouts, self.stats.ignore, strict=False)
        self.stats.events += count
        if not len(events):
            return
        h = events.hash()
        order, final = unique_keys(h, events.key, events.counters, add=False)
        events = events.take(order)
        events.counters, h = final, h[order]
        key = events.key()
        state = self.state
        pos = state.lookup(h, key)
        found = pos >= 0
        if not self._counting:
            # Ended before our first dump: part of it predates us, and we have no baseline to subtract.
            self.stats.ignore("no_baseline", int((~found).sum()))
            events, h, key, pos, found = events.take(found), h[found], key[found], pos[found], found[found]
        prev = np.zeros_like(events.counters)
        prev[found] = state.counters[pos[found]]
        changed = (events.counters != prev).any(axis=1)
        self.stats.ignore("idle", int((~changed).sum()))
        if changed.any():
            rows = np.flatnonzero(changed)
            self._emit_deltas(events.take(rows), prev[rows], h[rows])
        tombstone_until = self.dump_ns + self.tombstone_ttl_ns
        rows = pos[found]
        state.status[rows] = GRAVE
        state.counters[rows] = events.counters[found]
        state.expires[rows] = tombstone_until
        new = ~found
        if new.any():
            n = int(new.sum())
            graves = EntryState(
                h[new], key[new], events.counters[new], np.full(n, GRAVE, np.uint8),
                np.full(n, tombstone_until, np.int64),
            )
            self.state = state.insert(graves)

    # --- records ------------------------------------------------------------------

    def _emit_deltas(self, entries: Entries, prev: U64, h: U64) -> None:
        """Turn counters into deltas against ``prev`` and emit."""
        entries.counters = self._deltas(entries.counters, prev)
        self._emit(entries, h)

    def _deltas(self, current: U64, prev: U64) -> U64:
        """``current - prev`` per row; rows whose counters went down count from zero (counted as resets)."""
        reset = (current < prev).any(axis=1)
        n_reset = int(reset.sum())
        self.stats.counter_resets += n_reset
        deltas = current - prev  # wraps where reset; replaced below
        if n_reset:
            deltas[reset] = current[reset]  # what accumulated since someone zeroed them
        return deltas

    def _emit(self, entries: Entries, h: U64) -> None:
        """Filter the rows with traffic and add them to the unsent records."""
        stats = self.stats
        keep = entries.counters.any(axis=1)
        stats.ignore("idle", int((~keep).sum()))
        loop = keep & _loopback(entries)
        stats.ignore("loopback", int(loop.sum()))
        keep &= ~loop
        if self.filter.active and keep.any():
            cidr = keep & self.filter.drops(entries)
            stats.ignore("cidr", int(cidr.sum()))
            keep &= ~cidr
        n = int(keep.sum())
        stats.records += n
        if n:
            whole = n == len(entries)
            self.unsent.add(
                h if whole else h[keep], entries if whole else entries.take(keep), self.prev_dump_ns, self.dump_ns
            )

    def unsent_table(self) -> pa.RecordBatch:
        """The records accumulated so far (``flows.RECORD_SCHEMA``), kept until :meth:`clear_unsent`."""
        return self.unsent.table(self.node)

    def clear_unsent(self) -> None:
        self.unsent = PendingRecords.empty()

    def take_unsent(self) -> pa.RecordBatch:
        """The records accumulated so far, leaving none behind (call once they are delivered)."""
        table = self.unsent_table()
        self.clear_unsent()
        return table
