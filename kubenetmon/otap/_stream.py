"""What the consumer reads a BAR with: the stream's IPC readers and strings, and column helpers.

Per gRPC stream, an Arrow IPC reader per (payload type, schema id) is fed
each payload's bytes (:class:`IpcReader`), and the meaning of each string of
the stream's attribute dictionary is worked out once (:class:`StreamStrings`).
The column helpers turn Arrow columns into numpy arrays, checking types and
decoding the id encodings; any mismatch is a :class:`BarError`.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kubenetmon.flows import _pack
from kubenetmon.otap._proto import StatusCode
from kubenetmon.otap._tables import (
    ATTR_TYPE_BOOL,
    ATTR_TYPE_BYTES,
    ATTR_TYPE_DOUBLE,
    ATTR_TYPE_STR,
    DELTA,
    ENCODING,
    PLAIN,
)
from kubenetmon.otlp import _contract as c
from kubenetmon.otlp._limits import MAX_ADDRESS_BYTES

__all__ = [
    "BarError",
    "IpcReader",
    "StreamStrings",
    "declared_bytes",
    "decode_ids",
    "distinct_rows",
    "int64_column",
    "positions_of",
    "require_column",
    "run_values",
    "string_codes",
]

# Each value's code is its position.
_TRANSPORT_VALUES = pa.array(["tcp", "udp"])
_NETWORK_TYPE_VALUES = pa.array(["ipv4", "ipv6"])
_DIRECTION_VALUES = pa.array([c.DIRECTION_ORIGINAL, c.DIRECTION_REPLY])
# A dotted quad as inet_pton(AF_INET) takes it: four decimal octets of at most 255, no leading zeros.
_OCTET = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_DOTTED_QUAD = rf"^{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}$"


class BarError(Exception):
    """A BAR refused whole: ``code`` (a BatchStatus code), ``reason`` (a metric label), ``message``."""

    def __init__(self, reason: str, message: str, code: int = StatusCode.INVALID_ARGUMENT) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.code = code


class _Feed:
    """A readable file the IPC reader pulls from; a payload's bytes are fed before it reads them."""

    closed = False

    def __init__(self) -> None:
        self.data = memoryview(b"")
        self.pos = 0

    def feed(self, data: bytes) -> None:
        self.data = memoryview(bytes(self.data[self.pos:]) + data) if self.pos < len(self.data) else memoryview(data)
        self.pos = 0

    def read(self, n: int = -1) -> bytes:
        end = len(self.data) if n is None or n < 0 else min(len(self.data), self.pos + n)
        out = bytes(self.data[self.pos:end])
        self.pos = end
        return out

    def remaining(self) -> int:
        return len(self.data) - self.pos


def declared_bytes(data: bytes) -> int:
    """What the Arrow IPC messages in ``data`` say their buffers hold once decompressed.

    Read from each message's metadata (and the 8-byte length in front of each
    compressed buffer) before anything is decompressed, so a small payload
    cannot make the reader allocate gigabytes. Raises ``ValueError`` when the
    bytes are not IPC messages.
    """
    total = 0
    try:
        for message in pa.ipc.MessageReader.open_stream(pa.py_buffer(data)):
            body = message.body
            total += _message_bytes(message.metadata.to_pybytes(), memoryview(body) if body is not None else b"")
    except (struct.error, IndexError, OSError, pa.ArrowException) as exc:
        raise ValueError(f"not Arrow IPC messages: {exc}") from None
    return total


# Flatbuffer tables of Arrow's Message.fbs: Message{version, header_type, header, bodyLength, ...},
# RecordBatch{length, nodes, buffers, compression}, DictionaryBatch{id, data, isDelta}.
_HEADER_DICTIONARY, _HEADER_RECORD_BATCH = 2, 3


def _table(buf: bytes, pos: int) -> tuple[int, tuple[int, ...]]:
    vtable = pos - struct.unpack_from("<i", buf, pos)[0]
    fields = (struct.unpack_from("<H", buf, vtable)[0] - 4) // 2
    return pos, struct.unpack_from(f"<{fields}H", buf, vtable + 4)


