"""The data that travels between pipeline stages (DESIGN §4.2): columns, not objects.

Two views of the same traffic, each an Apache Arrow record batch with a
versioned schema built from one ordered field specification:

* **records** (:data:`RECORD_SCHEMA`, from :data:`RECORD_FIELDS`) — the raw
  view a receiver produces: one conntrack entry's original and reply tuples
  and the four counter deltas for one interval, as seen by one node.
* **flows** (:data:`FLOW_SCHEMA`, from :data:`FLOW_FIELDS`) — the attributed
  view a processor such as ``k8s_attributes`` produces: one direction
  (``out`` or ``in``) relative to the local endpoint, with both endpoints
  described. One conntrack record becomes an ``out`` and an ``in`` flow, as in
  the original.

Column types (the same for every field of a kind):

* addresses: ``fixed_size_binary(16)``, IPv6 as is and IPv4 as IPv4-mapped
  IPv6 (``::ffff:a.b.c.d``), so both families sort and join in one column;
  ``network_type`` says which family a row is. Null means "not known".
  :func:`pack_addresses` / :func:`unpack_addresses` convert text.
* ports ``uint16``; bytes and packets ``uint64``; times ``int64`` nanoseconds
  since the Unix epoch (the OTLP ``time_unix_nano`` of the interval bounds).
* strings ``dictionary<int32, utf8>``: a component encodes each distinct value
  once; the empty string means "not known" (what the ClickHouse table stores).
* ``connection_flags``: ``map<utf8, bool>``.

A :class:`FlowBatch` holds each view either as an Arrow
:class:`pyarrow.RecordBatch` (what components exchange on the hot path:
:meth:`FlowBatch.record_table`, :meth:`FlowBatch.flow_table`) or as Python
rows (:class:`ConntrackRecord` / :class:`Flow`: :attr:`FlowBatch.records`,
:attr:`FlowBatch.flows`), the **row-wise helper** for simple plugins and
tests, which costs several Python objects per record. Each view is converted
on demand into the form asked for, so a row-wise plugin and a columnar one
can follow each other in a pipeline. Arrow data is immutable: a columnar
processor builds a new record batch (:func:`with_columns`) and hands on a new
:class:`FlowBatch`.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
import pyarrow as pa

__all__ = [
    "ADDRESS",
    "BATCH_ID_SEPARATOR",
    "COUNTER",
    "ENDPOINT_STRING_FIELDS",
    "FLAGS",
    "FLOW_FIELDS",
    "FLOW_SCHEMA",
    "PORT",
    "RECORD_FIELDS",
    "RECORD_SCHEMA",
    "SCHEMA_VERSION",
    "STRING",
    "TIME",
    "ConnectionClass",
    "ConntrackRecord",
    "Direction",
    "Endpoint",
    "FieldSpec",
    "Flow",
    "FlowBatch",
    "flows_from_columns",
    "pack_addresses",
    "records_from_columns",
    "split_batch_ids",
    "unpack_addresses",
    "with_columns",
]


class Direction(StrEnum):
    """Direction of a flow relative to its local endpoint."""

    OUT = "out"  # bytes sent by the local endpoint
    IN = "in"  # bytes received by the local endpoint


class ConnectionClass(StrEnum):
    """Where the remote endpoint lies, as the original classifies it."""

    INTRA_VPC = "INTRA_VPC"
    INTRA_REGION = "INTRA_REGION"
    INTER_REGION = "INTER_REGION"
    PUBLIC_INTERNET = "PUBLIC_INTERNET"
    UNKNOWN = "UNKNOWN"


# ---------------------------------------------------------------------------
# The field specification: one ordered list per view drives every mapping.
# ---------------------------------------------------------------------------

SCHEMA_VERSION = "1"
ADDRESS = pa.binary(16)
PORT = pa.uint16()
COUNTER = pa.uint64()
TIME = pa.int64()
STRING = pa.dictionary(pa.int32(), pa.utf8())
FLAGS = pa.map_(pa.utf8(), pa.bool_())


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One column of a view: its name (also the row attribute), Arrow type and meaning."""

    name: str
    type: pa.DataType
    doc: str

    @property
    def nullable(self) -> bool:
        return bool(self.type == ADDRESS)  # only addresses may be unknown as null


