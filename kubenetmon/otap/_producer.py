"""Conntrack records (``RECORD_SCHEMA``) → ``BatchArrowRecords`` bytes, one producer per gRPC stream.

The content is the OTLP request's (DESIGN §4.1, ``otlp/_encode_records``):
resources per observing node with the same attributes, the two Sum metrics
with their names, descriptions and units, one data point per non-zero
counter, and the same point attributes (the reply tuple only under NAT).

Everything per point is numpy: point and attribute rows are index arrays
into the record batch. Python runs per node, per metric and per distinct
address (its text, once per stream while the stream's string dictionary
has room). Each payload type has one Arrow IPC stream per gRPC stream, so
a schema is sent once and the string dictionary as deltas: an address seen
in an earlier BAR of the stream costs two bytes of index, not its text.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from kubenetmon.flows import RECORD_SCHEMA, _numpy, _strings, _values
from kubenetmon.otap._headers import encode_headers
from kubenetmon.otap._proto import ArrowPayloadType, BatchArrowRecords
from kubenetmon.otap._tables import (
    ATTR_TYPE_INT,
    ATTR_TYPE_STR,
    ATTRS_SCHEMA,
    ATTRS_SCHEMA_PLAIN_STR,
    METRIC_TYPE_SUM,
    METRICS_SCHEMA,
    POINTS_SCHEMA,
    RESOURCE_ATTRS_SCHEMA,
    schema_id,
)
from kubenetmon.otlp import _contract as c
from kubenetmon.otlp._encode_records import resource_attributes
from kubenetmon.otlp._encode_table import _group_node, _text

__all__ = ["ATTRIBUTE_KEYS", "RecordsProducer"]

# The point attributes in the order the OTLP encoder writes them; their index is the key column's.
ATTRIBUTE_KEYS = (
    c.ATTR_NETWORK_TRANSPORT, c.ATTR_NETWORK_TYPE, c.ATTR_SRC_ADDRESS, c.ATTR_SRC_PORT,
    c.ATTR_DST_ADDRESS, c.ATTR_DST_PORT, c.ATTR_REPLY_SRC_ADDRESS, c.ATTR_REPLY_SRC_PORT,
    c.ATTR_REPLY_DST_ADDRESS, c.ATTR_REPLY_DST_PORT, c.ATTR_DIRECTION,
)
_KEY_DICTIONARY = _strings(ATTRIBUTE_KEYS)  # no pa.array anywhere here: it imports pandas
# Per metric: (name, description, unit, counter columns for original and reply) — the OTLP encoder's texts.
_METRICS = (
    (c.METRIC_BYTES, "Bytes sent in one conntrack direction over the interval.", c.UNIT_BYTES,
     ("original_bytes", "reply_bytes")),
    (c.METRIC_PACKETS, "Packets sent in one conntrack direction over the interval.", c.UNIT_PACKETS,
     ("original_packets", "reply_packets")),
)
_ADDRESS_COLUMNS = ("src", "dst", "reply_src", "reply_dst")
_PORT_COLUMNS = ("sport", "dport", "reply_sport", "reply_dport")
# Room in the UInt16 string dictionary; past it the stream starts a fresh dictionary.
_DICTIONARY_ROOM = 65_535
_FIXED_STRINGS = (c.DIRECTION_ORIGINAL, c.DIRECTION_REPLY, "tcp", "udp", "ipv4", "ipv6")


class _Chunks:
    """A write-only file for an IPC writer: what it wrote since the last :meth:`take`."""

    closed = False

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: Any) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        out = b"".join(self.parts)
        self.parts = []
        return out


class _IpcStream:
    """One payload type's Arrow IPC stream within the gRPC stream."""

    def __init__(self, schema: pa.Schema, compression: str | None) -> None:
        self.sink = _Chunks()
        options = pa.ipc.IpcWriteOptions(compression=compression, emit_dictionary_deltas=True)
        self.writer = pa.ipc.new_stream(self.sink, schema, options=options)

    def payload(self, batch: pa.RecordBatch) -> bytes:
        self.writer.write_batch(batch)
        return self.sink.take()


