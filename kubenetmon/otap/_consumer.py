"""``BatchArrowRecords`` → conntrack records (``RECORD_SCHEMA``), one consumer per gRPC stream.

The gateway's other door (DESIGN §4.1): a BAR carries the same metrics,
resources, points and attributes as an OTLP request, and every data point
gets the OTLP decoder's checks, in its order and with its reason codes and
messages (``otlp/_checks``, ``otlp/_limits``, the resource and metric checks
of ``otlp/_decode_records``). A point breaking a rule is rejected alone;
a BAR whose structure is broken (not Arrow IPC, a payload type other than
metrics, no root table, ids pointing nowhere, a column of the wrong type) is
refused whole with :class:`BarError`, which says what is wrong.

All per-point work is numpy over the tables' columns. Python runs per
resource, per metric, per distinct ``(start, end)`` and per distinct string
of the stream's attribute dictionary — the last one once per stream, as a
delta dictionary only brings new strings.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from kubenetmon.flows import ADDRESS, COUNTER, PORT, RECORD_SCHEMA, TIME
from kubenetmon.otap._headers import HeaderDecoder
from kubenetmon.otap._proto import ArrowPayloadType
from kubenetmon.otap._stream import (
    BarError,
    IpcReader,
    StreamStrings,
    declared_bytes,
    decode_ids,
    distinct_rows,
    int64_column,
    positions_of,
    require_column,
    run_values,
    string_codes,
)
from kubenetmon.otap._tables import (
    ATTR_TYPE_BOOL,
    ATTR_TYPE_DOUBLE,
    ATTR_TYPE_INT,
    ATTR_TYPE_STR,
    DELTA,
    ENCODING,
    METRIC_TYPE_NAMES,
    METRIC_TYPE_SUM,
    PLAIN,
    QUASI_DELTA,
)
from kubenetmon.otlp import _contract as c
from kubenetmon.otlp._checks import DecodeResult, _address, _Reject, _Rejections, _show
from kubenetmon.otlp._decode_records import _impossible, _node_of
from kubenetmon.otlp._limits import DecodeLimits

__all__ = ["BarError", "RecordsConsumer"]

T = ArrowPayloadType
_METRICS_TYPES = {T.RESOURCE_ATTRS, T.SCOPE_ATTRS, T.UNIVARIATE_METRICS, T.NUMBER_DATA_POINTS, T.NUMBER_DP_ATTRS}
# A hostile stream could open a reader per made-up schema id: a few per payload type are plenty.
MAX_READERS_PER_STREAM = 16
# What one BAR may hold decompressed (the exporter's BARs of 65,536 points: ~11 MB, 632 B per record).
DEFAULT_MAX_BAR_BYTES = 256 * 1024 * 1024
_COUNTERS = {c.METRIC_BYTES: 0, c.METRIC_PACKETS: 1}
_KEYS = (
    c.ATTR_NETWORK_TRANSPORT, c.ATTR_NETWORK_TYPE, c.ATTR_SRC_ADDRESS, c.ATTR_SRC_PORT,
    c.ATTR_DST_ADDRESS, c.ATTR_DST_PORT, c.ATTR_REPLY_SRC_ADDRESS, c.ATTR_REPLY_SRC_PORT,
    c.ATTR_REPLY_DST_ADDRESS, c.ATTR_REPLY_DST_PORT, c.ATTR_DIRECTION,
)
_STRING_SLOTS = (0, 1, 2, 4, 6, 8, 10)
_IS_STRING_SLOT = np.isin(np.arange(11), _STRING_SLOTS)
_TRANSPORT_DICT = pa.array(["tcp", "udp"])
_TYPE_DICT = pa.array(["ipv4", "ipv6"])


class _Verdicts:
    """A rejection reason per point; the first rule a point breaks is its reason (the OTLP order)."""

    def __init__(self, n: int) -> None:
        self.reason = np.zeros(n, dtype=np.int16)
        self.names: list[str] = [""]
        self.messages: dict[str, str] = {}
        self.example: dict[str, int] = {}  # the point a reason's message is about: its first, as OTLP tells

    def reject(self, mask: np.ndarray[Any, Any], reason: str, message_of: Callable[[int], str]) -> None:
        new = mask & (self.reason == 0)
        if not new.any():
            return
        if reason not in self.names:
            self.names.append(reason)
        self.reason[new] = self.names.index(reason)
        # Checks run rule by rule over all points, OTLP point by point: a later rule (the destination's
        # address after the source's) can give the reason to an earlier point, whose message OTLP shows.
        first = int(np.argmax(new))
        if first < self.example.get(reason, len(new)):
            self.messages[reason] = message_of(first)
            self.example[reason] = first

    def accepted(self) -> np.ndarray[Any, Any]:
        ok: np.ndarray[Any, Any] = self.reason == 0
        return ok

    def into(self, rejections: _Rejections) -> None:
        counts = np.bincount(self.reason, minlength=len(self.names))
        for code, name in enumerate(self.names[1:], start=1):
            rejections.add(name, self.messages[name], int(counts[code]))


class RecordsConsumer:
    """Reads the BARs of one gRPC stream (its IPC readers, header decoder and string meanings)."""

    def __init__(self, limits: DecodeLimits | None = None, max_bar_bytes: int = DEFAULT_MAX_BAR_BYTES) -> None:
        self.limits = limits or DecodeLimits()
        self.max_bar_bytes = max_bar_bytes
        self._readers: dict[tuple[int, str], IpcReader] = {}
        self._headers = HeaderDecoder()
        self._strings: dict[str, StreamStrings] = {}

    def headers(self, bar: Any) -> dict[str, str]:
        """The BAR's headers; read every BAR's in order, even one refused (HPACK keeps state)."""
        try:
            return self._headers.decode(bar.headers)
        except ValueError as exc:
            raise BarError("bad_headers", str(exc)) from None

    def tables(self, bar: Any) -> dict[int, tuple[str, pa.RecordBatch]]:
        """Each payload's record batch by type (and its schema id).

        The BAR's shape is checked before any payload is read, so a BAR refused
        for it leaves the stream's IPC readers as they were.
        """
        kinds: set[int] = set()
        for i, payload in enumerate(bar.arrow_payloads):
            kind = int(payload.type)
            if kind not in _METRICS_TYPES:
                raise BarError("unknown_payload_type", f"payload {i} has type {kind}: this gateway reads metrics "
                               "payloads (UNIVARIATE_METRICS 10, NUMBER_DATA_POINTS 11, NUMBER_DP_ATTRS 15, "
                               "RESOURCE_ATTRS 1, SCOPE_ATTRS 2)")
            if kind in kinds:
                raise BarError("duplicate_payload", f"payload {i}: a second payload of type {kind} in one BAR")
            kinds.add(kind)
        if kinds and T.UNIVARIATE_METRICS not in kinds:
            raise BarError("missing_root", "the BAR has no UNIVARIATE_METRICS payload (the root table); "
                           "send it first in every BAR that has data")
        declared = 0
        for i, payload in enumerate(bar.arrow_payloads):
            try:
                declared += declared_bytes(payload.record)
            except ValueError as exc:
                raise BarError("invalid_ipc", f"payload {i} (type {payload.type}) is not Arrow IPC: {exc}") from None
        if declared > self.max_bar_bytes:
            raise BarError("too_large", f"the BAR's Arrow buffers hold {declared:,} bytes once decompressed; at most "
                           f"{self.max_bar_bytes:,} (arrow.max_decompressed_mib): send smaller BARs")
        tables: dict[int, tuple[str, pa.RecordBatch]] = {}
        for i, payload in enumerate(bar.arrow_payloads):
            kind, sid = int(payload.type), str(payload.schema_id)
            key = (kind, sid)
            reader = self._readers.get(key)
            if reader is None:
                if len(self._readers) >= MAX_READERS_PER_STREAM:
                    raise BarError("too_many_schemas", f"payload {i}: more than {MAX_READERS_PER_STREAM} schemas "
                                   "on one stream; open a new stream")
                reader = self._readers[key] = IpcReader()
            try:
                tables[kind] = (sid, reader.read(bytes(payload.record)))
            except (pa.ArrowException, ValueError, OSError, StopIteration) as exc:
                # The reader's position in its stream is lost: forget it (the sender starts a new stream).
                del self._readers[key]
                raise BarError("invalid_ipc", f"payload {i} (type {kind}, schema_id {sid[:80]!r}) is not a "
                               f"readable Arrow IPC stream message: {exc}") from None
        return tables

    def decode(self, bar: Any, now_ns: int) -> DecodeResult:
        """The BAR's records; raises :class:`BarError` when the BAR must be refused whole."""
        tables = self.tables(bar)
        if not tables:
            return DecodeResult()
        try:
            return _Decode(self, tables, now_ns).run()
        except (pa.ArrowException, TypeError) as exc:
            raise BarError("wrong_schema", f"a table does not have the OTAP metrics schema: {exc}") from None

    def strings(self, sid: str, dictionary: pa.Array) -> StreamStrings:
        state = self._strings.get(sid)
        if state is None:
            state = self._strings[sid] = StreamStrings()
        state.update(dictionary)
        return state


