"""The decision procedure as vector operations over Arrow columns (issue 11).

The row path (:mod:`decision`) costs several Python objects per record; this
module runs the same procedure — node flows, src and reply source, rules 1-6,
counters swapped for a local destination, time-aware choice among the pods
that held an address, several inventories, ``UNKNOWN`` remotes — on whole
columns, with no Python object per record:

1. **Compile** (only when an index changed, :attr:`ClusterIndex.version`):
   each inventory becomes sorted 16-byte address keys (``numpy`` ``S16``, the
   contract's address layout: IPv4 as IPv4-mapped IPv6) for current pod IPs,
   node addresses and remembered (retired) tenancies, pointing into one
   *entity* table: per pod or node, the string id of each endpoint field
   (pod, namespace, node, app, instance id, zone, cluster, owner), zones and
   ReplicaSet owners already resolved. Strings are interned once per compile
   into one dictionary.
2. **Attribute** a records batch: ``searchsorted`` joins of the ``src`` and
   ``reply_src`` columns against the keys (own inventory first, then peers
   for what is still unknown), a vectorized max-overlap choice for addresses
   with history, the rules as boolean masks, and the flows batch built as
   index arrays into the entity table: an ``out`` and an ``in`` row per kept
   record, string columns dictionary-encoded against the compiled strings
   (compacted to the ids the batch uses).

The entity table ends with a sentinel row (pod/node/… empty, cluster
``UNKNOWN``), so that "no entity" (-1) indexes it directly: an unknown remote
gets ``UNKNOWN`` for free.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from kubenetmon.flows import (
    ADDRESS,
    ENDPOINT_STRING_FIELDS,
    FLAGS,
    FLOW_FIELDS,
    FLOW_SCHEMA,
    ConntrackRecord,
    pack_addresses,
    unpack_addresses,
)
from kubenetmon.processors.k8s_attributes.decision import UNKNOWN_CLUSTER, BatchOutcome
from kubenetmon.processors.k8s_attributes.index import Attrs, ClusterIndex, Tenancy

__all__ = ["VectorAttributor"]

# Texts a snapshot remembers beyond its node names, zones and clusters (see _Snapshot.string_id).
_MAX_LOOKED_UP = 4096

I32 = npt.NDArray[np.int32]
I64 = npt.NDArray[np.int64]
Bool = npt.NDArray[np.bool_]
Keys = npt.NDArray[np.bytes_]

# Endpoint string fields an entity fills; the others (cloud, region, cell,
# cloud_service) are left "" for cloud_prefix.
_ENTITY_FIELDS = ("pod", "namespace", "node", "app", "instance_id", "availability_zone", "cluster",
                  "owner_kind", "owner_name")
_EMPTY, _UNKNOWN = 0, 1  # string ids fixed in every compiled dictionary
_NO_KEYS: Keys = np.empty(0, dtype="S16")


def _keys(addresses: list[str]) -> Keys:
    """Text addresses as sortable 16-byte keys (the contract's address layout)."""
    if not addresses:
        return _NO_KEYS
    packed = pack_addresses(addresses)
    return np.frombuffer(packed.buffers()[1], dtype="S16", count=len(packed)).copy()


def _column_keys(column: pa.Array | pa.ChunkedArray) -> tuple[Keys, Bool]:
    """An address column as keys, and its validity (null = unknown address)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    n = len(column)
    data = np.frombuffer(column.buffers()[1], dtype="S16", count=column.offset + n)[column.offset:]
    valid = np.ones(n, dtype=bool) if column.null_count == 0 else column.is_valid().to_numpy(zero_copy_only=False)
    return data, valid


def _halves(keys: Keys) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
    """16-byte keys as their big-endian high and low 64-bit halves (the same order)."""
    octets = np.ascontiguousarray(keys).view(np.uint8).reshape(-1, 16)
    hi = octets[:, :8].copy().view(">u8").ravel().astype(np.uint64)
    lo = octets[:, 8:].copy().view(">u8").ravel().astype(np.uint64)
    return hi, lo


class _Lookup:
    """Sorted 16-byte keys (:attr:`keys`) and their exact-match lookup by a hash table of integers.

    A binary search of ``S16`` strings costs ~180 ns per query among 50k pods
    (a cache miss per step); the lookups were most of attribution's cost per
    record. Here the keys' two 64-bit halves are hashed into an open-addressing
    table (linear probing, at most half full) built once per snapshot, and a
    batch's queries probe it round by round as vector operations: most settle
    in the first round. :meth:`find` gives each query's position in the sorted
    keys (of one of them, when keys repeat) and whether it is there.
    """

    _MIX = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: the product's top bits are the slot
    _MIX2 = np.uint64(0xC2B2AE3D27D4EB4F)

    def __init__(self, keys: Keys) -> None:
        self.keys = keys
        n = len(keys)
        self.bits = max(4, int(n).bit_length() + 1)  # ≥ 2n slots
        self.table = np.full(1 << self.bits, -1, dtype=np.int32)
        self.hi, self.lo = _halves(keys) if n else (np.empty(0, np.uint64), np.empty(0, np.uint64))
        self.rounds = 0  # the longest probe any key needed: no query probes further
        home = self._home(self.hi, self.lo)
        mask = (1 << self.bits) - 1
        todo = np.arange(n, dtype=np.int64)
        while len(todo):
            slot = (home[todo] + self.rounds) & mask
            free = self.table[slot] < 0
            # Of the keys aiming at one free slot, the first takes it; the others probe on.
            taken, first = np.unique(slot[free], return_index=True)
            self.table[taken] = todo[free][first]
            todo = todo[self.table[slot] != todo]
            self.rounds += 1

    def _home(self, hi: npt.NDArray[np.uint64], lo: npt.NDArray[np.uint64]) -> I64:
        mixed = (lo ^ (hi * self._MIX2)) * self._MIX
        return (mixed >> np.uint64(64 - self.bits)).astype(np.int64)

    def find(self, queries: Keys, valid: Bool) -> tuple[I64, Bool]:
        n = len(queries)
        pos = np.zeros(n, dtype=np.int64)
        found = np.zeros(n, dtype=bool)
        if not n or not len(self.keys):
            return pos, found
        q_hi, q_lo = _halves(queries)
        home = self._home(q_hi, q_lo)
        mask = (1 << self.bits) - 1
        active = np.flatnonzero(valid)
        for r in range(self.rounds):
            if not len(active):
                break
            at = self.table[(home[active] + r) & mask].astype(np.int64)
            filled = at >= 0
            safe = np.where(filled, at, 0)
            match = filled & (self.hi[safe] == q_hi[active]) & (self.lo[safe] == q_lo[active])
            pos[active[match]] = at[match]
            found[active[match]] = True
            active = active[filled & ~match]  # an empty slot ends a probe: the key is not there
        return pos, found


@dataclass
class _Inventory:
    """One inventory's compiled lookup tables (entity ids are global to the snapshot)."""

    pod_lookup: _Lookup = field(default_factory=lambda: _Lookup(_NO_KEYS))
    pod_ent: I32 = field(default_factory=lambda: np.empty(0, np.int32))
    hist_lookup: _Lookup = field(default_factory=lambda: _Lookup(_NO_KEYS))
    hist_since: I64 = field(default_factory=lambda: np.empty(0, np.int64))
    hist_until: I64 = field(default_factory=lambda: np.empty(0, np.int64))
    hist_ent: I32 = field(default_factory=lambda: np.empty(0, np.int32))
    node_lookup: _Lookup = field(default_factory=lambda: _Lookup(_NO_KEYS))
    node_ent: I32 = field(default_factory=lambda: np.empty(0, np.int32))
    node_names: frozenset[str] = frozenset()
    zone_of: dict[str, str] = field(default_factory=dict)


class _Snapshot:
    """Every inventory compiled at one set of index versions (see the module docstring)."""

    def __init__(self, inventories: list[tuple[str, ClusterIndex]], owners: bool) -> None:
        self.versions = tuple(index.version for _, index in inventories)
        self.cluster_names = [name for name, _ in inventories]
        # Observing node name → (node id, zone id, inventory ordinal, cluster id), filled by batches.
        self.observers: dict[str, tuple[int, int, int, int]] = {}
        # One row of endpoint strings per entity (a pod's v4 and v6 share one: one per Attrs object);
        # interned all at once below by Arrow's dictionary encoding, not string by string.
        rows: list[tuple[str, ...]] = []
        cluster_ord: list[int] = []
        created: list[int] = []
        self.inventories: list[_Inventory] = []
        for ordinal, (name, index) in enumerate(inventories):
            with index.locked():  # one consistent copy of this index's tables
                pods = list(index.pod_by_ip.items())
                retired = list(index.retired_by_ip.items())
                nodes = list(index.node_by_ip.items())
                zone_of = dict(index.zone_of)
                rs_owner = dict(index.rs_owner) if owners else {}
                node_names = index.node_names()
            entity_of: dict[int, int] = {}
            first = len(rows)

            def entity(a: Attrs, entity_of: dict[int, int] = entity_of, cluster: str = name,
                       zones: dict[str, str] = zone_of, rs: dict[str, tuple[str, str]] = rs_owner) -> int:
                e = entity_of.get(id(a))
                if e is None:
                    owner_kind, owner_name = (a.owner_kind, a.owner_name) if owners else ("", "")
                    if a.rs_key and rs:
                        owner_kind, owner_name = rs.get(a.rs_key, (owner_kind, owner_name))
                    node = a.node
                    rows.append((a.pod, a.namespace, node, a.app, a.instance_id,
                                 zones.get(node, "") if node else "", a.cluster or cluster, owner_kind, owner_name))
                    created.append(a.created_ns)
                    e = entity_of[id(a)] = len(rows) - 1
                return e

            inv = _Inventory(node_names=node_names, zone_of=zone_of)
            inv.pod_lookup, inv.pod_ent = self._table([ip for ip, _ in pods], [entity(a) for _, a in pods])
            inv.node_lookup, inv.node_ent = self._table([ip for ip, _ in nodes], [entity(a) for _, a in nodes])
            tenancies: list[tuple[str, Tenancy]] = [(ip, t) for ip, ts in retired for t in ts]
            if tenancies:
                keys = _keys([ip for ip, _ in tenancies])
                order = np.argsort(keys, kind="stable")
                inv.hist_lookup = _Lookup(keys[order])
                inv.hist_since = np.array([t[0] for _, t in tenancies], dtype=np.int64)[order]
                inv.hist_until = np.array([t[1] for _, t in tenancies], dtype=np.int64)[order]
                inv.hist_ent = np.array([entity(t[2]) for _, t in tenancies], dtype=np.int32)[order]
            cluster_ord += [ordinal] * (len(rows) - first)
            self.inventories.append(inv)
        # The sentinel entity (index -1): an unknown remote.
        rows.append(tuple(UNKNOWN_CLUSTER if f == "cluster" else "" for f in _ENTITY_FIELDS))
        cluster_ord.append(-1)
        created.append(0)
        # Dictionary-encode every string at once; "" and UNKNOWN come first, so their ids are fixed.
        columns = list(zip(*rows, strict=True))
        head = ["", UNKNOWN_CLUSTER, *self.cluster_names]
        encoded = pa.array(list(itertools.chain(head, *columns)), type=pa.utf8()).dictionary_encode()
        indices = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int32)
        n = len(rows)
        self.ent = {f: indices[len(head) + i * n: len(head) + (i + 1) * n] for i, f in enumerate(_ENTITY_FIELDS)}
        self.dictionary: pa.Array = encoded.dictionary
        # The ids a batch looks up by text (its observers' node names and zones, the cluster names),
        # found up front; any other text is searched for once (:meth:`string_id`). Not a dict of every
        # string (pod names…): a Python str and a dict slot per pod, ~7 MB at 50k pods.
        wanted = set(head)
        for inv in self.inventories:
            wanted |= inv.node_names
            wanted.update(inv.zone_of)
            wanted.update(inv.zone_of.values())
        texts = sorted(wanted)
        found = pc.index_in(pa.array(texts, pa.utf8()), value_set=self.dictionary).to_pylist()
        self._ids: dict[str, int | None] = dict(zip(texts, found, strict=True))
        self._bound = len(self._ids) + _MAX_LOOKED_UP
        self.ent_cluster = np.array(cluster_ord, dtype=np.int32)
        self.ent_created = np.array(created, dtype=np.int64)

    def string_id(self, text: str) -> int | None:
        """The id of ``text`` in :attr:`dictionary`, None when absent.

        A text not found up front is searched for (one scan) and remembered,
        up to :data:`_MAX_LOOKED_UP` of them per snapshot: an agent may name
        itself anything, and one that names itself anew each time must not
        grow the snapshot.
        """
        try:
            return self._ids[text]
        except KeyError:
            where = pc.index(self.dictionary, text).as_py()
            found = where if where >= 0 else None
            if len(self._ids) < self._bound:
                self._ids[text] = found
            return found

    @staticmethod
    def _table(addresses: list[str], entities: list[int]) -> tuple[_Lookup, I32]:
        keys = _keys(addresses)
        order = np.argsort(keys, kind="stable")
        return _Lookup(keys[order]), np.array(entities, dtype=np.int32)[order]