RECORD_FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec("node", STRING, "the node whose conntrack table counted the traffic"),
    FieldSpec("transport", STRING, "tcp | udp"),
    FieldSpec("network_type", STRING, "ipv4 | ipv6"),
    FieldSpec("src", ADDRESS, "original tuple: source address"),
    FieldSpec("sport", PORT, "original tuple: source port"),
    FieldSpec("dst", ADDRESS, "original tuple: destination address"),
    FieldSpec("dport", PORT, "original tuple: destination port"),
    FieldSpec("reply_src", ADDRESS, "reply tuple: source (the real peer behind a DNAT'd address)"),
    FieldSpec("reply_sport", PORT, "reply tuple: source port"),
    FieldSpec("reply_dst", ADDRESS, "reply tuple: destination (the SNAT address, if any)"),
    FieldSpec("reply_dport", PORT, "reply tuple: destination port"),
    FieldSpec("original_bytes", COUNTER, "bytes sent by the original source in the interval"),
    FieldSpec("original_packets", COUNTER, "packets sent by the original source in the interval"),
    FieldSpec("reply_bytes", COUNTER, "bytes sent back in the interval"),
    FieldSpec("reply_packets", COUNTER, "packets sent back in the interval"),
    FieldSpec("start_ns", TIME, "start of the interval the deltas cover"),
    FieldSpec("end_ns", TIME, "end of the interval the deltas cover"),
)

# Endpoint attributes besides address and port, in this order as
# ``local_<name>`` and ``remote_<name>`` columns of the flow view.
ENDPOINT_STRING_FIELDS: tuple[str, ...] = (
    "pod", "namespace", "node", "app", "instance_id", "availability_zone", "cloud", "region",
    "cluster", "cell", "cloud_service", "owner_kind", "owner_name",
)


def _endpoint_fields(side: str) -> tuple[FieldSpec, ...]:
    return (
        FieldSpec(f"{side}_address", ADDRESS, f"{side} endpoint: address"),
        FieldSpec(f"{side}_port", PORT, f"{side} endpoint: port"),
        *(FieldSpec(f"{side}_{name}", STRING, f"{side} endpoint: {name}") for name in ENDPOINT_STRING_FIELDS),
    )


FLOW_FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec("direction", STRING, "out (sent by the local endpoint) | in (received by it)"),
    FieldSpec("transport", STRING, "tcp | udp"),
    FieldSpec("network_type", STRING, "ipv4 | ipv6"),
    FieldSpec("observer", STRING, "the node whose conntrack table saw the traffic"),
    *_endpoint_fields("local"),
    *_endpoint_fields("remote"),
    FieldSpec("connection_class", STRING, "a ConnectionClass value, '' before classification"),
    FieldSpec("connection_flags", FLAGS, "named boolean flags set by processors (e.g. NAT_GATEWAY)"),
    FieldSpec("bytes", COUNTER, "bytes in this direction in the interval"),
    FieldSpec("packets", COUNTER, "packets in this direction in the interval"),
    FieldSpec("start_ns", TIME, "start of the interval"),
    FieldSpec("end_ns", TIME, "end of the interval"),
)


def _schema(fields: Sequence[FieldSpec], view: str) -> pa.Schema:
    return pa.schema(
        [pa.field(f.name, f.type, nullable=f.nullable) for f in fields],
        metadata={"kubenetmon.view": view, "kubenetmon.version": SCHEMA_VERSION},
    )


RECORD_SCHEMA = _schema(RECORD_FIELDS, "records")
FLOW_SCHEMA = _schema(FLOW_FIELDS, "flows")


# ---------------------------------------------------------------------------
# Addresses
# ---------------------------------------------------------------------------

_V4_PREFIX = bytes(10) + b"\xff\xff"


def _pack(text: str | None) -> bytes | None:
    if not text:
        return None
    try:
        if ":" in text:
            return socket.inet_pton(socket.AF_INET6, text)
        return _V4_PREFIX + socket.inet_pton(socket.AF_INET, text)
    except (OSError, TypeError, ValueError):
        shown = text if len(text) <= 64 else text[:64] + "…"
        raise ValueError(f"{shown!r} is not an IPv4 or IPv6 address (give '' for an unknown one)") from None