class _StringDictionary:
    """The stream's dictionary of attribute strings: grows by deltas, restarts when full."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.index: dict[Any, int] = {}  # a key (packed address and family, or text) → its text's index
        self.by_text: dict[str, int] = {}
        self.values: pa.Array = _strings(_FIXED_STRINGS)
        for i, text in enumerate(_FIXED_STRINGS):
            self.index[text] = self.by_text[text] = i
        self.pending: list[str] = []

    def lookup(self, keys: list[Any], texts: Any) -> np.ndarray[Any, Any]:
        """Indices of ``keys``; a new key's text ``texts(key)`` is appended unless already there.

        One text, one index: the reader groups attribute runs by value, so two
        keys with one text (an IPv6 address in an ipv4 and an ipv6 row) must share it.
        """
        index, by_text, pending = self.index, self.by_text, self.pending
        base = len(self.values)
        out = np.empty(len(keys), dtype=np.int32)  # ids < 2**31: the attribute table's values stay 32-bit
        for i, key in enumerate(keys):
            j = index.get(key)
            if j is None:
                text = texts(key)
                j = by_text.get(text)
                if j is None:
                    j = by_text[text] = base + len(pending)
                    pending.append(text)
                index[key] = j
            out[i] = j
        return out

    def array(self) -> pa.Array:
        if self.pending:
            self.values = pa.concat_arrays([self.values, _strings(self.pending)])
            self.pending = []
        return self.values


#: The payloads whose IPC buffers are compressed (when the producer compresses): the points and their
#: attributes, 10-20× smaller with zstd. The root table and the resource attributes (a few rows per
#: BAR) are sent as they are: zstd made them larger (1,360 B against 1,128 for the root), and Arrow
#: compresses each buffer in a codec call of its own, which costs the reader ~12 µs per buffer whatever
#: its size (the root has ~20): 0.27 + 0.13 ms of the 1.4 ms a BAR of 2,000 records takes to read.
COMPRESSED_PAYLOADS = frozenset({ArrowPayloadType.NUMBER_DATA_POINTS, ArrowPayloadType.NUMBER_DP_ATTRS})


class RecordsProducer:
    """Encodes records batches as BARs for one gRPC stream (its IPC streams and dictionary).

    ``compression``: ``"zstd"`` compresses the IPC buffers of the
    :data:`COMPRESSED_PAYLOADS`; ``None`` sends them all as they are. A
    producer must not outlive its stream: a new stream needs a new producer
    (the server's readers start empty).
    """

    def __init__(self, compression: str | None = "zstd") -> None:
        self.compression = compression
        self._streams: dict[tuple[int, str], _IpcStream] = {}
        self._strings = _StringDictionary()
        self._next_batch_id = 0

    def _payload(self, bar: Any, kind: int, batch: pa.RecordBatch) -> None:
        sid = schema_id(batch.schema)
        stream = self._streams.get((kind, sid))
        if stream is None:
            compression = self.compression if kind in COMPRESSED_PAYLOADS else None
            stream = self._streams[(kind, sid)] = _IpcStream(batch.schema, compression)
        bar.arrow_payloads.add(schema_id=sid, type=kind, record=stream.payload(batch))

    def encode(self, table: pa.RecordBatch, resource: Mapping[str, str], headers: dict[str, str]) -> bytes:
        """One serialized BAR with all of ``table``'s non-zero counters as points."""
        if not table.schema.equals(RECORD_SCHEMA):
            raise ValueError("a records batch must be in kubenetmon.flows.RECORD_SCHEMA")
        bar = BatchArrowRecords(batch_id=self._next_batch_id, headers=encode_headers(headers))
        self._next_batch_id += 1
        tables = self._tables(table, resource)
        if tables is not None:
            metrics, resource_attrs, points, attrs = tables
            # The root first, as the spec requires; empty tables are left out.
            self._payload(bar, ArrowPayloadType.UNIVARIATE_METRICS, metrics)
            self._payload(bar, ArrowPayloadType.RESOURCE_ATTRS, resource_attrs)
            self._payload(bar, ArrowPayloadType.NUMBER_DATA_POINTS, points)
            self._payload(bar, ArrowPayloadType.NUMBER_DP_ATTRS, attrs)
        data: bytes = bar.SerializeToString()
        return data

    # --- the four tables --------------------------------------------------------------

    def _tables(
        self, table: pa.RecordBatch, resource: Mapping[str, str]
    ) -> tuple[pa.RecordBatch, pa.RecordBatch, pa.RecordBatch, pa.RecordBatch] | None:
        from kubenetmon import __version__

        col = table.column
        node_col = col("node")
        node_names = node_col.dictionary.to_pylist()
        node_idx = _numpy(node_col.indices)
        counters = {name: _numpy(col(name))
                    for m in _METRICS for name in m[3]}
        # Nodes in order of first appearance, rows in their order (as the OTLP encoder groups them).
        order = np.argsort(node_idx, kind="stable")
        bounds = np.flatnonzero(np.diff(node_idx[order])) + 1
        groups = sorted(np.split(order, bounds), key=lambda g: int(g[0])) if len(order) else []
        default_node = resource.get(c.RESOURCE_NODE_NAME, "")

        res_parent: list[int] = []
        res_keys: list[str] = []
        res_values: list[str] = []
        metric_rows: list[tuple[int, str, str, str]] = []
        point_rows: list[np.ndarray[Any, Any]] = []
        point_reply: list[np.ndarray[Any, Any]] = []
        point_values: list[np.ndarray[Any, Any]] = []
        point_metric: list[np.ndarray[Any, Any]] = []
        nodes_seen: dict[str, int] = {}
        for group in groups:
            node = _group_node(node_names, node_idx, group, default_node)
            rid = nodes_seen.get(node)
            if rid is None:
                rid = nodes_seen[node] = len(nodes_seen)
                for k, v in resource_attributes(node, resource).items():
                    res_parent.append(rid)
                    res_keys.append(k)
                    res_values.append(v)
            for name, description, unit, (original, back) in _METRICS:
                # Per row the original point, then the reply one; zero counters are not points.
                values = np.stack([counters[original][group], counters[back][group]], axis=1).ravel()
                keep = np.flatnonzero(values)
                if not len(keep):
                    continue
                mid = len(metric_rows)
                metric_rows.append((rid, name, description, unit))
                point_rows.append(group[keep // 2])
                point_reply.append((keep % 2).astype(np.uint8))
                point_values.append(values[keep])
                point_metric.append(np.full(len(keep), mid, dtype=np.int64))
        if not metric_rows:
            return None

        m = len(metric_rows)
        metrics = pa.RecordBatch.from_arrays([
            _values(np.arange(m), pa.uint16()),
            pa.StructArray.from_arrays([_values([r[0] for r in metric_rows], pa.uint16())],
                                       fields=list(METRICS_SCHEMA.field("resource").type)),
            pa.StructArray.from_arrays(
                [_values(np.zeros(m), pa.uint16()), _strings([c.SCOPE_NAME] * m), _strings([__version__] * m)],
                fields=list(METRICS_SCHEMA.field("scope").type)),
            _values(np.full(m, METRIC_TYPE_SUM), pa.uint8()),
            _strings([r[1] for r in metric_rows]),
            _strings([r[2] for r in metric_rows]),
            _strings([r[3] for r in metric_rows]),
            _values(np.full(m, c.TEMPORALITY_DELTA), pa.int32()),
            _values(np.ones(m, dtype=bool), pa.bool_()),
        ], schema=METRICS_SCHEMA)
        resource_attrs = pa.RecordBatch.from_arrays([
            _values(np.array(res_parent, dtype=np.int64), pa.uint16()), _strings(res_keys),
            _values(np.full(len(res_keys), ATTR_TYPE_STR), pa.uint8()), _strings(res_values),
        ], schema=RESOURCE_ATTRS_SCHEMA)

        rows = np.concatenate(point_rows)
        reply = np.concatenate(point_reply)
        parent = np.concatenate(point_metric)
        n_points = len(rows)
        starts = _numpy(col("start_ns"))[rows]
        ends = _numpy(col("end_ns"))[rows]
        ids = np.ones(n_points, dtype=np.uint32)
        ids[0] = 0
        parent_delta = np.diff(parent, prepend=0)
        points = pa.RecordBatch.from_arrays([
            _values(ids, pa.uint32()), _values(parent_delta, pa.uint16()),
            _values(starts.astype("datetime64[ns]"), pa.timestamp("ns")),
            _values(ends.astype("datetime64[ns]"), pa.timestamp("ns")),
            _values(np.concatenate(point_values).view(np.int64), pa.int64()),
        ], schema=POINTS_SCHEMA)
        return metrics, resource_attrs, points, self._attributes(table, rows, reply)

    def _attributes(self, table: pa.RecordBatch, rows: np.ndarray[Any, Any],
                    reply: np.ndarray[Any, Any]) -> pa.RecordBatch:
        """NUMBER_DP_ATTRS: per key, its points sorted by value, parent ids quasi-delta encoded."""
        col = table.column
        n = table.num_rows
        strings = self._strings
        v6 = _codes(col("network_type"), ("ipv6",)) == 0
        addresses = np.empty((4, n, 17), dtype=np.uint8)
        for i, name in enumerate(_ADDRESS_COLUMNS):
            addresses[i, :, 0] = v6
            addresses[i, :, 1:] = _address_bytes(col(name))
        ports = np.stack([_numpy(col(p)).astype(np.int32) for p in _PORT_COLUMNS])
        mirrored = ((addresses[2] == addresses[1]).all(axis=1) & (addresses[3] == addresses[0]).all(axis=1)
                    & (ports[2] == ports[1]) & (ports[3] == ports[0]))
        # Per distinct (family, address): its dictionary index (the text only when new to the stream).
        flat = pa.FixedSizeBinaryArray.from_buffers(pa.binary(17), 4 * n, [None, pa.py_buffer(addresses)])
        encoded = flat.dictionary_encode()
        keys = encoded.dictionary.to_pylist()
        known = strings.index
        new = sum(1 for k in keys if k not in known)
        extra = len(col("transport").dictionary) + len(col("network_type").dictionary)
        if len(strings.by_text) + new + extra > _DICTIONARY_ROOM:
            # Full: a replacement dictionary instead of a delta (the strings of this BAR only).
            strings.reset()
        distinct = strings.lookup(keys, lambda k: _text(k[1:], bool(k[0])))
        address_index = distinct[_numpy(encoded.indices)].reshape(4, n)
        transport = strings.lookup(_dictionary_values(col("transport")), str)[
            _numpy(col("transport").indices)]
        network_type = strings.lookup(_dictionary_values(col("network_type")), str)[
            _numpy(col("network_type").indices)]
        direction = reply.astype(np.int32)  # "original" is entry 0 of the dictionary, "reply" entry 1

        # 32-bit ids and values (half the memory of the attribute table's ~11 rows per point); < 2**31 here.
        point_ids = np.arange(len(rows), dtype=np.int32)
        nat = ~mirrored[rows]
        # Per key: (points having it, is it a string, its values per record or per point).
        per_key: list[tuple[np.ndarray[Any, Any], bool, np.ndarray[Any, Any]]] = [
            (point_ids, True, transport[rows]), (point_ids, True, network_type[rows]),
            (point_ids, True, address_index[0][rows]), (point_ids, False, ports[0][rows]),
            (point_ids, True, address_index[1][rows]), (point_ids, False, ports[1][rows]),
        ]
        nat_ids, nat_rows = point_ids[nat], rows[nat]
        per_key += [
            (nat_ids, True, address_index[2][nat_rows]), (nat_ids, False, ports[2][nat_rows]),
            (nat_ids, True, address_index[3][nat_rows]), (nat_ids, False, ports[3][nat_rows]),
            (point_ids, True, direction),
        ]
        parents, keys, values, is_str = [], [], [], []
        for k, (key_ids, string, key_values) in enumerate(per_key):
            if not len(key_ids):
                continue
            # Ids, ascending already, stay ascending within a value after a stable sort; values below
            # 2**16 (ports, directions, dictionary indices while the dictionary has room) get a radix sort.
            small = key_values.max() <= 0xFFFF
            order = np.argsort(key_values.astype(np.uint16) if small else key_values, kind="stable")
            ids, vals = key_ids[order], key_values[order]
            # Quasi-delta: within a run of one value, a parent id is the difference to the previous row's.
            same = np.zeros(len(ids), dtype=bool)
            same[1:] = vals[1:] == vals[:-1]
            delta = ids.copy()
            delta[1:] -= ids[:-1]
            parents.append(np.where(same, delta, ids))
            keys.append(np.full(len(ids), k, dtype=np.uint8))
            values.append(vals)
            is_str.append(np.full(len(ids), string))
        parent = np.concatenate(parents)
        value = np.concatenate(values)
        string_mask = np.concatenate(is_str)
        types = np.where(string_mask, ATTR_TYPE_STR, ATTR_TYPE_INT).astype(np.uint8)
        dictionary = strings.array()
        key_column = pa.DictionaryArray.from_arrays(_values(np.concatenate(keys), pa.uint8()), _KEY_DICTIONARY)
        ints = _values(value, pa.int64(), mask=string_mask)
        str_indices = _values(np.where(string_mask, value, 0).astype(np.uint16), pa.uint16(), mask=~string_mask)
        schema = ATTRS_SCHEMA
        if len(dictionary) > _DICTIONARY_ROOM + 1:
            # One BAR with more distinct strings than UInt16 keys reach: plain strings (another schema id).
            str_column: pa.Array = pa.DictionaryArray.from_arrays(
                _values(np.where(string_mask, value, 0), pa.int64(), mask=~string_mask), dictionary
            ).cast(pa.utf8())
            schema = ATTRS_SCHEMA_PLAIN_STR
        else:
            str_column = pa.DictionaryArray.from_arrays(str_indices, dictionary)
        return pa.RecordBatch.from_arrays([
            _values(parent, pa.uint32()), key_column, _values(types, pa.uint8()), str_column, ints,
        ], schema=schema)


def _dictionary_values(column: Any) -> list[Any]:
    return list(column.dictionary.to_pylist())


def _codes(column: Any, known: tuple[str, ...]) -> np.ndarray[Any, Any]:
    mapping = np.array([known.index(v) if v in known else -1 for v in column.dictionary.to_pylist()] or [-1],
                       dtype=np.int8)
    codes: np.ndarray[Any, Any] = mapping[_numpy(column.indices)]
    return codes


def _address_bytes(column: Any) -> np.ndarray[Any, Any]:
    """An address column as (n, 16) bytes; null as all zero (``::``, as the OTLP encoder sends it)."""
    if column.null_count:
        column = column.fill_null(bytes(16))
    buf = column.buffers()[1]
    return np.frombuffer(buf, dtype=np.uint8, count=16 * len(column), offset=16 * column.offset).reshape(-1, 16)