def _pick_with_history(  # noqa: PLR0917 - one vectorized step, its inputs
    inv: _Inventory, snap: _Snapshot, rows: I64, queries: Keys, current: I32, start: I64, end: I64
) -> I32:
    """For ``rows`` whose address has retired tenancies in ``inv``: the entity overlapping the record's
    interval most (ties: the newest), else the current holder — :func:`index.pick_tenant`, vectorized."""
    hist_keys = inv.hist_lookup.keys
    lo = np.searchsorted(hist_keys, queries[rows], side="left")
    hi = np.searchsorted(hist_keys, queries[rows], side="right")
    counts = hi - lo
    s = start[rows]
    e = np.maximum(end[rows], s + 1)
    # Candidates: the current holder (rank 0) and every retired tenancy of each row in the order they
    # ended (rank 1, 2…). As in pick_tenant: the most overlap wins, then the newest, then the lowest rank.
    group = np.repeat(np.arange(len(rows)), counts)
    offset = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    tpos = lo[group] + offset
    t_since = inv.hist_since[tpos]
    t_overlap = np.minimum(e[group], inv.hist_until[tpos]) - np.maximum(s[group], t_since)
    t_ent = inv.hist_ent[tpos]
    cur = current[rows]
    has_cur = np.nonzero(cur >= 0)[0]
    c_since = snap.ent_created[cur[has_cur]]
    c_overlap = e[has_cur] - np.maximum(s[has_cur], c_since)
    group = np.concatenate([group, has_cur])
    since = np.concatenate([t_since, c_since])
    overlap = np.concatenate([t_overlap, c_overlap])
    ent = np.concatenate([t_ent, cur[has_cur]])
    rank = np.concatenate([offset + 1, np.zeros(len(has_cur), dtype=offset.dtype)])
    order = np.lexsort((-rank, since, overlap, group))
    g = group[order]
    last = np.ones(len(g), dtype=bool)
    last[:-1] = g[1:] != g[:-1]
    best = order[last]
    picked = cur.copy()
    good = overlap[best] > 0
    picked[group[best][good]] = ent[best][good]
    return picked


