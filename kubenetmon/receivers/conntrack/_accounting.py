"""Exact per-interval deltas from plain conntrack dumps and DESTROY events.

The kernel's counters are never zeroed (unlike the original's
``IPCTNL_MSG_CT_GET_CTRZERO``, which loses ~0.2 % of deltas when a dump
buffer fills after zeroing, and breaks the counters for every other tool).
Instead we remember the last counters seen per entry and subtract:

* ``state``: key → raw counters seen by the latest dump. The key is the raw
  original-tuple attribute, ``CTA_ID`` and the entry's start time (see
  :mod:`._layout`), so a new connection reusing a tuple is a new key, even
  when the kernel gives it the id of the entry it replaced.
* An entry seen in the previous dump but not in this one *vanished*: it
  moves to ``limbo`` (with its last counters) until its DESTROY event
  supplies the final remainder, or until ``vanished_ttl`` passes (then the
  remainder since the last dump is lost; counted in ``expired``).
* A DESTROY event is applied against the last counters known for the key
  (state or limbo): final − last. An event for an unknown key is a
  connection that started and ended between dumps: all of it counts. The
  key then stays in ``graves`` (a tombstone) for a short while, so that a dump
  racing with the destroy can never count it again; since the key holds the
  start time, a tombstone never hides a new entry of the same tuple and id.

Events received before a dump are applied before it (against the previous
dump's counters), so an entry's final counters are settled before a dump
can show its successor; events received during the dump are applied after
it. Both run in the dump thread, so dump and events never race on the
state; the DESTROY listener thread only queues raw buffers.

Counters that go down for the same key are not two connections mixed any
more (the key tells them apart): only someone zeroing them (``conntrack -L
-z``) does that. What accumulated since is counted, and the entry is
counted in ``counter_resets`` (the receiver logs it).
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass, field

from kubenetmon.flows import ConntrackRecord
from kubenetmon.receivers.conntrack._layout import Layout, LayoutCache, MalformedMessage, decode_counters
from kubenetmon.receivers.conntrack._netlink import CT_DELETE, CT_NEW

__all__ = ["AddressFilter", "CycleStats", "DeltaTracker"]

_HDR = struct.Struct("<IH")
_LOOPBACK6 = bytes(15) + b"\x01"
_NO_CHECK = struct.Struct("").unpack_from
# One int object per port number, shared by every record: struct hands out a
# new object for each port above 256, 4 per record (~13 MB per 100k records).
_PORTS = list(range(65536))

Networks = list[tuple[int, int, int]]  # (address length in bytes, network as int, mask as int)


def _networks(cidrs: list[str]) -> Networks:
    out: Networks = []
    for cidr in cidrs:
        net = ipaddress.ip_network(cidr, strict=False)
        out.append((4 if net.version == 4 else 16, int(net.network_address), int(net.netmask)))
    return out


class AddressFilter:
    """The configured include/exclude CIDRs (loopback is dropped before, always).

    A flow is excluded when any of its four addresses (original and reply,
    source and destination) is in an ``exclude`` network; with ``include``
    set, it is kept only when at least one of them is in an include network.
    """

    def __init__(self, include: list[str] | None = None, exclude: list[str] | None = None) -> None:
        self.include = _networks(include or [])
        self.exclude = _networks(exclude or [])
        self.active = bool(self.include or self.exclude)

    @staticmethod
    def _any_in(addresses: tuple[bytes, ...], networks: Networks) -> bool:
        for a in addresses:
            value = int.from_bytes(a, "big")
            for size, net, mask in networks:
                if size == len(a) and value & mask == net:
                    return True
        return False

    def drops(self, addresses: tuple[bytes, ...]) -> bool:
        """True when the CIDR rules drop a flow with these (packed) addresses."""
        if self.exclude and self._any_in(addresses, self.exclude):
            return True
        return bool(self.include) and not self._any_in(addresses, self.include)


@dataclass
class CycleStats:
    """What one dump (and the events applied after it) saw."""

    entries: int = 0
    changed: int = 0
    events: int = 0
    records: int = 0
    counter_resets: int = 0
    expired: int = 0
    ignored: dict[str, int] = field(default_factory=dict)

    def ignore(self, reason: str, n: int = 1) -> None:
        self.ignored[reason] = self.ignored.get(reason, 0) + n


class DeltaTracker:
    """Turns successive dumps (and DESTROY events) into :class:`ConntrackRecord` deltas.

    Use per cycle: :meth:`begin_dump`, :meth:`feed` for every dump buffer,
    :meth:`end_dump`, then :meth:`apply_events`. Records accumulate in
    ``unsent`` (merged per connection) until the caller delivers them and
    calls :meth:`take_unsent`. With ``zero_on_dump`` the dump's counters are
    already deltas and no state is kept.
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
        self.state: dict[bytes, bytes] = {}
        self.limbo: dict[bytes, tuple[bytes, int]] = {}  # vanished: key → (last counters, expiry)
        self.graves: dict[bytes, tuple[bytes, int]] = {}  # destroyed: key → (final counters, expiry)
        self.unsent: dict[bytes, ConntrackRecord] = {}
        self.has_baseline = False
        self.dump_ns = 0  # wall-clock time of the latest dump
        self.prev_dump_ns = 0
        self.stats = CycleStats()
        self._old: dict[bytes, bytes] = {}
        self._new: dict[bytes, bytes] = {}
        self._counting = False  # whether this cycle's deltas are reported (False for a baseline)
        self._dumping = False  # between begin_dump and end_dump: events apply against the previous dump
        self._ntop: dict[bytes, str] = {}

    # --- dumps ------------------------------------------------------------------

    def begin_dump(self, now_ns: int) -> None:
        self.prev_dump_ns, self.dump_ns = self.dump_ns or now_ns, now_ns
        self._counting = self.has_baseline or self.zero_on_dump
        self.stats = CycleStats()
        self._old, self._new = self.state, {}
        self._dumping = True

    def feed(self, buf: bytes) -> None:
        """Account every entry of one dump buffer (the hot path; see :mod:`._layout`)."""
        if self.zero_on_dump:
            self._feed_zeroed(buf)
            return
        old, new = self._old, self._new
        unpack = _HDR.unpack_from
        stats = self.stats
        off, n, entries, idle = 0, len(buf), 0, 0
        # Consecutive entries mostly share one layout: keep the current one's
        # fields in locals, so that a matching entry costs one check.
        cur_length, check = -1, _NO_CHECK
        expected: tuple[int, ...] = ()
        layout: Layout | None = None
        k0 = k1 = i0 = i1 = t0 = t1 = c0 = c1 = c2 = c3 = 0
        while off < n:
            length, mtype = unpack(buf, off)
            if length < 16:
                raise MalformedMessage(f"netlink message of length {length}")
            step = (length + 3) & ~3
            if mtype != CT_NEW:
                off += step
                continue
            entries += 1
            if length != cur_length or check(buf, off) != expected:
                layout = self._find(buf, off, length)
                if layout is None or layout.ignore:
                    cur_length = -1
                    off += step
                    continue
                cur_length, check, expected = length, layout.check.unpack_from, layout.expected
                k0, k1, i0, i1, t0, t1, c0, c1, c2, c3 = (
                    layout.k0, layout.k1, layout.i0, layout.i1, layout.t0, layout.t1,
                    layout.c0, layout.c1, layout.c2, layout.c3,
                )
            key = buf[off + k0 : off + k1] + buf[off + i0 : off + i1] + buf[off + t0 : off + t1]
            ctr = buf[off + c0 : off + c1]
            if c3:
                ctr += buf[off + c2 : off + c3]
            prev = old.pop(key, None)
            if prev is None:
                prev = self._missing(key)
            new[key] = ctr
            if prev == ctr:
                idle += 1
            else:
                self._changed(layout, buf, off, key, prev, ctr)  # type: ignore[arg-type]
            off += step
        stats.entries += entries
        if idle:
            stats.ignore("idle", idle)

    def abort_dump(self) -> None:
        """A dump failed midway: entries already read keep their new counters (their deltas are
        in ``unsent``), the others keep the previous ones."""
        self._old.update(self._new)
        self.state, self._old, self._new = self._old, {}, {}
        self._dumping = False

    def _find(self, buf: bytes, off: int, length: int) -> Layout | None:
        """The layout of this message (known or learned); None, counted, when it is malformed."""
        try:
            layout = self.layouts.find(buf, off, length)
        except MalformedMessage:
            self.stats.ignore("malformed")
            return None
        if layout.ignore:
            self.stats.ignore(layout.ignore)
        return layout

    def _missing(self, key: bytes) -> bytes | None:
        """Last counters of a key the previous dump did not show (rare: new, duplicate or reappeared)."""
        seen = self._new.get(key)  # listed twice by one dump (the kernel may repeat entries)
        if seen is not None:
            return seen
        for parked_in in (self.limbo, self.graves):
            if parked_in:
                parked = parked_in.pop(key, None)
                if parked is not None:
                    return parked[0]
        return None

    def end_dump(self) -> None:
        """Finish the dump: park vanished entries, expire old ones, make this dump the baseline."""
        expires = self.dump_ns + self.vanished_ttl_ns
        limbo = self.limbo
        for key, ctr in self._old.items():
            limbo[key] = (ctr, expires)
        self.state, self._old, self._new = self._new, {}, {}
        self._dumping = False
        now = self.dump_ns
        if limbo:
            expired = [k for k, (_, t) in limbo.items() if t <= now]
            for k in expired:
                del limbo[k]
            self.stats.expired += len(expired)  # their remainder since the last dump is lost
        if self.graves:
            self.graves = {k: v for k, v in self.graves.items() if v[1] > now}
        self.has_baseline = True

    # --- events -----------------------------------------------------------------

    def apply_events(self, buffers: list[bytes]) -> None:
        """Apply queued DESTROY events: each adds its connection's final remainder.

        Called after :meth:`begin_dump` and before the first :meth:`feed` (events received
        before the dump: against the previous dump's counters), or after :meth:`end_dump`
        (events received during it: against this dump's).
        """
        if self._dumping and self._new:
            raise RuntimeError("apply_events between feed() calls: apply them before or after the dump")
        state = self._old if self._dumping else self.state
        tombstone_until = self.dump_ns + self.tombstone_ttl_ns
        for buf in buffers:
            off, n = 0, len(buf)
            while off + 16 <= n:
                length, mtype = _HDR.unpack_from(buf, off)
                if length < 16:
                    break
                step = (length + 3) & ~3
                if mtype == CT_DELETE:
                    self._event(buf, off, length, state, tombstone_until)
                off += step

    def _event(self, buf: bytes, off: int, length: int, state: dict[bytes, bytes], tombstone_until: int) -> None:
        self.stats.events += 1
        try:
            layout = self.layouts.find(buf, off, length)
        except MalformedMessage:
            self.stats.ignore("malformed")
            return
        if layout.ignore:
            self.stats.ignore(layout.ignore)
            return
        key = layout.key(buf, off)
        final = layout.counters(buf, off)
        prev = state.pop(key, None)
        if prev is None:
            parked = self.limbo.pop(key, None) or self.graves.pop(key, None)
            prev = parked[0] if parked is not None else None
            if parked is None and not self._counting:
                # Ended before our first dump: part of it predates us, and
                # we have no baseline to subtract.
                self.stats.ignore("no_baseline")
                return
        self.graves[key] = (final, tombstone_until)
        if prev == final:
            self.stats.ignore("idle")
            return
        self._changed(layout, buf, off, key, prev, final, force=True)

    # --- records ------------------------------------------------------------------

    def _changed(  # noqa: PLR0917 - positional on purpose: called per active entry
        self, layout: Layout, buf: bytes, off: int, key: bytes, prev: bytes | None, ctr: bytes,
        force: bool = False,
    ) -> None:
        stats = self.stats
        stats.changed += 1
        if not (self._counting or force):
            return
        op, ob, rp, rb = decode_counters(ctr)
        if prev is not None:
            pp, pb, qp, qb = decode_counters(prev)
            if op < pp or ob < pb or rp < qp or rb < qb:
                # Someone zeroed the counters (``conntrack -L -z``): count what
                # accumulated since, which is all we can know.
                stats.counter_resets += 1
            else:
                op, ob, rp, rb = op - pp, ob - pb, rp - qp, rb - qb
        self._emit(layout, buf, off, key, op, ob, rp, rb)

    def _emit(  # noqa: PLR0917 - positional on purpose: called per active entry
        self, layout: Layout, buf: bytes, off: int, key: bytes, op: int, ob: int, rp: int, rb: int
    ) -> None:
        stats = self.stats
        if not (op or ob or rp or rb):
            stats.ignore("idle")
            return
        if layout.order or layout.inner.unpack_from(buf, off) != layout.inner_expected:
            try:
                osrc, odst, osport, odport, rsrc, rdst, rsport, rdport = layout.tuples(buf, off)
            except MalformedMessage:
                stats.ignore("malformed")
                return
        else:
            osrc, odst, osport, odport, rsrc, rdst, rsport, rdport = layout.fields.unpack_from(buf, off)
        if layout.network_type == "ipv4":
            loopback = osrc[0] == 127 or odst[0] == 127 or rsrc[0] == 127 or rdst[0] == 127
        else:
            loopback = _LOOPBACK6 in (osrc, odst, rsrc, rdst)
        if loopback:
            stats.ignore("loopback")
            return
        if self.filter.active and self.filter.drops((osrc, odst, rsrc, rdst)):
            stats.ignore("cidr")
            return
        stats.records += 1
        record = self.unsent.get(key)
        if record is not None:
            record.original_packets += op
            record.original_bytes += ob
            record.reply_packets += rp
            record.reply_bytes += rb
            record.end_ns = self.dump_ns
            return
        texts, ports = self._ntop, _PORTS
        self.unsent[key] = ConntrackRecord(
            self.node, layout.transport, layout.network_type,
            texts.get(osrc) or self._text(osrc), ports[osport], texts.get(odst) or self._text(odst), ports[odport],
            texts.get(rsrc) or self._text(rsrc), ports[rsport], texts.get(rdst) or self._text(rdst), ports[rdport],
            ob, op, rb, rp, self.prev_dump_ns, self.dump_ns,
        )

    def _text(self, address: bytes) -> str:
        text = self._ntop.get(address)
        if text is None:
            if len(self._ntop) > 1 << 20:
                self._ntop.clear()
            text = socket.inet_ntop(socket.AF_INET if len(address) == 4 else socket.AF_INET6, address)
            self._ntop[address] = text
        return text

    def take_unsent(self) -> list[ConntrackRecord]:
        """The records accumulated so far, leaving none behind (call once they are delivered)."""
        records = list(self.unsent.values())
        self.unsent = {}
        return records

    # --- zero on dump ---------------------------------------------------------------

    def _feed_zeroed(self, buf: bytes) -> None:
        """Counters were reset by the dump itself: each entry's counters are its delta."""
        off, n = 0, len(buf)
        stats = self.stats
        layouts = self.layouts
        while off < n:
            length, mtype = _HDR.unpack_from(buf, off)
            if length < 16:
                raise MalformedMessage(f"netlink message of length {length}")
            if mtype == CT_NEW:
                stats.entries += 1
                try:
                    layout = layouts.find(buf, off, length)
                except MalformedMessage:
                    layout = None
                    stats.ignore("malformed")
                if layout is not None:
                    if layout.ignore:
                        stats.ignore(layout.ignore)
                    else:
                        op, ob, rp, rb = decode_counters(layout.counters(buf, off))
                        self._emit(layout, buf, off, layout.key(buf, off), op, ob, rp, rb)
            off += (length + 3) & ~3