class _Decode:
    def __init__(self, consumer: RecordsConsumer, tables: dict[int, tuple[str, pa.RecordBatch]], now: int) -> None:
        self.consumer = consumer
        self.tables = tables
        self.now = now
        self.limits = consumer.limits
        self.rejections = _Rejections()

    def run(self) -> DecodeResult:
        root = self.tables[T.UNIVARIATE_METRICS][1]
        metric_ids = decode_ids(root, "id", DELTA, "UNIVARIATE_METRICS")
        resource_of_metric, nodes, node_of_resource, resource_problem = self._resources(root)
        names = require_column(root, "name", "UNIVARIATE_METRICS").to_pylist()
        types = int64_column(require_column(root, "metric_type", "UNIVARIATE_METRICS"), "metric_type").tolist()
        temporality = root.column("aggregation_temporality").to_pylist() if "aggregation_temporality" in \
            root.schema.names else [0] * root.num_rows
        monotonic = root.column("is_monotonic").to_pylist() if "is_monotonic" in root.schema.names \
            else [False] * root.num_rows

        if T.NUMBER_DATA_POINTS not in self.tables:
            return self._result(self._empty(), 0, nodes)
        points = self.tables[T.NUMBER_DATA_POINTS][1]
        point_ids = decode_ids(points, "id", DELTA, "NUMBER_DATA_POINTS")
        metric = positions_of(metric_ids, decode_ids(points, "parent_id", DELTA, "NUMBER_DATA_POINTS"),
                            "NUMBER_DATA_POINTS parent_id")
        n = points.num_rows
        verdicts = _Verdicts(n)

        # Resource and metric rules first: they reject every point of theirs (the OTLP decoder's order).
        per_metric_reason: list[tuple[str, str] | None] = []
        for m in range(root.num_rows):
            problem = resource_problem[resource_of_metric[m]]
            name = names[m]
            if problem is None:
                if name not in _COUNTERS:
                    problem = ("unknown_metric", f"unknown metric {name!r}: the contract has {c.METRIC_BYTES} and "
                               f"{c.METRIC_PACKETS}")
                elif types[m] != METRIC_TYPE_SUM:
                    problem = ("not_sum", f"metric {name} is a {METRIC_TYPE_NAMES.get(types[m], 'metric')}, "
                               "not a Sum")
                elif temporality[m] != c.TEMPORALITY_DELTA:
                    problem = ("not_delta", f"metric {name} must have DELTA temporality")
                elif not monotonic[m]:
                    problem = ("not_monotonic", f"metric {name} must be monotonic")
            per_metric_reason.append(problem)
        for m, problem in enumerate(per_metric_reason):
            if problem is not None:
                verdicts.reject(metric == m, problem[0], _const(problem[1]))
        base = np.array([_COUNTERS.get(nm, 0) for nm in names] or [0], dtype=np.int64)[metric]
        node = np.array([node_of_resource[r] for r in resource_of_metric] or [0], dtype=np.int64)[metric]

        slots = self._attributes(point_ids, n, verdicts)
        value = self._values(points, verdicts)
        starts, ends = (int64_column(require_column(points, name, "NUMBER_DATA_POINTS"), name)
                        for name in ("start_time_unix_nano", "time_unix_nano"))
        caps, interval = self._times(starts, ends, base, verdicts)
        verdicts.reject(value < 0, "negative_value",
                        lambda i: f"data point value {value[i]} is negative; a monotonic delta cannot be")
        table, accepted = self._records(slots, node=node, base=base, value=value, starts=starts, ends=ends,
                                        interval=interval, caps=caps, verdicts=verdicts, nodes=nodes)
        verdicts.into(self.rejections)
        return self._result(table, accepted, nodes)

    # --- resources ----------------------------------------------------------------------

    def _resources(self, root: pa.RecordBatch) -> tuple[list[int], list[str], list[int], list[Any]]:
        """Per metric its resource's position; the node names; per resource its node index or problem."""
        resource = require_column(root, "resource", "UNIVARIATE_METRICS")
        if not pa.types.is_struct(resource.type) or resource.type.get_field_index("id") < 0:
            raise BarError("wrong_schema", "UNIVARIATE_METRICS column 'resource' must be a struct with an id")
        rid_column = resource.field("id")
        rids = rid_column.to_pylist()
        attrs: dict[int, list[KeyValue]] = {}
        if T.RESOURCE_ATTRS in self.tables:
            table = self.tables[T.RESOURCE_ATTRS][1]
            parents = self._attr_parents(table, "RESOURCE_ATTRS")
            keys = require_column(table, "key", "RESOURCE_ATTRS").to_pylist()
            types = int64_column(require_column(table, "type", "RESOURCE_ATTRS"), "type").tolist()
            none = [None] * table.num_rows
            values = {name: table.column(name).to_pylist() if name in table.schema.names else none
                      for name in ("str", "int", "double", "bool")}
            for i, parent in enumerate(parents.tolist()):
                kv = KeyValue(key=keys[i] or "")
                kind = types[i]
                if kind == ATTR_TYPE_STR:
                    kv.value.string_value = values["str"][i] or ""
                elif kind == ATTR_TYPE_INT:
                    kv.value.int_value = values["int"][i] or 0
                elif kind == ATTR_TYPE_BOOL:
                    kv.value.bool_value = bool(values["bool"][i])
                elif kind == ATTR_TYPE_DOUBLE:
                    kv.value.double_value = values["double"][i] or 0.0
                attrs.setdefault(parent, []).append(kv)
        distinct: dict[Any, int] = {}
        resource_of_metric = []
        for rid in rids:
            resource_of_metric.append(distinct.setdefault(rid, len(distinct)))
        nodes: dict[str, int] = {}
        node_of_resource: list[int] = []
        problems: list[Any] = []
        for rid in distinct:
            try:
                name = _node_of(Resource(attributes=attrs.get(rid, []) if rid is not None else []))
            except _Reject as exc:
                problems.append((exc.reason, exc.message))
                node_of_resource.append(0)
                continue
            problems.append(None)
            node_of_resource.append(nodes.setdefault(name, len(nodes)))
        return resource_of_metric, list(nodes), node_of_resource, problems

    def _attr_parents(self, table: pa.RecordBatch, what: str, key_codes: np.ndarray[Any, Any] | None = None,
                      types: np.ndarray[Any, Any] | None = None,
                      str_codes: np.ndarray[Any, Any] | None = None) -> np.ndarray[Any, Any]:
        """Parent ids of an attribute table: plain, delta, or quasi-delta (the default).

        ``key_codes``, ``types``, ``str_codes``: the caller's, when it has them already.
        """
        field = table.schema.field("parent_id") if "parent_id" in table.schema.names else None
        raw = int64_column(require_column(table, "parent_id", what), f"{what} parent_id")
        encoding = (field.metadata or {}).get(ENCODING, QUASI_DELTA) if field is not None else QUASI_DELTA
        if encoding == PLAIN:
            return raw
        if encoding == DELTA:
            return np.cumsum(raw)
        if encoding != QUASI_DELTA:
            raise BarError("wrong_schema", f"{what} parent_id has encoding {encoding!r}")
        n = len(raw)
        if not n:
            return raw
        if key_codes is None:
            key_codes, _ = string_codes(require_column(table, "key", what))
        if types is None:
            types = int64_column(require_column(table, "type", what), f"{what} type", native=True)
        if str_codes is None and "str" in table.schema.names:
            str_codes, _ = string_codes(table.column("str"))
        # A row continues a run when its key, type and value (the column its type names) equal the
        # previous row's.
        value = run_values(table, types, str_codes)
        same = (key_codes[1:] == key_codes[:-1]) & (types[1:] == types[:-1]) & (value[1:] == value[:-1])
        # Within a run the ids are a running sum from the run's first (absolute) id: subtract the sum
        # before the run, which never decreases (ids are unsigned), so a running maximum spreads it.
        total = np.cumsum(raw)
        before = np.zeros(n, dtype=np.int64)
        before[1:][~same] = total[:-1][~same]
        parents: np.ndarray[Any, Any] = total - np.maximum.accumulate(before)
        return parents

    # --- point attributes ---------------------------------------------------------------

    def _attributes(self, point_ids: np.ndarray[Any, Any], n: int, verdicts: _Verdicts) -> dict[str, Any]:
        """Per contract key: which points have it and its value per point (string code or int)."""
        has = np.zeros((11, n), dtype=bool)
        wrong = np.zeros((11, n), dtype=bool)
        value = np.zeros((11, n), dtype=np.int64)
        strings: StreamStrings | None = None
        if T.NUMBER_DP_ATTRS in self.tables:
            sid, table = self.tables[T.NUMBER_DP_ATTRS]
            what = "NUMBER_DP_ATTRS"
            key_codes, key_values = string_codes(require_column(table, "key", what))
            types = int64_column(require_column(table, "type", what), f"{what} type", native=True)
            slot_of_code = np.full(len(key_values) + 1, -1, dtype=np.int64)
            for code, key in enumerate(key_values.to_pylist()):
                if key in _KEYS:
                    slot_of_code[code] = _KEYS.index(key)
            str_codes = None
            if "str" in table.schema.names:
                column = table.column("str")
                if not pa.types.is_dictionary(column.type):
                    column = column.dictionary_encode()
                    sid = ""  # a dictionary made here lives for this BAR only
                strings = self.consumer.strings(sid, column.dictionary) if sid else StreamStrings()
                if not sid:
                    strings.update(column.dictionary)
                idx = column.indices.fill_null(0).to_numpy(zero_copy_only=False)
                str_codes = strings.canonical[idx] if len(strings.canonical) else np.zeros(len(idx), np.int64)
                if column.null_count:
                    str_codes[column.is_null().to_numpy(zero_copy_only=False)] = -1
            parents = positions_of(point_ids, self._attr_parents(table, what, key_codes, types, str_codes),
                                 f"{what} parent_id")
            ints = (int64_column(table.column("int"), f"{what} int") if "int" in table.schema.names
                    else np.zeros(table.num_rows, dtype=np.int64))
            # Rows of one key together (producers sort attributes by key; others are sorted here): each
            # key's values land in its own row of the per-point arrays by slices, not per-row lookups.
            order = None
            if len(key_codes) > 1 and bool((key_codes[1:] < key_codes[:-1]).any()):
                order = np.argsort(key_codes, kind="stable")
            sorted_codes = key_codes if order is None else key_codes[order]
            bounds = (np.flatnonzero(sorted_codes[1:] != sorted_codes[:-1]) + 1).tolist()
            for a, b in itertools.pairwise([0, *bounds, len(sorted_codes)]):
                k = int(slot_of_code[sorted_codes[a]])
                if k < 0:
                    continue  # not a contract attribute: ignored, as the OTLP decoder does
                rows: Any = slice(a, b) if order is None else order[a:b]
                p = parents[rows]
                has[k][p] = True
                if _IS_STRING_SLOT[k]:
                    wrong[k][p] = types[rows] != ATTR_TYPE_STR
                    value[k][p] = str_codes[rows] if str_codes is not None else -1
                else:
                    wrong[k][p] = types[rows] != ATTR_TYPE_INT
                    value[k][p] = ints[rows]
        if strings is None:
            strings = StreamStrings()
        for k in range(11):
            kind = "a string" if k in _STRING_SLOTS else "an int"
            verdicts.reject(wrong[k], "wrong_attribute_type", _const(f"attribute {_KEYS[k]} must be {kind}"))
        texts = strings.texts

        def text(k: int, i: int) -> str:
            code = int(value[k, i])
            return texts[code] if 0 <= code < len(texts) else ""

        def lookup(table: np.ndarray[Any, Any], k: int) -> np.ndarray[Any, Any]:
            codes = value[k]
            if not len(table):
                return np.full(n, -1, dtype=np.int64)
            out: np.ndarray[Any, Any] = table[np.clip(codes, 0, len(table) - 1)].astype(np.int64)
            out[(codes < 0) | ~has[k]] = -1
            return out

        direction = lookup(strings.direction, 10)
        verdicts.reject(direction < 0, "bad_direction", lambda i: "kubenetmon.conntrack.direction="
                        f"{_show(text(10, i)) if has[10, i] else None} is not original or reply")
        for k in range(6):
            verdicts.reject(~has[k], "missing_attribute", _const(f"data point has no {_KEYS[k]} attribute"))
        transport = lookup(strings.transport, 0)
        verdicts.reject(transport < 0, "bad_attribute_value",
                        lambda i: f"network.transport={_show(text(0, i))} is not tcp or udp")
        network_type = lookup(strings.network_type, 1)
        verdicts.reject(network_type < 0, "bad_attribute_value",
                        lambda i: f"network.type={_show(text(1, i))} is not ipv4 or ipv6")
        reply = has[6:10]
        nat: np.ndarray[Any, Any] = np.asarray(reply.all(axis=0))
        partial_reply: np.ndarray[Any, Any] = reply.any(axis=0) & ~nat
        verdicts.reject(partial_reply, "incomplete_reply_tuple",
                        _const("kubenetmon.reply.* attributes must be all four present (NAT) or all absent "
                               "(mirror)"))
        for k in (3, 5, 7, 9):
            verdicts.reject(has[k] & ((value[k] < 0) | (value[k] > 65535)), "bad_port",
                            partial(_port_message, value, k))
        address: dict[int, np.ndarray[Any, Any]] = {}
        for k in (2, 4, 6, 8):
            family = lookup(strings.address, k)
            relevant = has[k] if k < 6 else nat
            # Not an address (or no text), too long, or of the other family than the point's network.type.
            bad = relevant & ((family < 0) | (family >= 2) | (family != network_type))

            def message(i: int, k: int = k) -> str:
                try:
                    _address(text(k, i), "ipv6" if network_type[i] == 1 else "ipv4", _KEYS[k])
                except _Reject as exc:
                    return exc.message
                return f"attribute {_KEYS[k]} is not an address of the point's network.type"

            verdicts.reject(bad & (family == 2), "attribute_too_long", message)
            verdicts.reject(bad, "bad_address", message)
            address[k] = np.clip(value[k], 0, None)  # string codes; rejected points do not matter
        return {"value": value, "nat": nat, "transport": transport, "network_type": network_type,
                "direction": direction, "address": address, "strings": strings}

    # --- values, times, caps ------------------------------------------------------------

    def _values(self, points: pa.RecordBatch, verdicts: _Verdicts) -> np.ndarray[Any, Any]:
        n = points.num_rows
        ints = points.column("int_value") if "int_value" in points.schema.names else pa.nulls(n, pa.int64())
        doubles = points.column("double_value") if "double_value" in points.schema.names else None
        int_null = ints.is_null().to_numpy(zero_copy_only=False)
        is_double = (~doubles.is_null().to_numpy(zero_copy_only=False)) if doubles is not None \
            else np.zeros(n, dtype=bool)
        verdicts.reject(int_null | is_double, "wrong_value_type", lambda i: "data point value is "
                        f"{'as_double' if is_double[i] else 'missing'}; the contract sends as_int")
        return int64_column(ints, "NUMBER_DATA_POINTS int_value")

    def _times(self, starts: np.ndarray[Any, Any], ends: np.ndarray[Any, Any], base: np.ndarray[Any, Any],
               verdicts: _Verdicts) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        """Checks each distinct interval once: per point the largest delta its counter may reach, its interval."""
        n = len(starts)
        caps = np.zeros(n, dtype=np.uint64)
        if not n:
            return caps, np.zeros(0, dtype=np.int64)
        if bool((starts == starts[0]).all() and (ends == ends[0]).all()):  # one interval: the usual BAR
            pairs, inverse = [(int(starts[0]), int(ends[0]))], np.zeros(n, dtype=np.int64)
        else:
            inverse, first = distinct_rows(np.stack([starts, ends], axis=1))
            pairs = list(zip(starts[first].tolist(), ends[first].tolist(), strict=True))
        for j, (start, end) in enumerate(pairs):
            mask = inverse == j
            problem = self.limits.time_problem(start, end, self.now)
            if problem is not None:
                verdicts.reject(mask, problem[0], _const(problem[1]))
                continue
            byte_cap, packet_cap = self.limits.caps(start, end)
            caps[mask & (base == 0)] = byte_cap
            caps[mask & (base == 1)] = packet_cap
        return caps, inverse

    # --- records --------------------------------------------------------------------------

    def _records(self, s: dict[str, Any], *, node: np.ndarray[Any, Any], base: np.ndarray[Any, Any],
                 value: np.ndarray[Any, Any], starts: np.ndarray[Any, Any], ends: np.ndarray[Any, Any],
                 interval: np.ndarray[Any, Any], caps: np.ndarray[Any, Any], verdicts: _Verdicts,
                 nodes: list[str]) -> tuple[pa.RecordBatch, int]:
        """Points → records (one per node, tuple and interval; four counters), in order of first point."""
        ok = np.flatnonzero(verdicts.accepted())
        if not len(ok):
            return self._empty(), 0
        strings: StreamStrings = s["strings"]
        v, nat, code = s["value"], s["nat"][ok], s["address"]
        # A record's identity as small ints: equal addresses (whatever their text) share an id.
        src, dst = code[2][ok], code[4][ok]
        sport, dport = v[3][ok], v[5][ok]
        rsrc = np.where(nat, code[6][ok], dst)
        rdst = np.where(nat, code[8][ok], src)
        rsport = np.where(nat, v[7][ok], dport)
        rdport = np.where(nat, v[9][ok], sport)
        aid = strings.address_id
        identity = np.stack([
            node[ok], s["transport"][ok] * 2 + s["network_type"][ok], interval[ok],
            aid[src], aid[dst], aid[rsrc], aid[rdst], (sport << 16) | dport, (rsport << 16) | rdport,
        ], axis=1).astype(np.int64)
        record, first = distinct_rows(identity)  # records in order of first appearance
        n_records = len(first)
        counter = record * 4 + base[ok] + 2 * s["direction"][ok]
        values = value[ok].astype(np.uint64)
        cap = caps[ok]
        counts = np.bincount(counter, minlength=4 * n_records)
        totals = np.zeros(4 * n_records, dtype=np.uint64)
        over = values > cap
        single = counts[counter] == 1
        verdicts.reject(_scatter(len(verdicts.reason), ok[over & single]), "impossible_delta",
                        lambda i: _impossible(int(value[i]), int(caps[i]), int(starts[i]), int(ends[i])))
        take = single & ~over
        totals[counter[take]] = values[take]
        # Several points of one tuple, direction and metric (a sender's duplicates): running totals in
        # point order, as the OTLP decoder sums them (rare: a Python loop over those points only).
        for j in np.flatnonzero(~single).tolist():
            i, g = int(ok[j]), int(counter[j])
            total = int(totals[g]) + int(values[j])
            if total > int(cap[j]):
                verdicts.reject(_scatter(len(verdicts.reason), np.array([i])), "impossible_delta",
                                _const(_impossible(int(value[i]), int(caps[i]), int(starts[i]), int(ends[i]))))
                continue
            totals[g] = total
        accepted = int(verdicts.accepted().sum())
        counters = totals.reshape(n_records, 4)
        f = first
        packed = strings.packed
        arrays = [
            pa.DictionaryArray.from_arrays(pa.array(node[ok][f], pa.int32()), pa.array(nodes, pa.utf8())),
            pa.DictionaryArray.from_arrays(pa.array(s["transport"][ok][f], pa.int32()), _TRANSPORT_DICT),
            pa.DictionaryArray.from_arrays(pa.array(s["network_type"][ok][f], pa.int32()), _TYPE_DICT),
            _addresses(packed[src[f]]), pa.array(sport[f], PORT), _addresses(packed[dst[f]]), pa.array(dport[f], PORT),
            _addresses(packed[rsrc[f]]), pa.array(rsport[f], PORT), _addresses(packed[rdst[f]]),
            pa.array(rdport[f], PORT),
            *(pa.array(counters[:, i], COUNTER) for i in range(4)),
            pa.array(starts[ok][f], TIME), pa.array(ends[ok][f], TIME),
        ]
        table = pa.RecordBatch.from_arrays(arrays, schema=RECORD_SCHEMA)
        nonzero = counters.any(axis=1)
        return (table if nonzero.all() else table.filter(pa.array(nonzero))), accepted

    def _empty(self) -> pa.RecordBatch:
        return pa.RecordBatch.from_pylist([], schema=RECORD_SCHEMA)

    def _result(self, table: pa.RecordBatch, accepted: int, nodes: list[str]) -> DecodeResult:
        rej = self.rejections
        return DecodeResult(
            table=table, rejected_points=sum(rej.counts.values()),
            errors=[f"{reason}: {msg}" for reason, msg in rej.messages.items()],
            rejected_by_reason=dict(rej.counts), accepted_points=accepted, nodes=nodes,
        )


def _const(message: str) -> Callable[[int], str]:
    def message_of(_point: int) -> str:
        return message
    return message_of


def _port_message(value: np.ndarray[Any, Any], k: int, i: int) -> str:
    return f"attribute {_KEYS[k]}={value[k, i]} is not a port (0..65535)"


def _scatter(n: int, indices: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    mask = np.zeros(n, dtype=bool)
    mask[indices] = True
    return mask


def _addresses(packed: np.ndarray[Any, Any]) -> pa.Array:
    data = np.ascontiguousarray(packed, dtype=np.uint8)
    return pa.FixedSizeBinaryArray.from_buffers(ADDRESS, len(data), [None, pa.py_buffer(data)])