def _field(table: tuple[int, tuple[int, ...]], i: int) -> int | None:
    pos, offsets = table
    return pos + offsets[i] if i < len(offsets) and offsets[i] else None


def _child(buf: bytes, table: tuple[int, tuple[int, ...]], i: int) -> tuple[int, tuple[int, ...]] | None:
    p = _field(table, i)
    return None if p is None else _table(buf, p + struct.unpack_from("<I", buf, p)[0])


def _message_bytes(buf: bytes, body: Any) -> int:
    message = _table(buf, struct.unpack_from("<I", buf, 0)[0])
    kind_at = _field(message, 1)
    kind = buf[kind_at] if kind_at is not None else 0
    header = _child(buf, message, 2)
    if header is not None and kind == _HEADER_DICTIONARY:
        header = _child(buf, header, 1)
    elif kind != _HEADER_RECORD_BATCH:
        return 0  # a schema: no buffers
    if header is None:
        return 0
    at = _field(header, 2)
    if at is None:
        return 0
    vector = at + struct.unpack_from("<I", buf, at)[0]
    compressed = _field(header, 3) is not None
    total = 0
    for k in range(struct.unpack_from("<I", buf, vector)[0]):
        offset, length = struct.unpack_from("<qq", buf, vector + 4 + 16 * k)
        if compressed and length >= 8:
            size = struct.unpack_from("<q", body, offset)[0]
            total += length - 8 if size == -1 else size
        else:
            total += length
    return total


class IpcReader:
    """One payload type's IPC stream (per schema id): opened by its Schema message."""

    def __init__(self) -> None:
        self.feed = _Feed()
        self.reader: Any = None

    def read(self, data: bytes) -> pa.RecordBatch:
        self.feed.feed(data)
        if self.reader is None:
            self.reader = pa.ipc.open_stream(self.feed)
        batches = []
        while self.feed.remaining():
            batches.append(self.reader.read_next_batch())
        if not batches:
            raise ValueError("the payload holds no record batch")
        return batches[0] if len(batches) == 1 else pa.concat_batches(batches)


class StreamStrings:
    """What each distinct attribute string means, computed once per string per stream.

    Kept aligned with the stream's dictionary: when the next batch's
    dictionary extends it (a delta), only the new entries are looked at.
    Most new strings are addresses: dotted quads are parsed as columns;
    the rest (IPv6, anything else) go through ``flows._pack`` (inet_pton) one by one,
    so that what is an address is exactly what the OTLP decoder accepts.
    """

    def __init__(self) -> None:
        self.dictionary: pa.Array | None = None
        self.canonical = np.zeros(0, dtype=np.int64)  # dictionary index → first index of an equal string
        self.first: dict[str, int] = {}
        self.texts: list[str] = []
        self.transport = np.zeros(0, dtype=np.int8)  # 0 tcp, 1 udp, -1 neither
        self.network_type = np.zeros(0, dtype=np.int8)  # 0 ipv4, 1 ipv6
        self.direction = np.zeros(0, dtype=np.int8)  # 0 original, 1 reply
        self.address = np.zeros(0, dtype=np.int8)  # 0 IPv4, 1 IPv6, 2 too long, 3 not an address
        self.packed = np.zeros((0, 16), dtype=np.uint8)  # IPv4 as IPv4-mapped IPv6; zeros when no address
        self.address_id = np.zeros(0, dtype=np.int64)  # equal packed addresses share one id; -1: none
        self.ids: dict[bytes, int] = {}

    def update(self, dictionary: pa.Array) -> None:
        old = self.dictionary
        start = 0
        if old is not None and len(dictionary) >= len(old) and dictionary.slice(0, len(old)).equals(old):
            start = len(old)
        elif old is not None:
            self.__init__()  # type: ignore[misc]  # a replacement dictionary: start over
        if not (pa.types.is_string(dictionary.type) or pa.types.is_large_string(dictionary.type)
                or pa.types.is_string_view(dictionary.type)):
            raise TypeError(f"the attribute dictionary has type {dictionary.type}; expected strings")
        self.dictionary = dictionary
        new = dictionary.slice(start)
        if not len(new):
            return
        if not pa.types.is_string(new.type):
            new = new.cast(pa.string())  # what the compute kernels below take
        texts = ["" if t is None else t for t in new.to_pylist()]
        first = self.first
        canonical = [first.setdefault(t, start + i) for i, t in enumerate(texts)]
        column = new.fill_null("") if new.null_count else new
        address, packed = _addresses_of(column, texts)
        raw, ids = packed.tobytes(), self.ids
        address_id = [ids.setdefault(raw[16 * i:16 * i + 16], len(ids)) if a < 2 else -1
                      for i, a in enumerate(address.tolist())]
        self.canonical = np.concatenate([self.canonical, np.array(canonical, dtype=np.int64)])
        self.transport = np.concatenate([self.transport, _codes(column, _TRANSPORT_VALUES)])
        self.network_type = np.concatenate([self.network_type, _codes(column, _NETWORK_TYPE_VALUES)])
        self.direction = np.concatenate([self.direction, _codes(column, _DIRECTION_VALUES)])
        self.address = np.concatenate([self.address, address])
        self.packed = np.concatenate([self.packed, packed])
        self.address_id = np.concatenate([self.address_id, np.array(address_id, dtype=np.int64)])
        self.texts.extend(texts)