class VectorAttributor:
    """The decision procedure over Arrow columns; same options and results as :class:`Attributor`."""

    def __init__(
        self,
        index: ClusterIndex,
        *,
        cluster: str = "",
        keep_node_flows: bool = False,
        keep_unknown_direction: bool = True,
        owners: bool = False,
        peers: list[tuple[str, ClusterIndex]] | tuple[tuple[str, ClusterIndex], ...] = (),
        compile_min_interval: float = 0.0,
    ) -> None:
        self._inventories = [(cluster, index), *peers]
        self._min_interval = compile_min_interval
        self._compiled_at = -float("inf")
        self._keep_node_flows = keep_node_flows
        self._keep_unknown = keep_unknown_direction
        self._owners = owners
        self._lock = threading.Lock()
        self._snapshot: _Snapshot | None = None
        self.compiles = 0

    def snapshot(self) -> _Snapshot:
        """The compiled inventories, recompiled if any index changed since (but not more often than
        ``compile_min_interval`` seconds: a snapshot that recent is used even if stale)."""
        snap = self._snapshot
        versions = tuple(index.version for _, index in self._inventories)
        if snap is None or (snap.versions != versions
                            and time.monotonic() - self._compiled_at >= self._min_interval):
            with self._lock:
                snap = self._snapshot
                if snap is None or snap.versions != tuple(index.version for _, index in self._inventories):
                    snap = self._snapshot = _Snapshot(self._inventories, self._owners)
                    self._compiled_at = time.monotonic()
                    self.compiles += 1
        return snap

    # ------------------------------------------------------------------ lookups

    def _pods(self, snap: _Snapshot, queries: Keys, valid: Bool, start: I64, end: I64) -> I32:
        result = np.full(len(queries), -1, dtype=np.int32)
        todo = np.nonzero(valid)[0]
        for inv in snap.inventories:
            if len(todo) == 0:
                break
            q = queries[todo]
            everywhere = np.ones(len(todo), dtype=bool)
            current = np.full(len(todo), -1, dtype=np.int32)
            pos, found = inv.pod_lookup.find(q, everywhere)
            current[found] = inv.pod_ent[pos[found]]
            if len(inv.hist_lookup.keys):
                _, in_hist = inv.hist_lookup.find(q, everywhere)
                rows = np.nonzero(in_hist)[0]
                if len(rows):
                    current[rows] = _pick_with_history(inv, snap, rows, q, current, start[todo], end[todo])
            result[todo] = current
            todo = todo[current < 0]
        return result

    @staticmethod
    def _nodes(snap: _Snapshot, queries: Keys, valid: Bool) -> I32:
        result = np.full(len(queries), -1, dtype=np.int32)
        todo = np.nonzero(valid)[0]
        for inv in snap.inventories:
            if len(todo) == 0 or len(inv.node_lookup.keys) == 0:
                continue
            pos, found = inv.node_lookup.find(queries[todo], np.ones(len(todo), dtype=bool))
            hit = todo[found]
            result[hit] = inv.node_ent[pos[found]]
            todo = todo[~found]
        return result

    # ------------------------------------------------------------------ the procedure

    def attribute_table(self, table: pa.RecordBatch) -> tuple[pa.RecordBatch, BatchOutcome]:
        """Flows (``FLOW_SCHEMA``, an ``out`` and an ``in`` row per kept record) for a records batch."""
        snap = self.snapshot()
        res = BatchOutcome()
        n = table.num_rows
        src, src_valid = _column_keys(table.column("src"))
        dst, dst_valid = _column_keys(table.column("reply_src"))
        start = table.column("start_ns").to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
        end = table.column("end_ns").to_numpy(zero_copy_only=False).astype(np.int64, copy=False)

        # The observing node: per distinct name, its string id, cluster ordinal, zone and cluster name.
        observer = table.column("node")
        if isinstance(observer, pa.ChunkedArray):
            observer = observer.combine_chunks()
        if not isinstance(observer, pa.DictionaryArray):
            observer = observer.dictionary_encode()
        names = observer.dictionary.to_pylist()
        obs_node = np.empty(len(names), dtype=np.int32)
        obs_zone = np.empty(len(names), dtype=np.int32)
        obs_cluster = np.empty(len(names), dtype=np.int32)
        obs_cluster_name = np.empty(len(names), dtype=np.int32)
        extra: list[str] = []  # strings this batch needs that the snapshot lacks (an unknown observer)
        extra_ids: dict[str, int] = {}

        def string_id(value: str) -> tuple[int, bool]:
            """The id of ``value`` for this batch, and whether the snapshot has it (else a per-batch string)."""
            found = snap.string_id(value)
            if found is not None:
                return found, True
            added = extra_ids.get(value)
            if added is None:
                added = extra_ids[value] = len(snap.dictionary) + len(extra)
                extra.append(value)
            return added, False

        cache = snap.observers
        for i, text in enumerate(names):
            name = text or ""
            hit = cache.get(name)
            if hit is None:
                ordinal = 0
                if len(snap.inventories) > 1 and name not in snap.inventories[0].node_names:
                    ordinal = next((k for k, inv in enumerate(snap.inventories) if name in inv.node_names), 0)
                zone = snap.inventories[ordinal].zone_of.get(name, "")
                (node_id, node_known), (zone_id, zone_known) = string_id(name), string_id(zone)
                hit = (node_id, zone_id, ordinal, string_id(snap.cluster_names[ordinal])[0])
                if node_known and zone_known:  # only what needs no per-batch string
                    cache[name] = hit
            obs_node[i], obs_zone[i], obs_cluster[i], obs_cluster_name[i] = hit
        obs_idx = observer.indices.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
        row_obs_node = obs_node[obs_idx]
        row_obs_cluster = obs_cluster[obs_idx]

        # 1. Node flows.
        sa = self._nodes(snap, src, src_valid)
        da = self._nodes(snap, dst, dst_valid)
        node_flow = (sa >= 0) | (da >= 0)
        keep = np.ones(n, dtype=bool)
        if node_flow.any():
            if self._keep_node_flows:
                res.kept_node_flow = int(node_flow.sum())
            else:
                res.dropped_node_flow = int(node_flow.sum())
                res.example_node_flow = _example(table, node_flow)
                keep &= ~node_flow
        # 2. Pods, as of each record's interval, for what is not a node.
        need = keep & (sa < 0)
        if need.any():
            sa = np.where(need, self._pods(snap, src, src_valid & need, start, end), sa)
        need = keep & (da < 0)
        if need.any():
            da = np.where(need, self._pods(snap, dst, dst_valid & need, start, end), da)
        res.lookup_hits = int(((sa >= 0) & keep).sum() + ((da >= 0) & keep).sum())
        res.lookup_misses = 2 * int(keep.sum()) - res.lookup_hits

        # 3. Flow type, rules 1-6 (first match wins).
        ent_node, ent_cluster = snap.ent["node"], snap.ent_cluster
        s_known, d_known = sa >= 0, da >= 0
        s_here = s_known & (ent_node[sa] == row_obs_node) & (ent_cluster[sa] == row_obs_cluster)
        d_here = d_known & (ent_node[da] == row_obs_node) & (ent_cluster[da] == row_obs_cluster)
        rule4 = ~s_known & d_known & (ent_node[da] != _EMPTY)
        rule5 = s_known & (ent_node[sa] != _EMPTY) & ~d_known
        decided = s_here | d_here | rule4 | rule5
        local_is_src = s_here | (~d_here & (rule4 | ~decided))
        unknown = keep & ~decided
        if unknown.any():
            res.example_unknown = _example(table, unknown)
            if self._keep_unknown:
                res.kept_unknown_direction = int(unknown.sum())
            else:
                res.dropped_unknown_direction = int(unknown.sum())
                keep &= ~unknown
        kept = np.nonzero(keep)[0]
        res.attributed = len(kept)
        columns = _Columns(table, kept, local_is_src[kept], (src, src_valid), (dst, dst_valid), start, end)
        return self._flows(snap, columns, sa[kept], da[kept], obs_idx[kept],
                           (obs_node, obs_zone, obs_cluster_name), extra), res

    @staticmethod
    def _flows(  # noqa: PLR0917 - the pieces attribute_table computed
        snap: _Snapshot, c: _Columns, sa: I32, da: I32, obs_idx: I64, obs: tuple[I32, I32, I32], extra: list[str],
    ) -> pa.RecordBatch:
        k = len(c.kept)
        lis = c.local_is_src
        # out, in, out, in…: each kept record twice, in the order of the row path.
        la2 = np.repeat(np.where(lis, sa, da), 2)
        ra2 = np.repeat(np.where(lis, da, sa), 2)
        obs2 = np.repeat(obs_idx, 2)
        obs_node, obs_zone, obs_cluster_name = obs
        # A local side that is no known pod or node is the observing node, in its zone and cluster;
        # the sentinel entity (-1) already has "" everywhere else.
        local_default = {"node": obs_node, "availability_zone": obs_zone, "cluster": obs_cluster_name}
        unknown_local = la2 < 0
        ids: dict[str, I32] = {}
        for f in _ENTITY_FIELDS:
            column = snap.ent[f]
            local = column[la2]
            default = local_default.get(f)
            if default is not None:
                local = np.where(unknown_local, default[obs2], local)
            ids[f"local_{f}"] = local
            ids[f"remote_{f}"] = column[ra2]
        # One dictionary for every string column of the batch: the compiled strings the batch uses.
        used = np.zeros(len(snap.dictionary) + len(extra), dtype=bool)
        used[_EMPTY] = True
        for values in ids.values():
            used[values] = True
        remap = (np.cumsum(used) - 1).astype(np.int32)
        full = snap.dictionary if not extra else pa.concat_arrays([snap.dictionary, pa.array(extra, pa.utf8())])
        dictionary = full.filter(pa.array(used))
        empty = pa.DictionaryArray.from_arrays(
            pa.array(np.full(2 * k, remap[_EMPTY], dtype=np.int32), type=pa.int32()), dictionary)

        def strings(values: I32 | None) -> pa.DictionaryArray:
            if values is None:
                return empty  # immutable: one array for every column left to later processors
            return pa.DictionaryArray.from_arrays(pa.array(remap[values], type=pa.int32()), dictionary)

        columns: dict[str, Any] = {
            "direction": pa.DictionaryArray.from_arrays(
                pa.array(np.tile(np.array([0, 1], dtype=np.int32), k), type=pa.int32()), _DIRECTIONS),
            "transport": c.dictionary_column("transport"),
            "network_type": c.dictionary_column("network_type"),
            "observer": c.dictionary_column("node"),
            "local_address": c.address(local=True),
            "local_port": c.pick("sport", "reply_sport"),
            "remote_address": c.address(local=False),
            "remote_port": c.pick("reply_sport", "sport"),
            "connection_class": empty,
            "connection_flags": pa.MapArray.from_arrays(
                pa.array(np.zeros(2 * k + 1, dtype=np.int32)), pa.array([], pa.utf8()), pa.array([], pa.bool_())
            ).cast(FLAGS),
            "bytes": c.counters("original_bytes", "reply_bytes"),
            "packets": c.counters("original_packets", "reply_packets"),
            "start_ns": pa.array(np.repeat(c.start[c.kept], 2), type=pa.int64()),
            "end_ns": pa.array(np.repeat(c.end[c.kept], 2), type=pa.int64()),
        }
        for side in ("local", "remote"):
            for f in ENDPOINT_STRING_FIELDS:
                columns[f"{side}_{f}"] = strings(ids.get(f"{side}_{f}"))
        arrays = []
        for spec in FLOW_FIELDS:
            array = columns[spec.name]
            if array.type != spec.type:
                array = array.cast(spec.type)
            arrays.append(array)
        return pa.RecordBatch.from_arrays(arrays, schema=FLOW_SCHEMA)


