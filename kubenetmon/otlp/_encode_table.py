"""Arrow record batches → OTLP requests, without per-record objects (issues 11, 12).

Records (DESIGN §4.1, the agent): the attribute block of a connection (both
directions' variants) is encoded once and cached while the connection lives
— across calls, bounded by bytes — keyed by the connection's fixed-width
tuple bytes, which numpy cuts from the columns in one pass. Each interval
then only writes, per point, the timestamps and value in front of the
cached block. The byte layout is exactly the row encoder's
(``_encode_records``), which the gateway's fast path reads.

Flows (DESIGN §4.4, gateway → any OTLP backend): every distinct string of a
dictionary column is encoded once per batch and taken per row by index; a
row's attribute block is the join of its columns' pieces.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from kubenetmon.flows import ENDPOINT_STRING_FIELDS, FLOW_SCHEMA, RECORD_SCHEMA, FlowBatch
from kubenetmon.otlp import _contract as c
from kubenetmon.otlp._checks import _ENTRY_OVERHEAD, ByteBoundedCache
from kubenetmon.otlp._encode_flows import ENDPOINT_ATTRIBUTES
from kubenetmon.otlp._encode_flows import _request as _flow_request
from kubenetmon.otlp._encode_records import (
    _DIR_ORIGINAL,
    _DIR_REPLY,
    _resource_metrics,
    _scope,
    encode_records_bytes,
    resource_attributes,
)
from kubenetmon.otlp._wire import (
    POINT_HEADER,
    kv_bool,
    kv_int,
    kv_kvlist,
    kv_string,
    length_delimited,
    string_field,
    varint,
)

__all__ = ["BLOCK_CACHE_BYTES", "encode_flow_table_bytes", "encode_record_table_bytes"]

_V4_MAPPED = bytes(10) + b"\xff\xff"
_KNOWN = {"transport": ("tcp", "udp"), "network_type": ("ipv4", "ipv6")}

# Connection tuple bytes → its attribute block (the direction attribute is
# appended per point). Two generations: a block is looked up in the current
# one, then in the previous one (and moved back into the current); when the
# current one holds half the budget it becomes the previous one and the
# oldest generation is dropped. So a connection seen in consecutive
# intervals stays cached while it lives, a gone one leaves after two
# rotations, and a live set larger than the cache degrades gradually
# rather than emptying it every call. A block is ~150-330 bytes and an
# entry ~600 with its key: 64 MiB keep ~100k live connections.
BLOCK_CACHE_BYTES = 64 * 1024 * 1024


class _Generations:
    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.current: dict[bytes, bytes] = {}
        self.previous: dict[bytes, bytes] = {}
        self.nbytes = 0
        self.rotations = 0

    def get(self, key: bytes) -> bytes | None:
        block = self.current.get(key)
        if block is None:
            block = self.previous.pop(key, None)
            if block is not None:
                self.put(key, block)
        return block

    def put(self, key: bytes, block: bytes) -> None:
        size = len(block) + len(key) + 2 * _ENTRY_OVERHEAD
        if self.nbytes + size > self.budget // 2:
            self.previous, self.current = self.current, {}
            self.nbytes = 0
            self.rotations += 1
        self.current[key] = block
        self.nbytes += size

    def clear(self) -> None:
        self.current, self.previous, self.nbytes = {}, {}, 0

    def __len__(self) -> int:
        return len(self.current) + len(self.previous)


_BLOCKS = _Generations(BLOCK_CACHE_BYTES)


def _attr(body: bytes) -> bytes:
    return length_delimited(0x3A, body)


def _group_node(node_names: Any, node_idx: Any, group: Any, default_node: str) -> str:
    """The node of a group of records (theirs, else the resource's); a ValueError that says what to set."""
    node: str = node_names[int(node_idx[group[0]])] or default_node
    if not node:
        raise ValueError(
            "a conntrack record has no node and the resource has no k8s.node.name: set "
            "resource k8s.node.name (e.g. ${NODE_NAME}) in the exporter config"
        )
    return node


def _text(packed: bytes, v6: bool = False) -> str:
    """Canonical text; an IPv4-mapped address of an ipv6 row stays IPv6 (``::ffff:a.b.c.d``)."""
    if not v6 and packed[:12] == _V4_MAPPED:
        return socket.inet_ntop(socket.AF_INET, packed[12:])
    return socket.inet_ntop(socket.AF_INET6, packed)


def _codes(column: pa.Array, name: str) -> np.ndarray[Any, Any]:
    """A dictionary column's values as the contract's codes (0, 1), or -1 where not one of them."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    known = _KNOWN[name]
    mapping = np.array([known.index(v) if v in known else -1 for v in column.dictionary.to_pylist()] or [-1],
                       dtype=np.int8)
    indices = column.indices.to_numpy(zero_copy_only=False)
    codes: np.ndarray[Any, Any] = mapping[indices]
    return codes


def _addresses(column: pa.Array) -> np.ndarray[Any, Any]:
    """An address column as an (n, 16) uint8 array (null: all zero, which encodes as ``::``)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if column.null_count:
        column = column.fill_null(bytes(16))
    buf = column.buffers()[1]
    return np.frombuffer(buf, dtype=np.uint8, count=16 * len(column), offset=16 * column.offset).reshape(-1, 16)


def _tuple_keys(table: pa.RecordBatch) -> tuple[list[bytes], np.ndarray[Any, Any]]:
    """One bytes key per row (transport, type, the four addresses and ports), and the 'mirrored' mask."""
    n = table.num_rows
    t = _codes(table.column("transport"), "transport")
    nt = _codes(table.column("network_type"), "network_type")
    if (t < 0).any() or (nt < 0).any():
        raise _Unusual
    addrs = [_addresses(table.column(name)) for name in ("src", "dst", "reply_src", "reply_dst")]
    ports = [table.column(name).to_numpy(zero_copy_only=False).astype(">u2")
             for name in ("sport", "dport", "reply_sport", "reply_dport")]
    rows = np.empty((n, 75), dtype=np.uint8)
    rows[:, 0] = t
    rows[:, 1] = nt
    for i, a in enumerate(addrs):
        rows[:, 2 + 16 * i: 18 + 16 * i] = a
    for i, p in enumerate(ports):
        rows[:, 66 + 2 * i: 68 + 2 * i] = p.view(np.uint8).reshape(-1, 2)
    rows[:, 74] = 0xFF  # a non-zero last byte: numpy's bytes type would strip trailing zeros
    mirrored = ((addrs[2] == addrs[1]).all(axis=1) & (addrs[3] == addrs[0]).all(axis=1)
                & (ports[2] == ports[1]) & (ports[3] == ports[0]))
    return rows.view("S75").ravel().tolist(), mirrored


class _Unusual(Exception):
    """A transport or network type outside the contract: the row encoder sends it as it is."""


_HEADS = (
    (_attr(kv_string(c.ATTR_NETWORK_TRANSPORT, "tcp")), _attr(kv_string(c.ATTR_NETWORK_TRANSPORT, "udp"))),
    (_attr(kv_string(c.ATTR_NETWORK_TYPE, "ipv4")), _attr(kv_string(c.ATTR_NETWORK_TYPE, "ipv6"))),
)
_ADDRESS_KEYS = (c.ATTR_SRC_ADDRESS, c.ATTR_DST_ADDRESS, c.ATTR_REPLY_SRC_ADDRESS, c.ATTR_REPLY_DST_ADDRESS)
_PORT_KEYS = (c.ATTR_SRC_PORT, c.ATTR_DST_PORT, c.ATTR_REPLY_SRC_PORT, c.ATTR_REPLY_DST_PORT)
# Per family, per address slot (src, dst, reply src, reply dst): the packed
# address → its encoded attribute. Addresses and ports repeat across
# connections (a service, a node's pods): a new connection is mostly
# assembled from these. 8 MiB in all, like the other caches emptied when full.
_FIELDS = [[ByteBoundedCache(1024 * 1024) for _ in range(4)] for _ in range(2)]


# Per address slot, by the text's length: the attribute's bytes up to the
# text (tag, lengths, key): an address attribute is then head + text.
_ADDRESS_HEADS = [[_attr(kv_string(key, "0" * n))[: -n or None] for n in range(64)] for key in _ADDRESS_KEYS]


def _field(v6: int, slot: int, raw: bytes) -> bytes:
    cache = _FIELDS[v6][slot]
    piece: bytes | None = cache.get(raw)
    if piece is None:
        text = _text(raw, bool(v6)).encode()
        piece = _ADDRESS_HEADS[slot][len(text)] + text
        cache.put(raw, piece, len(piece) + len(raw) + _ENTRY_OVERHEAD)
    return piece


# Tag and length of a NumberDataPoint whose attributes are ``n`` bytes: 27
# bytes of times and value before them. A block is at most ~700 bytes (four
# 45-character addresses, four ports, the keys).
_POINT_HEADS = [b"\x0a" + varint(POINT_HEADER.size + n) for n in range(4096)]


# Per port slot, by the varint's length (1-3 bytes): the attribute's bytes up
# to the varint. A port attribute is then head + varint, with the varint of
# every port from one table (built on first use, ~2.5 MB).
_PORT_HEADS = [[b"", *(_attr(kv_int(key, p))[:-n] for n, p in ((1, 1), (2, 300), (3, 40000)))]
               for key in _PORT_KEYS]
_PORT_VARINTS: list[bytes] = []


def _port_varints() -> list[bytes]:
    if not _PORT_VARINTS:
        _PORT_VARINTS.extend(varint(p) for p in range(65536))
    return _PORT_VARINTS


def _block(key: bytes, mirrored: bool) -> bytes:
    """The attribute block (without direction) of the connection ``key`` encodes (built on a cache miss)."""
    v6 = key[1]
    f = _field
    ports = _PORT_VARINTS or _port_varints()
    ph = _PORT_HEADS
    sport, dport = ports[key[66] << 8 | key[67]], ports[key[68] << 8 | key[69]]
    attrs = (
        _HEADS[0][key[0]] + _HEADS[1][v6]
        + f(v6, 0, key[2:18]) + ph[0][len(sport)] + sport + f(v6, 1, key[18:34]) + ph[1][len(dport)] + dport
    )
    if not mirrored:
        rsport, rdport = ports[key[70] << 8 | key[71]], ports[key[72] << 8 | key[73]]
        attrs += (f(v6, 2, key[34:50]) + ph[2][len(rsport)] + rsport
                  + f(v6, 3, key[50:66]) + ph[3][len(rdport)] + rdport)
    _BLOCKS.put(key, attrs)
    return attrs


def encode_record_table_bytes(
    table: pa.RecordBatch, resource: Mapping[str, str], *, max_points: int | None = None
) -> list[bytes]:
    """Serialized requests for a records batch (:data:`RECORD_SCHEMA`); same bytes as the row encoder.

    A batch with a transport or network type outside the contract goes
    through the row encoder instead (it sends such values as they are, for
    the gateway to reject those points alone).
    """
    if max_points is not None and max_points < 4:
        raise ValueError(f"max_points must be at least 4 (one record's points), got {max_points}")
    if not table.schema.equals(RECORD_SCHEMA):
        raise ValueError("a records batch must be in kubenetmon.flows.RECORD_SCHEMA")
    n = table.num_rows
    if not n:
        return []
    try:
        keys, mirrored_mask = _tuple_keys(table)
    except _Unusual:
        return encode_records_bytes(FlowBatch(records=table).records, resource, max_points=max_points)
    mirrored = mirrored_mask.tolist()
    counters = [table.column(name).to_pylist() for name in
                ("original_bytes", "reply_bytes", "original_packets", "reply_packets")]
    ob, rb, op, rp = counters
    starts, ends = table.column("start_ns").to_pylist(), table.column("end_ns").to_pylist()

    node_col = table.column("node")
    node_names = node_col.dictionary.to_pylist()
    default_node = resource.get(c.RESOURCE_NODE_NAME, "")
    node_idx = node_col.indices.to_numpy(zero_copy_only=False)
    # Rows grouped by node, nodes in order of first appearance and rows in
    # their order (what the row encoder does): a stable sort, then the
    # groups ordered by their first row.
    order = np.argsort(node_idx, kind="stable")
    bounds = np.flatnonzero(np.diff(node_idx[order])) + 1
    groups = sorted(np.split(order, bounds), key=lambda g: int(g[0]))

    pack = POINT_HEADER.pack
    scope = _scope()
    limit = max_points or 1 << 62
    blocks = _BLOCKS
    current = blocks.current
    heads = _POINT_HEADS
    dir_o, dir_r = _DIR_ORIGINAL, _DIR_REPLY
    len_o, len_r = len(dir_o), len(dir_r)
    requests: list[bytes] = []
    parts: list[bytes] = []
    in_request = 0
    for group in groups:
        node = _group_node(node_names, node_idx, group, default_node)
        res = resource_attributes(node, resource)
        byte_points: list[bytes] = []
        packet_points: list[bytes] = []
        for i in group.tolist():
            vob, vrb, vop, vrp = ob[i], rb[i], op[i], rp[i]
            count = (vob != 0) + (vop != 0) + (vrb != 0) + (vrp != 0)
            if not count:
                continue
            if in_request + count > limit:
                if byte_points or packet_points:
                    parts.append(_resource_metrics(res, byte_points, packet_points, scope))
                    byte_points, packet_points = [], []
                requests.append(b"".join(parts))
                parts, in_request = [], 0
            in_request += count
            key = keys[i]
            attrs = current.get(key)
            if attrs is None:
                attrs = blocks.get(key) or _block(key, mirrored[i])
                current = blocks.current  # a put may have started a new generation
            # A point is 0x0A, its length, the fixed 25-byte header, the block and the
            # direction: the tag and length come from a table by block length (no call per point).
            n = len(attrs)
            head_o, head_r = heads[n + len_o], heads[n + len_r]
            start, end = starts[i], ends[i]
            if vob:
                byte_points.append(head_o + pack(0x11, start, 0x19, end, 0x31, vob) + attrs + dir_o)
            if vrb:
                byte_points.append(head_r + pack(0x11, start, 0x19, end, 0x31, vrb) + attrs + dir_r)
            if vop:
                packet_points.append(head_o + pack(0x11, start, 0x19, end, 0x31, vop) + attrs + dir_o)
            if vrp:
                packet_points.append(head_r + pack(0x11, start, 0x19, end, 0x31, vrp) + attrs + dir_r)
        if byte_points or packet_points:
            parts.append(_resource_metrics(res, byte_points, packet_points, scope))
    if parts:
        requests.append(b"".join(parts))
    return requests


# --- flows ------------------------------------------------------------------------------


def _string_pieces(column: pa.Array, key: str) -> list[bytes]:
    """Per row, the encoded attribute of a dictionary string column (b'' for the empty string)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    encoded = [_attr(kv_string(key, v)) if v else b"" for v in column.dictionary.to_pylist()] or [b""]
    return [encoded[i] for i in column.indices.to_pylist()]


def _address_pieces(column: pa.Array, key: str, v6_rows: np.ndarray[Any, Any]) -> list[bytes]:
    """Per row, the encoded address attribute; ``v6_rows``: the rows whose network_type is ipv6 (an
    IPv4-mapped address there stays IPv6 text, as the row-wise helper prints it)."""
    cache: dict[tuple[bytes | None, bool], bytes] = {}
    out = []
    for v, v6 in zip(column.to_pylist(), v6_rows.tolist(), strict=True):
        piece = cache.get((v, v6))
        if piece is None:
            piece = cache[(v, v6)] = _attr(kv_string(key, _text(v, v6))) if v else b""
        out.append(piece)
    return out


def _port_pieces(column: pa.Array, key: str) -> list[bytes]:
    cache: dict[int, bytes] = {}
    out = []
    for v in column.to_pylist():
        piece = cache.get(v)
        if piece is None:
            piece = cache[v] = _attr(kv_int(key, v)) if v else b""
        out.append(piece)
    return out


def _flag_pieces(column: pa.Array) -> list[bytes]:
    cache: dict[tuple[tuple[str, bool], ...], bytes] = {}
    out = []
    for v in column.to_pylist():
        items = tuple(sorted(v or ()))
        piece = cache.get(items)
        if piece is None:
            piece = cache[items] = _attr(kv_kvlist(
                "kubenetmon.connection.flags", [kv_bool(k, bool(b)) for k, b in items])) if items else b""
        out.append(piece)
    return out


def encode_flow_table_bytes(
    table: pa.RecordBatch, resource: Mapping[str, str], *, max_points: int | None = None
) -> list[bytes]:
    """Serialized requests for a flows batch (:data:`FLOW_SCHEMA`); same bytes as the row encoder."""
    from kubenetmon import __version__

    if max_points is not None and max_points < 2:
        raise ValueError(f"max_points must be at least 2 (one flow's points), got {max_points}")
    if not table.schema.equals(FLOW_SCHEMA):
        raise ValueError("a flows batch must be in kubenetmon.flows.FLOW_SCHEMA")
    if not table.num_rows:
        return []
    col = table.column
    v6_rows = _codes(col("network_type"), "network_type") == 1
    columns = [
        _string_pieces(col("transport"), "network.transport"),
        _string_pieces(col("network_type"), "network.type"),
        _string_pieces(col("direction"), "kubenetmon.direction"),
        _string_pieces(col("connection_class"), "kubenetmon.connection.class"),
    ]
    for side in ("local", "remote"):
        prefix = f"kubenetmon.{side}."
        for field_name, attr in ENDPOINT_ATTRIBUTES.items():
            name = f"{side}_{field_name}"
            if field_name == "address":
                columns.append(_address_pieces(col(name), prefix + attr, v6_rows))
            elif field_name == "port":
                columns.append(_port_pieces(col(name), prefix + attr))
            else:
                assert field_name in ENDPOINT_STRING_FIELDS
                columns.append(_string_pieces(col(name), prefix + attr))
    columns.append(_string_pieces(col("observer"), "kubenetmon.observer.k8s.node.name"))
    columns.append(_flag_pieces(col("connection_flags")))
    attrs = [b"".join(pieces) for pieces in zip(*columns, strict=True)]

    res = {c.RESOURCE_SERVICE_NAME: "kubenetmon", **resource}
    scope = string_field(0x0A, c.SCOPE_NAME) + string_field(0x12, __version__)
    limit = max_points or 1 << 62
    pack = POINT_HEADER.pack
    requests: list[bytes] = []
    byte_points: list[bytes] = []
    packet_points: list[bytes] = []
    for a, b, p, start, end in zip(attrs, col("bytes").to_pylist(), col("packets").to_pylist(),
                                   col("start_ns").to_pylist(), col("end_ns").to_pylist(), strict=True):
        count = (b != 0) + (p != 0)
        if not count:
            continue
        if len(byte_points) + len(packet_points) + count > limit:
            requests.append(_flow_request(res, scope, byte_points, packet_points))
            byte_points, packet_points = [], []
        if b:
            byte_points.append(length_delimited(0x0A, pack(0x11, start, 0x19, end, 0x31, b) + a))
        if p:
            packet_points.append(length_delimited(0x0A, pack(0x11, start, 0x19, end, 0x31, p) + a))
    if byte_points or packet_points:
        requests.append(_flow_request(res, scope, byte_points, packet_points))
    return requests