def _codes(column: pa.Array, values: pa.Array) -> np.ndarray[Any, Any]:
    """Each string's position in ``values`` (a small table), -1 when not there."""
    codes: np.ndarray[Any, Any] = pc.index_in(column, value_set=values).fill_null(-1).to_numpy(
        zero_copy_only=False)
    return codes.astype(np.int8)


def _addresses_of(column: pa.Array, texts: list[str]) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Per string: 0 IPv4, 1 IPv6, 2 too long, 3 not an address; and the address as 16 bytes."""
    n = len(texts)
    address = np.full(n, 3, dtype=np.int8)
    packed = np.zeros((n, 16), dtype=np.uint8)
    too_long = pc.utf8_length(column).to_numpy(zero_copy_only=False) > MAX_ADDRESS_BYTES
    address[too_long] = 2  # never parsed (see _checks._address)
    quad = pc.match_substring_regex(column, _DOTTED_QUAD).to_numpy(zero_copy_only=False) & ~too_long
    rows = np.flatnonzero(quad)
    if len(rows):
        octets = pc.list_flatten(pc.split_pattern(column.filter(pa.array(quad)), "."))
        packed[rows, 10:12] = 0xFF
        packed[rows, 12:] = octets.cast(pa.uint8()).to_numpy(zero_copy_only=False).reshape(-1, 4)
        address[rows] = 0
    parsed, raws = [], []
    for i in np.flatnonzero(~quad & ~too_long).tolist():
        try:
            raw = _pack(texts[i])
        except ValueError:
            continue
        if raw is not None:  # None: the empty text
            parsed.append(i)
            raws.append(raw)
            address[i] = 1 if ":" in texts[i] else 0
    if parsed:
        packed[parsed] = np.frombuffer(b"".join(raws), dtype=np.uint8).reshape(-1, 16)
    return address, packed


def int64_column(column: Any, what: str, native: bool = False) -> np.ndarray[Any, Any]:
    """An integer column as numpy (null as 0): int64, or its own type with ``native`` (cheaper to compare)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if not (pa.types.is_integer(column.type) or pa.types.is_timestamp(column.type)):
        raise BarError("wrong_schema", f"{what} has type {column.type}; expected an integer column")
    if pa.types.is_timestamp(column.type):
        column = column.cast(pa.int64())
    if column.null_count:
        column = column.fill_null(0)
    values: np.ndarray[Any, Any] = column.to_numpy(zero_copy_only=False)
    return values if native else values.astype(np.int64, copy=False)


def require_column(table: pa.RecordBatch, name: str, what: str) -> Any:
    index = table.schema.get_field_index(name)
    if index < 0:
        raise BarError("wrong_schema", f"{what} has no column {name!r}")
    return table.column(index)