_DIRECTIONS = pa.array(["out", "in"], type=pa.utf8())


class _Columns:
    """The record columns a flows batch is built from, for the kept records (each one twice)."""

    def __init__(  # noqa: PLR0917 - what attribute_table already holds
        self, table: pa.RecordBatch, kept: I64, local_is_src: Bool, src: tuple[Keys, Bool],
        dst: tuple[Keys, Bool], start: I64, end: I64,
    ) -> None:
        self.table = table
        self.kept = kept
        self.local_is_src = local_is_src
        self.rows = np.repeat(kept, 2)
        self.lis2 = np.repeat(local_is_src, 2)
        self.src, self.dst = src, dst
        self.start, self.end = start, end

    def dictionary_column(self, name: str) -> pa.Array:
        column = self.table.column(name)
        if not isinstance(column, pa.DictionaryArray):
            taken: pa.Array = column.take(pa.array(self.rows))
            return taken
        indices = column.indices.to_numpy(zero_copy_only=False)[self.rows]
        return pa.DictionaryArray.from_arrays(pa.array(indices, type=column.indices.type), column.dictionary)

    def pick(self, when_src: str, when_dst: str) -> pa.Array:
        one = self.table.column(when_src).to_numpy(zero_copy_only=False)[self.rows]
        two = self.table.column(when_dst).to_numpy(zero_copy_only=False)[self.rows]
        return pa.array(np.where(self.lis2, one, two))

    def address(self, *, local: bool) -> pa.Array:
        (src, src_valid), (dst, dst_valid) = self.src, self.dst
        when_src, when_dst = (src, dst) if local else (dst, src)
        keys = np.where(self.lis2, when_src[self.rows], when_dst[self.rows]).astype("S16")
        valid = np.where(self.lis2, (src_valid if local else dst_valid)[self.rows],
                         (dst_valid if local else src_valid)[self.rows])
        data = pa.py_buffer(keys.tobytes())
        if valid.all():
            return pa.FixedSizeBinaryArray.from_buffers(ADDRESS, len(keys), [None, data])
        mask = pa.array(valid).buffers()[1]
        return pa.FixedSizeBinaryArray.from_buffers(ADDRESS, len(keys), [mask, data], null_count=int((~valid).sum()))

    def counters(self, first: str, second: str) -> pa.Array:
        one = self.table.column(first).to_numpy(zero_copy_only=False)[self.kept]
        two = self.table.column(second).to_numpy(zero_copy_only=False)[self.kept]
        lis = self.local_is_src
        out = np.empty(2 * len(self.kept), dtype=np.uint64)
        out[0::2] = np.where(lis, one, two)
        out[1::2] = np.where(lis, two, one)
        return pa.array(out, type=pa.uint64())


def _example(table: pa.RecordBatch, mask: Bool) -> ConntrackRecord:
    """One record of ``mask`` as a row, for the drop log line (one object per batch)."""
    i = int(np.argmax(mask))
    row = {name: table.column(name)[i].as_py() for name in table.schema.names}
    for name in ("src", "dst", "reply_src", "reply_dst"):
        row[name] = unpack_addresses(table.column(name).slice(i, 1))[0]
    return ConntrackRecord(**row)

