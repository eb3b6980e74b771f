"""Flow tables → the Arrow table inserted into ``network_flows_0`` (reference §9.4 with DESIGN §4.3's rules).

The mapper works on the flows view as Arrow (:data:`~kubenetmon.flows.FLOW_SCHEMA`):
checks, buckets and the pre-aggregation group-by run as vector operations on
integer columns (string columns as codes into one list of distinct values),
and the result is again Arrow, handed to ``client.insert_arrow``: Python
values are made once per distinct string and flag set, never per row
(DESIGN §4.2). Measured (``bench/clickhouse_bench.py``): clickhouse-connect's
Native serialisation of Python columns cost ~1.8 µs of the calling thread per
row; the Arrow insert ~0.3–1 µs, plus what building the Python columns cost.

* ``intervalStartTime`` is the UTC start of the ``interval_seconds`` bucket that
  holds the last instant of the flow's interval (``end_ns - 1``: intervals are
  half-open, so ``[12:00:55, 12:01:00)`` belongs to 12:00); ``date`` is its
  UTC day. Both are sent as numbers (seconds, days since the epoch), so no
  time zone of the host or the server can shift them (§12, 10).
* A row is rejected (not the block), counted by reason: ``direction`` not
  ``out``/``in`` (the driver does not check enum names and would store
  garbage), no timestamp, a time whose bucket a ``DateTime`` cannot hold
  (after 2106: ClickHouse would refuse the whole insert), an IPv4 row whose
  address is not IPv4, and, for rows given as Python objects, values that do
  not fit the batch contract (ports, negative or too large counters,
  unparsable addresses, non-string text).
* ``connectionFlags`` keys are sorted: ``{a,b}`` and ``{b,a}`` would otherwise
  be two Map values, i.e. two keys that never sum.
* Local identity columns come from the local endpoint, falling back to the
  configured :class:`~kubenetmon.identity.Identity`.
* IPv6 flows are written with ``0.0.0.0`` in the IPv4 columns (the table has
  no IPv6 columns), or dropped with ``ipv6: drop``.
* With ``aggregate`` on, rows with equal keys are summed before insert. A sum
  that would pass 2^64-1 is never wrapped: that key's flows are written as
  separate rows instead, counted in ``overflow_splits``.

The mapping is deterministic (same flows → same columns, same order), which a
retry with the same ``insert_deduplication_token`` needs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from ipaddress import IPv4Address
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kubenetmon.exporters.clickhouse.schema import COLUMNS
from kubenetmon.flows import FLOW_SCHEMA, Flow, FlowBatch, _used_values, pack_addresses
from kubenetmon.identity import Identity

__all__ = ["COLUMN_NAMES", "COLUMN_TYPES", "PreparedRows", "RowMapper"]

COLUMN_NAMES: tuple[str, ...] = tuple(name for name, _ in COLUMNS)
COLUMN_TYPES: tuple[str, ...] = tuple(type_ for _, type_ in COLUMNS)

# Table column ← flow column, for every column copied as is (strings and ports).
# The other columns (times, identity, flags, addresses, counters) are computed.
_COPIED: dict[str, str] = {
    "proto": "transport",
    "connectionClass": "connection_class",
    "direction": "direction",
    "localCloud": "local_cloud",
    "localRegion": "local_region",
    "localCluster": "local_cluster",
    "localCell": "local_cell",
    "localAvailabilityZone": "local_availability_zone",
    "localNode": "local_node",
    "localInstanceID": "local_instance_id",
    "localNamespace": "local_namespace",
    "localPod": "local_pod",
    "localPort": "local_port",
    "localApp": "local_app",
    "remoteCloud": "remote_cloud",
    "remoteRegion": "remote_region",
    "remoteCluster": "remote_cluster",
    "remoteCell": "remote_cell",
    "remoteAvailabilityZone": "remote_availability_zone",
    "remoteNode": "remote_node",
    "remoteInstanceID": "remote_instance_id",
    "remoteNamespace": "remote_namespace",
    "remotePod": "remote_pod",
    "remotePort": "remote_port",
    "remoteApp": "remote_app",
    "remoteCloudService": "remote_cloud_service",
}
_PORTS = frozenset(("local_port", "remote_port"))
_STRINGS = tuple(f for f in _COPIED.values() if f not in _PORTS)
_MAX_U64 = 2**64 - 1
_MAX_DATETIME = 2**32 - 1  # DateTime is seconds in a UInt32 (until 2106-02-07)
_V4_MAPPED = np.frombuffer(bytes(10) + b"\xff\xff", dtype=np.uint8)
_SECOND = 1_000_000_000


@dataclass
class PreparedRows:
    """The rows to insert as an Arrow table (columns in :data:`COLUMN_NAMES` order) for ``client.insert_arrow``.

    Arrow types as ClickHouse's Arrow input reads them: ``Date`` ← date32,
    ``DateTime`` ← uint32 seconds (no time zone involved), ``IPv4`` ← uint32,
    strings (``String``, ``LowCardinality``, the ``direction`` enum) ←
    dictionary-encoded utf8, ``Map`` ← map<utf8, bool>.
    """

    table: pa.Table
    rows: int
    flows: int  # flows accepted (before aggregation)
    aggregated_away: int
    rejected: Counter[str] = field(default_factory=Counter)
    overflow_splits: int = 0  # keys written as several rows because their sum would pass 2^64-1
    # Set by the exporter while a block is split after a data error, so that a retry of the
    # block neither re-sends parts already inserted nor counts dropped rows twice.
    done_parts: set[tuple[int, int]] = field(default_factory=set)
    dropped_parts: set[tuple[int, int]] = field(default_factory=set)
    refused_parts: set[tuple[int, int]] = field(default_factory=set)  # refused for their data, then halved

    def part(self, lo: int, hi: int) -> pa.Table:
        """Rows ``[lo, hi)`` (a zero-copy slice)."""
        return self.table.slice(lo, hi - lo)

    def to_rows(self, lo: int = 0, hi: int | None = None) -> list[dict[str, Any]]:
        """Row dicts with the Python values clickhouse-connect reads back (tz-aware UTC datetimes,
        ``IPv4Address``, dicts), for tests, debugging and logging rows that were dropped."""
        part = self.part(lo, self.rows if hi is None else hi)
        columns: dict[str, list[Any]] = {name: part.column(name).to_pylist() for name in COLUMN_NAMES}
        columns["intervalStartTime"] = [datetime.fromtimestamp(t, UTC) for t in columns["intervalStartTime"]]
        for name in ("localIPv4", "remoteIPv4"):
            columns[name] = [IPv4Address(a) for a in columns[name]]
        columns["connectionFlags"] = [dict(f) for f in columns["connectionFlags"]]
        return [dict(zip(columns, row, strict=True)) for row in zip(*columns.values(), strict=True)]


def _rows_to_table(flows: Sequence[Flow], rejected: Counter[str]) -> pa.RecordBatch:
    """Flows given as Python objects → a flow table; flows that do not fit the contract are counted and left out.

    The whole list is converted at once; only when that fails is each flow
    checked on its own (the slow path, for the row-wise helper's bad input).
    """
    try:
        return FlowBatch(flows=flows).flow_table()
    except (ValueError, TypeError, OverflowError, pa.ArrowException):
        pass
    good: list[Flow] = []
    for f in flows:
        reason = _row_problem(f)
        if reason is None:
            try:
                FlowBatch(flows=[f]).flow_table()
            except (ValueError, TypeError, OverflowError, pa.ArrowException):
                reason = "invalid_value"
        if reason is None:
            good.append(f)
        else:
            rejected[reason] += 1
    return FlowBatch(flows=good).flow_table()


def _row_problem(f: Flow) -> str | None:
    loc, rem = f.local, f.remote
    for v in (loc.port, rem.port):
        if not isinstance(v, int) or not 0 <= v <= 65535:
            return "out_of_range"
    for v in (f.bytes, f.packets):
        if not isinstance(v, int) or not 0 <= v <= _MAX_U64:
            return "out_of_range"
    try:
        pack_addresses([loc.address, rem.address])
    except (ValueError, TypeError):
        return "invalid_address"
    return None


def _dictionary_key(dictionary: pa.Array) -> tuple[int, ...]:
    """Identity of a string array by its buffers (equal buffers, offset and length: equal values)."""
    return (*(b.address if b is not None else 0 for b in dictionary.buffers()), dictionary.offset, len(dictionary))


class _Strings:
    """The string columns of a flow table as int32 codes into one array of distinct values (:attr:`values`).

    A stage's batch carries one dictionary for all its string columns (the
    k8s_attributes processor's), and a block holds hundreds of batches: each
    distinct dictionary is interned once for the block in one Arrow hash pass,
    then every column's chunk is a numpy ``take`` through its dictionary's
    remap. No Python work per value or per row: interning each column's
    values in Python cost ~2 µs per record in the gateway bench.

    Null and ``""`` mean "not known": they take the code of the column's
    fallback (the configured identity for the local cloud/region/cluster/cell)
    or of ``""``.
    """

    def __init__(self, table: pa.Table, fallbacks: dict[str, str]) -> None:
        chunks: dict[str, list[pa.DictionaryArray]] = {}
        dictionaries: dict[tuple[int, ...], tuple[int, pa.Array]] = {}  # key → (base in the concatenation, array)
        base = 0
        for name in fallbacks:
            encoded = []
            for plain in table.column(name).chunks:
                chunk = plain if isinstance(plain, pa.DictionaryArray) else plain.dictionary_encode()
                key = _dictionary_key(chunk.dictionary)
                if key not in dictionaries:
                    dictionaries[key] = (base, chunk.dictionary)
                    base += len(chunk.dictionary)
                encoded.append(chunk)
            chunks[name] = encoded
        every = [d for _, d in dictionaries.values()]
        interned = (
            pc.fill_null(pa.concat_arrays(every), "").dictionary_encode() if every
            else pa.array([], pa.utf8()).dictionary_encode()
        )
        global_codes = interned.indices.to_numpy(zero_copy_only=False).astype(np.int32)
        values = interned.dictionary
        extra: list[str] = []

        def code_of(text: str) -> int:
            found = pc.index(values, text).as_py()
            if found >= 0:
                return int(found)
            if text not in extra:
                extra.append(text)
            return len(values) + extra.index(text)

        empty = code_of("")
        # Each dictionary's remap, with one more slot for a null index (→ "").
        remaps = {
            key: np.append(global_codes[start:start + len(d)], np.int32(empty))
            for key, (start, d) in dictionaries.items()
        }
        self.codes: dict[str, np.ndarray[Any, Any]] = {}
        for name, fallback in fallbacks.items():
            parts = []
            for chunk in chunks[name]:
                remap = remaps[_dictionary_key(chunk.dictionary)]
                indices = chunk.indices
                if indices.null_count:
                    indices = indices.fill_null(len(chunk.dictionary))
                parts.append(remap[indices.to_numpy(zero_copy_only=False)])
            codes = np.concatenate(parts) if parts else np.empty(0, dtype=np.int32)
            if fallback:
                codes = np.where(codes == empty, np.int32(code_of(fallback)), codes).astype(np.int32)
            self.codes[name] = codes
        self.values: pa.Array = pa.concat_arrays([values, pa.array(extra, pa.utf8())]) if extra else values

    def codes_of(self, texts: Sequence[str]) -> np.ndarray[Any, Any]:
        """The codes whose value is one of ``texts`` (for vector checks against names)."""
        mask = pc.is_in(self.values, value_set=pa.array(list(texts), pa.utf8()))
        return np.flatnonzero(mask.to_numpy(zero_copy_only=False))

    def column(self, codes: np.ndarray[Any, Any]) -> pa.DictionaryArray:
        """``codes`` as a dictionary array whose dictionary holds only the values they use (one column's)."""
        column_codes, dictionary = _used_values(codes.astype(np.int32, copy=False), self.values)
        return pa.DictionaryArray.from_arrays(pa.array(column_codes, pa.int32()), dictionary)


def _flag_codes(column: pa.ChunkedArray) -> tuple[np.ndarray[Any, Any], list[dict[str, bool]]]:
    """Each row's flags as a code of its sorted ``key=value`` set; the dicts per code (keys sorted)."""
    flags = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    n = len(flags)
    offsets = flags.offsets.to_numpy()  # a null row has no entries: its two offsets are equal
    lengths = np.diff(offsets)
    if n == 0 or not lengths.any():
        return np.zeros(n, dtype=np.int32), [{}]
    first, count = int(offsets[0]), int(offsets[-1] - offsets[0])
    keys, items = flags.keys.slice(first, count), flags.items.slice(first, count)
    # Entries as integers (rank of the key among the distinct keys, sorted; ×2 + value), so that
    # a row's sorted entries join into a plain digit string whatever bytes the keys hold.
    encoded_keys = keys.dictionary_encode()
    names = encoded_keys.dictionary.to_pylist()
    by_name = sorted(range(len(names)), key=names.__getitem__)
    rank = np.empty(len(names), dtype=np.int64)
    rank[by_name] = np.arange(len(names))
    sorted_names = [names[i] for i in by_name]
    entry = rank[encoded_keys.indices.to_numpy()] * 2 + pc.fill_null(items, False).to_numpy(zero_copy_only=False)
    parent = np.repeat(np.arange(n, dtype=np.int64), lengths)
    entry = entry[np.lexsort((entry, parent))]
    per_row = pa.ListArray.from_arrays(pa.array(offsets - offsets[0]), pc.cast(pa.array(entry), pa.utf8()))
    encoded = pc.binary_join(per_row, ",").dictionary_encode()
    dicts: list[dict[str, bool]] = []
    for joined in encoded.dictionary.to_pylist():
        entries = [int(e) for e in joined.split(",")] if joined else []
        dicts.append({sorted_names[e // 2]: bool(e % 2) for e in entries})
    return encoded.indices.to_numpy(zero_copy_only=False).astype(np.int32), dicts


def _ipv4(column: pa.ChunkedArray) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """(IPv4 as uint32, is IPv4-mapped) per row of an address column; null is 0.0.0.0 and IPv4."""
    parts, mapped = [], []
    for chunk in column.chunks:
        raw = np.frombuffer(chunk.buffers()[1], dtype=np.uint8)[chunk.offset * 16:(chunk.offset + len(chunk)) * 16]
        raw = raw.reshape(-1, 16)
        valid = ~chunk.is_null().to_numpy(zero_copy_only=False)
        mapped.append(~valid | (raw[:, :12] == _V4_MAPPED).all(axis=1))
        parts.append(np.where(valid, raw[:, 12:].copy().view(">u4").ravel(), 0).astype(np.uint32))
    if not parts:
        return np.empty(0, dtype=np.uint32), np.empty(0, dtype=bool)
    return np.concatenate(parts), np.concatenate(mapped)


def _packed_keys(keys: dict[str, np.ndarray[Any, Any]]) -> np.ndarray[Any, Any]:
    """The key columns packed into as few 64-bit words per row as their value ranges allow: (rows, words).

    Most keys are small codes (strings, ports, flags): ~30 narrow columns fit
    in ~4-8 words, and the group-by hashes each row's words as one value.
    Equal words ⇔ equal keys, since each column keeps its own bit range. A
    column with a negative value takes a whole word (its two's complement).
    """
    n = len(next(iter(keys.values()))) if keys else 0
    words: list[np.ndarray[Any, Any]] = []
    word = np.zeros(n, dtype=np.uint64)
    used = 0
    for values in keys.values():
        if len(values) and int(values.min()) < 0:
            words.append(values.astype(np.int64).view(np.uint64))
            continue
        width = max(int(values.max()).bit_length(), 1) if len(values) else 1
        if used + width > 64:
            words.append(word)
            word = np.zeros(n, dtype=np.uint64)
            used = 0
        word |= values.astype(np.uint64) << np.uint64(used)
        used += width
    if used or not words:
        words.append(word)
    return np.column_stack(words)


def _groups(keys: dict[str, np.ndarray[Any, Any]]) -> np.ndarray[Any, Any]:
    """Each row's group: ids 0, 1, 2… in the order each distinct key is first seen.

    The packed words of a row are one fixed-size binary value, and Arrow's
    hash kernel (``dictionary_encode``) numbers the distinct values as it
    meets them. Not ``Table.group_by``: it loads ``pyarrow.acero``, which
    loads ``pyarrow.dataset`` and the Parquet and cloud-filesystem libraries
    (~15 MB of RSS the gateway never uses), and measured slower here (16 ms
    against 9 ms for 100k rows of 8 words, sums included).
    """
    words = np.ascontiguousarray(_packed_keys(keys))
    rows, width = words.shape
    packed = pa.FixedSizeBinaryArray.from_buffers(pa.binary(8 * width), rows, [None, pa.py_buffer(words)])
    ids: np.ndarray[Any, Any] = pc.dictionary_encode(packed).indices.to_numpy()
    return ids


class RowMapper:
    """Turns flow tables into the Arrow table inserted into ``network_flows_0``; holds no per-record state."""

    def __init__(
        self, identity: Identity, interval_seconds: int = 60, aggregate: bool = True, ipv6: str = "write"
    ) -> None:
        self.identity = identity
        self.interval_seconds = interval_seconds
        self.aggregate = aggregate
        self.write_ipv6 = ipv6 == "write"

    def prepare(self, flows: Sequence[Flow] | pa.RecordBatch | Iterable[pa.RecordBatch]) -> PreparedRows:
        """Map (and aggregate) flows: a list of :class:`Flow` rows, a flow table, or several.

        Deterministic: same flows, same columns in the same order.
        """
        rejected: Counter[str] = Counter()
        if isinstance(flows, pa.RecordBatch):
            tables = [flows]
        elif isinstance(flows, list | tuple) and (not flows or isinstance(flows[0], Flow)):
            tables = [_rows_to_table(flows, rejected)]
        else:
            tables = list(flows)
        tables = [t for t in tables if t.num_rows]
        table = pa.Table.from_batches(tables, schema=FLOW_SCHEMA) if tables else FLOW_SCHEMA.empty_table()
        return self._prepare_table(table, rejected)

    def prepare_batches(self, batches: Iterable[FlowBatch]) -> PreparedRows:
        """Map the flows views of ``batches`` (the exporter's entry point).

        A batch whose rows do not fit the contract (the row-wise helper given an
        int where a string belongs, a port of 70000…) loses only those rows,
        counted by reason; the others are written.
        """
        rejected: Counter[str] = Counter()
        tables: list[pa.RecordBatch] = []
        for batch in batches:
            if not batch.num_flows:
                continue
            try:
                tables.append(batch.flow_table())
            except (ValueError, TypeError, OverflowError, pa.ArrowException):
                tables.append(_rows_to_table(batch.flows, rejected))
        tables = [t for t in tables if t.num_rows]
        table = pa.Table.from_batches(tables, schema=FLOW_SCHEMA) if tables else FLOW_SCHEMA.empty_table()
        return self._prepare_table(table, rejected)

    def _prepare_table(self, table: pa.Table, rejected: Counter[str]) -> PreparedRows:
        n = table.num_rows
        ident = self.identity
        fallbacks = dict.fromkeys(("network_type", *_STRINGS), "")
        for name in ("local_cloud", "local_region", "local_cluster", "local_cell"):
            fallbacks[name] = getattr(ident, name.removeprefix("local_"))
        strings = _Strings(table, fallbacks)
        end = table.column("end_ns").to_numpy()
        start = table.column("start_ns").to_numpy()
        end = np.where(end > 0, end, start)
        step = self.interval_seconds
        bucket = (end - 1) // (step * _SECOND) * step
        is_v6 = np.isin(strings.codes["network_type"], strings.codes_of(["ipv6"]))
        lip, l_mapped = _ipv4(table.column("local_address"))
        rip, r_mapped = _ipv4(table.column("remote_address"))

        # Each check is one vector op; a row failing several is counted under the first.
        keep = np.ones(n, dtype=bool)
        for reason, bad in (
            ("invalid_direction", ~np.isin(strings.codes["direction"], strings.codes_of(["out", "in"]))),
            ("no_timestamp", end <= 0),
            ("time_out_of_range", bucket > _MAX_DATETIME),
            ("ipv6", is_v6 if not self.write_ipv6 else np.zeros(n, dtype=bool)),
            ("invalid_address", ~is_v6 & ~(l_mapped & r_mapped)),
        ):
            hit = bad & keep
            count = int(hit.sum())
            if count:
                rejected[reason] += count
                keep &= ~hit
        lip = np.where(is_v6, 0, lip).astype(np.uint32)
        rip = np.where(is_v6, 0, rip).astype(np.uint32)

        flag_codes, flag_dicts = _flag_codes(table.column("connection_flags"))
        keys: dict[str, np.ndarray[Any, Any]] = {
            "bucket": bucket,
            "flags": flag_codes,
            "local_ip": lip,
            "remote_ip": rip,
            "local_port": table.column("local_port").to_numpy(),
            "remote_port": table.column("remote_port").to_numpy(),
            **{name: strings.codes[name] for name in _STRINGS},
        }
        nbytes = table.column("bytes").to_numpy()
        npackets = table.column("packets").to_numpy()
        if not keep.all():
            keys = {k: v[keep] for k, v in keys.items()}
            nbytes, npackets = nbytes[keep], npackets[keep]
        accepted = int(keep.sum())
        overflow_splits = 0
        if self.aggregate and accepted:
            keys, nbytes, npackets, overflow_splits = self._aggregate(keys, nbytes, npackets)
        rows = len(nbytes)
        table = self._arrow(keys, strings, flag_dicts, nbytes, npackets)
        return PreparedRows(table, rows, accepted, accepted - rows, rejected, overflow_splits)

    def _aggregate(
        self, keys: dict[str, np.ndarray[Any, Any]], nbytes: np.ndarray[Any, Any], npackets: np.ndarray[Any, Any]
    ) -> tuple[dict[str, np.ndarray[Any, Any]], np.ndarray[Any, Any], np.ndarray[Any, Any], int]:
        """Sum counters of equal keys (groups in first-seen order); never wrap past 2^64-1.

        uint64 sums wrap silently, so each counter is also summed as high and
        low 32-bit halves (neither can overflow below 2^32 rows); a group
        whose true sum does not fit keeps its flows as separate rows.
        """
        group = _groups(keys)
        count = int(group.max()) + 1
        # Ids are handed out in first-seen order: a row is its group's first exactly where the running
        # maximum of the ids grows.
        seen = np.maximum.accumulate(group)
        first = np.flatnonzero(np.concatenate(([True], seen[1:] > seen[:-1])))
        over = np.zeros(count, dtype=bool)
        sums = []
        for values in (nbytes, npackets):
            hi = np.zeros(count, dtype=np.uint64)
            np.add.at(hi, group, values >> np.uint64(32))
            lo = np.zeros(count, dtype=np.uint64)
            np.add.at(lo, group, values & np.uint64(0xFFFFFFFF))
            over |= (hi + (lo >> np.uint64(32))) >= np.uint64(2**32)
            sums.append((hi << np.uint64(32)) + lo)  # the sum itself, exact where it fits (the others split)
        out_b, out_p = sums
        out_keys = {k: v[first] for k, v in keys.items()}  # each group's key, read off its first row
        if not over.any():
            return out_keys, out_b, out_p, 0
        # Rare: keep the flows of overflowing keys as their own rows (each fits: uint64 by contract).
        loose = np.flatnonzero(over[group])
        fine = ~over
        out_keys = {k: np.concatenate([out_keys[k][fine], keys[k][loose]]) for k in keys}
        return (
            out_keys,
            np.concatenate([out_b[fine], nbytes[loose]]),
            np.concatenate([out_p[fine], npackets[loose]]),
            int(over.sum()),
        )

    def _arrow(
        self,
        keys: dict[str, np.ndarray[Any, Any]],
        strings: _Strings,
        flag_dicts: list[dict[str, bool]],
        nbytes: np.ndarray[Any, Any],
        npackets: np.ndarray[Any, Any],
    ) -> pa.Table:
        """The inserted rows as Arrow: codes become dictionary arrays, so no Python value is made per row."""
        n = len(nbytes)
        bucket = keys["bucket"]

        flags = pa.array([sorted(d.items()) for d in flag_dicts], type=pa.map_(pa.utf8(), pa.bool_()))
        source: dict[str, pa.Array] = {
            "date": pa.array((bucket // 86400).astype(np.int32), pa.date32()),
            "intervalStartTime": pa.array(bucket.astype(np.uint32), pa.uint32()),
            "intervalSeconds": pa.array(np.full(n, self.interval_seconds, dtype=np.uint16)),
            "environment": pa.DictionaryArray.from_arrays(
                pa.array(np.zeros(n, dtype=np.int32)), pa.array([self.identity.environment], pa.utf8())),
            "connectionFlags": flags.take(pa.array(keys["flags"], pa.int32())),
            "localIPv4": pa.array(keys["local_ip"], pa.uint32()),
            "remoteIPv4": pa.array(keys["remote_ip"], pa.uint32()),
            "bytes": pa.array(nbytes, pa.uint64()),
            "packets": pa.array(npackets, pa.uint64()),
        }
        for column, name in _COPIED.items():
            if name in _PORTS:
                source[column] = pa.array(keys[name], pa.uint16())
            else:
                source[column] = strings.column(keys[name])
        return pa.table([source[name] for name in COLUMN_NAMES], names=list(COLUMN_NAMES))