def _unpack(raw: bytes | None, ipv6: bool = False) -> str:
    if raw is None:
        return ""
    if raw[:12] == _V4_PREFIX and not ipv6:
        return socket.inet_ntop(socket.AF_INET, raw[12:])
    return socket.inet_ntop(socket.AF_INET6, raw)


def pack_addresses(texts: Iterable[str | None]) -> pa.FixedSizeBinaryArray:
    """Text addresses (``10.0.0.1``, ``fd00::1``; ``''``/None = unknown) as an address column.

    Raises :class:`ValueError` for text that is not an address. Meant for
    distinct addresses (per pod, per prefix) and tests, not per record.
    """
    return pa.array([_pack(t) for t in texts], type=ADDRESS)


def unpack_addresses(
    column: pa.Array | pa.ChunkedArray, network_types: pa.Array | pa.ChunkedArray | None = None
) -> list[str]:
    """An address column as text, null as ``''``.

    IPv4-mapped values print as IPv4, except in rows whose ``network_type``
    (given as ``network_types``) is ``ipv6``: an IPv6 connection to
    ``::ffff:10.0.0.1`` stays IPv6 text.
    """
    if network_types is None:
        return [_unpack(v) for v in column.to_pylist()]
    return [_unpack(v, t == "ipv6") for v, t in zip(column.to_pylist(), network_types.to_pylist(), strict=True)]


# ---------------------------------------------------------------------------
# Building record batches by name
# ---------------------------------------------------------------------------


def _zeros(type_: pa.DataType, n: int) -> pa.Array:
    # From buffers, not from Python values: any conversion from Python objects imports pandas when it is
    # installed (+45 MB RSS in an agent that otherwise never needs it).
    return pa.Array.from_buffers(type_, n, [None, pa.py_buffer(np.zeros(n, dtype=type_.to_pandas_dtype()))])


def _strings(texts: Sequence[str]) -> pa.Array:
    """A utf8 array of ``texts``, built from buffers (``pa.array`` imports pandas: see :func:`_zeros`)."""
    data = [t.encode() for t in texts]
    offsets = np.zeros(len(data) + 1, dtype=np.int32)
    np.cumsum([len(d) for d in data], out=offsets[1:])
    return pa.StringArray.from_buffers(len(data), pa.py_buffer(offsets), pa.py_buffer(b"".join(data)))


def _values(values: Any, type_: pa.DataType, mask: Any = None) -> pa.Array:
    """A fixed-width column of ``type_`` from numpy values (``mask``: True where null, as ``pa.array``'s),
    built from buffers (see :func:`_zeros`). Integers out of the type's range raise, as ``pa.array`` does."""
    source = np.asarray(values)
    n = len(source)
    if pa.types.is_boolean(type_):
        data = pa.py_buffer(np.packbits(source.astype(np.bool_), bitorder="little"))
    else:
        dtype = np.dtype(type_.to_pandas_dtype())
        array = np.ascontiguousarray(source, dtype=dtype) if source.dtype.kind != "M" else source.astype(dtype)
        if source.dtype.kind in "iu" and dtype.kind in "iu" and source.dtype != dtype and n:
            info = np.iinfo(dtype)
            if source.min() < info.min or source.max() > info.max:
                raise OverflowError(f"values out of the range of {type_}")
        data = pa.py_buffer(array)
    if mask is None:
        return pa.Array.from_buffers(type_, n, [None, data])
    valid = ~np.asarray(mask, dtype=np.bool_)
    nulls = n - int(np.count_nonzero(valid))
    bitmap = pa.py_buffer(np.packbits(valid, bitorder="little")) if nulls else None
    return pa.Array.from_buffers(type_, n, [bitmap, data], null_count=nulls)


def _used_values(codes: Any, dictionary: pa.Array) -> tuple[Any, pa.Array]:
    """``dictionary`` cut to the values ``codes`` use (in their order), and ``codes`` renumbered into it."""
    used = np.zeros(len(dictionary), dtype=bool)
    used[codes] = True
    remap = (np.cumsum(used) - 1).astype(codes.dtype)
    return remap[codes], dictionary.filter(_values(used, pa.bool_()))