def decode_ids(table: pa.RecordBatch, name: str, default: bytes, what: str) -> np.ndarray[Any, Any]:
    """An id column decoded (plain or delta); quasi-delta is the attribute tables' own."""
    field = table.schema.field(name) if table.schema.get_field_index(name) >= 0 else None
    column = require_column(table, name, what)
    if column.null_count:
        raise BarError("wrong_schema", f"{what} column {name!r} has nulls; ids are required")
    values = int64_column(column, f"{what} column {name!r}")
    encoding = (field.metadata or {}).get(ENCODING, default) if field is not None else default
    if encoding == DELTA:
        return np.cumsum(values)
    if encoding == PLAIN:
        return values
    raise BarError("wrong_schema", f"{what} column {name!r} has encoding {encoding!r}; expected plain or delta")


def positions_of(ids: np.ndarray[Any, Any], refs: np.ndarray[Any, Any], what: str) -> np.ndarray[Any, Any]:
    """Row positions of the ids ``refs`` points to; a reference to no row refuses the BAR."""
    n = len(ids)
    if n and ids[0] == 0 and ids[-1] == n - 1 and (n < 2 or bool((np.diff(ids) == 1).all())):
        if len(refs) and (refs.min() < 0 or refs.max() >= n):
            raise BarError("bad_ids", f"{what}: a row refers to an id that the BAR does not have")
        pos = refs
    else:
        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        if n > 1 and bool((sorted_ids[1:] == sorted_ids[:-1]).any()):
            raise BarError("bad_ids", f"{what}: ids are not unique")
        found = np.searchsorted(sorted_ids, refs)
        found[found >= n] = 0
        if len(refs) and not bool((sorted_ids[found] == refs).all() if n else False):
            raise BarError("bad_ids", f"{what}: a row refers to an id that the BAR does not have")
        pos = order[found]
    return pos.astype(np.int64, copy=False)


def string_codes(column: Any) -> tuple[np.ndarray[Any, Any], pa.Array]:
    """A string/binary column as (code per row, -1 for null; the distinct values), equal values equal codes."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if not pa.types.is_dictionary(column.type):
        column = column.dictionary_encode()
    dictionary = column.dictionary
    canonical = dictionary.dictionary_encode()
    mapping = canonical.indices.to_numpy(zero_copy_only=False).astype(np.int32)
    indices = column.indices
    if indices.null_count:
        indices = indices.fill_null(0)
    codes = mapping[indices.to_numpy(zero_copy_only=False)] if len(mapping) else np.zeros(len(column), np.int32)
    if column.null_count:
        codes[column.is_null().to_numpy(zero_copy_only=False)] = -1
    return codes, canonical.dictionary


def run_values(table: pa.RecordBatch, types: np.ndarray[Any, Any],
                str_codes: np.ndarray[Any, Any] | None) -> np.ndarray[Any, Any]:
    """Per attribute row, its value as an int64 that is equal exactly when the values are (within a type)."""
    names = table.schema.names
    n = table.num_rows
    value = int64_column(table.column("int"), "int") if "int" in names else np.zeros(n, dtype=np.int64)
    if str_codes is not None:
        value = np.where(types == ATTR_TYPE_STR, str_codes, value)
    if "double" in names:
        bits = table.column("double").cast(pa.float64()).fill_null(0.0).to_numpy(zero_copy_only=False).view(np.int64)
        value = np.where(types == ATTR_TYPE_DOUBLE, bits, value)
    if "bool" in names:
        flags = table.column("bool").cast(pa.int64()).fill_null(-1).to_numpy(zero_copy_only=False)
        value = np.where(types == ATTR_TYPE_BOOL, flags, value)
    if "bytes" in names:
        codes, _ = string_codes(table.column("bytes"))
        value = np.where(types == ATTR_TYPE_BYTES, codes, value)
    result: np.ndarray[Any, Any] = value
    return result


def distinct_rows(rows: np.ndarray[Any, Any]) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Rows of an int64 matrix → (index of each row's distinct value, in order of first appearance; first rows)."""
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    n, width = rows.shape
    encoded = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(8 * width), n, [None, pa.py_buffer(rows)]).dictionary_encode()
    index = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    first = np.empty(len(encoded.dictionary), dtype=np.int64)
    first[index[::-1]] = np.arange(n - 1, -1, -1)
    return index, first
