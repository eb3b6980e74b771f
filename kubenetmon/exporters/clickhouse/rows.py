"""Flows → typed columns of ``network_flows_0`` (reference §9.4 with DESIGN §4.3's rules).

* ``intervalStartTime`` is the UTC start of the ``interval_seconds`` bucket that
  holds the last instant of the flow's interval (``end_ns - 1``: intervals are
  half-open, so ``[12:00:55, 12:01:00)`` belongs to 12:00); ``date`` is its
  UTC day. Both are sent timezone-aware: clickhouse-connect reads naive
  datetimes as local time, which shifts buckets on non-UTC hosts (§12, 10).
* ``direction`` must be ``out`` or ``in``: the driver does not check enum
  names and would store garbage. Other bad values (ports, negative counters,
  an unparsable IPv4 address, no timestamp) also reject the one flow, not the
  block; rejections are counted by reason.
* ``connectionFlags`` keys are sorted: ``{a,b}`` and ``{b,a}`` would otherwise
  be two Map values, i.e. two keys that never sum.
* Local identity columns come from the local endpoint, falling back to the
  configured :class:`~kubenetmon.identity.Identity`.
* IPv6 flows are written with ``0.0.0.0`` in the IPv4 columns (the table has
  no IPv6 columns), or dropped with ``ipv6: drop``.
* IPv4 columns are always given ``IPv4Address`` objects: clickhouse-connect
  picks the conversion from the first value of a column, so a column must
  never mix kinds; parsing each distinct address once is also faster than
  letting the driver split strings row by row.
* With ``aggregate`` on, rows with equal keys are summed before insert.

The mapping is deterministic (same flows → same columns), which a retry with
the same ``insert_deduplication_token`` needs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from ipaddress import IPv4Address
from typing import Any

from kubenetmon.exporters.clickhouse.schema import COLUMNS
from kubenetmon.flows import Flow
from kubenetmon.identity import Identity

__all__ = ["COLUMN_NAMES", "COLUMN_TYPES", "PreparedRows", "RowMapper"]

COLUMN_NAMES: tuple[str, ...] = tuple(name for name, _ in COLUMNS)
COLUMN_TYPES: tuple[str, ...] = tuple(type_ for _, type_ in COLUMNS)

_UNSPECIFIED = IPv4Address(0)
_CACHE_LIMIT = 200_000


@dataclass
class PreparedRows:
    """Columns ready for ``client.insert(..., column_oriented=True)``."""

    columns: list[Sequence[Any]]
    rows: int
    flows: int  # flows accepted (before aggregation)
    aggregated_away: int
    rejected: Counter[str] = field(default_factory=Counter)

    def to_rows(self) -> list[dict[str, Any]]:
        """Row dicts, for tests and debugging."""
        return [dict(zip(COLUMN_NAMES, values, strict=True)) for values in zip(*self.columns, strict=True)]


class RowMapper:
    """Turns flows into columns; keeps small caches of parsed addresses, buckets and flags."""

    def __init__(
        self, identity: Identity, interval_seconds: int = 60, aggregate: bool = True, ipv6: str = "write"
    ) -> None:
        self.identity = identity
        self.interval_seconds = interval_seconds
        self.aggregate = aggregate
        self.write_ipv6 = ipv6 == "write"
        self._addresses: dict[str, IPv4Address | None] = {"": _UNSPECIFIED, "0.0.0.0": _UNSPECIFIED}
        self._buckets: dict[int, tuple[date, datetime]] = {}
        self._flags: dict[tuple[tuple[str, bool], ...], dict[str, bool]] = {(): {}}

    def _address(self, text: str) -> IPv4Address | None:
        try:
            parsed: IPv4Address | None = IPv4Address(text)
        except ValueError:
            parsed = None
        if len(self._addresses) > _CACHE_LIMIT:
            self._addresses = {"": _UNSPECIFIED, "0.0.0.0": _UNSPECIFIED}
        self._addresses[text] = parsed
        return parsed

    def _bucket(self, start: int) -> tuple[date, datetime]:
        moment = datetime.fromtimestamp(start, UTC)
        value = (moment.date(), moment)
        if len(self._buckets) > 10_000:
            self._buckets.clear()
        self._buckets[start] = value
        return value

    def prepare(self, flows: Iterable[Flow]) -> PreparedRows:
        ident = self.identity
        i_cloud, i_region, i_cluster, i_cell = ident.cloud, ident.region, ident.cluster, ident.cell
        step = self.interval_seconds
        step_ns = step * 1_000_000_000
        addresses = self._addresses
        address = self._address
        write_ipv6 = self.write_ipv6
        aggregate = self.aggregate
        rejected: Counter[str] = Counter()
        sums: dict[tuple[Any, ...], list[int]] = {}
        keys: list[tuple[Any, ...]] = []
        counts_bytes: list[int] = []
        counts_packets: list[int] = []
        accepted = 0
        lip: IPv4Address | None
        rip: IPv4Address | None
        for f in flows:
            direction = f.direction
            if direction != "out" and direction != "in":  # noqa: PLR1714 - faster than a set lookup here
                rejected["invalid_direction"] += 1
                continue
            end = f.end_ns or f.start_ns
            if end <= 0:
                rejected["no_timestamp"] += 1
                continue
            loc, rem = f.local, f.remote
            nbytes, npackets = f.bytes, f.packets
            if not (0 <= loc.port <= 65535 and 0 <= rem.port <= 65535 and nbytes >= 0 and npackets >= 0):
                rejected["out_of_range"] += 1
                continue
            if f.network_type == "ipv6":
                if not write_ipv6:
                    rejected["ipv6"] += 1
                    continue
                lip = rip = _UNSPECIFIED
            else:
                text = loc.address
                lip = addresses[text] if text in addresses else address(text)
                text = rem.address
                rip = addresses[text] if text in addresses else address(text)
                if lip is None or rip is None:
                    rejected["invalid_address"] += 1
                    continue
            flags = f.connection_flags
            key = (
                (end - 1) // step_ns * step,
                f.transport,
                f.connection_class,
                tuple(sorted(flags.items())) if flags else (),
                direction,
                loc.cloud or i_cloud,
                loc.region or i_region,
                loc.cluster or i_cluster,
                loc.cell or i_cell,
                loc.availability_zone,
                loc.node,
                loc.instance_id,
                loc.namespace,
                loc.pod,
                lip,
                loc.port,
                loc.app,
                rem.cloud,
                rem.region,
                rem.cluster,
                rem.cell,
                rem.availability_zone,
                rem.node,
                rem.instance_id,
                rem.namespace,
                rem.pod,
                rip,
                rem.port,
                rem.app,
                rem.cloud_service,
            )
            accepted += 1
            if aggregate:
                acc = sums.get(key)
                if acc is None:
                    sums[key] = [nbytes, npackets]
                else:
                    acc[0] += nbytes
                    acc[1] += npackets
            else:
                keys.append(key)
                counts_bytes.append(nbytes)
                counts_packets.append(npackets)
        if aggregate:
            keys = list(sums)
            counts_bytes = [v[0] for v in sums.values()]
            counts_packets = [v[1] for v in sums.values()]
        return PreparedRows(
            self._columns(keys, counts_bytes, counts_packets), len(keys), accepted, accepted - len(keys), rejected
        )

    def _columns(
        self, keys: list[tuple[Any, ...]], counts_bytes: list[int], counts_packets: list[int]
    ) -> list[Sequence[Any]]:
        n = len(keys)
        if n == 0:
            return [[] for _ in COLUMN_NAMES]
        t = list(zip(*keys, strict=True))
        buckets = self._buckets
        times = [buckets[b] if b in buckets else self._bucket(b) for b in t[0]]
        flags_cache = self._flags
        flags = []
        for fk in t[3]:
            d = flags_cache.get(fk)
            if d is None:
                d = flags_cache[fk] = dict(fk)
            flags.append(d)
        if len(flags_cache) > 10_000:
            self._flags = {(): {}}
        return [
            [d for d, _ in times],  # date
            [m for _, m in times],  # intervalStartTime
            [self.interval_seconds] * n,
            [self.identity.environment] * n,
            t[1],  # proto
            t[2],  # connectionClass
            flags,
            *t[4:],  # direction, local…, remote…, remoteCloudService
            counts_bytes,
            counts_packets,
        ]