def _compact_dictionaries(table: pa.RecordBatch) -> pa.RecordBatch:
    """``table`` with each dictionary column's dictionary cut to the values its rows use.

    A stage shares one dictionary between its string columns (k8s_attributes:
    every string the batch uses, thousands); Arrow IPC writes a dictionary per
    column, so a batch of 4,000 flows went to the persistent queue as ~26
    copies of it (650 bytes per flow). Same values, same order of rows.
    """
    arrays = list(table.columns)
    changed = False
    for j, column in enumerate(arrays):
        if not pa.types.is_dictionary(column.type) or len(column.dictionary) <= len(column):
            continue
        indices = column.indices
        codes, dictionary = _used_values(_numpy(indices.fill_null(0) if indices.null_count else indices),
                                         column.dictionary)
        nulls = _numpy(indices.is_null()) if indices.null_count else None
        arrays[j] = pa.DictionaryArray.from_arrays(_values(codes, indices.type, mask=nulls), dictionary)
        changed = True
    return pa.RecordBatch.from_arrays(arrays, schema=table.schema) if changed else table


def _numpy(array: pa.Array) -> Any:
    """A fixed-width column as numpy, a read-only view of its buffer where it has no nulls, as
    ``to_numpy(zero_copy_only=False)`` returns; ``to_numpy`` itself imports pandas (see :func:`_zeros`)."""
    type_ = array.type
    if array.null_count or not (pa.types.is_integer(type_) or pa.types.is_floating(type_)
                                or pa.types.is_timestamp(type_) or pa.types.is_boolean(type_)):
        return array.to_numpy(zero_copy_only=False)
    data = array.buffers()[1]
    n, offset = len(array), array.offset
    if pa.types.is_boolean(type_):
        bits = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")
        return bits[offset : offset + n].astype(np.bool_)
    dtype = np.dtype(type_.to_pandas_dtype())
    return np.frombuffer(data, dtype=dtype, count=n, offset=offset * dtype.itemsize)


_NOT_KNOWN_STRING = pa.StringArray.from_buffers(1, pa.py_buffer(np.zeros(2, dtype=np.int32)), pa.py_buffer(b""))


def _not_known(spec: FieldSpec, n: int) -> pa.Array:
    """A column of the field's "not known" value: '' strings, null addresses, no flags, zeros."""
    if spec.type == STRING:
        return pa.DictionaryArray.from_arrays(_zeros(pa.int32(), n), _NOT_KNOWN_STRING)
    if spec.type == ADDRESS:
        return pa.nulls(n, ADDRESS)
    if spec.type == FLAGS:
        no_entries = pa.nulls(0, pa.utf8()), pa.nulls(0, pa.bool_())
        return pa.MapArray.from_arrays(_zeros(pa.int32(), n + 1), *no_entries)
    return _zeros(spec.type, n)


def _column(spec: FieldSpec, values: Any, n: int) -> pa.Array:
    if values is None:
        return _not_known(spec, n)
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if not isinstance(values, pa.Array):
        if spec.type == ADDRESS:
            values = pack_addresses(values)
        elif spec.type == STRING:
            values = pa.array(values, type=pa.utf8()).dictionary_encode()
        else:
            values = pa.array(values, type=spec.type)
    if values.type != spec.type:
        values = values.cast(spec.type)
    if len(values) != n:
        raise ValueError(f"column {spec.name!r} has {len(values)} values, the batch has {n} rows")
    return values


def _from_columns(
    fields: Sequence[FieldSpec], schema: pa.Schema, columns: Mapping[str, Any], num_rows: int | None
) -> pa.RecordBatch:
    unknown = set(columns) - {f.name for f in fields}
    if unknown:
        raise ValueError(
            f"unknown column(s) {sorted(unknown)}; the {schema.metadata[b'kubenetmon.view'].decode()} view has "
            f"{[f.name for f in fields]}"
        )
    if num_rows is None:
        lengths = {len(v) for v in columns.values() if v is not None}
        if len(lengths) != 1:
            raise ValueError("give num_rows, or at least one column, all of one length")
        num_rows = lengths.pop()
    return pa.RecordBatch.from_arrays([_column(f, columns.get(f.name), num_rows) for f in fields], schema=schema)


def records_from_columns(columns: Mapping[str, Any], num_rows: int | None = None) -> pa.RecordBatch:
    """A records batch from columns named as in :data:`RECORD_FIELDS`.

    Values may be Arrow arrays or Python sequences (addresses as text); a
    missing column is "not known" (empty string, null address, zero).
    """
    return _from_columns(RECORD_FIELDS, RECORD_SCHEMA, columns, num_rows)


def flows_from_columns(columns: Mapping[str, Any], num_rows: int | None = None) -> pa.RecordBatch:
    """A flows batch from columns named as in :data:`FLOW_FIELDS` (see :func:`records_from_columns`)."""
    return _from_columns(FLOW_FIELDS, FLOW_SCHEMA, columns, num_rows)


def with_columns(table: pa.RecordBatch, columns: Mapping[str, Any]) -> pa.RecordBatch:
    """``table`` with some columns replaced (cast to the view's types); the others are shared, not copied."""
    specs = {f.name: f for f in (FLOW_FIELDS if table.schema.equals(FLOW_SCHEMA) else RECORD_FIELDS)}
    arrays = list(table.columns)
    for name, values in columns.items():
        spec = specs.get(name)
        if spec is None:
            raise ValueError(f"unknown column {name!r}; the view has {list(specs)}")
        arrays[table.schema.get_field_index(name)] = _column(spec, values, table.num_rows)
    return pa.RecordBatch.from_arrays(arrays, schema=table.schema)


def _empty(schema: pa.Schema) -> pa.RecordBatch:
    # Not RecordBatch.from_pylist, which imports pandas (see _zeros).
    return pa.RecordBatch.from_arrays([pa.nulls(0, f.type) for f in schema], schema=schema)


def _check(table: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    if not isinstance(table, pa.RecordBatch):
        raise TypeError(f"expected a pyarrow.RecordBatch, got {type(table).__name__}")
    if table.schema.equals(schema):
        return table
    view = schema.metadata[b"kubenetmon.view"].decode()
    if table.schema.names != schema.names:
        raise TypeError(
            f"a {view} batch must have the columns of kubenetmon.flows.{view.upper()[:-1]}_SCHEMA in order "
            f"{schema.names}, got {table.schema.names}; build it with "
            f"kubenetmon.flows.{view}_from_columns()"
        )
    try:  # same names, other types (e.g. plain strings): cast, and keep the contract's metadata
        return pa.RecordBatch.from_arrays(
            [c if c.type == f.type else c.cast(f.type) for c, f in zip(table.columns, schema, strict=True)],
            schema=schema,
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise TypeError(f"a {view} batch's columns do not cast to the contract's types: {exc}") from exc


# ---------------------------------------------------------------------------
# The row-wise helper
# ---------------------------------------------------------------------------


@dataclass(slots=True)
class ConntrackRecord:
    """One row of the records view: one conntrack entry's deltas over ``[start_ns, end_ns)``.

    ``src``/``sport``/``dst``/``dport`` are the **original** tuple; the
    ``reply_*`` fields are the reply tuple (for a DNAT'd connection the reply
    source is the real backend behind the virtual address). ``original_*``
    counters are bytes and packets sent by the original source, ``reply_*``
    those sent back. Addresses are text here (``inet_ntop`` form).
    """

    node: str
    transport: str  # "tcp" | "udp"
    network_type: str  # "ipv4" | "ipv6"
    src: str
    sport: int
    dst: str
    dport: int
    reply_src: str
    reply_sport: int
    reply_dst: str
    reply_dport: int
    original_bytes: int = 0
    original_packets: int = 0
    reply_bytes: int = 0
    reply_packets: int = 0
    start_ns: int = 0
    end_ns: int = 0

    def is_mirrored(self) -> bool:
        """True when the reply tuple is the plain mirror of the original (no NAT)."""
        return (
            self.reply_src == self.dst
            and self.reply_sport == self.dport
            and self.reply_dst == self.src
            and self.reply_dport == self.sport
        )


@dataclass(slots=True)
class Endpoint:
    """One side of a flow in the row-wise view; empty strings mean "not known"."""

    address: str = ""
    port: int = 0
    pod: str = ""
    namespace: str = ""
    node: str = ""
    app: str = ""
    instance_id: str = ""
    availability_zone: str = ""
    cloud: str = ""
    region: str = ""
    cluster: str = ""
    cell: str = ""
    cloud_service: str = ""
    owner_kind: str = ""
    owner_name: str = ""


@dataclass(slots=True)
class Flow:
    """One row of the flows view: bytes and packets in one direction between a local and a remote endpoint.

    The ``out`` and ``in`` rows of one record may share their
    :class:`Endpoint` objects; a plugin that changes one row's endpoint
    without touching its twin replaces the endpoint (``dataclasses.replace``).
    """

    direction: str  # Direction value
    transport: str
    network_type: str
    local: Endpoint
    remote: Endpoint
    bytes: int = 0
    packets: int = 0
    connection_class: str = ""
    connection_flags: dict[str, bool] = field(default_factory=dict)
    observer: str = ""  # the node whose conntrack table saw the traffic
    start_ns: int = 0
    end_ns: int = 0


_ADDRESS_RECORD_FIELDS = frozenset(f.name for f in RECORD_FIELDS if f.type == ADDRESS)


def _records_to_table(rows: Sequence[ConntrackRecord]) -> pa.RecordBatch:
    return records_from_columns({f.name: [getattr(r, f.name) for r in rows] for f in RECORD_FIELDS}, len(rows))


def _table_to_records(table: pa.RecordBatch) -> list[ConntrackRecord]:
    columns: dict[str, list[Any]] = {}
    for f in RECORD_FIELDS:
        column = table.column(f.name)
        columns[f.name] = (
            unpack_addresses(column, table.column("network_type")) if f.name in _ADDRESS_RECORD_FIELDS
            else column.to_pylist()
        )
    names = list(columns)
    return [ConntrackRecord(**dict(zip(names, values, strict=True))) for values in zip(*columns.values(), strict=True)]


def _flows_to_table(rows: Sequence[Flow]) -> pa.RecordBatch:
    columns: dict[str, Any] = {
        name: [getattr(r, name) for r in rows]
        for name in ("direction", "transport", "network_type", "observer", "connection_class", "bytes", "packets",
                     "start_ns", "end_ns")
    }
    columns["connection_flags"] = [sorted(r.connection_flags.items()) for r in rows]
    for side in ("local", "remote"):
        endpoints = [getattr(r, side) for r in rows]
        columns[f"{side}_address"] = [e.address for e in endpoints]
        columns[f"{side}_port"] = [e.port for e in endpoints]
        for name in ENDPOINT_STRING_FIELDS:
            columns[f"{side}_{name}"] = [getattr(e, name) for e in endpoints]
    return flows_from_columns(columns, len(rows))


def _table_to_flows(table: pa.RecordBatch) -> list[Flow]:
    def col(name: str) -> list[Any]:
        values: list[Any] = table.column(name).to_pylist()
        return values

    sides: dict[str, list[Endpoint]] = {}
    for side in ("local", "remote"):
        values = [unpack_addresses(table.column(f"{side}_address"), table.column("network_type")), col(f"{side}_port")]
        values += [col(f"{side}_{name}") for name in ENDPOINT_STRING_FIELDS]
        names = ("address", "port", *ENDPOINT_STRING_FIELDS)
        sides[side] = [Endpoint(**dict(zip(names, v, strict=True))) for v in zip(*values, strict=True)]
    flags = [dict(f) if f else {} for f in col("connection_flags")]
    return [
        Flow(
            direction=d, transport=t, network_type=nt, local=lo, remote=re, bytes=b, packets=p,
            connection_class=cc, connection_flags=fl, observer=ob, start_ns=s, end_ns=e,
        )
        for d, t, nt, lo, re, b, p, cc, fl, ob, s, e in zip(
            col("direction"), col("transport"), col("network_type"), sides["local"], sides["remote"],
            col("bytes"), col("packets"), col("connection_class"), flags, col("observer"),
            col("start_ns"), col("end_ns"), strict=True,
        )
    ]


class _View:
    """One view of a batch, held as rows or as an Arrow table, converted on demand.

    Rows are mutable: once handed out they are the truth, and the table is
    rebuilt from them when asked for. A lock keeps two threads (exporters
    sharing a batch behind a fan-out) from converting at once.
    """

    __slots__ = ("_lock", "_rows", "_table")

    def __init__(self, value: Sequence[Any] | pa.RecordBatch | None, schema: pa.Schema) -> None:
        self._lock = threading.Lock()
        self._rows: list[Any] | None = None
        self._table: pa.RecordBatch | None = None
        if isinstance(value, pa.RecordBatch):
            self._table = _check(value, schema)
        else:
            self._rows = list(value) if value is not None else []

    def __len__(self) -> int:
        rows, table = self._rows, self._table
        return len(rows) if rows is not None else table.num_rows  # type: ignore[union-attr]

    def rows(self, convert: Any) -> list[Any]:
        with self._lock:
            if self._rows is None:
                self._rows = convert(self._table)
            self._table = None
            return self._rows

    def table(self, convert: Any, schema: pa.Schema) -> pa.RecordBatch:
        with self._lock:
            if self._table is None:
                rows = self._rows
                self._table = convert(rows) if rows else _empty(schema)
                self._rows = None
            return self._table

    def peek_table(self) -> pa.RecordBatch | None:
        return self._table


BATCH_ID_SEPARATOR = "\n"  # between the names of a merged batch (the otlp receiver refuses ids holding it)


def split_batch_ids(batch_id: str) -> list[str]:
    """The names in a batch's ``batch_id`` (several when merged, none when empty)."""
    return batch_id.split(BATCH_ID_SEPARATOR) if batch_id else []


class FlowBatch:
    """What one stage hands to the next: a records view, a flows view, or both.

    ``records`` / ``flows`` may each be given as an Arrow record batch (in
    :data:`RECORD_SCHEMA` / :data:`FLOW_SCHEMA`; same column names with other
    types are cast) or as a list of rows. ``k8s_attributes`` turns records into
    flows; exporters use the view they understand.

    ``batch_id``, when a producer sets it, names the batch's content for
    idempotency: a producer that re-delivers a batch after a crash (the
    conntrack receiver's write-ahead checkpoint, an agent re-sending a request)
    uses the same id, so the peer can deduplicate. Empty: no id. A batch
    merged from several named batches (the otlp receiver merges requests that
    arrive together) is named by all of them, one per line: :meth:`batch_ids`.
    """

    __slots__ = ("_flows", "_records", "batch_id")

    def __init__(
        self,
        records: Sequence[ConntrackRecord] | pa.RecordBatch | None = None,
        flows: Sequence[Flow] | pa.RecordBatch | None = None,
        batch_id: str = "",
    ) -> None:
        self._records = _View(records, RECORD_SCHEMA)
        self._flows = _View(flows, FLOW_SCHEMA)
        self.batch_id = batch_id

    def batch_ids(self) -> list[str]:
        """The names of the batches this one holds (one, several when merged, none when unnamed)."""
        return split_batch_ids(self.batch_id)

    # -- columnar access (the hot path) --

    def record_table(self) -> pa.RecordBatch:
        """The records view as an Arrow record batch in :data:`RECORD_SCHEMA`."""
        return self._records.table(_records_to_table, RECORD_SCHEMA)

    def flow_table(self) -> pa.RecordBatch:
        """The flows view as an Arrow record batch in :data:`FLOW_SCHEMA`."""
        return self._flows.table(_flows_to_table, FLOW_SCHEMA)

    @property
    def num_records(self) -> int:
        return len(self._records)

    @property
    def num_flows(self) -> int:
        return len(self._flows)

    # -- the row-wise helper (several Python objects per record: for simple plugins and tests) --

    @property
    def records(self) -> list[ConntrackRecord]:
        """The records view as mutable rows; changes are seen by later stages."""
        return self._records.rows(_table_to_records)

    @records.setter
    def records(self, value: Sequence[ConntrackRecord] | pa.RecordBatch) -> None:
        self._records = _View(value, RECORD_SCHEMA)

    @property
    def flows(self) -> list[Flow]:
        """The flows view as mutable rows; changes are seen by later stages."""
        return self._flows.rows(_table_to_flows)

    @flows.setter
    def flows(self, value: Sequence[Flow] | pa.RecordBatch) -> None:
        self._flows = _View(value, FLOW_SCHEMA)

    # -- the rest --

    def __len__(self) -> int:
        return self.num_records + self.num_flows

    def __repr__(self) -> str:
        return f"FlowBatch(records={self.num_records}, flows={self.num_flows}, batch_id={self.batch_id!r})"

    def is_empty(self) -> bool:
        return len(self) == 0

    def copy(self) -> FlowBatch:
        """A batch that a consumer may change without affecting this one.

        Arrow views are immutable and shared; row views are copied, endpoints
        once per distinct object so that twins keep sharing within the copy.
        """
        records: Any = self._records.peek_table()
        if records is None:
            records = [ConntrackRecord(**{f.name: getattr(r, f.name) for f in RECORD_FIELDS}) for r in self.records]
        flows: Any = self._flows.peek_table()
        if flows is None:
            copied: dict[int, Endpoint] = {}

            def endpoint(e: Endpoint) -> Endpoint:
                c = copied.get(id(e))
                if c is None:
                    c = copied[id(e)] = Endpoint(**{n: getattr(e, n) for n in Endpoint.__slots__})
                return c

            flows = [
                Flow(
                    direction=f.direction, transport=f.transport, network_type=f.network_type,
                    local=endpoint(f.local), remote=endpoint(f.remote), bytes=f.bytes, packets=f.packets,
                    connection_class=f.connection_class, connection_flags=dict(f.connection_flags),
                    observer=f.observer, start_ns=f.start_ns, end_ns=f.end_ns,
                )
                for f in self.flows
            ]
        return FlowBatch(records, flows, self.batch_id)

    # -- serialisation (persistent queues, checkpoints) --

    def to_ipc(self, compression: str | None = None) -> bytes:
        """The batch as bytes: the Arrow IPC stream of the records view, then that of the flows view.

        ``batch_id`` travels in the first stream's schema metadata.
        ``compression``: ``None``, ``"lz4"`` or ``"zstd"`` (Arrow IPC buffer compression).
        """
        sink = pa.BufferOutputStream()
        self.write_ipc(sink, compression)
        data: bytes = sink.getvalue().to_pybytes()
        return data

    def write_ipc(self, sink: Any, compression: str | None = None) -> None:
        """Write what :meth:`to_ipc` returns to ``sink`` (a file or Arrow output stream) without holding it
        in memory: the persistent queue writes a batch of 300k records straight to its file this way."""
        options = pa.ipc.IpcWriteOptions(compression=compression)
        for i, view in enumerate((self.record_table(), self.flow_table())):
            table = _compact_dictionaries(view)
            schema = table.schema
            if i == 0:
                schema = schema.with_metadata({**schema.metadata, b"kubenetmon.batch_id": self.batch_id.encode()})
            with pa.ipc.new_stream(sink, schema, options=options) as writer:
                if table.num_rows:
                    writer.write_batch(table)

    @classmethod
    def from_ipc(cls, data: bytes | pa.Buffer) -> FlowBatch:
        """The batch :meth:`to_ipc` wrote."""
        source = pa.BufferReader(data)
        views: list[pa.RecordBatch] = []
        batch_id = ""
        for i, schema in enumerate((RECORD_SCHEMA, FLOW_SCHEMA)):
            reader = pa.ipc.open_stream(source)
            if i == 0:
                batch_id = (reader.schema.metadata or {}).get(b"kubenetmon.batch_id", b"").decode()
            parts = [b for b in reader if b.num_rows]
            if not parts:
                views.append(_empty(schema))
            else:
                table = parts[0] if len(parts) == 1 else pa.concat_batches(parts)
                views.append(table.replace_schema_metadata(schema.metadata))
        return cls(views[0], views[1], batch_id)

    def __reduce__(self) -> tuple[Any, ...]:
        return (FlowBatch.from_ipc, (self.to_ipc(),))
